"""PinRec on Kubernetes: outcome-conditioned, multi-token generative retrieval for several surfaces."""

__version__ = "0.1.0"
