"""The main job, reduced (`pinrec demo --quick`), on the real local stack: it trains, serves, streams, shows
live recommendations change, writes its report and stops everything it started."""

from __future__ import annotations

import json

import pytest

from .helpers import cli_env, run_pinrec

pytestmark = pytest.mark.integration


def test_quick_demo_runs_the_whole_system_and_cleans_up(tmp_path):
    out = tmp_path / "report"
    result = run_pinrec(
        cli_env(tmp_path / "state"), "demo", "--quick", "--no-install", "--out", str(out), timeout_s=600
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    summary = (out / "summary.md").read_text()
    for heading in ("## Streaming", "## Serving latency per stage", "## Outcome budgets per surface"):
        assert heading in summary
    assert "their home feed changed" in summary and "0 errors" in summary
    for stage in ("features", "prefill", "decode", "search", "total"):
        assert f"| {stage} |" in summary
    for png in ("training-curves.png", "latency.png", "recall-diversity-budget.png"):
        assert (out / png).stat().st_size > 10_000
    assert json.loads((tmp_path / "state" / "state.json").read_text()) == {}  # the stack is down again
