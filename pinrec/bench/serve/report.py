"""The serving benchmark's result: its JSON, with the ratio of served latency to the floor plus the in-process
latency, and its table."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pinrec.bench.report import print_table
from pinrec.bench.serve.config import ServeBenchConfig

if TYPE_CHECKING:
    from pinrec.serving.engine import LoadedModel


def serve_result(
    config: ServeBenchConfig,
    model: LoadedModel,
    stages: dict[str, dict[str, float]],
    kv: dict,
    recall: float,
    served: dict,
    floor: dict,
) -> dict:
    """The benchmark's JSON: the phases' figures, the ratios to the floor, the index and the configuration."""
    inprocess_p99 = stages["total"]["p99_ms"]
    ratios = {
        protocol: served[f"{protocol}_p99_ms"] / (floor[f"{protocol}_p99_ms"] + inprocess_p99)
        for protocol in ("rest", "grpc", "rest_v1")
    }
    result = {
        "inprocess_p50_ms": stages["total"]["p50_ms"],
        "inprocess_p99_ms": inprocess_p99,
        "inprocess_stages": stages,
        "rest_p50_ms": served["rest_p50_ms"],
        "rest_p99_ms": served["rest_p99_ms"],
        "rest_v1_p99_ms": served["rest_v1_p99_ms"],
        "grpc_p50_ms": served["grpc_p50_ms"],
        "grpc_p99_ms": served["grpc_p99_ms"],
        "errors": served["rest_errors"] + served["grpc_errors"] + served["rest_v1_errors"],
        "floor_p99_ms": floor["rest_p99_ms"],
        "floor_grpc_p99_ms": floor["grpc_p99_ms"],
        "floor_max_rps": floor["max_rps"],
        "ratio_vs_floor": round(max(ratios["rest"], ratios["grpc"]), 3),
        "ratio_vs_floor_rest": round(ratios["rest"], 3),
        "ratio_vs_floor_grpc": round(ratios["grpc"], 3),
        **kv,
        "max_rps": served["max_rps"],
        **{key: value for key, value in served.items() if key.startswith(("max_rps_at_", "rate_steps"))},
        "index_kind": model.artifact.index.kind,
        "index_params": model.artifact.index.params,
        "index_recall_at_100": round(recall, 4),
        "index_recall_at_100_build": model.artifact.manifest["index"]["recall_at_100"],
        "catalog_items": model.artifact.index.size,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    result["config"]["model"] = model.model.config.to_dict() | {
        "parameters": sum(p.numel() for p in model.model.parameters())
    }
    return result


def print_serve_table(r: dict) -> None:
    rows = [
        (
            "catalog / index",
            f"{r['catalog_items']:,} items, {r['index_kind']} {r['index_params']}, "
            f"recall@100 {r['index_recall_at_100']:.4f}",
        ),
        ("in-process p50 / p99", f"{r['inprocess_p50_ms']:.2f} / {r['inprocess_p99_ms']:.2f} ms"),
    ]
    for stage, stats in r["inprocess_stages"].items():
        rows.append((f"  stage {stage} p50 / p99", f"{stats['p50_ms']:.2f} / {stats['p99_ms']:.2f} ms"))
    rows += [
        ("REST v2 p50 / p99", f"{r['rest_p50_ms']:.2f} / {r['rest_p99_ms']:.2f} ms"),
        ("REST v1 p99", f"{r['rest_v1_p99_ms']:.2f} ms"),
        ("gRPC p50 / p99", f"{r['grpc_p50_ms']:.2f} / {r['grpc_p99_ms']:.2f} ms"),
        ("no-op floor p99 REST / gRPC", f"{r['floor_p99_ms']:.2f} / {r['floor_grpc_p99_ms']:.2f} ms"),
        ("ratio vs floor (worst)", f"{r['ratio_vs_floor']:.3f}"),
        (
            "decode: KV cache / full recompute",
            f"{r['kv_decode_ms']:.2f} / {r['full_recompute_decode_ms']:.2f} ms ({r['kv_speedup']:.2f}x)",
        ),
        (
            "generation incl. prefill: KV / full",
            f"{r['generation_ms']:.2f} / {r['full_recompute_generation_ms']:.2f} ms "
            f"({r['kv_speedup_with_prefill']:.2f}x)",
        ),
        ("max rps (server / floor)", f"{r['max_rps']:.0f} / {r['floor_max_rps']:.0f}"),
        *[
            (
                f"max open-loop rate with {key.removeprefix('max_rps_at_').replace('_', ' ')}",
                f"{value:.0f} req/s",
            )
            for key, value in r.items()
            if key.startswith("max_rps_at_")
        ],
        ("errors", r["errors"]),
    ]
    print_table("Protocol D: serving", rows)
