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
    # Goodput headroom from the engine's cost model (its SLO gate), None while that model is cold:
    more_sessions: int | None = None  # more default sessions of the pipeline that fit within deadlines
    free_utilization: float | None = None  # max utilization - predicted utilization (< 0: overloaded)

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


FREE_STEP = 0.05
"""Free utilization is compared in steps of 5 % of a device: closer engines tie (lowest index wins)."""


class GoodputHeadroom:
    """Headroom = how many more sessions the engine can serve within their deadlines, from its cost
    model (measured step times on *its* device: a faster device or a lighter load scores higher,
    whatever the session counts), capped by its free session slots (it can take no more than those,
    however fast: so identical, lightly loaded engines tie, and measurement noise does not decide).
    Ties go to the engine with more free slots, then more free utilization (in 5 % steps). An engine with a free slot
    always scores > 0 (its admission gate may still offer a lower tier or refuse). While the cost
    models are cold (``more_sessions`` None), :class:`FewestSessions` decides.
    """

    def __init__(self) -> None:
        self._fallback = FewestSessions()

    def headroom(self, engine: EngineLoad) -> float:
        slots = engine.max_sessions - engine.sessions
        if slots <= 0:
            return 0.0
        if engine.more_sessions is None or engine.free_utilization is None:
            return self._fallback.headroom(engine)
        room = min(engine.more_sessions, slots)  # in [0, slots]
        free = round(engine.free_utilization / FREE_STEP) * FREE_STEP  # a few % of noise decides nothing
        rank = room * (engine.max_sessions + 1) + slots  # room first, then free slots
        return 2.0 * rank + 1.0 + free / (1.0 + abs(free))  # free utilization, in (-1, 1), breaks the rest


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
