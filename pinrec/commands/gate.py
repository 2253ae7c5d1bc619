"""`pinrec promote`: the promotion gate of scheduled retraining (model/gate.py) on the command line."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pinrec.settings import Settings

REFUSED = 3  # the exit status of a refused candidate (1 is an error)

EPILOG = """\
The candidate is promoted when no gated metric is lower than the served artifact's by more than the
tolerance, or when nothing is served yet. A candidate that lacks a gated metric the served artifact has is
refused. Promotion re-points LINK atomically (a relative symlink renamed over it); the predictor's artifact
watcher then swaps models without a restart. The decision is printed as one line and recorded in the
candidate as gate.json.

exit status:
  0  promoted (with --dry-run: would be promoted)
  3  refused: LINK is unchanged
  1  error (for example a missing manifest.json); LINK is unchanged
  2  invalid arguments
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    promote = subparsers.add_parser(
        "promote",
        help="serve a retrained artifact if its offline metrics are no worse than the served one's",
        description="Compare the candidate artifact's offline metrics (manifest.json) with those of the\n"
        "artifact LINK points at, and re-point LINK at the candidate when it is no worse.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    promote.add_argument("--candidate", type=Path, required=True, metavar="DIR", help="the new artifact")
    promote.add_argument(
        "--serving",
        type=Path,
        required=True,
        metavar="LINK",
        help="the symlink the predictor serves, e.g. /mnt/models/current (made when missing)",
    )
    promote.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="a metric to gate on, higher is better (repeatable; default: every number at the top of the "
        "served artifact's metrics, e.g. validation_ndcg@10 and finetune_<surface>_hit@10)",
    )
    promote.add_argument(
        "--tolerance",
        type=_tolerance,
        default=0.0,
        metavar="FLOAT",
        help="how much lower a metric may be, absolute (default 0: not lower)",
    )
    promote.add_argument(
        "--dry-run", action="store_true", help="decide and print, change nothing (no gate.json either)"
    )
    promote.add_argument("--json", type=Path, metavar="FILE", help="also write the decision here")
    promote.set_defaults(handler=run_promote)


def _tolerance(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def run_promote(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.model.gate import gate, write_decision

    decision = gate(args.candidate, args.serving, args.metric, args.tolerance, dry_run=args.dry_run)
    print(decision.summary(), flush=True)
    if args.json:
        write_decision(args.json, decision)
    return 0 if decision.promoted else REFUSED
