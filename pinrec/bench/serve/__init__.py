"""`pinrec bench serve` (protocol D): latency of the recommender in-process, over REST (v1, v2) and gRPC at a
fixed request rate, against a no-op KServe model measured in the same run; KV-cache decode against full
recomputation; the maximum sustained rate; recall@100 of the approximate index on real request queries.

The artifact is trained here on a synthetic world with a large catalog (default 1M items, the default model
configuration with histories of 200), unless --artifact names one.

Modules, by job: config; prepare (the artifact and the stored histories); in_process (the recommender
without a server, KV cache, index recall); protocols (REST and gRPC against the floor, driven by
pinrec.bench.load); report (the JSON and the table); run (the order of the phases). Each imports config
and nothing later in this list but run, which imports them all.
"""

from pinrec.bench.serve.config import ServeBenchConfig
from pinrec.bench.serve.run import run_serve_bench

__all__ = ["ServeBenchConfig", "run_serve_bench"]
