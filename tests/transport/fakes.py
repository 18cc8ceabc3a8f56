"""In-memory stand-ins for the session ports, for transport unit tests (integration tests use the server)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import Any

from streamserve.core.errors import InvalidParams
from streamserve.core.frames import Media, MediaKind


class FakeSubscription:
    """Bounded; the freshest units win. `feed` puts units in, `end` marks the end of the stream."""

    def __init__(self, maxsize: int = 4) -> None:
        self.items: collections.deque[Media | None] = collections.deque()
        self.maxsize = maxsize
        self.ready = asyncio.Event()
        self.closed = False
        self._dropped = 0

    @property
    def dropped(self) -> int:
        return self._dropped

    def feed(self, media: Media | None) -> None:
        if media is not None and len(self.items) >= self.maxsize:
            self.items.popleft()
            self._dropped += 1
        self.items.append(media)
        self.ready.set()

    def end(self) -> None:
        self.feed(None)

    async def get(self) -> Media | None:
        while not self.items:
            if self.closed:
                return None
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class FakeHandle:
    """Echoes every pushed unit to its subscribers (a passthrough session without an engine)."""

    def __init__(self, session_id: str = "s1", params: dict[str, Any] | None = None) -> None:
        self._id = session_id
        self.params: dict[str, Any] = dict(params or {"mirror": False})
        self.pushed: list[Media] = []
        self.touches = 0
        self.subscriptions: list[tuple[MediaKind, FakeSubscription]] = []
        self.reason: str | None = None
        self._closed = asyncio.Event()

    @property
    def id(self) -> str:
        return self._id

    @property
    def pipeline(self) -> str:
        return "passthrough"

    @property
    def stream(self) -> str | None:
        return None

    @property
    def closed(self) -> bool:
        return self.reason is not None

    @property
    def outputs(self) -> frozenset[MediaKind]:
        return frozenset({MediaKind.VIDEO, MediaKind.AUDIO})

    def push(self, media: Media) -> None:
        self.pushed.append(media)
        for kind, sub in self.subscriptions:
            if kind is media.kind:
                sub.feed(media)

    def subscribe(self, kind: MediaKind) -> FakeSubscription:
        sub = FakeSubscription()
        self.subscriptions.append((kind, sub))
        return sub

    @property
    def secret(self) -> str:
        return f"secret-{self._id}"

    async def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        for name, value in params.items():
            if name not in self.params:
                raise InvalidParams(name, f"unknown parameter; known: {', '.join(self.params)}")
            if not isinstance(value, bool):
                raise InvalidParams(name, f"expected true or false, got {value!r}")
        self.params.update(params)
        return dict(self.params)

    def stats(self) -> dict[str, Any]:
        return {"session_id": self._id, "frames_in": len(self.pushed), "params": dict(self.params)}

    def touch(self) -> None:
        self.touches += 1

    def close(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            for _, sub in self.subscriptions:
                sub.end()
            self._closed.set()

    async def wait_closed(self) -> str:
        await self._closed.wait()
        return self.reason or ""


class FakeSessions:
    """A SessionFactory over FakeHandles."""

    def __init__(self) -> None:
        self.handles: dict[str, FakeHandle] = {}
        self.closed: list[tuple[str, str]] = []

    async def open(self, pipeline: str | None, params: Mapping[str, Any] | None, *, source: str,
                   stream: str | None = None) -> FakeHandle:
        handle = FakeHandle(f"s{len(self.handles) + 1}")
        self.handles[handle.id] = handle
        return handle

    def get(self, session_id: str) -> FakeHandle:
        return self.handles[session_id]

    def by_stream(self, stream: str) -> FakeHandle | None:
        return None

    async def close(self, session_id: str, reason: str) -> None:
        handle = self.handles.pop(session_id, None)
        if handle is not None:
            self.closed.append((session_id, reason))
            handle.close(reason)
