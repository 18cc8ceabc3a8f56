"""Where a new session runs: one engine per device, each scored by its headroom.

The session manager asks a :class:`Placement` for the headroom of every engine that can take one more
session and opens the session on the engine with the most. The default, :class:`FewestSessions`,
scores an engine by its free session slots; a goodput cost model (how many more frames per second a
device can serve within its deadlines) plugs in behind the same protocol.

Pure Python: engines are described by :class:`EngineLoad` snapshots, never by the engine objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class EngineLoad:
    """A snapshot of one engine's load, taken on the event loop when a session is placed."""

    index: int  # position in the server's device list
    device: str  # its name, e.g. "cuda:1" or "cpu:0"
    sessions: int  # sessions open on it
    max_sessions: int  # sessions it may hold
    draining: bool = False  # takes no new sessions (drain, rolling upgrade)
    kv_free_bytes: int | None = None  # KV memory still free, when the pipelines report it

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"index must be >= 0, got {self.index}")
        if not 0 <= self.sessions:
            raise ValueError(f"sessions must be >= 0, got {self.sessions}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")


class Placement(Protocol):
    """Scores engines for a new session: more headroom = a better place. <= 0 means it cannot take one."""

    def headroom(self, engine: EngineLoad) -> float: ...


class FewestSessions:
    """Headroom = free session slots: new sessions spread evenly over the devices."""

    def headroom(self, engine: EngineLoad) -> float:
        return float(engine.max_sessions - engine.sessions)


def choose(placement: Placement, engines: Sequence[EngineLoad]) -> EngineLoad | None:
    """The engine with the most headroom (the lowest index on a tie); None when no engine has any."""
    best: tuple[float, EngineLoad] | None = None
    for load in engines:
        if load.draining:
            continue
        room = placement.headroom(load)
        if room > 0 and (best is None or room > best[0]):
            best = (room, load)
    return best[1] if best else None
