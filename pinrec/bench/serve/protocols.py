"""The serving benchmark's phases over the network: the model server, then the no-op floor, each over REST
v1, REST v2 and gRPC at a fixed request rate (open loop), and at its maximum sustained rate."""

from __future__ import annotations

from pathlib import Path

from pinrec.bench.load import Send, closed_loop, paced, protocol_senders
from pinrec.bench.report import percentiles
from pinrec.bench.serve.config import ServeBenchConfig
from pinrec.server_process import ServerProcess, launch

RATE_STEPS = (20, 40, 60, 80, 100, 125, 150, 175, 200, 250, 300, 400, 500)  # requests/s tried in turn


def max_rate_within(send: Send, p99_ms: float, seconds: float) -> tuple[float, list[dict]]:
    """The highest of RATE_STEPS the server sustains open loop for `seconds` with p99 <= p99_ms and no error
    (0 when the first fails), and every step tried."""
    best, steps = 0.0, []
    for rate in RATE_STEPS:
        load = paced(send, rate, int(rate * seconds), workers=64)
        stats = percentiles(load.latencies_ms)
        steps.append({"rate": rate, **stats, "errors": load.errors})
        if load.errors or not stats["p99_ms"] <= p99_ms:
            break
        best = float(rate)
    return best, steps


def measure_server(
    server: ServerProcess, config: ServeBenchConfig, users: list[int], rate_search: bool = False
) -> dict:
    """p50, p99 and errors per protocol at config.rate; max_rps of REST v2 with back-to-back clients; with
    rate_search, the highest open-loop rate each of REST v2 and gRPC sustains with p99 <= config.p99_ms."""

    def request(i: int) -> tuple[str, dict]:
        instance = {
            "user_id": users[i % len(users)],
            "k": config.k,
            "budget": config.outcome_budget,
            "steps": config.steps,
        }
        return config.surface, instance

    result = {}
    for name, send in protocol_senders(server, request).items():
        for i in range(10):  # warm connections and code paths
            send(i)
        load = paced(send, config.rate, config.paced_requests)
        stats = percentiles(load.latencies_ms)
        result[f"{name}_p50_ms"], result[f"{name}_p99_ms"] = stats["p50_ms"], stats["p99_ms"]
        result[f"{name}_errors"] = load.errors
    max_rps = closed_loop(
        protocol_senders(server, request)["rest"], config.max_rps_clients, config.max_rps_seconds
    )
    result["max_rps"] = round(max_rps, 1)
    if rate_search:
        for name in ("rest", "grpc"):
            send = protocol_senders(server, request)[name]
            best, steps = max_rate_within(send, config.p99_ms, config.rate_step_seconds)
            suffix = "" if name == "rest" else "_grpc"
            result[f"max_rps_at_p99_{config.p99_ms:.0f}ms{suffix}"] = best
            result[f"rate_steps{suffix}"] = steps
    return result


def measure_against_floor(
    config: ServeBenchConfig, artifact: Path, repo_dir: Path, users: list[int], work: Path
) -> tuple[dict, dict]:
    """measure_server on `pinrec serve` (SQLite online store at repo_dir), then on the no-op KServe model."""
    arguments = ["serve", "--artifacts", str(artifact), "--repo", str(repo_dir), "--online-store", "sqlite"]
    return (
        _measure_launched("pinrec.cli", arguments, work / "serve.log", config, users, rate_search=True),
        _measure_launched("pinrec.bench.noop", ["--name", config.surface], work / "noop.log", config, users),
    )


def _measure_launched(
    module: str,
    arguments: list[str],
    log_path: Path,
    config: ServeBenchConfig,
    users: list[int],
    rate_search: bool = False,
) -> dict:
    server = launch(module, arguments, log_path)
    try:
        return measure_server(server, config, users, rate_search)
    finally:
        server.stop()
