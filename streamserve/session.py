"""A streaming session: a bounded inbox where the freshest input wins, output fan-out, and stats.

Threads: `push`, `deliver`, `subscribe`, `update` and `close` run on the asyncio loop thread; the
engine thread only pops from the inbox (through the scheduler) and never touches subscriptions.
Outputs reach the loop thread through `loop.call_soon_threadsafe` (see `streamserve.engine`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from streamserve.core.clock import SYSTEM_CLOCK, Clock
from streamserve.core.config import SessionConfig
from streamserve.core.frames import AudioChunk, Media, MediaKind
from streamserve.core.params import parse_params

log = logging.getLogger(__name__)

TICK_RATE = 16_000  # an empty chunk's nominal rate (a pipeline never resamples a tick)
_NO_SAMPLES = np.zeros((1, 0), np.int16)

T = TypeVar("T")

LATENCY_WINDOW = 512  # outputs kept for the latency percentiles


class SessionObserver(Protocol):
    """Where a session reports what happens to its media (the metrics registry implements it)."""

    def media_in(self, pipeline: str, kind: MediaKind) -> None: ...
    def media_dropped(self, pipeline: str, reason: str, count: int = 1) -> None: ...
    def media_out(self, pipeline: str, kind: MediaKind, latency_s: float, missed: bool) -> None: ...


class FreshestQueue:
    """A bounded, thread-safe FIFO that never blocks a producer: when full, the oldest unit is dropped.

    Producers (the loop thread) `put`; the consumer (the engine thread) `peek`s and `pop`s.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self._items: collections.deque[Media] = collections.deque()
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, item: Media) -> Media | None:
        """Append `item`; returns the unit dropped to make room, if any."""
        with self._lock:
            evicted = None
            if len(self._items) >= self._maxsize:
                evicted = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            return evicted

    def peek(self) -> Media | None:
        with self._lock:
            return self._items[0] if self._items else None

    def pop(self) -> Media | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class OrderedQueue(FreshestQueue):
    """A bounded FIFO for audio: when full, the *new* unit is refused (returned) and counted, so what
    was queued stays in order with no hole in the middle; the caller reports the overload."""

    def put(self, item: Media) -> Media | None:
        with self._lock:
            if len(self._items) >= self._maxsize:
                self.dropped += 1
                return item
            self._items.append(item)
            return None


class MediaInbox:
    """A session's pending input: one FreshestQueue per media kind behind one scheduler view.

    Video keeps the freshest `video_size` frames; audio is an ordered FIFO of `audio_size` chunks that
    never evicts (a full queue refuses new chunks: overload, counted as `dropped_overload`).
    Separate queues mean 50 audio chunks a second never evict a video frame (or the reverse).
    `peek`/`pop` hand out whichever head is due first.
    """

    def __init__(self, video_size: int, audio_size: int) -> None:
        self._queues = {MediaKind.VIDEO: FreshestQueue(video_size), MediaKind.AUDIO: OrderedQueue(audio_size)}

    def put(self, item: Media) -> Media | None:
        return self._queues[item.kind].put(item)

    def _due(self) -> FreshestQueue | None:
        best: tuple[float, FreshestQueue] | None = None
        for q in self._queues.values():
            head = q.peek()
            if head is not None and (best is None or head.deadline < best[0]):
                best = (head.deadline, q)
        return best[1] if best else None

    def peek(self) -> Media | None:
        q = self._due()
        return q.peek() if q else None

    def pop(self) -> Media | None:
        q = self._due()
        return q.pop() if q else None

    def clear(self) -> int:
        return sum(q.clear() for q in self._queues.values())

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())


class Feed(Generic[T]):
    """One consumer's bounded queue of a session's outputs (loop thread): the freshest units win, the
    end-of-stream marker (None) is never dropped and keeps answering None."""

    def __init__(self, maxsize: int, on_close: Callable[[Any], None]) -> None:
        self._items: collections.deque[T | None] = collections.deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._on_close = on_close
        self._closed = False
        self._dropped = 0

    @property
    def dropped(self) -> int:
        return self._dropped

    def offer(self, item: T | None) -> None:
        if self._closed:
            return
        if item is not None and len(self._items) >= self._maxsize:
            self._items.popleft()
            self._dropped += 1
        self._items.append(item)
        self._ready.set()

    async def get(self) -> T | None:
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is None:  # end of stream: keep answering None
            self._items.appendleft(None)
        return item

    def flush(self) -> int:
        """Drop every queued unit (barge-in); the end-of-stream marker stays. Returns how many."""
        kept = [item for item in self._items if item is None]
        n = len(self._items) - len(kept)
        self._items = collections.deque(kept)
        return n

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._on_close(self)


class Subscription(Feed[Media]):
    """One consumer of a session's output of one kind."""

    def __init__(self, kind: MediaKind, maxsize: int, on_close: Callable[[Subscription], None]) -> None:
        super().__init__(maxsize, on_close)
        self.kind = kind


class EventSubscription(Feed[dict[str, Any]]):
    """A consumer of a session's control events (JSON-able dicts), in order; bounded, oldest dropped."""


class LatencyWindow:
    """The last N latencies, with percentiles on demand."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def percentile(self, q: float) -> float | None:
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[rank]


class Session:
    """Implements `streamserve.core.ports.SessionHandle`."""

    def __init__(
        self,
        pipeline: str,
        params_cls: type,
        params: Any,
        *,
        inputs: frozenset[MediaKind],
        outputs: frozenset[MediaKind],
        config: SessionConfig,
        source: str,
        stream: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        observer: SessionObserver | None = None,
        on_input: Callable[[], None] = lambda: None,
        on_update: Callable[..., Awaitable[None] | None] = lambda s, p: None,
        session_id: str | None = None,
        control_keys: tuple[str, ...] = (),
    ) -> None:
        self._id = session_id or uuid.uuid4().hex[:12]
        self.secret = secrets.token_urlsafe(24)  # the creator's credential for this session (never in stats)
        self._pipeline = pipeline
        self._params_cls = params_cls
        self.params = params
        self.inputs = inputs
        self.outputs = outputs  # what the pipeline produces (a recording needs video)
        self.config = config
        self.source = source
        self._stream = stream
        self._clock = clock
        self._observer = observer
        self._on_input = on_input
        self._on_update = on_update
        self._control_keys = control_keys  # keys of an update that are not the pipeline's (QoS)
        self.inbox = MediaInbox(config.inbox_size, config.audio_inbox_size)
        self._subs: dict[MediaKind, list[Subscription]] = {MediaKind.VIDEO: [], MediaKind.AUDIO: []}
        self._event_subs: list[EventSubscription] = []
        self.created = clock.now()
        self.last_seen = self.created
        self.counts: collections.Counter[str] = collections.Counter()
        self.latency = LatencyWindow()
        self.close_reason: str | None = None
        self._closed_event = asyncio.Event()
        self.slo_info: Callable[[], dict[str, Any] | None] | None = None  # tier and why (SLO scheduler)
        self.device: str | None = None  # the engine it runs on, set by the manager (many devices)
        self._update_lock = asyncio.Lock()
        self.recorder: Callable[[Media], None] | None = None  # sees accepted input (migration history)
        self.on_arrival: Callable[[Media], None] | None = None  # sees accepted input (the input clock)

    # --- identity -------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._id

    @property
    def pipeline(self) -> str:
        return self._pipeline

    @property
    def stream(self) -> str | None:
        return self._stream

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    # --- input ----------------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_seen = self._clock.now()

    def push(self, media: Media) -> None:
        if self.closed:
            return
        self.last_seen = self._clock.now()
        self.counts[f"{media.kind}_in"] += 1
        if self._observer:
            self._observer.media_in(self._pipeline, media.kind)
        if media.kind not in self.inputs:
            # A kind the model does not consume (audio into a video model) goes straight through.
            self.deliver(media)
            return
        if self.inbox.put(media) is not None:
            self.count_dropped("overload" if media.kind is MediaKind.AUDIO else "inbox")
        if self.recorder is not None:
            self.recorder(media)
        if self.on_arrival is not None:
            self.on_arrival(media)
        self._on_input()

    def tick(self) -> None:
        """Ask the engine for a step of this session with no new input (any thread).

        An audio pipeline whose background work (a transcript, a first clause's speech) finishes
        between two input chunks calls this, through `Pipeline.ticker`, so the result goes out now
        instead of with the next chunk (up to a chunk, 20 ms, later). The tick is an empty audio
        chunk marked ``meta["tick"]`` in the ordered audio queue: behind any queued chunk, never
        counted as input, and not queued at all when that queue is full."""
        if self.closed or MediaKind.AUDIO not in self.inputs:
            return
        now = self._clock.now()
        tick = AudioChunk(_NO_SAMPLES, TICK_RATE, 0, now, now + self.config.latency_budget_s, meta={"tick": True})
        if self.inbox.put(tick) is None:
            self._on_input()

    def count_dropped(self, reason: str, count: int = 1) -> None:
        self.counts[f"dropped_{reason}"] += count
        if self._observer:
            self._observer.media_dropped(self._pipeline, reason, count)

    # --- output ---------------------------------------------------------------------------------
    def subscribe(self, kind: MediaKind, maxsize: int | None = None) -> Subscription:
        default = self.config.audio_outbox_size if kind is MediaKind.AUDIO else self.config.outbox_size
        sub = Subscription(kind, maxsize or default, self._unsubscribe)
        if self.closed:
            sub.offer(None)
        else:
            self._subs[kind].append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs[sub.kind]
        if sub in subs:
            subs.remove(sub)

    def subscribe_events(self, maxsize: int = 1024) -> EventSubscription:
        sub = EventSubscription(maxsize, lambda s: self._event_subs.remove(s) if s in self._event_subs else None)
        if self.closed:
            sub.offer(None)
        else:
            self._event_subs.append(sub)
        return sub

    def publish(self, event: dict[str, Any]) -> None:
        """Fan a control event out to the event subscribers (loop thread)."""
        if self.closed:
            return
        self.counts["events"] += 1
        for sub in self._event_subs:
            sub.offer(event)

    def flush(self, kind: MediaKind) -> int:
        """Drop the output of `kind` queued for every subscriber (barge-in). Returns units dropped."""
        n = sum(sub.flush() for sub in self._subs[kind])
        self.counts["flushed_out"] += n
        return n

    def deliver(self, media: Media) -> None:
        """Fan an output unit out to the subscribers of its kind (loop thread)."""
        if self.closed:
            return
        now = self._clock.now()
        latency = now - media.arrival
        missed = now > media.deadline
        self.latency.add(latency)
        self.counts[f"{media.kind}_out"] += 1
        if missed:
            self.counts["deadline_misses"] += 1
        if self._observer:
            self._observer.media_out(self._pipeline, media.kind, latency, missed)
        for sub in self._subs[media.kind]:
            sub.offer(media)

    # --- control --------------------------------------------------------------------------------
    async def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate `params`, have the pipeline apply them, then report the params now in effect.

        `on_update` (the engine) may refuse them (InvalidParams naming the field); `self.params`
        changes only once the pipeline has accepted, so stats never show params not in effect.
        """
        if self.closed:
            from streamserve.core.errors import SessionClosed

            raise SessionClosed(f"session {self._id} has ended ({self.close_reason})")
        async with self._update_lock:  # one at a time: each partial update builds on the last applied
            control = {k: params[k] for k in self._control_keys if k in params}
            rest = {k: v for k, v in params.items() if k not in control} if control else params
            new = parse_params(self._params_cls, rest, base=self.params)
            # Control keys (QoS: fps, priority, ...) go to `on_update` beside the params, which
            # may re-admit the session with them (streamserve.gate).
            applied = self._on_update(self, new, control) if control else self._on_update(self, new)
            if applied is not None:
                await applied
            self.params = new
            return self.params_dict()

    def params_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self.params)

    def stats(self) -> dict[str, Any]:
        now = self._clock.now()

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 2)

        c = self.counts
        return {
            "session_id": self._id,
            "pipeline": self._pipeline,
            "stream": self._stream,
            "source": self.source,
            "device": self.device,
            "age_s": round(now - self.created, 3),
            "frames_in": c["video_in"],
            "frames_out": c["video_out"],
            "audio_in": c["audio_in"],
            "audio_out": c["audio_out"],
            "frames_dropped": c["dropped_inbox"] + c["dropped_expired"] + c["dropped_superseded"],
            "dropped_inbox": c["dropped_inbox"],
            "dropped_expired": c["dropped_expired"],
            "dropped_overload": c["dropped_overload"],
            "events": c["events"],
            "flushed_out": c["flushed_out"],
            "deadline_misses": c["deadline_misses"],
            "errors": c["errors"],
            "latency_ms": {"p50": ms(self.latency.percentile(50)), "p95": ms(self.latency.percentile(95)),
                           "p99": ms(self.latency.percentile(99))},
            "params": self.params_dict(),
            "dropped_tier": c["dropped_tier"],
            "dropped_superseded": c["dropped_superseded"],  # overload: a newer frame ran instead
            "slo": self.slo_info() if self.slo_info is not None else None,
        }

    def close(self, reason: str) -> bool:
        """End the session (loop thread). Returns False if it had already ended."""
        if self.closed:
            return False
        self.close_reason = reason
        self.inbox.clear()
        for subs in self._subs.values():
            for sub in list(subs):
                sub.offer(None)
            subs.clear()
        for esub in list(self._event_subs):
            esub.offer(None)
        self._event_subs.clear()
        self._closed_event.set()
        log.info("session %s (%s) ended: %s", self._id, self._pipeline, reason)
        return True

    async def wait_closed(self) -> str:
        await self._closed_event.wait()
        return self.close_reason or ""
