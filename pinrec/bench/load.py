"""Load generators of the benchmarks and the demo: a sender per protocol of the model server (REST v1,
REST v2, gRPC v2) and three ways to drive one: one request at a time, open loop at a fixed rate, and closed
loop with several back-to-back clients."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from pinrec.server_process import ServerProcess

log = logging.getLogger(__name__)

Send = Callable[[int], None]  # sends request number i; raises when it fails
Request = Callable[[int], tuple[str, dict]]  # request number i: its surface (the model name) and instance


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)  # of the answered requests
    errors: int = 0
    requests: int = 0  # sent, failed ones included
    seconds: float = 0.0  # from the first send to the last answer

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def protocol_senders(server: ServerProcess, request: Request) -> dict[str, Send]:
    """One sender per protocol, sharing one HTTP session and one gRPC channel; a sender raises on an
    error status. Keys: rest_v1, rest (v2) and grpc (v2)."""
    from pinrec.serving.client import grpc_request, grpc_stub, rest_v1, rest_v2

    session = requests.Session()
    stub = grpc_stub(server.grpc)

    def v1(i: int) -> None:
        surface, instance = request(i)
        rest_v1(server.http, surface, [instance], session=session).raise_for_status()

    def v2(i: int) -> None:
        surface, instance = request(i)
        rest_v2(server.http, surface, instance, session=session).raise_for_status()

    def grpc_v2(i: int) -> None:
        surface, instance = request(i)
        stub.ModelInfer(grpc_request(surface, instance), timeout=10)

    return {"rest_v1": v1, "rest": v2, "grpc": grpc_v2}


def round_robin(senders: Sequence[Send]) -> Send:
    """Request i goes through senders[i % len(senders)]."""
    return lambda i: senders[i % len(senders)](i)


def one_at_a_time(send: Send, count: int) -> LoadResult:
    """count requests, each sent when the previous one was answered; a failed one is counted and skipped."""
    result = LoadResult(requests=count)
    started = time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        try:
            send(i)
        except Exception as error:  # counted and reported, the run goes on
            log.debug("request %d failed: %s", i, error)
            result.errors += 1
            continue
        result.latencies_ms.append((time.perf_counter() - sent) * 1000)
    result.seconds = time.perf_counter() - started
    return result


def paced(send: Send, rate: float, count: int, workers: int = 8) -> LoadResult:
    """Open loop: request i is due at start + i / rate; its latency runs from when it was due to its answer
    (so a slow server cannot hide its queueing)."""
    result = LoadResult(requests=count)
    lock = threading.Lock()
    start = time.perf_counter() + 0.05

    def one(i: int, due: float) -> None:
        try:
            send(i)
        except Exception as error:  # counted, the run goes on
            log.debug("request %d failed: %s", i, error)
            with lock:
                result.errors += 1
            return
        with lock:
            result.latencies_ms.append((time.perf_counter() - due) * 1000)

    with ThreadPoolExecutor(workers) as pool:
        for i in range(count):
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(one, i, due)
    result.seconds = time.perf_counter() - start
    return result


def closed_loop(send: Send, clients: int, seconds: float) -> float:
    """Requests/s answered by `clients` back-to-back senders."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def client(n: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            try:
                send(n * 1_000_000 + i)
                counts[n] += 1
            except Exception as error:
                log.debug("request failed: %s", error)
            i += 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return sum(counts) / seconds
