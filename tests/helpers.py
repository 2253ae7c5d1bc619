"""Helpers shared by the test modules: private settings and running the `pinrec` command."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from pinrec.localstack.processes import die_with_parent
from pinrec.settings import LocalStackSettings, Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port_settings(state_dir: Path) -> LocalStackSettings:
    """The user's settings (tools, external services) with a private state dir and kernel-chosen ports."""
    return replace(
        Settings.from_env().local_stack,
        state_dir=state_dir,
        kafka_port=0,
        kafka_controller_port=0,
        redis_port=0,
        prometheus_port=0,
        scrape_interval_s=1.0,
    )


def cli_env(state_dir: Path) -> dict[str, str]:
    """Environment for a `pinrec` subprocess with its own state dir, free ports and no external services."""
    env = {
        **os.environ,
        "PINREC_STATE_DIR": str(state_dir),
        "PINREC_KAFKA_PORT": "0",
        "PINREC_KAFKA_CONTROLLER_PORT": "0",
        "PINREC_REDIS_PORT": "0",
        "PINREC_PROMETHEUS_PORT": "0",
    }
    for external in ("PINREC_KAFKA_BOOTSTRAP", "PINREC_REDIS_URL", "PINREC_PROMETHEUS_URL"):
        env.pop(external, None)
    return env


def run_pinrec(env: dict[str, str], *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    """Run the CLI; it dies with the test process, so a killed test run leaves no CLI behind."""
    return subprocess.run(
        [sys.executable, "-m", "pinrec.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
        preexec_fn=die_with_parent,
    )


def pinrec(*args: str | Path, processes: int = 1, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """A pinrec command, under torchrun (one machine, a free rendezvous port) for several processes."""
    command = [str(BIN / "pinrec"), *map(str, args)]
    if processes > 1:
        command = [
            str(BIN / "torchrun"),
            "--standalone",
            f"--nproc-per-node={processes}",
            "--no-python",
        ] + command
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=timeout_s
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
