"""`pinrec bench stream|model|serve|train`: each prints a table and writes JSON with --json. The benchmark
package is imported inside the handlers."""

from __future__ import annotations

import argparse
from pathlib import Path

from pinrec.options import config_from_args
from pinrec.serving.threads import passive_openmp
from pinrec.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks: a table, and JSON with --json")
    kinds = bench.add_subparsers(dest="kind", required=True)
    stream = kinds.add_parser(
        "stream", help="protocol E: consumer throughput vs a no-write floor, freshness at a steady rate"
    )
    stream.add_argument("--online-store", choices=["sqlite", "redis"], default="redis")
    stream.add_argument("--users", type=int, default=100_000, help="distinct users (Zipf-like activity)")
    stream.add_argument("--events", type=int, default=300_000, help="events of the throughput phase")
    stream.add_argument(
        "--cap", dest="sequence_cap", type=int, default=200, help="sequence length kept per user"
    )
    stream.add_argument(
        "--rate", dest="steady_rate", type=float, default=2_000, help="events/s of the freshness phase"
    )
    stream.add_argument(
        "--seconds", dest="steady_seconds", type=float, default=30, help="duration of the freshness phase"
    )
    stream.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the sink's kill -9 exactly-once check and the fault run (about 3 minutes)",
    )
    stream.add_argument("--json", type=Path, help="write the results here")
    stream.set_defaults(handler=run_bench_stream)

    model = kinds.add_parser(
        "model",
        help="PinRec vs SASRec trained in the same run: protocol A (leave-one-out) or B/C (future windows)",
    )
    model.add_argument(
        "--dataset", type=Path, required=True, help="S3-Rec .txt, u.data, ratings.csv or event log"
    )
    model.add_argument(
        "--time-budget-min", type=float, default=20.0, help="training minutes per model and seed"
    )
    model.add_argument("--protocol", choices=["auto", "loo", "future"], default="auto")
    model.add_argument("--max-epochs", type=int, default=200)
    model.add_argument("--seed", type=int, default=0, help="the first seed; run i trains with seed + i")
    model.add_argument(
        "--seeds", type=int, default=3, help="runs per model; the table shows their mean ± std"
    )
    model.add_argument("--threads", type=int, default=0, help="torch threads (default: the CPUs available)")
    model.add_argument("--dim", type=int, default=64, help="model width of both models (default 64)")
    model.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        default="cpu",
        help="where both models train (default cpu: a benchmark names its device; cuda: the GPU check)",
    )
    model.add_argument(
        "--out", dest="out_dir", type=Path, default=Path("bench-model"), help="folder for training curves"
    )
    model.add_argument("--json", type=Path, help="write the results here")
    model.set_defaults(handler=run_bench_model)

    serve = kinds.add_parser(
        "serve",
        help="protocol D: in-process, REST and gRPC latency against a no-op KServe floor, KV speedup, index "
        "recall, the highest rate served within a p99 bound",
    )
    serve.add_argument("--artifact", type=Path, help="benchmark this artifact (default: train one)")
    serve.add_argument("--items", type=int, default=1_000_000, help="catalog size of the trained artifact")
    serve.add_argument("--train-minutes", type=float, default=3.0, help="training time of that artifact")
    serve.add_argument("--history", type=int, default=200, help="events per user sequence")
    serve.add_argument("--steps", type=int, default=6, help="decode steps per request")
    serve.add_argument("--k", type=int, default=100, help="items per request (the budget)")
    serve.add_argument("--rate", type=float, default=20.0, help="requests/s of the paced phases")
    serve.add_argument(
        "--requests", dest="paced_requests", type=int, default=200, help="requests per paced phase"
    )
    serve.add_argument(
        "--p99-ms",
        type=float,
        default=50.0,
        help="latency bound of the sustained-rate search: the highest open-loop rate with p99 under it "
        "(default 50)",
    )
    serve.add_argument(
        "--rate-step-seconds", type=float, default=5.0, help="how long each rate of that search is held"
    )
    serve.add_argument("--json", type=Path, help="write the results here")
    serve.set_defaults(handler=run_bench_serve)

    train = kinds.add_parser(
        "train",
        help="pretraining tokens/s of one process against N data-parallel processes (torchrun), same run",
    )
    train.add_argument("--data", type=Path, help="an event log (default: a simulated world of --users)")
    train.add_argument("--users", type=int, default=4000, help="users of the simulated world (default 4000)")
    train.add_argument("--processes", type=int, default=2, help="processes of the parallel run (default 2)")
    train.add_argument("--epochs", type=int, default=3, help="epochs of each run (default 3)")
    train.add_argument("--dim", type=int, default=64, help="model width (default 64)")
    train.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the compared runs train (default cpu); cuda adds 1 and N processes on the GPUs to the "
        "CPU reference (the GPU check)",
    )
    train.add_argument(
        "--out",
        dest="out_dir",
        type=Path,
        default=Path("bench-training"),
        help="folder for data and artifacts",
    )
    train.add_argument("--json", type=Path, help="write the results here")
    train.set_defaults(handler=run_bench_train)


def run_bench_stream(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.bench.stream import StreamBenchConfig, run_stream_bench

    run_stream_bench(config_from_args(StreamBenchConfig, args), args.json, settings.local_stack)
    return 0


def run_bench_model(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.bench.model import ModelBenchConfig, run_model_bench

    run_model_bench(config_from_args(ModelBenchConfig, args), args.json)
    return 0


def run_bench_train(args: argparse.Namespace, settings: Settings) -> int:
    from pinrec.bench.training import TrainingBenchConfig, run_training_bench

    run_training_bench(config_from_args(TrainingBenchConfig, args), args.json)
    return 0


def run_bench_serve(args: argparse.Namespace, settings: Settings) -> int:
    passive_openmp()  # the in-process measurement runs under the server's conditions
    from pinrec.bench.serve import ServeBenchConfig, run_serve_bench

    run_serve_bench(config_from_args(ServeBenchConfig, args), args.json)
    return 0
