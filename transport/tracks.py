"""Media tracks between aiortc and a session: an inbound pump and a paced outbound track.

Inbound: aiortc's `RemoteStreamTrack` queues every decoded frame in an unbounded queue. `InboundPump`
reads it continuously into a one-frame slot (the freshest wins; overwritten frames are counted as
dropped), and a second task converts whatever is in the slot and pushes it into the session. So
however slow conversion or the session is, aiortc's queue never grows.

Outbound: `SessionOutputTrack` is one `async recv()` over a bounded `OutputSubscription`. It paces
itself by pts against the wall clock with a `PtsPacer`, and never builds a backlog: a unit that is
late is sent at once, and a unit far behind moves the anchor instead of delaying everything after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.reformatter import VideoReformatter

from streamserve.core.clock import SYSTEM_CLOCK, Clock
from streamserve.core.frames import VIDEO_TIME_BASE, AudioChunk, Media, MediaKind, VideoFrame
from streamserve.core.ports import OutputSubscription, SessionHandle
from streamserve.transport.media import audio_from_core, audio_to_core, video_from_core, video_to_core

log = logging.getLogger(__name__)

_DEFAULT_VIDEO_STEP = 3000  # one frame at 30 fps in 1/90000, used to keep pts increasing


@dataclasses.dataclass
class PtsPacer:
    """When to send a unit stamped `media_s` seconds: the playout offset (wall - media time).

    The first unit anchors the offset. A unit that would go out before `anchor + media_s` waits for
    it (this spreads out bursts, e.g. a pipeline that emits several frames per step), while the offset
    creeps down by `decay_s` per early unit so a slow first frame does not add latency forever. A unit
    later than `max_lag_s` re-anchors (sent now, no catch-up burst); so does a hold longer than
    `max_hold_s` (a jump in pts). When every one of `window` units in a row had to wait more than
    `max_lag_s`, the anchor is too late (it was set by a straggler, e.g. a frame recovered late after
    packet loss) and the unit re-anchors (sent now); a bursty source never triggers this
    because the first unit of each burst goes out at once. Pure arithmetic: the caller owns the clock
    and the sleeping.
    """

    max_lag_s: float = 0.05
    max_hold_s: float = 1.0
    decay_s: float = 0.001
    window_s: float = 0.3
    reanchors: int = 0
    _offset: float | None = None
    _early_run: int = 0  # units in a row that had to wait more than max_lag_s
    _early_since: float = 0.0

    def hold(self, media_s: float, now: float) -> float:
        """Seconds to wait before sending (0.0: send now)."""
        natural = now - media_s
        if self._offset is None or natural - self._offset > self.max_lag_s:
            self._anchor(natural)
            return 0.0
        hold = self._offset - natural
        if hold <= self.max_lag_s:
            self._early_run = 0
        else:
            if self._early_run == 0:
                self._early_since = now
            self._early_run += 1
            if self._early_run >= 3 and now - self._early_since >= self.window_s:  # a late anchor
                self._anchor(natural)
                return 0.0
        if hold <= 0.0:
            return 0.0  # a little late: send now, keep the anchor
        if hold > self.max_hold_s:
            self._anchor(natural)
            return 0.0
        self._offset -= min(hold, self.decay_s)
        return self._offset - natural

    def _anchor(self, offset: float) -> None:
        if self._offset is not None:
            self.reanchors += 1
        self._offset = offset
        self._early_run = 0


class _MonotonicPts:
    """Keeps outgoing pts strictly increasing (RTP timestamps must not go back) across pts resets."""

    def __init__(self) -> None:
        self._shift = 0
        self._last: int | None = None
        self._step = _DEFAULT_VIDEO_STEP

    def __call__(self, pts: int) -> int:
        out = pts + self._shift
        if self._last is not None:
            if out > self._last:
                self._step = min(out - self._last, 90_000)
            else:  # the source restarted or went back: continue one step after the last unit
                self._shift += self._last + self._step - out
                out = self._last + self._step
        self._last = out
        return out


class SessionOutputTrack(MediaStreamTrack):
    """An aiortc track that plays a session's output of one kind, paced by pts.

    `recv()` ends (MediaStreamError) when the session ends. Stopping the track closes its
    subscription. Units of the wrong kind are skipped.
    """

    def __init__(
        self,
        subscription: OutputSubscription,
        kind: MediaKind = MediaKind.VIDEO,
        *,
        pacer: PtsPacer | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.kind = kind.value
        self._media_kind = kind
        self._subscription = subscription
        self._pacer = pacer or PtsPacer()
        self._clock = clock
        self._pts = _MonotonicPts()
        self._reformatter: VideoReformatter | None = VideoReformatter()  # RGB -> YUV 4:2:0, context kept
        self.sent = 0

    @property
    def pacer(self) -> PtsPacer:
        return self._pacer

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            media = await self._subscription.get()
            if media is None:
                self.stop()
                raise MediaStreamError
            if media.kind is not self._media_kind:
                continue
            time_base = media.time_base or VIDEO_TIME_BASE
            hold = self._pacer.hold(float(media.pts * time_base), self._clock.now())
            if hold > 0.0:
                await asyncio.sleep(hold)
            if self.readyState != "live":  # stopped while holding
                raise MediaStreamError
            self.sent += 1
            if isinstance(media, VideoFrame):
                return video_from_core(media, pts=self._pts(media.pts), reformatter=self._reformatter)
            assert isinstance(media, AudioChunk)
            frame = audio_from_core(media)
            frame.pts = self._pts(int(frame.pts or 0))
            return frame

    def stop(self) -> None:
        super().stop()
        self._subscription.close()
        self._reformatter = None  # its swscale context goes now, not whenever the track is collected


class InboundPump:
    """Pulls a remote track continuously and pushes what it reads into a session.

    Video (`freshest=True`): a one-frame slot between reading and converting, so only the freshest
    frame is converted and pushed; frames overwritten in the slot count as `dropped`. Audio
    (`freshest=False`): every chunk is pushed, in order (audio cannot skip without a glitch).
    Each unit carries `arrival` (when aiortc handed it over) and `deadline = arrival +
    latency_budget_s`. `on_media` runs for every unit received (liveness). `done` is set when the
    remote track ends or the pump is stopped.
    """

    def __init__(
        self,
        track: MediaStreamTrack,
        handle: SessionHandle,
        *,
        latency_budget_s: float,
        freshest: bool = True,
        on_media: Callable[[], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.kind = str(track.kind)
        self.track = track
        self._handle = handle
        self._budget = latency_budget_s
        self._freshest = freshest
        self._on_media = on_media
        self._clock = clock
        self._latest: tuple[av.VideoFrame | av.AudioFrame, float] | None = None
        self._reformatter: VideoReformatter | None = VideoReformatter()  # YUV -> RGB, swscale context kept
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.done = asyncio.Event()
        self.received = 0
        self.dropped = 0  # overwritten in the slot before conversion
        self.pushed = 0
        self.errors = 0

    def start(self) -> None:
        name = f"inbound-{self.kind}-{self._handle.id}"
        self._tasks = [asyncio.create_task(self._read(), name=f"{name}-read")]
        if self._freshest:
            self._tasks.append(asyncio.create_task(self._push_latest(), name=f"{name}-push"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.track.stop()
        self._latest = None
        self._reformatter = None  # its swscale context goes now, not whenever the pump is collected
        self.done.set()

    def stats(self) -> dict[str, int]:
        return {"received": self.received, "dropped": self.dropped, "pushed": self.pushed,
                "errors": self.errors}

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                arrival = self._clock.now()
                self.received += 1
                if self._on_media is not None:
                    self._on_media()
                if not isinstance(frame, av.VideoFrame | av.AudioFrame):
                    continue  # encoded packets: not produced by aiortc's decoding receiver
                if not self._freshest:
                    self._push(frame, arrival)
                    continue
                if self._latest is not None:
                    self.dropped += 1
                self._latest = (frame, arrival)
                self._ready.set()
        except MediaStreamError:
            log.debug("session %s: remote %s track ended", self._handle.id, self.kind)
        except Exception:
            log.exception("session %s: reading the remote %s track failed", self._handle.id, self.kind)
        finally:
            self.done.set()
            self._ready.set()  # wake the pusher so it can finish

    async def _push_latest(self) -> None:
        while not self.done.is_set() or self._latest is not None:
            await self._ready.wait()
            self._ready.clear()
            latest, self._latest = self._latest, None
            if latest is not None:
                self._push(*latest)

    def _push(self, frame: av.VideoFrame | av.AudioFrame, arrival: float) -> None:
        if self._handle.closed or self._reformatter is None:
            return
        deadline = arrival + self._budget
        try:
            if isinstance(frame, av.VideoFrame):
                media: Media = video_to_core(frame, arrival=arrival, deadline=deadline,
                                             reformatter=self._reformatter)
            else:
                media = audio_to_core(frame, arrival=arrival, deadline=deadline)
            self._handle.push(media)
            self._handle.touch()
            self.pushed += 1
        except Exception:  # one bad unit (or a session that just ended) must not stop the pump
            self.errors += 1
            log.exception("session %s: could not push a %s unit", self._handle.id, self.kind)


async def drain(track: MediaStreamTrack) -> None:
    """Read and discard a remote track nobody consumes, so aiortc's unbounded queue stays empty."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
