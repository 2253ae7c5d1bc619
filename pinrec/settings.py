"""Typed settings for the local stack, read once from the environment (and overridden by CLI flags)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _optional(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a port number (0 picks a free port), got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be between 0 and 65535, got {port}")
    return port


@dataclass(frozen=True)
class LocalStackSettings:
    """Where the local stack keeps its tools and state, which ports it prefers, and external services."""

    home: Path  # PINREC_HOME: provisioned tools (Kafka jars, Go binaries) and, by default, service state
    state_dir: Path  # PINREC_STATE_DIR: PIDs, logs and data of the services `pinrec local up` started
    kafka_bootstrap: str | None = None  # PINREC_KAFKA_BOOTSTRAP: use this broker instead of starting one
    redis_url: str | None = None  # PINREC_REDIS_URL: use this Redis instead of starting one
    prometheus_url: str | None = None  # PINREC_PROMETHEUS_URL: use this Prometheus instead of starting one
    kafka_port: int = 19092  # preferred broker port; a free one is picked when taken (0: always free)
    kafka_controller_port: int = 19093  # preferred KRaft controller port
    redis_port: int = 16379  # preferred Redis port
    prometheus_port: int = 19090  # preferred Prometheus port
    scrape_interval_s: float = 2.0  # how often the local Prometheus scrapes registered targets
    kafka_heap_mb: int = 512  # JVM heap of the local broker; small, it serves one machine

    @property
    def tools_dir(self) -> Path:
        return self.home / "tools"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LocalStackSettings:
        home = Path(environ.get("PINREC_HOME") or Path.cwd() / ".pinrec").resolve()
        state = _optional(environ, "PINREC_STATE_DIR")
        return cls(
            home=home,
            state_dir=Path(state).resolve() if state else home / "run",
            kafka_bootstrap=_optional(environ, "PINREC_KAFKA_BOOTSTRAP"),
            redis_url=_optional(environ, "PINREC_REDIS_URL"),
            prometheus_url=_optional(environ, "PINREC_PROMETHEUS_URL"),
            kafka_port=_port(environ, "PINREC_KAFKA_PORT", 19092),
            kafka_controller_port=_port(environ, "PINREC_KAFKA_CONTROLLER_PORT", 19093),
            redis_port=_port(environ, "PINREC_REDIS_PORT", 16379),
            prometheus_port=_port(environ, "PINREC_PROMETHEUS_PORT", 19090),
        )
