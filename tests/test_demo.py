"""The main job runs on the real local stack and cleans up after itself."""

from __future__ import annotations

import json

import pytest

from .helpers import cli_env, run_pinrec

pytestmark = pytest.mark.integration


def test_demo_streams_events_through_kafka_exactly_once_and_stops_its_stack(tmp_path):
    result = run_pinrec(cli_env(tmp_path), "demo", "--no-install", "--events", "3000", "--users", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "events through Kafka    3,000" in result.stdout
    assert "exactly once            True" in result.stdout
    assert "ordered per user        True" in result.stdout
    assert "pinrec_demo_events_consumed_total = 3,000" in result.stdout
    assert json.loads((tmp_path / "state.json").read_text()) == {}
