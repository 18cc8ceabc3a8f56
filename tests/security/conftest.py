"""Servers for the security tests: in-process with the production uvicorn settings, or a real
`streamserve serve` process (for the log, signal and connection-level checks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from streamserve.core.config import ServerConfig
from streamserve.serving import uvicorn_config
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-tok-7f3a91"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


class GuardedServer(LiveServer):
    """LiveServer under the uvicorn settings `streamserve serve` uses (header timeout, caps...)."""

    def __init__(self, config: ServerConfig, transports: Sequence[Any] | None = None) -> None:
        super().__init__(config, transports)
        self.server = uvicorn.Server(uvicorn_config(self.app, config, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"guarded-server-{self.port}", daemon=True)


@pytest.fixture
def guarded_factory() -> Iterator[Callable[..., GuardedServer]]:
    started: list[GuardedServer] = []

    def make(config: ServerConfig | None = None, transports: Sequence[Any] | None = None,
             **overrides: Any) -> GuardedServer:
        server = GuardedServer(config or ServerConfig(pipeline="passthrough", port=0, **overrides), transports)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """`python -m streamserve.cli serve ...` on a free port; its log goes to a file."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="streamserve-log-", suffix=".txt")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamserve.cli", "serve", "--pipeline", "passthrough",
             "--port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})

    def wait_ready(self, timeout: float = 90.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamserve serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"streamserve serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    procs: list[ServeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(*args, env=env)
        procs.append(proc)
        return proc.wait_ready()

    yield start
    for proc in procs:
        proc.close()
