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
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from pinrec.demo.config import DemoConfig
from pinrec.demo.report import DemoFacts, write_report
from pinrec.localstack.provision import install_all
from pinrec.localstack.stack import LocalStack
from pinrec.settings import Settings
from pinrec.stream.security import KafkaEndpoint

log = logging.getLogger(__name__)

TOPIC = "pinrec.events"


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


@dataclass(frozen=True)
class StackEndpoints:
    """Where the demo finds the local stack's services."""

    kafka: KafkaEndpoint  # the Kafka broker
    prometheus: str | None  # its URL; None when Prometheus is not installed (metrics read from /metrics)


def run_demo(settings: Settings, config: DemoConfig) -> int:
    steps = Steps(8)
    work = config.out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    steps.start("starting the local stack (Kafka broker, Prometheus when installed; Feast on SQLite)")
    if config.install:
        install_all(settings.local_stack, go_tools=False)
    stack = LocalStack(settings.local_stack, bound_to_parent=not config.keep_running)
    started = stack.up({"redis": False, "prometheus": None})
    with ExitStack() as cleanup:
        if not config.keep_running:
            cleanup.callback(stack.down, only=started)
        report = stack.status()
        endpoints = StackEndpoints(
            kafka=KafkaEndpoint(report["kafka"]["bootstrap"], settings.kafka_security),
            prometheus=report["prometheus"]["url"] if report["prometheus"]["up"] else None,
        )
        steps.note(
            f"kafka {endpoints.kafka.bootstrap}; prometheus "
            + (endpoints.prometheus or "not installed (metrics read from /metrics)")
        )
        facts = _run(config, steps, stack, endpoints, work, cleanup)
        steps.start(f"writing the report to {config.out}/")
        summary = write_report(config.out, facts)
        print("\n" + summary)
        if config.keep_running:
            cleanup.pop_all()  # leave the stack, the server and the consumer up
            _print_running(facts)
    return 0


def _run(
    config: DemoConfig,
    steps: Steps,
    stack: LocalStack,
    endpoints: StackEndpoints,
    work: Path,
    cleanup: ExitStack,
) -> DemoFacts:
    from pinrec.demo.metrics import freshness_buckets, scrape_summary
    from pinrec.demo.model import train_demo_model
    from pinrec.demo.traffic import live_freshness, stream_histories, surface_mixes
    from pinrec.featurestore.store import FeatureStoreSettings, apply
    from pinrec.server_process import launch
    from pinrec.stream.topics import ensure_topics

    kafka = endpoints.kafka

    steps.start("simulating the world, pretraining the backbone, finetuning a head per surface")
    model = train_demo_model(config, work, steps.note)

    steps.start("starting the KServe model server and the stream consumer (separate processes)")
    features = FeatureStoreSettings(repo_dir=work / "feature_repo")
    apply(features)
    ensure_topics(kafka.bootstrap, {TOPIC: 3, f"{TOPIC}.dlq": 1}, security=kafka.security)
    serve_args = ["serve", "--artifacts", str(model.artifact), "--repo", str(features.repo_dir)]
    serve_args += ["--online-store", "sqlite"]
    server = launch("pinrec.cli", serve_args, work / "serve.log", bound_to_parent=not config.keep_running)
    cleanup.callback(server.stop)
    consumer = _start_consumer(kafka.bootstrap, features.repo_dir, work, config.keep_running)
    cleanup.callback(consumer.stop)
    for job, address in (("serve", server.http.removeprefix("http://")), ("consume", consumer.address)):
        target = stack.register_scrape_target(job, address)
        if target is not None and not config.keep_running:
            cleanup.callback(target.unlink, missing_ok=True)
    steps.note(f"REST {server.http}, gRPC {server.grpc}, consumer metrics {consumer.metrics}")

    steps.start(f"streaming {config.streamed_users} users' activity through Kafka into Feast")
    stream = stream_histories(kafka, TOPIC, model, config, consumer.metrics)
    steps.note(f"{stream.events:,} events, {stream.events_per_s:,.0f} events/s into the online store")

    steps.start("live: new actions of one user arrive; do their recommendations change?")
    baseline = freshness_buckets(consumer.metrics)
    live = live_freshness(kafka, TOPIC, server, model, config)
    steps.note(f"recommendations changed {live.freshness_ms:,.0f} ms after the events were sent")

    steps.start("every surface with its context, under two outcome budgets")
    mixes, traffic = surface_mixes(server, model, live.user_id)

    prometheus = endpoints.prometheus
    steps.start("reading the metrics back" + (" from Prometheus" if prometheus else " from /metrics"))
    metrics = scrape_summary(prometheus, server.http, consumer.metrics, baseline)
    return DemoFacts(
        config=config,
        model=model,
        server=server,
        consumer_metrics=consumer.metrics,
        consumer_pid=consumer.process.pid,
        stream=stream,
        live=live,
        mixes=mixes,
        traffic=traffic,
        metrics=metrics,
        total_seconds=time.monotonic() - steps.started,
    )


@dataclass
class _Consumer:
    process: subprocess.Popen
    address: str  # host:port of its /metrics

    @property
    def metrics(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        from pinrec.server_process import terminate

        terminate(self.process)  # the consumer finishes its batch and commits


def _start_consumer(bootstrap: str, repo_dir: Path, work: Path, keep_running: bool) -> _Consumer:
    from pinrec.localstack.processes import pick_port, spawn, wait_for_http

    port = pick_port(0)
    command = [sys.executable, "-m", "pinrec.cli", "consume", "--bootstrap", bootstrap, "--topic", TOPIC]
    command += ["--repo", str(repo_dir), "--online-store", "sqlite", "--metrics-port", str(port)]
    log_path = work / "consume.log"
    process = spawn(command, log_path, bound_to_parent=not keep_running)
    consumer = _Consumer(process, f"127.0.0.1:{port}")
    wait_for_http(consumer.metrics, process, what="the stream consumer", timeout_s=60, log_path=log_path)
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
