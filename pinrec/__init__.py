"""PinRec on Kubernetes: outcome-conditioned, multi-token generative retrieval for several surfaces."""

__version__ = "0.1.0"

import os

# Importing Feast sets PROMETHEUS_MULTIPROC_DIR when it is unset, which silently switches every
# prometheus_client metric of the process to shared, file-backed values: two registries then share one
# counter per name. An empty value keeps the ordinary in-process metrics; a value the user set is kept.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "")
