"""Pacing, pts continuity, the paced output track and the freshest-wins inbound pump."""

from __future__ import annotations

import asyncio
import math
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamserve.core.frames import AudioChunk, MediaKind, VideoFrame
from streamserve.transport.tracks import InboundPump, PtsPacer, SessionOutputTrack, _MonotonicPts
from tests.transport.fakes import FakeHandle, FakeSubscription

FRAME = 1 / 30


def video(pts_frames: int, size: int = 16, value: int = 0) -> VideoFrame:
    data = np.full((size, size, 3), value, dtype=np.uint8)
    return VideoFrame(data=data, pts=pts_frames * 3000, arrival=0.0, deadline=1.0)


def test_pacer_passes_steady_frames_without_holding() -> None:
    pacer = PtsPacer()
    holds = [pacer.hold(i * FRAME, 10.0 + i * FRAME + 0.004 * (i % 3)) for i in range(60)]
    assert max(holds) <= 0.001  # jitter of a few ms is sent at once, not smoothed into latency
    assert pacer.reanchors == 0


def test_pacer_spreads_a_burst_by_pts() -> None:
    pacer = PtsPacer()
    now = 5.0
    holds = [pacer.hold(i * FRAME, now) for i in range(4)]  # four frames arrive together
    assert holds[0] == 0.0
    gaps = np.diff(holds)
    assert np.all(gaps > 0.9 * FRAME) and np.all(gaps <= FRAME)


def test_pacer_reanchors_instead_of_catching_up() -> None:
    pacer = PtsPacer(max_lag_s=0.05)
    assert pacer.hold(0.0, 1.0) == 0.0
    assert pacer.hold(FRAME, 1.0 + FRAME + 0.2) == 0.0  # 200 ms late: send now, move the anchor
    assert pacer.reanchors == 1
    # The next frame is held relative to the new anchor, not rushed out to catch up.
    assert pacer.hold(2 * FRAME, 1.0 + FRAME + 0.2) == pytest.approx(FRAME - 0.001, abs=1e-6)


def test_pacer_does_not_stall_on_a_jump_in_pts() -> None:
    pacer = PtsPacer(max_hold_s=1.0)
    pacer.hold(0.0, 1.0)
    assert pacer.hold(30.0, 1.1) == 0.0
    assert pacer.reanchors == 1


def test_pacer_decays_a_slow_first_frame() -> None:
    pacer = PtsPacer(decay_s=0.001)
    pacer.hold(0.0, 1.0 + 0.040)  # the first frame was 40 ms slower than the rest
    holds = [pacer.hold(i * FRAME, 1.0 + i * FRAME) for i in range(1, 80)]
    assert holds[0] == pytest.approx(0.039, abs=1e-6)
    assert holds[-1] == 0.0  # the added latency has decayed away


def sent_times(pacer: PtsPacer, units: list[tuple[float, float]], queue: int = 4) -> dict[int, float]:
    """Send time of each (media_s, arrival) unit that goes out, as SessionOutputTrack sends: one at a
    time, sleeping the pacer's hold, from a subscription of `queue` units that drops its oldest."""
    now, out, i = 0.0, {}, 0
    while i < len(units):
        now = max(now, units[i][1])
        waiting = [j for j in range(i, len(units)) if units[j][1] <= now]
        i = waiting[-queue] if len(waiting) > queue else i  # the oldest were dropped
        now += pacer.hold(units[i][0], now)
        out[i] = now
        i += 1
    return out


def test_pacer_recovers_from_a_late_straggler() -> None:
    # After a loss burst, frames from before it arrive 0.5 s late, then the stream is on time again.
    # Before: every later frame was held 0.5 s and freshest-wins dropped the rest (~2 fps for good).
    pacer = PtsPacer()
    units = [(i * FRAME, 10.0 + i * FRAME) for i in range(30)]
    units += [((30 + i) * FRAME, 10.0 + 45 * FRAME) for i in range(3)]  # the stragglers
    units += [(i * FRAME, 10.0 + i * FRAME + 0.001) for i in range(46, 150)]
    out = sent_times(pacer, units)
    late = {i: t - units[i][1] for i, t in out.items()}
    settled = [i for i, (_, arrival) in enumerate(units) if arrival > 10.0 + 45 * FRAME + 0.9]
    # From window_s + one hold after the stragglers: every frame goes out (none dropped), the delay
    # left is the subscription's backlog (a few frames), and it decays away.
    assert all(i in late for i in settled)
    assert max(late[i] for i in settled) < 5 * FRAME
    assert max(late[i] for i in settled[-20:]) < 2 * FRAME
    assert pacer.reanchors == 2  # the stragglers' anchor, then the correction
    assert len(late) > 0.85 * len(units)


def test_pacer_keeps_spreading_a_bursty_source() -> None:
    # A pipeline that emits 4 frames every 4 frame intervals: the first of each burst goes out at
    # once, so the late-anchor correction never fires.
    units = [(i * FRAME, 2.0 + (i // 4) * 4 * FRAME) for i in range(120)]
    sent = sent_times(PtsPacer(), units)
    assert sent == sent_times(PtsPacer(window_s=math.inf), units)  # exactly as without the correction
    assert len(sent) == 120


def test_monotonic_pts_survive_a_reset() -> None:
    mono = _MonotonicPts()
    out = [mono(p) for p in (0, 3000, 6000, 0, 3000, 3000)]
    assert out[:3] == [0, 3000, 6000]
    assert all(b > a for a, b in zip(out, out[1:], strict=False))
    assert out[3] == 9000  # continues one step after the last


async def test_output_track_paces_and_ends() -> None:
    sub = FakeSubscription(maxsize=8)
    track = SessionOutputTrack(sub, MediaKind.VIDEO)
    for i in range(4):
        sub.feed(video(i, value=10 * i))
    sub.end()
    times, frames = [], []
    for _ in range(4):
        frame = await asyncio.wait_for(track.recv(), 2)
        times.append(time.monotonic())
        frames.append(frame)
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(track.recv(), 2)
    assert [f.pts for f in frames] == [0, 3000, 6000, 9000]
    assert frames[0].time_base == Fraction(1, 90_000)
    assert all(f.format.name == "yuv420p" for f in frames)  # what the encoders take, converted here
    values = [int(f.to_ndarray(format="rgb24")[0, 0, 0]) for f in frames]
    assert np.allclose(values, [0, 10, 20, 30], atol=3), values
    assert min(np.diff(times)) > 0.8 * FRAME  # the burst went out at the frame rate
    assert track.readyState == "ended" and sub.closed


async def test_output_track_skips_other_kinds_and_stop_closes_subscription() -> None:
    sub = FakeSubscription()
    track = SessionOutputTrack(sub, MediaKind.VIDEO)
    chunk = AudioChunk(np.zeros((1, 960), np.int16), 48_000, 0, 0.0, 1.0)
    sub.feed(chunk)
    sub.feed(video(0))
    frame = await asyncio.wait_for(track.recv(), 2)
    assert isinstance(frame, av.VideoFrame)
    track.stop()
    assert sub.closed


class QueueTrack(MediaStreamTrack):
    """A remote track stand-in: frames put in `queue`, None ends it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.queue: asyncio.Queue[av.VideoFrame | av.AudioFrame | None] = asyncio.Queue()

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


def av_video(index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.full((8, 8, 3), index, np.uint8), format="rgb24")
    frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
    return frame


async def test_inbound_pump_drains_to_the_freshest_frame() -> None:
    track, handle = QueueTrack("video"), FakeHandle()
    for i in range(5):  # a backlog, as when the loop was busy
        track.queue.put_nowait(av_video(i))
    pump = InboundPump(track, handle, latency_budget_s=0.25)
    pump.start()
    track.queue.put_nowait(None)
    await asyncio.wait_for(pump.done.wait(), 2)
    await pump.stop()
    assert track.queue.empty()
    assert pump.received == 5 and pump.pushed + pump.dropped == 5 and pump.dropped >= 3
    last = handle.pushed[-1]
    assert isinstance(last, VideoFrame) and last.pts == 4 * 3000 and last.data[0, 0, 0] == 4
    assert last.deadline == pytest.approx(last.arrival + 0.25)
    assert handle.touches == pump.pushed


async def test_inbound_pump_pushes_every_audio_chunk_in_order() -> None:
    track, handle = QueueTrack("audio"), FakeHandle()
    for i in range(5):
        frame = av.AudioFrame.from_ndarray(np.full((1, 1920), i, np.int16), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, i * 960, Fraction(1, 48_000)
        track.queue.put_nowait(frame)
    track.queue.put_nowait(None)
    pump = InboundPump(track, handle, latency_budget_s=0.25, freshest=False)
    pump.start()
    await asyncio.wait_for(pump.done.wait(), 2)
    await pump.stop()
    assert [m.pts for m in handle.pushed] == [0, 960, 1920, 2880, 3840]
    assert all(isinstance(m, AudioChunk) and m.data.shape == (2, 960) for m in handle.pushed)
    assert pump.dropped == 0


async def test_inbound_pump_stops_pushing_into_a_closed_session() -> None:
    track, handle = QueueTrack("video"), FakeHandle()
    handle.close("gone")
    pump = InboundPump(track, handle, latency_budget_s=0.25)
    pump.start()
    track.queue.put_nowait(av_video(1))
    track.queue.put_nowait(None)
    await asyncio.wait_for(pump.done.wait(), 2)
    await pump.stop()
    assert handle.pushed == [] and pump.errors == 0
