"""The settings of one `pinrec` process: read once from the `PINREC_*` environment, with the command line's
shared flags (--bootstrap, --online-store, --redis-url, --repo) on top, validated in one place.

Library code never reads the environment: it receives the typed part it needs (`LocalStackSettings`,
`KafkaSecurity`, `Vocabulary`, `FeatureStoreSettings`) from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pinrec.featurestore.schema import DEFAULT_ACTIONS, DEFAULT_SURFACES, Vocabulary
from pinrec.stream.security import MECHANISMS, PROTOCOLS, KafkaSecurity

ENV_PREFIX = "PINREC_"


@dataclass(frozen=True)
class LocalStackSettings:
    """Where the local stack keeps its tools and state, which ports it prefers, and external services."""

    home: Path  # provisioned tools (Kafka jars, Go binaries) and, by default, service state
    state_dir: Path  # PIDs, logs and data of the services `pinrec local up` started
    kafka_bootstrap: str | None = None  # use this broker instead of starting one
    redis_url: str | None = None  # use this Redis instead of starting one
    prometheus_url: str | None = None  # use this Prometheus instead of starting one
    kafka_port: int = 19092  # preferred broker port; a free one is picked when taken (0: always free)
    kafka_controller_port: int = 19093  # preferred KRaft controller port
    redis_port: int = 16379  # preferred Redis port
    prometheus_port: int = 19090  # preferred Prometheus port
    scrape_interval_s: float = 2.0  # how often the local Prometheus scrapes registered targets
    kafka_heap_mb: int = 512  # JVM heap of the local broker; small, it serves one machine

    @property
    def tools_dir(self) -> Path:
        return self.home / "tools"


class Settings(BaseModel):
    """Every `PINREC_*` variable (the field name upper-cased behind the prefix) and its default."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    home: Path = Field(default_factory=lambda: Path.cwd() / ".pinrec")  # tools cache, default state
    state_dir: Path | None = None  # local services' PIDs, logs, data (default: home/run)
    kafka_bootstrap: str | None = None  # an existing broker (host:port[,host:port]); --bootstrap
    redis_url: str | None = None  # an existing Redis (redis://host:port/db); --redis-url
    prometheus_url: str | None = None  # an existing Prometheus
    kafka_port: int = Field(19092, ge=0, le=65535)  # preferred ports (0: a free port)
    kafka_controller_port: int = Field(19093, ge=0, le=65535)
    redis_port: int = Field(16379, ge=0, le=65535)
    prometheus_port: int = Field(19090, ge=0, le=65535)
    feature_repo: Path | None = None  # Feast repository folder (default: home/feature_repo); --repo
    online_store: Literal["sqlite", "redis"] = "sqlite"  # --online-store
    feast_project: str = Field("pinrec", pattern=r"^[A-Za-z0-9_]+$")  # namespace of the online store keys
    actions: tuple[str, ...] = DEFAULT_ACTIONS  # comma-separated, in code order
    surfaces: tuple[str, ...] = DEFAULT_SURFACES  # comma-separated, in code order
    kafka_security_protocol: Literal[PROTOCOLS] = "PLAINTEXT"  # type: ignore[valid-type]
    kafka_sasl_mechanism: Literal[MECHANISMS] = "PLAIN"  # type: ignore[valid-type]
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: Path | None = None  # CA bundle that signed the brokers' certificates

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """The environment's `PINREC_*` values, then the non-empty overrides (command-line flags)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper(), "").strip()
            if raw:
                values[name] = raw
        values |= {name: value for name, value in (overrides or {}).items() if value is not None}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ValueError(_explain(error)) from None

    @field_validator("actions", "surfaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        names = (
            tuple(part.strip() for part in value.split(",") if part.strip())
            if isinstance(value, str)
            else value
        )
        if len(set(names)) != len(names):
            raise ValueError(f"lists a name twice: {', '.join(names)}")
        return names

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL") and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"{protocol} needs PINREC_KAFKA_SASL_USERNAME and PINREC_KAFKA_SASL_PASSWORD")
        if self.kafka_ssl_cafile and protocol.endswith("SSL") and not self.kafka_ssl_cafile.exists():
            raise ValueError(f"PINREC_KAFKA_SSL_CAFILE {str(self.kafka_ssl_cafile)!r} does not exist")
        return self

    @property
    def local_stack(self) -> LocalStackSettings:
        home = self.home.resolve()
        shared = {
            f.name: getattr(self, f.name)
            for f in fields(LocalStackSettings)
            if f.name in type(self).model_fields
        }
        shared |= {"home": home, "state_dir": self.state_dir.resolve() if self.state_dir else home / "run"}
        return LocalStackSettings(**shared)

    @property
    def kafka_security(self) -> KafkaSecurity:
        sasl = self.kafka_security_protocol.startswith("SASL")
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism if sasl else None,
            sasl_username=self.kafka_sasl_username if sasl else None,
            sasl_password=self.kafka_sasl_password if sasl else None,
            ssl_cafile=str(self.kafka_ssl_cafile)
            if self.kafka_ssl_cafile and self.kafka_security_protocol.endswith("SSL")
            else None,
        )

    @property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.actions, self.surfaces)


def _explain(error: ValidationError) -> str:
    """Name each refused value by its environment variable (or flag) and say what was expected."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        where = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        lines.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)
