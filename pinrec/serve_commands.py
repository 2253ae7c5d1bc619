"""`pinrec serve` and `pinrec bench serve` (KServe is imported inside the commands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pinrec.settings import LocalStackSettings
from pinrec.stream_commands import add_store_options, store_settings


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve every surface of an artifact over KServe REST (v1, v2) and gRPC (v2)",
        description="One KServe model per surface, all sharing one backbone and index. Point --artifacts "
        "at a symlink and re-point it to swap to a new artifact while serving.",
    )
    serve.add_argument("--artifacts", type=Path, required=True, help="artifact directory (or a symlink)")
    serve.add_argument("--http-port", type=int, default=8080, help="REST port (default 8080)")
    serve.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (default 8081)")
    serve.add_argument("--surface", action="append", help="serve only these surfaces (repeatable)")
    serve.add_argument(
        "--no-feature-store", action="store_true", help="answer only requests with an explicit history"
    )
    serve.add_argument("--default-steps", type=int, default=3, help="decode steps when a request names none")
    serve.add_argument("--max-k", type=int, default=1000, help="the largest k a request may ask for")
    serve.add_argument(
        "--inference-threads", type=int, default=0, help="inferences at once (default: one per CPU)"
    )
    serve.add_argument("--watch-interval", type=float, default=2.0, help="seconds between artifact checks")
    add_store_options(serve)


def passive_openmp() -> None:
    """Idle OpenMP workers sleep instead of spinning: between requests they would take the CPU that the
    next request's Python needs (measured: the search stage 4.8 -> 1.8 ms on 2 cores). Must run before
    faiss and torch load."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_serve(args: argparse.Namespace, settings: LocalStackSettings) -> int:
    passive_openmp()
    from pinrec.serving.server import serve
    from pinrec.serving.settings import ServeSettings

    features = None if args.no_feature_store else store_settings(args, settings)
    serve(
        ServeSettings(
            artifacts=args.artifacts,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            features=features,
            surfaces=tuple(args.surface or ()),
            default_steps=args.default_steps,
            max_k=args.max_k,
            workers=args.inference_threads,
            watch_interval_s=args.watch_interval,
        )
    )
    return 0


def add_bench_parser(kinds: argparse._SubParsersAction) -> None:
    bench = kinds.add_parser(
        "serve",
        help="protocol D: in-process, REST and gRPC latency against a no-op KServe floor, KV speedup",
    )
    bench.add_argument("--artifact", type=Path, help="benchmark this artifact (default: train one)")
    bench.add_argument("--items", type=int, default=1_000_000, help="catalog size of the trained artifact")
    bench.add_argument("--train-minutes", type=float, default=3.0, help="training time of that artifact")
    bench.add_argument("--history", type=int, default=200, help="events per user sequence")
    bench.add_argument("--steps", type=int, default=6, help="decode steps per request")
    bench.add_argument("--k", type=int, default=100, help="items per request (the budget)")
    bench.add_argument("--rate", type=float, default=20.0, help="requests/s of the paced phases")
    bench.add_argument("--requests", type=int, default=200, help="requests per paced phase")
    bench.add_argument("--json", type=Path, help="write the results here")


def run_bench_serve(args: argparse.Namespace) -> int:
    passive_openmp()  # the in-process measurement runs under the server's conditions
    from pinrec.bench.serve import ServeBenchConfig, run_serve_bench

    config = ServeBenchConfig(
        artifact=args.artifact,
        items=args.items,
        train_minutes=args.train_minutes,
        history=args.history,
        steps=args.steps,
        k=args.k,
        rate=args.rate,
        paced_requests=args.requests,
    )
    run_serve_bench(config, args.json)
    return 0
