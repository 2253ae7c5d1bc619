"""Latency percentiles, printing a benchmark's table and writing its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    """p50_ms and p99_ms (NaN when nothing was measured)."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if not len(values):
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
    }


def print_table(title: str, rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    for name, value in rows:
        shown = (
            f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        )
        print(f"  {name:<{width}}  {shown}")


def write_json(path: Path | None, result: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
