"""Start a KServe model server (`pinrec serve`, or the benchmark's no-op floor) as a child process on free
ports and wait until it is ready; used by the benchmark, the demo and the tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pinrec.localstack.processes import pick_port, spawn, wait_for_http


@dataclass
class ServerProcess:
    process: subprocess.Popen
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    log_path: Path

    def stop(self, timeout_s: float = 30) -> None:
        terminate(self.process, timeout_s)


def terminate(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM (servers and the consumer finish their work), SIGKILL after timeout_s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(
    module: str,
    arguments: list[str],
    log_path: Path,
    timeout_s: float = 180,
    env: dict[str, str] | None = None,
    bound_to_parent: bool = True,  # the server dies with this process (False: it outlives it)
) -> ServerProcess:
    """`python -m module ARGUMENTS --http-port P --grpc-port G`, ready on /v2/health/ready."""
    http_port = pick_port(0)
    grpc_port = pick_port(0, taken=[http_port])
    command = [sys.executable, "-m", module, *arguments, "--http-port", str(http_port)]
    command += ["--grpc-port", str(grpc_port)]
    process = spawn(command, log_path, bound_to_parent=bound_to_parent, env=env)
    server = ServerProcess(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log_path)
    try:
        wait_for_http(
            f"{server.http}/v2/health/ready",
            process,
            what=f"the model server ({module})",
            timeout_s=timeout_s,
            log_path=log_path,
        )
    except BaseException:
        server.stop()
        raise
    return server
