"""Local-stack bookkeeping without services: settings from the environment, ownership of PIDs."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from pinrec.localstack.processes import pick_port, port_is_free
from pinrec.localstack.stack import LocalStack
from pinrec.settings import Settings

from .helpers import free_port_settings


def test_down_never_signals_a_process_it_did_not_start(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "state.json").write_text(
            json.dumps(
                {
                    "kafka": {
                        "name": "kafka",
                        "pid": stranger.pid,
                        "ports": {"broker": 1},
                        "markers": ["kafka.Kafka"],
                        "log": "",
                        "endpoint": {"bootstrap": "127.0.0.1:1"},
                    }
                }
            )
        )
        stack = LocalStack(free_port_settings(tmp_path))
        assert stack.down() == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_settings_come_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {"PINREC_HOME": str(tmp_path), "PINREC_KAFKA_BOOTSTRAP": "b:9092", "PINREC_REDIS_PORT": "0"}
    ).local_stack
    assert settings.home == tmp_path and settings.state_dir == tmp_path / "run"
    assert settings.tools_dir == tmp_path / "tools"
    assert settings.kafka_bootstrap == "b:9092" and settings.redis_port == 0
    with pytest.raises(ValueError, match="PINREC_KAFKA_PORT"):
        Settings.from_env({"PINREC_KAFKA_PORT": "ninety"})


def test_pick_port_avoids_busy_and_taken_ports():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        assert not port_is_free(busy_port)
        assert pick_port(busy_port) != busy_port
    free = pick_port(0)
    assert pick_port(free, taken=[free]) != free
