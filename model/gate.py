"""The promotion gate of scheduled retraining: a retrained artifact replaces the served one only when its
offline metrics are no worse. It reads the two manifests (model/manifest.py) and nothing else.

The rules:
1. Nothing served yet (the link is missing, or points at nothing): promote, there is nothing to compare.
2. The gated metrics are the names given, else every number at the top of the served artifact's `metrics`
   (nested entries, such as `training`, record a run, not its quality). Every metric is higher-is-better
   (NDCG, hit rate, recall) and compared as an absolute difference.
3. A gated metric the served artifact has and the candidate lacks: refuse, it cannot be shown not worse.
   A named metric the served artifact lacks is not compared (the decision says so); a name neither has is
   an error, since a typo would otherwise gate on nothing.
4. Otherwise promote when no gated metric is worse than the served one by more than the tolerance.
5. Artifacts trained on different events (their data fingerprints differ) were also validated on different
   users: the decision says so, and the numbers still decide.

Promotion re-points the link atomically: a relative symlink is made beside it and renamed over it
(os.replace), so the predictor's artifact watcher sees the old target or the new one, never neither, and the
link stays valid wherever the volume is mounted. The decision is recorded in the candidate as gate.json
(except in a dry run, which changes nothing).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pinrec.model.manifest import MANIFEST, read_manifest

GATE_RECORD = "gate.json"  # the decision, in the candidate's directory


@dataclass(frozen=True)
class Comparison:
    """One gated metric: its value in the served artifact and in the candidate (None: absent)."""

    metric: str
    serving: float | None
    candidate: float | None

    def worse_than(self, tolerance: float) -> bool:
        return (
            self.serving is not None
            and self.candidate is not None
            and self.candidate < self.serving - tolerance
        )

    def describe(self) -> str:
        if self.serving is None:
            return f"{self.metric} not served, not compared"
        if self.candidate is None:
            return f"{self.metric} {self.serving:.4f} -> missing"
        return (
            f"{self.metric} {self.serving:.4f} -> {self.candidate:.4f} ({self.candidate - self.serving:+.4f})"
        )


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    candidate: str  # the candidate artifact directory, resolved
    link: str  # the symlink the predictor serves
    serving: str | None  # what the link pointed at before the decision (None: nothing)
    tolerance: float
    comparisons: tuple[Comparison, ...]
    data: str  # whether both were trained on the same events, by their data fingerprints
    dry_run: bool
    decided_at: str  # ISO 8601, UTC

    def summary(self) -> str:
        """One line: the verdict, its reason, every compared metric (served -> candidate), the data."""
        verdict = "promoted" if self.promoted else "refused"
        if self.dry_run:
            verdict = f"would be {verdict} (dry run, nothing changed)"
        metrics = ", ".join(c.describe() for c in self.comparisons) or "none"
        return (
            f"{self.candidate} {verdict}: {self.reason}; serving {self.serving or 'nothing'}; "
            f"metrics (serving -> candidate): {metrics}; tolerance {self.tolerance:g}; {self.data}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def decide(candidate: Path, link: Path, metrics: Sequence[str] = (), tolerance: float = 0.0) -> Decision:
    """The gate's decision on `candidate` against what `link` serves; reads the manifests, changes nothing."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"the tolerance must be a number >= 0, not {tolerance}")
    if not link.parent.is_dir():
        raise FileNotFoundError(f"{link.parent} (where the serving link {link.name} lives) is not a folder")
    candidate_manifest = read_manifest(candidate)
    decision = Decision(
        promoted=True,
        reason="",
        candidate=str(candidate.resolve()),
        link=str(link),
        serving=None,
        tolerance=tolerance,
        comparisons=(),
        data="no served artifact to compare data with",
        dry_run=False,
        decided_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if not os.path.lexists(link):
        return replace(decision, reason=f"nothing is served at {link} yet")
    if not link.is_symlink():
        raise ValueError(
            f"{link} is not a symlink: the gate re-points a symlink, so make it one "
            f"(e.g. mv {link} {link}-v1 && ln -s {link.name}-v1 {link})"
        )
    serving = Path(os.path.realpath(link))
    if not serving.exists():
        return replace(
            decision, serving=str(serving), reason=f"{link} points at {serving}, which does not exist"
        )
    try:
        serving_manifest = read_manifest(serving)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the served artifact {serving} (what {link} points at) has no {MANIFEST}: point {link} at a "
            f"trained artifact, or remove the link to promote the candidate without comparing"
        ) from None
    comparisons = _compare(
        _metrics(serving_manifest, serving), _metrics(candidate_manifest, candidate), metrics
    )
    return replace(
        decision,
        serving=str(serving),
        comparisons=comparisons,
        data=_same_data(serving_manifest, candidate_manifest),
        **_verdict(comparisons, tolerance),
    )


def gate(
    candidate: Path, link: Path, metrics: Sequence[str] = (), tolerance: float = 0.0, *, dry_run: bool = False
) -> Decision:
    """Decide, and unless this is a dry run, re-point `link` at a promoted candidate and record the decision
    in the candidate as gate.json."""
    decision = replace(decide(candidate, link, metrics, tolerance), dry_run=dry_run)
    if dry_run:
        return decision
    if decision.promoted:
        repoint(link, candidate)
    write_decision(candidate / GATE_RECORD, decision)
    return decision


def repoint(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically: a relative symlink made beside the link and renamed over it."""
    relative = os.path.relpath(target.resolve(), link.parent.resolve())
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(relative, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_decision(path: Path, decision: Decision) -> None:
    """The decision as JSON, written under a temporary name and renamed (never half a file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    os.replace(partial, path)


def _metrics(manifest: dict, artifact: Path) -> dict:
    metrics = manifest.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ValueError(f"{artifact / MANIFEST}: metrics is a {type(metrics).__name__}, not an object")
    return metrics


def _number(metrics: dict, name: str) -> float | None:
    """The metric as a float; None when absent. A gated metric must be a finite number."""
    if name not in metrics:
        return None
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"metric {name} is {value!r}, not a finite number: it cannot be gated on")
    return float(value)


def _gated(serving: dict, candidate: dict, names: Sequence[str]) -> list[str]:
    if not names:
        return [
            name
            for name, value in serving.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
    unknown = [name for name in names if name not in serving and name not in candidate]
    if unknown:
        known = sorted(set(serving) | set(candidate))
        raise ValueError(f"no artifact has the metric {', '.join(unknown)}; they have {', '.join(known)}")
    return list(dict.fromkeys(names))


def _compare(serving: dict, candidate: dict, names: Sequence[str]) -> tuple[Comparison, ...]:
    return tuple(
        Comparison(name, _number(serving, name), _number(candidate, name))
        for name in _gated(serving, candidate, names)
    )


def _verdict(comparisons: tuple[Comparison, ...], tolerance: float) -> dict:
    missing = [c.metric for c in comparisons if c.serving is not None and c.candidate is None]
    if missing:
        return {
            "promoted": False,
            "reason": f"the candidate lacks {', '.join(missing)}, which the served artifact has",
        }
    worse = [c for c in comparisons if c.worse_than(tolerance)]
    if worse:
        by = ", ".join(f"{c.metric} by {c.serving - c.candidate:.4f}" for c in worse)
        return {"promoted": False, "reason": f"worse than the served artifact beyond the tolerance: {by}"}
    if not any(c.serving is not None for c in comparisons):
        return {"promoted": True, "reason": "the served artifact has none of the gated metrics"}
    return {
        "promoted": True,
        "reason": "no gated metric is worse than the served artifact's beyond the tolerance",
    }


def _same_data(serving: dict, candidate: dict) -> str:
    ours, theirs = serving.get("data_fingerprint"), candidate.get("data_fingerprint")
    if not ours or not theirs:
        return "no data fingerprint to compare"
    if ours == theirs:
        return "both trained and validated on the same data"
    return (
        f"trained and validated on different data (fingerprint {theirs[:12]} vs served {ours[:12]}): "
        "the numbers are not strictly comparable, and still decide"
    )
