"""SessionManager end to end on the real engine with the passthrough pipeline (no transport)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from streamserve.core import (
    InvalidParams,
    MediaKind,
    SessionLimitReached,
    SessionNotFound,
    StreamBusy,
    VideoFrame,
)
from streamserve.core.clock import SYSTEM_CLOCK
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.core.errors import UnknownPipeline
from streamserve.manager import SessionManager


def frame(i: int) -> VideoFrame:
    now = SYSTEM_CLOCK.now()
    return VideoFrame(np.full((8, 8, 3), i, np.uint8), i * 3000, now, now + 1.0)


@pytest.fixture
async def manager():
    m = SessionManager(ServerConfig(pipeline="passthrough", max_sessions=3, idle_timeout_s=0.5,
                                    session=SessionConfig(inbox_size=64, outbox_size=64)))
    await m.start()
    yield m
    await m.stop()


async def test_frames_flow_in_order_with_params(manager: SessionManager) -> None:
    s = await manager.open(None, {"mirror": True}, source="test")
    sub = s.subscribe(MediaKind.VIDEO)
    for i in range(20):
        f = frame(i)
        f.data[:, 0] = 255  # left column white: mirrored output has it on the right
        s.push(f)
    got = [await asyncio.wait_for(sub.get(), 5) for _ in range(20)]
    assert [g.pts for g in got] == [i * 3000 for i in range(20)]  # type: ignore[union-attr]
    assert all(g.data[0, -1, 0] == 255 and g.data[0, 0, 0] != 255 for g in got)  # type: ignore[union-attr]
    assert s.stats()["frames_out"] == 20
    text = manager.metrics.render().decode()
    assert 'streamserve_frames_out_total{kind="video",pipeline="passthrough"} 20.0' in text


async def test_open_errors(manager: SessionManager) -> None:
    with pytest.raises(UnknownPipeline, match="available: passthrough, video"):
        await manager.open("nope", None, source="test")
    with pytest.raises(InvalidParams, match="mirror"):
        await manager.open("passthrough", {"mirror": 3}, source="test")
    await manager.open(None, None, source="test", stream="live1")
    with pytest.raises(StreamBusy, match="'live1' is already live"):
        await manager.open(None, None, source="test", stream="live1")
    await manager.open(None, None, source="test")
    await manager.open(None, None, source="test")
    with pytest.raises(SessionLimitReached, match="limit of 3"):
        await manager.open(None, None, source="test")
    with pytest.raises(SessionNotFound, match="no session 'x'"):
        manager.get("x")


async def test_concurrent_opens_of_one_stream_admit_one(manager: SessionManager) -> None:
    results = await asyncio.gather(*(manager.open(None, None, source="test", stream="cam") for _ in range(2)),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Session", "StreamBusy"]
    assert [s.stream for s in manager.list()] == ["cam"]


async def test_an_open_that_fails_gives_its_stream_name_back(manager: SessionManager) -> None:
    with pytest.raises(InvalidParams, match="mirror"):
        await manager.open(None, {"mirror": 3}, source="test", stream="cam")
    for _ in range(3):
        await manager.open(None, None, source="test")
    with pytest.raises(SessionLimitReached):
        await manager.open(None, None, source="test", stream="cam")
    assert manager.by_stream("cam") is None
    await manager.close(manager.list()[0].id, "done")
    assert (await manager.open(None, None, source="test", stream="cam")).stream == "cam"


async def test_close_frees_stream_and_gauge(manager: SessionManager) -> None:
    s = await manager.open(None, None, source="test", stream="cam")
    assert manager.by_stream("cam") is s
    await manager.close(s.id, "done")
    assert manager.by_stream("cam") is None and s.closed and await s.wait_closed() == "done"
    assert 'streamserve_active_sessions{pipeline="passthrough"} 0.0' in manager.metrics.render().decode()
    await manager.close(s.id, "again")  # idempotent


async def test_idle_sessions_are_reaped(manager: SessionManager) -> None:
    s = await manager.open(None, None, source="test")
    reason = await asyncio.wait_for(s.wait_closed(), 5)
    assert reason.startswith("idle: no media or control for 0.5 s")
    assert manager.list() == []


async def test_the_idle_clock_starts_when_the_open_completes(manager: SessionManager) -> None:
    manager.engine.call(lambda: time.sleep(1.0))  # the engine busy past the idle timeout (a model loading)
    s = await manager.open(None, None, source="test")
    opened = time.monotonic()
    reason = await asyncio.wait_for(s.wait_closed(), 5)
    assert reason.startswith("idle: no media or control for 0.5 s")
    assert time.monotonic() - opened >= 0.45  # not reaped at once for the time its open waited


async def test_pipeline_error_ends_only_that_session(manager: SessionManager) -> None:
    good = await manager.open(None, None, source="test")
    bad = await manager.open(None, None, source="test")
    pipe = await asyncio.wrap_future(manager.engine.call(lambda: manager.engine.pipeline("passthrough")))
    original = pipe.step

    def step(batch):  # type: ignore[no-untyped-def]
        if bad.id in batch.session_ids:
            raise ValueError("boom")
        return original(batch)

    pipe.step = step  # type: ignore[method-assign]
    sub = good.subscribe(MediaKind.VIDEO)
    good.push(frame(1))
    bad.push(frame(2))
    assert (await asyncio.wait_for(sub.get(), 5)).pts == 3000  # type: ignore[union-attr]
    reason = await asyncio.wait_for(bad.wait_closed(), 5)
    assert reason == "pipeline error: ValueError: boom"
    assert not good.closed
