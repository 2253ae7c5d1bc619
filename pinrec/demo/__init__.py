"""`pinrec demo`: the whole system on embedded defaults, on one machine, in minutes (see run.py).

The modules, each importing only those listed before it: config (settings and the outcome budgets),
metrics (figures read back from /metrics and Prometheus), model (the trained artifact), traffic (Kafka
and the model server, driven by pinrec.bench.load), report (Markdown and PNGs), run (the orchestration).
"""

from pinrec.demo.config import DemoConfig, demo_config
from pinrec.demo.run import run_demo

__all__ = ["DemoConfig", "demo_config", "run_demo"]
