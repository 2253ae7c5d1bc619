"""`pinrec demo`: the whole system on embedded defaults, on one machine, in minutes.

1. the local stack: a real Kafka broker, Feast with SQLite and Parquet, Prometheus when installed;
2. a synthetic multi-surface world; the backbone pretrained, a head finetuned per surface, the index built;
3. the KServe model server and the stream consumer as separate processes;
4. users' activity streamed through Kafka into Feast; one user's new actions arrive live and their
   recommendations change, with the measured event-to-recommendation freshness;
5. every surface (with its context) under two outcome budgets: the retrieved outcome mix and diversity;
6. a summary read back from Prometheus (or the /metrics endpoints) and a report folder (Markdown + PNGs);
7. everything it started is stopped, also on Ctrl-C, unless --keep-running.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pinrec.demo_report import DemoFacts, freshness_buckets, scrape_summary, write_report
from pinrec.localstack.provision import install_all
from pinrec.localstack.stack import LocalStack
from pinrec.settings import LocalStackSettings

log = logging.getLogger(__name__)

TOPIC = "pinrec.events"


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


class Steps:
    """A numbered progress display: `[3/8] pretraining the backbone ...  41 s`."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.step_started = self.started

    def start(self, what: str) -> None:
        self.done += 1
        self.step_started = time.monotonic()
        print(f"[{self.done}/{self.total}] {what} ...", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}  ({time.monotonic() - self.step_started:.0f} s)", flush=True)


def run_demo(settings: LocalStackSettings, config: DemoConfig) -> int:
    steps = Steps(8)
    work = config.out / "work"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    steps.start("starting the local stack (Kafka broker, Prometheus when installed; Feast on SQLite)")
    if config.install:
        install_all(settings, go_tools=False)
    stack = LocalStack(settings, bound_to_parent=not config.keep_running)
    started = stack.up({"redis": False, "prometheus": None})
    with ExitStack() as cleanup:
        if not config.keep_running:
            cleanup.callback(stack.down, only=started)
        report = stack.status()
        steps.note(
            f"kafka {report['kafka']['bootstrap']}; prometheus "
            + (
                report["prometheus"]["url"]
                if report["prometheus"]["up"]
                else "not installed (metrics read from /metrics)"
            )
        )
        facts = _run(config, steps, stack, report, work, cleanup)
        facts.total_seconds = time.monotonic() - steps.started
        steps.start(f"writing the report to {config.out}/")
        summary = write_report(config.out, facts)
        print("\n" + summary)
        if config.keep_running:
            cleanup.pop_all()  # leave the stack, the server and the consumer up
            _print_running(facts)
    return 0


def _run(config, steps, stack, report, work: Path, cleanup: ExitStack) -> DemoFacts:
    from pinrec.demo_model import train_demo_model
    from pinrec.demo_traffic import live_freshness, stream_histories, surface_mixes
    from pinrec.featurestore.store import FeatureStoreSettings, apply
    from pinrec.server_process import launch
    from pinrec.stream.topics import ensure_topics

    facts = DemoFacts(config=config, stack=report)
    bootstrap = report["kafka"]["bootstrap"]
    prometheus = report["prometheus"]["url"] if report["prometheus"]["up"] else None

    steps.start("simulating the world, pretraining the backbone, finetuning a head per surface")
    model = train_demo_model(config, work, steps.note)
    facts.model = model

    steps.start("starting the KServe model server and the stream consumer (separate processes)")
    features = FeatureStoreSettings(repo_dir=work / "feature_repo")
    apply(features)
    ensure_topics(bootstrap, {TOPIC: 3, f"{TOPIC}.dlq": 1})
    serve_args = ["serve", "--artifacts", str(model.artifact), "--repo", str(features.repo_dir)]
    serve_args += ["--online-store", "sqlite"]
    server = launch("pinrec.cli", serve_args, work / "serve.log", bound_to_parent=not config.keep_running)
    cleanup.callback(server.stop)
    consumer = _start_consumer(bootstrap, features, work, config.keep_running)
    cleanup.callback(consumer.stop)
    for job, address in (("serve", server.http.removeprefix("http://")), ("consume", consumer.address)):
        target = stack.register_scrape_target(job, address)
        if target is not None and not config.keep_running:
            cleanup.callback(target.unlink, missing_ok=True)
    facts.server, facts.consumer_metrics = server, f"http://{consumer.address}/metrics"
    facts.consumer_pid = consumer.process.pid
    steps.note(f"REST {server.http}, gRPC {server.grpc}, consumer metrics {facts.consumer_metrics}")

    steps.start(f"streaming {config.streamed_users} users' activity through Kafka into Feast")
    facts.stream = stream_histories(bootstrap, TOPIC, model, config, facts.consumer_metrics)
    steps.note(
        f"{facts.stream.events:,} events, {facts.stream.events_per_s:,.0f} events/s into the online store"
    )

    steps.start("live: new actions of one user arrive; do their recommendations change?")
    baseline = freshness_buckets(facts.consumer_metrics)
    facts.live = live_freshness(bootstrap, TOPIC, server, model, config)
    steps.note(f"recommendations changed {facts.live.freshness_ms:,.0f} ms after the events were sent")

    steps.start("every surface with its context, under two outcome budgets")
    facts.mixes, facts.traffic = surface_mixes(server, model, facts.live.user_id)

    steps.start("reading the metrics back" + (" from Prometheus" if prometheus else " from /metrics"))
    facts.metrics = scrape_summary(prometheus, server.http, facts.consumer_metrics, baseline)
    return facts


@dataclass
class _Consumer:
    process: object
    address: str

    def stop(self) -> None:
        from pinrec.server_process import terminate

        terminate(self.process)  # the consumer finishes its batch and commits


def _start_consumer(bootstrap: str, features, work: Path, keep_running: bool) -> _Consumer:
    import sys

    from pinrec.localstack.processes import pick_port, spawn, wait_until

    port = pick_port(0)
    command = [sys.executable, "-m", "pinrec.cli", "consume", "--bootstrap", bootstrap, "--topic", TOPIC]
    command += ["--repo", str(features.repo_dir), "--online-store", "sqlite", "--metrics-port", str(port)]
    log_path = work / "consume.log"
    process = spawn(command, log_path, bound_to_parent=not keep_running)
    consumer = _Consumer(process, f"127.0.0.1:{port}")

    def ready() -> bool:
        import requests

        try:
            return requests.get(f"http://{consumer.address}/metrics", timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(
        ready,
        what="the stream consumer",
        timeout_s=60,
        alive=lambda: process.poll() is None,
        log_path=log_path,
    )
    return consumer


def _print_running(facts: DemoFacts) -> None:
    server, user = facts.server, facts.live.user_id
    grpc = f"grpc_stub('{server.grpc}').ModelInfer(grpc_request('search', {{'user_id': {user}, 'k': 5}}))"
    body = f'{{"instances": [{{"user_id": {user}, "k": 10, "budget": {{"save": 0.6, "click": 0.4}}}}]}}'
    v2 = f'{{"inputs": [{{"name": "user_id", "datatype": "INT64", "shape": [1], "data": [{user}]}}]}}'
    print(
        "\nEverything keeps running: the local stack (stop it with `pinrec local down`), the model server "
        f"(pid {server.process.pid}) and the consumer (pid {facts.consumer_pid}).\n"
        f"  REST      {server.http} (v1 and v2), metrics {server.http}/metrics\n"
        f"  gRPC      {server.grpc}\n"
        f"  consumer  {facts.consumer_metrics}\n"
        "Try:\n"
        f"  curl -s {server.http}/v1/models/home:predict -d '{body}'\n"
        f"  curl -s {server.http}/v2/models/related/infer -d '{v2}'\n"
        f'  .venv/bin/python -c "from pinrec.serving.client import *; print(grpc_outputs({grpc}))"'
    )


def demo_config(args) -> DemoConfig:
    config = DemoConfig.quick() if args.quick else DemoConfig()
    return replace(config, out=args.out, keep_running=args.keep_running, install=not args.no_install)


def sample_users(histories, count: int) -> np.ndarray:
    """Rows of the users with the most history (they make the clearest story), up to count."""
    lengths = np.diff(histories.offsets)
    return np.argsort(-lengths, kind="stable")[:count]
