"""The demo's settings: the embedded defaults, the reduced `--quick` run, and the command line's flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

# The two outcome budgets every surface is asked under: mostly saves, mostly clicks.
BUDGETS = {"saves": {"save": 0.8, "click": 0.2}, "clicks": {"click": 0.8, "save": 0.2}}


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-report")
    users: int = 3_000  # simulated users (the world)
    items: int = 6_000
    days: int = 21
    train_minutes: float = 3.0  # pretraining budget
    finetune_epochs: int = 8
    streamed_users: int = 300  # users whose activity goes through Kafka into Feast
    live_events: int = 8  # new actions of the demo user
    keep_running: bool = False
    install: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> DemoConfig:
        """The reduced demo of the test suite (about a minute of work)."""
        values = dict(
            users=300, items=1_500, days=10, train_minutes=0.25, finetune_epochs=2, streamed_users=60
        )
        return cls(**(values | overrides))


def demo_config(args: argparse.Namespace) -> DemoConfig:
    config = DemoConfig.quick() if args.quick else DemoConfig()
    return replace(config, out=args.out, keep_running=args.keep_running, install=args.install)
