"""`pinrec local up | status | down` start real services, stop only their own, and leave nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pinrec.localstack.processes import port_is_free, process_matches
from pinrec.localstack.stack import LocalStack

from .helpers import REPO, cli_env, free_port_settings, run_pinrec

pytestmark = pytest.mark.integration


def _wait_gone(
    pids_and_markers: list[tuple[int, list[str]]], ports: list[int], timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(process_matches(pid, markers) for pid, markers in pids_and_markers) and all(
            port_is_free(port) for port in ports
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"still running or listening: {pids_and_markers} {ports}")


def _records(state_dir: Path) -> dict[str, dict]:
    return json.loads((state_dir / "state.json").read_text())


def test_up_status_down_through_the_cli(tmp_path):
    env = cli_env(tmp_path)
    up = run_pinrec(env, "local", "up", "--redis", "--prometheus")
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(run_pinrec(env, "local", "status", "--json").stdout)
        assert status["kafka"]["up"] and status["kafka"]["bootstrap"].startswith("127.0.0.1:")
        assert status["redis"]["up"] and status["redis"]["url"].startswith("redis://127.0.0.1:")
        assert status["prometheus"]["up"] and status["prometheus"]["url"].startswith("http://127.0.0.1:")
        records = _records(tmp_path)

        again = run_pinrec(env, "local", "up")
        assert again.returncode == 0, again.stderr
        assert {n: r["pid"] for n, r in _records(tmp_path).items()} == {
            n: r["pid"] for n, r in records.items()
        }
    finally:
        down = run_pinrec(env, "local", "down")
    assert down.returncode == 0, down.stderr
    assert "kafka" in down.stdout
    _wait_gone(
        [(r["pid"], r["markers"]) for r in records.values()],
        [p for r in records.values() for p in r["ports"].values()],
    )
    after = json.loads(run_pinrec(env, "local", "status", "--json").stdout)
    assert not any(service["up"] for service in after.values())


def test_killed_owner_takes_its_services_with_it(tmp_path):
    """A test session killed with SIGKILL runs no finalizers; the services must still go away."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pinrec.localstack.stack import LocalStack\n"
            "from tests.helpers import free_port_settings\n"
            "from pathlib import Path\n"
            "LocalStack(free_port_settings(Path(sys.argv[1])), bound_to_parent=True).up({'redis': True})\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n",
            str(tmp_path),
        ],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert owner.stdout.readline().strip() == "ready"
        records = _records(tmp_path)
        assert {"kafka", "redis"} <= set(records)
        assert all(process_matches(r["pid"], r["markers"]) for r in records.values())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    _wait_gone(
        [(r["pid"], r["markers"]) for r in records.values()],
        [p for r in records.values() for p in r["ports"].values()],
    )


def test_an_external_broker_is_reported_and_never_started(services, tmp_path):
    settings = replace(free_port_settings(tmp_path), kafka_bootstrap=services.kafka_bootstrap)
    stack = LocalStack(settings)
    assert stack.up({"redis": False, "prometheus": False}) == []
    report = stack.status()
    assert report["kafka"] == {"up": True, "managed": False, "bootstrap": services.kafka_bootstrap}
    assert "kafka" not in _records(tmp_path)
