"""What every long-running command process does: /metrics on a port, and SIGTERM/SIGINT as a stop request."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_until_stopped(registry, metrics_port: int, run: Callable[[threading.Event], None]) -> int:
    """Serve `registry` on /metrics (port 0: any free port) and call run(stop); SIGTERM and SIGINT set stop,
    and run returns once its work in hand is done."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(metrics_port, addr="0.0.0.0", registry=registry)
    log.info("metrics on http://127.0.0.1:%d/metrics", server.server_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run(stop)
    finally:
        server.shutdown()
    return 0
