"""The `pinrec` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from pinrec import model_commands, serve_commands, stream_commands
from pinrec.settings import LocalStackSettings

log = logging.getLogger("pinrec")

STREAM_COMMANDS = {
    "features": stream_commands.run_features,
    "produce": stream_commands.run_produce,
    "consume": stream_commands.run_consume,
}


def _tri_state(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        f"--{name}",
        dest=name,
        action="store_true",
        default=None,
        help=f"start {what} (fail if it is not installed)",
    )
    group.add_argument(
        f"--no-{name}",
        dest=name,
        action="store_false",
        help=f"do not start {what} (default: start it when installed)",
    )


def _add_local(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser(
        "local",
        help="provision and run the local stack (Kafka, Redis, Prometheus) on 127.0.0.1",
        description="Local services for one machine. State (PIDs, logs, data) lives in PINREC_STATE_DIR "
        "(default PINREC_HOME/run, PINREC_HOME defaults to ./.pinrec). Set PINREC_KAFKA_BOOTSTRAP, "
        "PINREC_REDIS_URL or PINREC_PROMETHEUS_URL to use existing services instead.",
    )
    actions = local.add_subparsers(dest="action", required=True)
    install = actions.add_parser(
        "install",
        help="download Kafka jars, build helm/kubeconform, apt-get Redis and Prometheus (idempotent)",
    )
    install.add_argument("--no-apt", action="store_true", help="skip the Debian packages")
    install.add_argument("--no-go-tools", action="store_true", help="skip helm and kubeconform")
    up = actions.add_parser("up", help="start the services and wait until each is ready")
    _tri_state(up, "redis", "Redis")
    _tri_state(up, "prometheus", "Prometheus")
    down = actions.add_parser("down", help="stop the services that `local up` started here")
    down.add_argument("--purge", action="store_true", help="also delete their data and logs")
    status = actions.add_parser("status", help="show which services are up and where")
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the whole system end to end on embedded defaults (about 5 minutes on 2 cores)",
        description="Starts the local stack, simulates a world, trains and finetunes the model, starts the "
        "model server and the stream consumer, streams users' activity through Kafka, shows live "
        "recommendations change and outcome budgets steer them, and writes a report.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-report"), help="report folder (default demo-report)"
    )
    demo.add_argument("--quick", action="store_true", help="a smaller world and shorter training (tests)")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the stack, server and consumer up afterwards"
    )
    demo.add_argument("--no-install", action="store_true", help="do not provision missing tools first")


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks: a table, and JSON with --json")
    kinds = bench.add_subparsers(dest="kind", required=True)
    stream = kinds.add_parser(
        "stream", help="protocol E: consumer throughput vs a no-write floor, freshness at a steady rate"
    )
    stream.add_argument("--online-store", choices=["sqlite", "redis"], default="redis")
    stream.add_argument("--users", type=int, default=100_000, help="distinct users (Zipf-like activity)")
    stream.add_argument("--events", type=int, default=300_000, help="events of the throughput phase")
    stream.add_argument("--cap", type=int, default=200, help="sequence length kept per user")
    stream.add_argument("--rate", type=float, default=2_000, help="events/s of the freshness phase")
    stream.add_argument("--seconds", type=float, default=30, help="duration of the freshness phase")
    stream.add_argument("--json", type=Path, help="write the results here")
    model_commands.add_bench_parser(kinds)
    serve_commands.add_bench_parser(kinds)


def _run_bench(args: argparse.Namespace) -> int:
    if args.kind == "model":
        return model_commands.run_bench_model(args)
    if args.kind == "serve":
        return serve_commands.run_bench_serve(args)
    from pinrec.bench.stream import StreamBenchConfig, run_stream_bench

    config = StreamBenchConfig(
        online_store=args.online_store,
        users=args.users,
        events=args.events,
        sequence_cap=args.cap,
        steady_rate=args.rate,
        steady_seconds=args.seconds,
    )
    run_stream_bench(config, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinrec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_local(subparsers)
    stream_commands.add_parsers(subparsers)
    model_commands.add_parsers(subparsers)
    serve_commands.add_parsers(subparsers)
    _add_bench(subparsers)
    _add_demo(subparsers)
    return parser


def _print_status(report: dict[str, dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for name, info in report.items():
        where = info.get("bootstrap") or info.get("url") or info.get("reason", "")
        owner = f"pid {info['pid']}" if info.get("pid") else ("external" if info["up"] else "")
        print(f"{name:<11} {'up' if info['up'] else 'down':<5} {where}  {owner}".rstrip())


def _run_local(args: argparse.Namespace, settings: LocalStackSettings) -> int:
    from pinrec.localstack.provision import install_all
    from pinrec.localstack.stack import LocalStack

    if args.action == "install":
        for tool, where in install_all(settings, apt=not args.no_apt, go_tools=not args.no_go_tools).items():
            print(f"{tool:<12} {where}")
        return 0
    stack = LocalStack(settings)
    if args.action == "up":
        stack.up({"redis": args.redis, "prometheus": args.prometheus})
        report = stack.status()
        _print_status(report, as_json=False)
        return 0 if report["kafka"]["up"] else 1
    if args.action == "down":
        stopped = stack.down(purge=args.purge)
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    _print_status(stack.status(), as_json=args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    # kafka-python 3.0 uses importlib APIs that Python 3.11 deprecates; the warnings say nothing to users.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"kafka\..*|importlib\..*")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # kafka-python logs routine coordinator moves and refused connections during start-up as warnings.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("feast").setLevel(logging.WARNING)
    try:
        settings = LocalStackSettings.from_env()
        if args.command == "local":
            return _run_local(args, settings)
        if args.command in STREAM_COMMANDS:
            return STREAM_COMMANDS[args.command](args, settings)
        if args.command in model_commands.COMMANDS:
            return model_commands.COMMANDS[args.command](args)
        if args.command == "serve":
            return serve_commands.run_serve(args, settings)
        if args.command == "bench":
            return _run_bench(args)
        from pinrec.demo import demo_config, run_demo

        return run_demo(settings, demo_config(args))
    except (RuntimeError, ValueError, TimeoutError, FileNotFoundError, FileExistsError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
