"""Placement by goodput headroom: each engine's cost model (its SLO gate), fewest sessions while cold.

Two engines run a passthrough that sleeps a known time per item: 20 ms on the first engine created,
4 ms on the second (as if the second device were five times faster). At the default 30 fps a session
costs 0.6 of the slow engine and 0.12 of the fast one, so the fast engine has room for 7 more, the
slow one for 1: new sessions go to the fast engine even when it already holds more sessions.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from streamserve.cluster.director import snapshot
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.core.plan import Batch, StepOutput
from streamserve.manager import SessionManager
from streamserve.pipelines import registry
from streamserve.pipelines.passthrough import PassthroughPipeline
from streamserve.schedulers.placement import EngineLoad, FewestSessions, GoodputHeadroom, choose


class CostedPassthrough(PassthroughPipeline):
    """Test-only: passthrough sleeping a known time per item; the n-th instance gets ``COSTS[n]``."""

    name = "costed"
    COSTS: ClassVar[list[float]] = [0.020, 0.004]
    made: ClassVar[int] = 0

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device, **options)
        self.cost_s = self.COSTS[type(self).made % len(self.COSTS)]
        type(self).made += 1

    def step(self, batch: Batch) -> list[StepOutput]:
        time.sleep(self.cost_s * batch.size)
        return super().step(batch)


def test_goodput_headroom_ranks_by_room_not_by_sessions() -> None:
    loads = [EngineLoad(0, "slow", 0, 8, more_sessions=1, free_utilization=0.9),
             EngineLoad(1, "fast", 3, 8, more_sessions=4, free_utilization=0.5)]
    assert choose(FewestSessions(), loads).index == 0  # type: ignore[union-attr]
    assert choose(GoodputHeadroom(), loads).index == 1  # type: ignore[union-attr]
    # Same room: the freer one; no room anywhere: still placed (admission may offer a lower tier).
    tie = [EngineLoad(0, "a", 0, 8, more_sessions=2, free_utilization=0.1),
           EngineLoad(1, "b", 0, 8, more_sessions=2, free_utilization=0.4)]
    assert choose(GoodputHeadroom(), tie).index == 1  # type: ignore[union-attr]
    capped = [EngineLoad(0, "a", 2, 8, more_sessions=40, free_utilization=0.8),
              EngineLoad(1, "b", 1, 8, more_sessions=35, free_utilization=0.7)]
    assert choose(GoodputHeadroom(), capped).index == 1  # type: ignore[union-attr]  # room > slots: spread
    over = [EngineLoad(0, "a", 1, 8, more_sessions=0, free_utilization=-0.5),
            EngineLoad(1, "b", 1, 8, more_sessions=0, free_utilization=-0.1)]
    assert choose(GoodputHeadroom(), over).index == 1  # type: ignore[union-attr]
    # Cold models: fewest sessions; a full engine never.
    cold = [EngineLoad(0, "a", 2, 8), EngineLoad(1, "b", 1, 8)]
    assert choose(GoodputHeadroom(), cold).index == 1  # type: ignore[union-attr]
    full = [EngineLoad(0, "a", 8, 8, more_sessions=9, free_utilization=0.9)]
    assert choose(GoodputHeadroom(), full) is None


def test_director_uses_goodput_only_when_every_node_is_warm() -> None:
    base = {"sessions": 0, "max_sessions": 4, "draining": False}
    warm = [{**base, "node_id": "n0", "more_sessions": 1, "free_utilization": 0.9},
            {**base, "node_id": "n1", "sessions": 2, "more_sessions": 5, "free_utilization": 0.6}]
    assert choose(GoodputHeadroom(), snapshot(warm)).device == "n1"  # type: ignore[union-attr]
    half = [warm[0], {**warm[1], "more_sessions": None, "free_utilization": None}]
    assert all(s.more_sessions is None for s in snapshot(half))
    assert choose(GoodputHeadroom(), snapshot(half)).device == "n0"  # type: ignore[union-attr]  # fewest


@pytest.fixture
async def manager() -> AsyncIterator[SessionManager]:
    registry.register(CostedPassthrough, replace=True)
    CostedPassthrough.made = 0
    m = SessionManager(ServerConfig(pipeline="costed", devices=("cpu", "cpu"), max_sessions=8, max_batch=8,
                                    session=SessionConfig(inbox_size=8, outbox_size=8)))
    await m.start(warm=False)
    try:
        for engine in m.devices.engines:  # create the pipelines in device order: slow first, fast second
            await asyncio.wrap_future(engine.call(functools.partial(engine.pipeline, "costed")))
        yield m
    finally:
        await m.stop()
        registry.unregister("costed")


async def test_sessions_go_to_the_engine_with_more_goodput_headroom(manager: SessionManager) -> None:
    costs = [manager.devices.engines[i].pipeline("costed").cost_s for i in range(2)]  # type: ignore[attr-defined]
    assert costs == [0.020, 0.004]
    # Cold cost models: fewest sessions (tie -> the first engine); this also queues the profiles.
    assert manager.devices.place("costed") == 0
    assert all(ld.more_sessions is None for ld in manager.devices.loads("costed"))
    for gate in manager.gates:
        assert gate is not None
        await asyncio.wrap_future(gate.ensure_profile("costed"))
    loads = manager.devices.loads("costed")
    assert loads[0].more_sessions is not None and loads[1].more_sessions is not None
    assert loads[1].more_sessions > loads[0].more_sessions >= 1
    sessions = [await manager.open("costed", {}, source="test") for _ in range(3)]
    try:
        # All three on the fast engine, though it then holds more sessions than the idle slow one.
        assert [s.device for s in sessions] == ["cpu:1"] * 3
        loads = manager.devices.loads("costed")
        assert loads[1].sessions == 3 and loads[0].sessions == 0
        assert loads[1].more_sessions > loads[0].more_sessions  # type: ignore[operator]
    finally:
        for s in sessions:
            await manager.close(s.id, "test over")
