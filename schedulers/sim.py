"""A discrete-event simulator of one engine, driving the real `SloScheduler` (the same code the
server runs, not a copy) on a simulated clock. The capacity planner (`streamserve plan`) and the
scheduler tests use it.

Each simulated session sends units at its spec's rate from `start` (with a phase offset), each due
`budget_s` after arrival, into a bounded freshest-wins inbox like the server's. The engine loop is
the server's: `plan = schedule(now)`; the batches and chores take the time `step_time` says (the
"true" device); `update(plan, outputs, elapsed)`. A session joins through admission (refused ones
are recorded with the reason) and, if `join_pieces` are given, opens in pieces (stall-free) or, with
a scheduler built with `stall_free=False`, in one blocking piece (how a server without chores opens a session).

With an `Overhead` (learned by a real server, `schedulers/overhead.py`), the simulated device and
clients are the real ones': each unit reaches the server a sampled `arrival` after its slot on the
session's clock (never before the unit ahead of it), each batch starts a sampled `pre` late, runs a
sampled `pace` (or, without one, `jitter`) x `step_time`, and each output reaches its session a sampled `post` after the step
(deadlines are judged there). Each part is drawn as a sequence with its learned lag-1 correlation
(`Overhead.sampler`), one per pipeline, and one per session for `arrival`.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

from streamserve.core.frames import Media, MediaKind
from streamserve.core.plan import StepOutput
from streamserve.schedulers.cost import WorkShape
from streamserve.schedulers.overhead import NEUTRAL, Overhead
from streamserve.schedulers.slo import Join, SloScheduler
from streamserve.schedulers.spec import SessionSpec

StepTime = Callable[[str, Sequence[WorkShape], float], float]  # (pipeline, shape per item, now) -> s


@dataclasses.dataclass(slots=True)
class SimUnit:
    """A media unit without pixels: what the scheduler reads of one (timing, kind, meta)."""

    pts: int
    arrival: float
    deadline: float
    kind: MediaKind = MediaKind.VIDEO
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class SimInbox:
    """The server's inbox semantics (bounded; when full the oldest unit is dropped)."""

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[SimUnit] = collections.deque()
        self.maxsize = maxsize
        self.dropped = 0

    def put(self, unit: SimUnit) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(unit)

    def peek(self) -> Media | None:
        return cast(Media, self._items[0]) if self._items else None

    def pop(self) -> Media | None:
        return cast(Media, self._items.popleft()) if self._items else None

    def __len__(self) -> int:
        return len(self._items)


@dataclasses.dataclass
class SimSession:
    spec: SessionSpec
    start: float = 0.0
    phase: float = 0.0  # seconds after `start` of the first unit
    join_pieces: tuple[tuple[str, float], ...] = ()  # (piece name, seconds) to open the session


@dataclasses.dataclass
class SessionResult:
    session_id: str
    admitted: bool
    reason: str = ""
    offered: int = 0
    on_time: int = 0
    late: int = 0
    expired: int = 0
    skipped: int = 0
    dropped: int = 0  # evicted from the inbox
    latencies: list[float] = dataclasses.field(default_factory=list)
    tiers: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (time, level)
    joined_at: float | None = None

    @property
    def delivered(self) -> int:
        return self.on_time + self.late


@dataclasses.dataclass
class SimResult:
    duration: float
    sessions: list[SessionResult]
    busy_s: float

    @property
    def admitted(self) -> list[SessionResult]:
        return [s for s in self.sessions if s.admitted]

    def goodput(self) -> float:
        """On-time units over the units of admitted sessions that were resolved (run, expired or
        evicted; units still queued at the end do not count; tier-skipped units are not offered)."""
        resolved = sum(s.on_time + s.late + s.expired + s.dropped for s in self.admitted)
        return sum(s.on_time for s in self.admitted) / resolved if resolved else 1.0

    def on_time_fps(self) -> float:
        return sum(s.on_time for s in self.admitted) / self.duration

    def latency_percentile(self, q: float) -> float:
        values = sorted(v for s in self.admitted for v in s.latencies)
        if not values:
            return math.nan
        return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def simulate(  # noqa: C901 - one event loop, kept in one place
    sessions: Sequence[SimSession],
    step_time: StepTime,
    scheduler: SloScheduler,
    duration: float,
    *,
    inbox_size: int = 2,
    audio_inbox_size: int = 16,
    warmup: float = 0.0,
    admit_all: bool = False,
    overhead: Overhead | None = None,
    seed: int = 0,
) -> SimResult:
    """Run `duration` simulated seconds; units arriving before `warmup` are not counted.
    `admit_all`: skip admission (what a server without it does: everyone in, at tier 0).
    `overhead`: the real server's non-compute latency, sampled (seeded by `seed`)."""
    rng = random.Random(seed)
    results = [SessionResult(f"s{i}", admitted=False) for i in range(len(sessions))]
    inboxes: dict[str, SimInbox] = {}
    arrivals: list[tuple[float, int, int, float]] = []  # (time, session index, pts, the unit's slot)
    joins: list[tuple[float, int]] = [(s.start, i) for i, s in enumerate(sessions)]
    heapq.heapify(joins)
    now, busy = 0.0, 0.0
    pending_join: set[int] = set()

    chains: dict[tuple[str, str, int], Callable[[], float]] = {}

    def draw(pipeline: str, part: str, chain: int = -1) -> float:
        """The next value of a part (its own correlated sequence per pipeline, and per session for
        `arrival`); neutral without an overhead."""
        if overhead is None:
            return NEUTRAL[part]
        key = (pipeline, part, chain)
        if key not in chains:
            if part == "jitter" and overhead.quantiles(pipeline, "pace") is not None:
                part = "pace"  # the step time around the profile's times, slow spells included
            chains[key] = overhead.sampler(pipeline, part, rng)
        return chains[key]()

    def join_done(i: int) -> Callable[[BaseException | None], None]:
        def done(exc: BaseException | None) -> None:
            sid = results[i].session_id
            pending_join.discard(i)
            scheduler.add(sid, sessions[i].spec.pipeline, inboxes[sid], sessions[i].spec)
            results[i].joined_at = now
        return done

    def start_session(i: int) -> None:
        sim, res = sessions[i], results[i]
        if admit_all:
            scheduler.admission.ensure(res.session_id, sim.spec)
            res.admitted, res.reason = True, "admitted without a check"
        else:
            decision = scheduler.admission.check(res.session_id, sim.spec)
            res.admitted, res.reason = decision.admitted, decision.reason
            if not decision.admitted:
                return
        inboxes[res.session_id] = SimInbox(audio_inbox_size if sim.spec.lane == "voice" else inbox_size)
        slot = sim.start + sim.phase
        heapq.heappush(arrivals, (slot + draw(sim.spec.pipeline, "arrival", i), i, 0, slot))
        pieces = sim.join_pieces if scheduler.stall_free else (
            (("open", sum(t for _, t in sim.join_pieces)),) if sim.join_pieces else ())
        pending_join.add(i)
        scheduler.submit(Join(res.session_id, sim.spec.pipeline,
                              collections.deque((name, _noop) for name, _ in pieces), join_done(i), now))
        if not pieces:
            join_done(i)(None)

    piece_time = {f"{s.spec.pipeline}#{name}": t for s in sessions for name, t in s.join_pieces}
    if not scheduler.stall_free:
        for s in sessions:
            piece_time[f"{s.spec.pipeline}#open"] = sum(t for _, t in s.join_pieces)

    while now < duration:
        while joins and joins[0][0] <= now:
            start_session(heapq.heappop(joins)[1])
        while arrivals and arrivals[0][0] <= now:
            t, i, pts, slot = heapq.heappop(arrivals)
            spec, res = sessions[i].spec, results[i]
            unit = SimUnit(pts, t, t + spec.budget_s, MediaKind.AUDIO if spec.lane == "voice" else MediaKind.VIDEO)
            inbox = inboxes[res.session_id]
            before = inbox.dropped
            inbox.put(unit)
            if t >= warmup:
                res.offered += 1
                res.dropped += inbox.dropped - before
            slot += 1.0 / spec.fps
            heapq.heappush(arrivals, (max(t, slot + draw(spec.pipeline, "arrival", i)), i, pts + 1, slot))
        plan = scheduler.schedule(now)
        elapsed: dict[str, float] = {}
        t = now
        outputs: list[StepOutput] = []
        for batch in plan.batches:
            t += draw(batch.pipeline, "pre")
            seconds = step_time(batch.pipeline, [scheduler.shape_of(i.session_id) for i in batch.items], t)
            seconds *= draw(batch.pipeline, "jitter")
            elapsed[batch.pipeline] = seconds
            t += seconds
            for item in batch.items:
                res = results[int(item.session_id[1:])]
                outputs.append(StepOutput(item.session_id, (item.media,)))
                seen = t + draw(batch.pipeline, "post")
                if item.media.arrival >= warmup:
                    res.latencies.append(seen - item.media.arrival)
                    if seen <= item.media.deadline:
                        res.on_time += 1
                    else:
                        res.late += 1
        for chore in plan.chores:
            seconds = piece_time.get(chore.key, 0.0)
            elapsed[chore.key] = elapsed.get(chore.key, 0.0) + seconds
            t += seconds
            chore.run()
            now_saved, now = now, t
            chore.done(None)
            now = now_saved
        for items, field in ((plan.expired, "expired"), (plan.skipped, "skipped")):
            for item in items:
                if item.media.arrival >= warmup:
                    res = results[int(item.session_id[1:])]
                    # superseded: dropped for overload (counted as expired), not a tier's decimation
                    name = "expired" if item.media.meta.get("dropped") == "superseded" else field
                    setattr(res, name, getattr(res, name) + 1)
        busy += t - now
        if plan.batches or plan.chores:
            scheduler.update(plan, outputs, elapsed)
            _record_tiers(scheduler, results, t)
            now = t
            continue
        if plan.expired or plan.skipped:
            scheduler.update(plan, outputs, elapsed)
        nxt = [duration]
        if arrivals:
            nxt.append(arrivals[0][0])
        if joins:
            nxt.append(joins[0][0])
        if plan.wake_at is not None and plan.wake_at > now:
            nxt.append(plan.wake_at)
        now = max(now, min(nxt))
    return SimResult(duration - warmup, results, busy)


def _noop() -> None:
    return None


def _record_tiers(scheduler: SloScheduler, results: list[SessionResult], t: float) -> None:
    for res in results:
        if res.admitted and res.session_id in scheduler.admission:
            level = scheduler.admission.tier(res.session_id).level
            if not res.tiers or res.tiers[-1][1] != level:
                res.tiers.append((t, level))
