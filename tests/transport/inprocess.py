"""The real app served in the test's own event loop (httpx's ASGI transport, lifespan run by hand),
so a test can watch that loop (`Heartbeat`) and reach the transports' peers directly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from streamserve.core.config import ServerConfig
from streamserve.server import create_app
from streamserve.transport.peer import PeerOptions
from streamserve.transport.webrtc import WebRTCTransport
from streamserve.transport.whip import WhipTransport


@dataclasses.dataclass
class InProcess:
    http: httpx.AsyncClient
    transport: httpx.ASGITransport
    webrtc: WebRTCTransport
    whip: WhipTransport


@contextlib.asynccontextmanager
async def in_process(config: ServerConfig | None = None,
                     peer_options: PeerOptions | None = None) -> AsyncIterator[InProcess]:
    config = config or ServerConfig(pipeline="passthrough", port=0, max_sessions=200)
    built: dict[str, Any] = {}

    def webrtc(sessions: Any, cfg: ServerConfig) -> WebRTCTransport:
        built["webrtc"] = WebRTCTransport(sessions, cfg, peer_options)
        return built["webrtc"]

    def whip(sessions: Any, cfg: ServerConfig) -> WhipTransport:
        built["whip"] = WhipTransport(sessions, cfg)
        return built["whip"]

    app = create_app(config, [webrtc, whip])
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield InProcess(http, transport, built["webrtc"], built["whip"])


class Heartbeat:
    """A task that wakes every `period_s` and records the longest gap between wake-ups: how long the
    event loop was kept from running anything else."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.longest_gap = 0.0
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period_s)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            self.beats += 1
            last = now

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(self.period_s * 2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
