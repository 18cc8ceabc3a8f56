"""Shared fixtures: a real server on a free loopback port, in a background thread."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
import uvicorn

from streamserve.core.config import ServerConfig

# The Triton kernels read TRITON_INTERPRET when they are decorated, that is when streamserve.kernels is
# first imported, which any test module may do at collection (through the server or a pipeline). Without
# CUDA they run under the interpreter, so it is set here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


class LiveServer:
    """uvicorn serving `create_app(config)` on 127.0.0.1:<free port> in a thread of its own
    (`production`: with the uvicorn options `streamserve serve` runs, `streamserve.serving.uvicorn_config`)."""

    def __init__(self, config: ServerConfig, transports: Sequence[Any] | None = None,
                 production: bool = False) -> None:
        from streamserve.server import create_app
        from streamserve.serving import uvicorn_config

        self.app = create_app(config, transports)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = uvicorn_config(self.app, config, lifespan="on") if production else (
            uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.server = uvicorn.Server(options)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name=f"live-server-{self.port}", daemon=True)

    @property
    def manager(self) -> Any:
        return self.app.state.manager

    def start(self, timeout: float = 30.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("server thread did not stop")


@pytest.fixture
def server_factory() -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def make(config: ServerConfig | None = None, transports: Sequence[Any] | None = None,
             **overrides: Any) -> LiveServer:
        cfg = config or ServerConfig(pipeline="passthrough", port=0, **overrides)
        server = LiveServer(cfg, transports).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def live_server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    """A passthrough server with every built-in transport."""
    return server_factory()


def require_browser() -> bool:
    """Browser tests fail instead of skipping when STREAMSERVE_REQUIRE_BROWSER=1 (CI)."""
    return os.environ.get("STREAMSERVE_REQUIRE_BROWSER") == "1"
