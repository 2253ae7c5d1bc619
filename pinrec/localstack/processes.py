"""Start, find and stop the service processes the local stack owns, by PID, start time and command line."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, taken: Sequence[int] = ()) -> int:
    """The preferred port when it is free, otherwise (or when preferred is 0) a free one from the kernel."""
    if preferred and preferred not in taken and port_is_free(preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel kills it when the parent dies, even by SIGKILL.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    command: Sequence[str],
    log_path: Path,
    *,
    bound_to_parent: bool,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a service in its own session, output to log_path; bound_to_parent ties its life to ours."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent if bound_to_parent else None,
        )
    return process


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# Process start times are kept to this precision: psutil derives them from the boot time, which the kernel
# recomputes when the wall clock is adjusted.
_START_TIME_TOLERANCE_S = 1.0


def started_at(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), recorded to recognise it later; None when gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _ours(pid: int, markers: Sequence[str], started: float | None) -> psutil.Process | None:
    """The live (not zombie) process pid when it is the one recorded: started at `started` (when known) and
    with every marker in its command line; None otherwise.

    Both checks keep us from signalling an unrelated process that reused a recorded PID.
    """
    _reap(pid)
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) > _START_TIME_TOLERANCE_S:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = " ".join(process.cmdline())
    except psutil.Error:  # gone, a zombie, or not ours to inspect
        return None
    return process if all(marker in cmdline for marker in markers) else None


def process_matches(pid: int, markers: Sequence[str], started: float | None = None) -> bool:
    """True when pid is a live (not zombie) process whose command line contains every marker and, when
    `started` is given, that started then."""
    return _ours(pid, markers, started) is not None


def stop(pid: int, markers: Sequence[str], timeout_s: float = 30.0, started: float | None = None) -> bool:
    """SIGTERM the process, SIGKILL it after timeout_s; False when it was not ours or already gone."""
    process = _ours(pid, markers, started)
    if process is None:
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            process.send_signal(sig)  # psutil refuses when the PID was reused since
        except psutil.NoSuchProcess:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not process_matches(pid, markers, started):
                return True
            time.sleep(0.1)
    return not process_matches(pid, markers, started)


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    log_path: Path | None = None,
) -> None:
    """Poll ready() until it holds; fail early with the log's tail when the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise RuntimeError(f"{what} exited during start-up{_log_tail(log_path)}")
        time.sleep(0.25)
    raise TimeoutError(f"{what} was not ready after {timeout_s:.0f} s{_log_tail(log_path)}")


def wait_for_http(
    url: str, process: subprocess.Popen, *, what: str, timeout_s: float, log_path: Path | None = None
) -> None:
    """Wait until GET url answers with a success status; fail early when the process exits."""
    import requests

    def answers() -> bool:
        try:
            return requests.get(url, timeout=1).ok
        except requests.RequestException:
            return False

    wait_until(
        answers, what=what, timeout_s=timeout_s, alive=lambda: process.poll() is None, log_path=log_path
    )


def _log_tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log_path}:\n" + "\n".join(tail)
