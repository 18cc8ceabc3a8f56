"""Ports: the interfaces transports use to reach sessions without importing the session layer.

`streamserve.session` implements them; `streamserve.transport` depends only on these protocols, so
the import graph stays one-way (see the import-linter contract in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from streamserve.core.frames import Media, MediaKind


class OutputSubscription(Protocol):
    """One consumer of a session's output of one kind. Bounded: the freshest units win."""

    async def get(self) -> Media | None:
        """The next output unit, or None once the session has ended."""
        ...

    def close(self) -> None: ...

    @property
    def dropped(self) -> int: ...


class SessionHandle(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def pipeline(self) -> str: ...

    @property
    def stream(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    @property
    def outputs(self) -> frozenset[MediaKind]:
        """The media kinds the session's pipeline produces."""
        ...

    @property
    def secret(self) -> str:
        """The session's own credential, returned only to its creator (see transport.auth)."""
        ...

    def push(self, media: Media) -> None:
        """Hand an input unit to the session (event-loop thread). Never blocks; drops stale units."""
        ...

    def subscribe(self, kind: MediaKind) -> OutputSubscription: ...

    async def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and apply a live parameter change (the pipeline checks it before this returns);
        returns the full params now in effect. Raises InvalidParams naming the field."""
        ...

    def stats(self) -> dict[str, Any]: ...

    def touch(self) -> None:
        """Mark the peer alive (media or control seen); the idle reaper ends silent sessions."""
        ...

    async def wait_closed(self) -> str:
        """Wait until the session ends; returns the reason."""
        ...


class SessionFactory(Protocol):
    """What transports call to start, find and end sessions."""

    async def open(
        self,
        pipeline: str | None,
        params: Mapping[str, Any] | None,
        *,
        source: str,
        stream: str | None = None,
    ) -> SessionHandle:
        """Start a session. Raises UnknownPipeline, InvalidParams, SessionLimitReached, or
        BadRequest when `stream` is already live."""
        ...

    def get(self, session_id: str) -> SessionHandle:
        """Raises SessionNotFound."""
        ...

    def by_stream(self, stream: str) -> SessionHandle | None: ...

    async def close(self, session_id: str, reason: str) -> None: ...
