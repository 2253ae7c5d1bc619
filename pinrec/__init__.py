"""PinRec on Kubernetes: outcome-conditioned, multi-token generative retrieval for several surfaces."""

__version__ = "0.1.0"

import os

import prometheus_client.values


def _keep_metrics_in_process() -> None:
    """Importing Feast sets PROMETHEUS_MULTIPROC_DIR to a temporary folder of its own, and prometheus_client
    chooses file-backed values shared by metric name (two registries then share one counter) when that
    variable exists at its first import. Drop what Feast set (a parent process may have passed it down)
    and import prometheus_client's value class first; a value the user set is kept."""
    for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        if os.path.basename(os.environ.get(name, "")).startswith("feast_metrics_"):
            del os.environ[name]
    prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()


_keep_metrics_in_process()
