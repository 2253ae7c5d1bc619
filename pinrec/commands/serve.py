"""`pinrec serve` and `pinrec bench serve` (KServe and the benchmark are imported inside the commands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pinrec.options import add_store_options, feature_store
from pinrec.serving.threads import passive_openmp
from pinrec.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve every surface of an artifact over KServe REST (v1, v2) and gRPC (v2)",
        description="One KServe model per surface, all sharing one backbone and index. Point --artifacts "
        "at a symlink and re-point it to swap to a new artifact while serving.",
    )
    serve.add_argument("--artifacts", type=Path, required=True, help="artifact directory (or a symlink)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every interface, as in "
        "a container)",
    )
    serve.add_argument("--http-port", type=int, default=8080, help="REST port (default 8080)")
    serve.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (default 8081)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="also serve /metrics alone on this port, for a network policy that admits Prometheus there only "
        "(default 0: none; the REST port always has /metrics)",
    )
    serve.add_argument("--surface", action="append", help="serve only these surfaces (repeatable)")
    serve.add_argument(
        "--feature-store",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read users' sequences from the online store (--no-feature-store: answer only requests "
        "with an explicit history)",
    )
    serve.add_argument("--default-steps", type=int, default=3, help="decode steps when a request names none")
    serve.add_argument("--max-k", type=int, default=1000, help="the largest k a request may ask for")
    serve.add_argument(
        "--inference-threads",
        type=int,
        default=0,
        help="inference threads, each answering a batch at a time (default: one per CPU)",
    )
    serve.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="requests an inference thread answers together: those queued when it takes work (default 16)",
    )
    serve.add_argument("--watch-interval", type=float, default=2.0, help="seconds between artifact checks")
    serve.add_argument(
        "--request-timeout-ms",
        type=int,
        default=10_000,
        help="a request still unanswered after this many ms gets 504 (gRPC DEADLINE_EXCEEDED); default 10000",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="larger REST bodies get 413 before they are read, larger gRPC messages RESOURCE_EXHAUSTED "
        "(default 4 MiB)",
    )
    add_store_options(serve)
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    passive_openmp()
    from pinrec.serving.server import serve
    from pinrec.serving.settings import ServeSettings

    features = feature_store(settings) if args.feature_store else None
    serve(
        ServeSettings(
            artifacts=args.artifacts,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            features=features,
            surfaces=tuple(args.surface or ()),
            default_steps=args.default_steps,
            max_k=args.max_k,
            workers=args.inference_threads,
            max_batch=args.max_batch,
            watch_interval_s=args.watch_interval,
            request_timeout_ms=args.request_timeout_ms,
            max_request_bytes=args.max_request_bytes,
        )
    )
    return 0
