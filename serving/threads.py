"""Thread settings of the serving process, applied before faiss and torch load."""

from __future__ import annotations

import os


def passive_openmp() -> None:
    """Idle OpenMP workers sleep instead of spinning: between requests they would take the CPU that the
    next request's Python needs (measured: the search stage 4.8 -> 1.8 ms on 2 cores). Must run before
    faiss and torch load."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
