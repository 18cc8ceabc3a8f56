"""Start a server in a subprocess and wait until it answers ``GET /healthz``.

The benchmarks (``benchmarks/serving.py``, ``transport.py``, ``video.py``) measure a real server in its own
process, the way clients meet it: each re-runs its own script with ``--serve`` through
:func:`server_process`. It lives in the package so that the scripts import it both when run directly and
through ``streamserve bench`` (which runs them with :func:`runpy.run_path`).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(args: Sequence[str], port: int, *, timeout_s: float, poll_s: float = 0.3,
                   name: str = "the server") -> Iterator[str]:
    """Run ``python ARGS`` (a server listening on ``port``); yields its base URL once /healthz answers.

    Raises RuntimeError("NAME did not start") if the process exits or ``timeout_s`` passes first.
    The process is terminated on exit (killed if it has not stopped 10 s later)."""
    proc = subprocess.Popen([sys.executable, *args])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(poll_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
