"""Session drop policy, fan-out, stats and close."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamserve.core import AudioChunk, FakeClock, InvalidParams, MediaKind, SessionClosed, VideoFrame
from streamserve.core.config import SessionConfig
from streamserve.pipelines.passthrough import PassthroughParams, PassthroughPipeline
from streamserve.session import FreshestQueue, LatencyWindow, Session


def vf(pts: int, arrival: float = 0.0, budget: float = 0.1) -> VideoFrame:
    return VideoFrame(np.full((2, 2, 3), pts % 256, np.uint8), pts, arrival, arrival + budget)


def make_session(clock: FakeClock, **kw: object) -> Session:
    return Session("passthrough", PassthroughParams, PassthroughParams(), inputs=frozenset({MediaKind.VIDEO}),
                   outputs=PassthroughPipeline.outputs, config=SessionConfig(inbox_size=2, outbox_size=3), source="test", clock=clock, **kw)  # type: ignore[arg-type]


def test_freshest_queue_drops_oldest_and_counts() -> None:
    q = FreshestQueue(2)
    assert q.put(vf(0)) is None and q.put(vf(1)) is None
    dropped = q.put(vf(2))
    assert dropped is not None and dropped.pts == 0
    assert q.dropped == 1 and len(q) == 2
    assert [q.pop().pts, q.pop().pts, q.pop()] == [1, 2, None]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="maxsize must be >= 1, got 0"):
        FreshestQueue(0)


def test_inbox_never_grows_and_drops_are_counted() -> None:
    clock = FakeClock()
    wakes = []
    s = make_session(clock, on_input=lambda: wakes.append(1))
    for i in range(100):
        s.push(vf(i))
    assert len(s.inbox) == 2
    assert [s.inbox.pop().pts, s.inbox.pop().pts] == [98, 99]  # type: ignore[union-attr]
    st = s.stats()
    assert (st["frames_in"], st["dropped_inbox"], st["frames_dropped"]) == (100, 98, 98)
    assert len(wakes) == 100


async def test_outputs_fan_out_to_every_subscriber_with_latency() -> None:
    clock = FakeClock(10.0)
    s = make_session(clock)
    a, b = s.subscribe(MediaKind.VIDEO), s.subscribe(MediaKind.VIDEO)
    clock.advance(0.05)
    s.deliver(vf(1, arrival=10.0))  # 50 ms, within the 100 ms budget
    clock.advance(0.2)
    s.deliver(vf(2, arrival=10.05))  # 200 ms: a deadline miss
    assert [(await a.get()).pts, (await a.get()).pts] == [1, 2]  # type: ignore[union-attr]
    assert (await b.get()).pts == 1  # type: ignore[union-attr]
    st = s.stats()
    assert st["frames_out"] == 2 and st["deadline_misses"] == 1
    assert st["latency_ms"]["p50"] in (50.0, 200.0) and st["latency_ms"]["p99"] == 200.0


async def test_slow_subscriber_keeps_freshest() -> None:
    s = make_session(FakeClock())
    sub = s.subscribe(MediaKind.VIDEO)
    for i in range(10):
        s.deliver(vf(i))
    got = [(await sub.get()).pts for _ in range(3)]  # type: ignore[union-attr]
    assert got == [7, 8, 9] and sub.dropped == 7


async def test_audio_bypasses_a_video_model() -> None:
    s = make_session(FakeClock())
    sub = s.subscribe(MediaKind.AUDIO)
    s.push(AudioChunk(np.zeros((1, 480), np.int16), 48_000, 0, 0.0, 0.1))
    assert len(s.inbox) == 0
    out = await sub.get()
    assert out is not None and out.kind is MediaKind.AUDIO


async def test_close_ends_subscribers_and_rejects_updates() -> None:
    s = make_session(FakeClock())
    sub = s.subscribe(MediaKind.VIDEO)
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert s.close("bye") is True and s.close("again") is False
    assert await asyncio.wait_for(waiter, 1) is None
    assert await s.wait_closed() == "bye"
    assert await s.subscribe(MediaKind.VIDEO).get() is None
    with pytest.raises(SessionClosed, match="has ended"):
        await s.update({"mirror": True})


async def test_update_validates_and_notifies() -> None:
    seen = []
    s = make_session(FakeClock(), on_update=lambda sess, p: seen.append(p))
    assert await s.update({"mirror": True}) == {"mirror": True}
    assert seen == [PassthroughParams(mirror=True)]
    with pytest.raises(InvalidParams, match="mirror: expected true or false"):
        await s.update({"mirror": "yes"})
    assert s.params == PassthroughParams(mirror=True)


async def test_update_refused_by_the_pipeline_leaves_params_unchanged() -> None:
    async def refuse(sess: Session, params: PassthroughParams) -> None:
        raise InvalidParams("mirror", "this pipeline cannot mirror")

    s = make_session(FakeClock(), on_update=refuse)
    with pytest.raises(InvalidParams, match="cannot mirror"):
        await s.update({"mirror": True})
    assert s.params == PassthroughParams(mirror=False) and s.stats()["params"] == {"mirror": False}


def test_latency_window_percentiles() -> None:
    w = LatencyWindow(size=100)
    assert w.percentile(50) is None
    for v in range(1, 201):
        w.add(v / 1000)
    assert w.percentile(50) == pytest.approx(0.150, abs=0.002)
    assert w.percentile(100) == pytest.approx(0.200)


def test_audio_never_evicts_video_in_the_inbox() -> None:
    both = frozenset({MediaKind.VIDEO, MediaKind.AUDIO})
    s = Session("passthrough", PassthroughParams, PassthroughParams(), inputs=both, outputs=PassthroughPipeline.outputs,
                config=SessionConfig(inbox_size=2, audio_inbox_size=4), source="test", clock=FakeClock())
    s.push(vf(1, arrival=0.0))
    for i in range(50):  # a second of 20 ms chunks arrives while the model is busy
        s.push(AudioChunk(np.zeros((1, 960), np.int16), 48_000, i * 960, 0.001 * i, 0.001 * i + 0.1))
    assert len(s.inbox) == 1 + 4
    # Audio is ordered, never freshest-wins: a full queue refuses the newest chunks (overload, counted).
    assert s.stats()["dropped_overload"] == 46 and s.stats()["dropped_inbox"] == 0
    # Whatever is due first comes out first: the video frame (deadline 0.1) before audio (0.146...).
    first = s.inbox.pop()
    assert first is not None and first.kind is MediaKind.VIDEO
    rest = [s.inbox.pop() for _ in range(4)]
    assert [c.pts for c in rest if c is not None] == [0, 960, 2 * 960, 3 * 960]


async def test_concurrent_partial_updates_build_on_each_other() -> None:
    """Two updates in flight at once: the second starts from the first's result, not from the old params."""
    release = asyncio.Event()

    async def slow_apply(sess: Session, params: PassthroughParams) -> None:
        await release.wait()

    s = make_session(FakeClock(), on_update=slow_apply)
    first = asyncio.create_task(s.update({"mirror": True}))
    second = asyncio.create_task(s.update({}))
    await asyncio.sleep(0)
    release.set()
    assert await first == {"mirror": True} and await second == {"mirror": True}


def test_a_tick_is_an_empty_audio_chunk_that_counts_as_no_input() -> None:
    clock = FakeClock(5.0)
    wakes: list[int] = []
    s = Session("voice", PassthroughParams, PassthroughParams(), inputs=frozenset({MediaKind.AUDIO}),
                outputs=frozenset({MediaKind.AUDIO}), config=SessionConfig(audio_inbox_size=2, latency_budget_s=0.2),
                source="test", clock=clock, on_input=lambda: wakes.append(1))
    s.tick()
    tick = s.inbox.pop()
    assert isinstance(tick, AudioChunk) and tick.meta == {"tick": True} and tick.samples == 0
    assert (tick.arrival, tick.deadline) == (5.0, pytest.approx(5.2)) and wakes == [1]
    assert s.stats()["audio_in"] == 0  # not input: the stats and the input clock never see it
    for _ in range(3):  # a full ordered queue refuses it quietly: no overload is counted
        s.tick()
    assert len(s.inbox) == 2 and wakes == [1, 1, 1] and s.stats()["dropped_overload"] == 0
    s.close("test")
    s.inbox.clear()
    s.tick()
    assert len(s.inbox) == 0
    video = make_session(clock)  # a video-only session has no audio queue to tick
    video.tick()
    assert len(video.inbox) == 0
