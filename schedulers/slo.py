"""The SLO-aware scheduler: EDF batching that keeps each session's promise, and says what it is.

`schedule(now)` builds one plan:

1. **Tiers** the policy or admission moved since the last plan are applied: a tier that changes the
   work shape queues a re-tier chore (the pipeline's params change between batches).
2. Each session offers its oldest unit. Video units that cannot finish by their deadline any more
   are expired (dropped, counted); voice units only once their deadline has passed. A video unit
   with a newer one queued behind it gives way to it (`superseded`) when running it first would
   make the newer one miss its deadline: under overload the freshest frame runs, so latency stays
   one round instead of growing by a frame period. If that
   prediction has stopped every step of a pipeline for `PROBE_AFTER_S`, one unit runs anyway (a
   probe: the cost model learns only from steps, and may be stuck on a slow spell that ended). A
   session on a lower frame-rate tier skips units to its rate (`skipped`, counted as such): a
   deliberate, even decimation instead of random drops (`schedulers/live.py`: a rate credit, not
   "every k-th unit"; a 9/10 tier on a 30 fps camera takes 9 frames of every 10, evenly spread).
   A tier's rate is a floor, not a ceiling: a unit the credit does not grant, with nothing newer
   queued behind it (or only a jitter burst's second unit, with time for both), is a *spare*.
   Spares top up a batch that runs anyway (up to its size), or run alone when the plan would
   otherwise leave the engine idle and no other session's unit is due before they would finish;
   either way only while they fit every live session's slack (the chores' test, 5.). So spare
   device time is not thrown away.
3. **Batches**, earliest deadline first (ties: higher priority), one per pipeline, up to `max_batch`;
   video up to the largest size whose worst latency fits (`schedulers/batching.py`; off: `adapt_batch`).
   *Lanes*: while voice sessions are live, a video batch is cut to the largest size whose predicted
   cost fits the voice slack (voice budget minus voice compute), so a voice chunk never waits behind
   a video batch for longer than its slack; voice batches, with earlier deadlines, go first.
4. **Hold** (SLO-aware batching): if sessions of a pipeline are missing from its batch but their
   next frame is due before the batch's latest start (earliest deadline minus the full batch's
   predicted cost, and never later than the next frame of a session already waiting), the batch
   waits for them (`wake_at`): one batch of n costs far less than n batches of one. It holds only
   when running every unit alone would load the device past half its `max_utilization` (sum of
   rate x single cost): below that, waiting would only add latency. Voice never holds.
5. **Chores** (stall-free joins, Sarathi-Serve style): the pieces of opening a session (prompt
   encoding, cache allocation, first encode) run after the batches only while their predicted cost
   fits the slack of every live session (its budget minus a round of batches, and the time until
   its inbox would overflow, which would drop a frame as surely as lateness); a join waiting
   longer than `join_timeout_s` gets one piece regardless, so it always finishes.

`update(plan, outputs, elapsed)` feeds the measured step times to the cost model (and scores it),
records which units finished late, and lets the degradation policy move one tier if it must.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Collection, Sequence

from streamserve.core.frames import Media
from streamserve.core.plan import Batch, Chore, StepOutput, StepPlan, WorkItem
from streamserve.schedulers.admission import Admission, AdmissionConfig, video_batch_cap, voice_slack
from streamserve.schedulers.base import InboxView
from streamserve.schedulers.batching import round_costs, video_batch_sizes
from streamserve.schedulers.cost import CostModel, WorkShape
from streamserve.schedulers.live import Join, LiveSession, OnTier
from streamserve.schedulers.policy import DegradePolicy, MissWindow, TierChange
from streamserve.schedulers.spec import SessionSpec
from streamserve.schedulers.stats import SloStats

UNKNOWN_PIECE_S = 0.05  # a chore piece never measured is assumed this long (and runs alone)
HOLD_ABOVE = 0.5  # hold batches open only above this fraction of max_utilization (unbatched load)
PROBE_AFTER_S = 0.5  # after this long without a step of a pipeline, units are no longer expired by prediction


class SloScheduler:
    def __init__(self, cost: CostModel | None = None, admission: Admission | None = None, *,
                 max_batch: int = 8, policy: DegradePolicy | None = None, hold: bool = True,
                 stall_free: bool = True, join_timeout_s: float = 2.0, inbox_size: int = 2,
                 supersede: bool = True, adapt_batch: bool = True, spare: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if join_timeout_s <= 0:
            raise ValueError(f"join_timeout_s must be > 0, got {join_timeout_s}")
        self.cost = cost or (admission.cost if admission else CostModel())
        self.admission = admission or Admission(self.cost, AdmissionConfig(max_batch=max_batch))
        self.max_batch = max_batch
        self.policy = policy or DegradePolicy()
        self.hold = hold
        self.stall_free = stall_free
        self.supersede = supersede  # an overloaded video session runs its freshest unit (module doc, 2.)
        self.adapt_batch = adapt_batch  # video batches of the size that fits the deadline (module doc, 3.)
        self.spare = spare  # an idle engine runs units a lower tier skips, when they fit (module doc, 2.)
        self.inbox_size = inbox_size  # the sessions' video inbox bound (chores must not overflow it)
        self.join_timeout_s = join_timeout_s
        self.stats = SloStats()
        self._live: dict[str, LiveSession] = {}
        self._joins: collections.deque[Join] = collections.deque()
        self._retier: collections.deque[Chore] = collections.deque()
        self._misses = MissWindow()  # the units' outcomes the policy judges
        self._free_at = float("-inf")  # when the engine finished its last plan (the scheduler's clock)
        self._held: dict[str, float] = {}  # pipeline -> until when its batch was last held
        self._last_step: dict[str, float] = {}  # pipeline -> when its last batch was planned

    # --- sessions -------------------------------------------------------------------------------
    def add(self, session_id: str, pipeline: str, inbox: InboxView, spec: SessionSpec | None = None,
            on_tier: OnTier | None = None) -> None:
        if session_id in self._live:
            raise ValueError(f"session {session_id!r} is already scheduled")
        spec = spec or SessionSpec(pipeline)
        if spec.pipeline != pipeline:
            raise ValueError(f"spec is for pipeline {spec.pipeline!r}, not {pipeline!r}")
        self.admission.ensure(session_id, spec)
        live = LiveSession(session_id, spec, inbox, on_tier)
        live.applied = self.admission.tier(session_id).level
        if live.applied:
            live.reason = "admitted at a lower tier: the device was busy"
        self._live[session_id] = live
        self.policy.joined(session_id)

    def respec(self, session_id: str, spec: SessionSpec, reason: str) -> None:
        """A live session now asks for `spec` and runs at the level admission gave it (`Admission.change`),
        its pipeline params already changed to match (engine thread)."""
        live = self._live.get(session_id)
        if live is None:
            return
        if spec.pipeline != live.spec.pipeline:
            raise ValueError(f"spec is for pipeline {spec.pipeline!r}, not {live.spec.pipeline!r}")
        old_level = live.applied
        live.spec = spec
        live.applied = self.admission.tier(session_id).level if session_id in self.admission else 0
        live.reason = reason
        if live.applied > old_level:  # a clamped change counts as a lowering: restores wait for the hold
            self.policy.lowered(self._free_at)

    def remove(self, session_id: str) -> None:
        self._live.pop(session_id, None)
        self.admission.release(session_id)
        self.policy.left(session_id)
        for join in self._joins:
            if join.session_id == session_id:
                join.failed = True

    def __len__(self) -> int:
        return len(self._live)

    def submit(self, join: Join) -> None:
        """Queue a session's opening pieces (engine thread)."""
        self._joins.append(join)

    def tier_info(self, session_id: str) -> dict[str, object] | None:
        """What tier a session runs at and why (for its stats and the demo overlay)."""
        live = self._live.get(session_id)
        if live is None or session_id not in self.admission:
            return None
        tier = self.admission.tier(session_id)
        return {**tier.to_dict(), "tiers": len(self.admission.tiers(session_id)), "reason": live.reason,
                "priority": live.spec.priority, "requested_fps": live.spec.fps,
                "spare_frames": self.spare and tier.fps < live.spec.fps}  # its rate is a floor (module doc, 2.)

    @property
    def adapt_batch(self) -> bool:
        return self.admission.config.adapt_batch

    @adapt_batch.setter
    def adapt_batch(self, on: bool) -> None:  # the ledger predicts the batches this scheduler runs
        self.admission.config = dataclasses.replace(self.admission.config, adapt_batch=on)

    # --- the plan -------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        self._apply_tiers(now)
        voice = [lv for lv in self._live.values() if lv.spec.lane == "voice"]
        video = [(lv.spec.pipeline, self._shape(lv), lv.spec.budget_s) for lv in self._live.values()
                 if lv.spec.lane != "voice"]
        video_cap = self.max_batch
        if voice:
            voice_round = sum(self.cost.cost(lv.spec.pipeline, self._shape(lv), 1) for lv in voice)
            slack = voice_slack([lv.spec.budget_s for lv in voice], [lv.spec.fps for lv in voice], voice_round)
            video_cap = max(1, video_batch_cap(self.cost, [(p, s) for p, s, _ in video], slack, self.max_batch))
        sizes = video_batch_sizes(self.cost, video, video_cap, self.adapt_batch)
        expired: list[WorkItem] = []
        skipped: list[WorkItem] = []
        heads: list[tuple[float, int, int, LiveSession, Media]] = []
        spares: list[tuple[float, int, int, LiveSession, Media]] = []  # units their tier skips (module doc, 2.)
        # computed once, and only if some video head has a newer unit behind it (rare below overload)
        rounds = functools.cache(lambda: round_costs(self.cost, video, sizes))
        for order, live in enumerate(list(self._live.values())):
            head, is_spare = self._head(live, now, expired, skipped, rounds)
            if head is not None:
                (spares if is_spare else heads).append((head.deadline, -live.spec.priority, order, live, head))
        heads.sort(key=lambda h: h[:3])
        spare_heads = [live for *_, live, _ in sorted(spares, key=lambda h: h[:3])]

        groups: dict[str, list[tuple[LiveSession, Media]]] = {}
        for _, _, _, live, head in heads:
            cap = sizes[live.spec.pipeline] if live.spec.lane != "voice" else self.max_batch
            group = groups.setdefault(live.spec.pipeline, [])
            if len(group) < cap:
                group.append((live, head))

        batches: list[Batch] = []
        wake_at: float | None = None
        # Holding only pays when the device would be busy running every unit in a batch of its own.
        solo = sum(self._fps(lv) * self.cost.cost(lv.spec.pipeline, self._shape(lv), 1) for lv in self._live.values())
        hold = self.hold and solo > HOLD_ABOVE * self.admission.config.max_utilization
        # Voice backlog (chunks queued behind the last video batch): drain it before more video.
        backlog = any(len(lv.inbox) > 1 for lv in voice)
        for pipeline, group in groups.items():
            if backlog and group[0][0].spec.lane != "voice":
                wake_at = now if wake_at is None else min(wake_at, now)
                continue
            hold_until = self._hold_until(now, pipeline, group, sizes.get(pipeline, 0)) if hold else None
            if hold_until is not None:
                wake_at = hold_until if wake_at is None else min(wake_at, hold_until)
                self._held[pipeline] = hold_until
                continue
            lives = [live for live, _ in group]
            batches += self._batch(now, pipeline, lives, self._spares(now, pipeline, lives, spare_heads, sizes))
        if spare_heads and not batches and wake_at is None:  # the engine would be idle
            pipeline = spare_heads[0].spec.pipeline
            batches += self._batch(now, pipeline, [], self._spares(now, pipeline, [], spare_heads, sizes))
        plan_cost = sum(self.cost.batch_cost(b.pipeline, [self._shape(self._live[i.session_id]) for i in b.items])
                        for b in batches)
        chores = self._chores(now, plan_cost)
        return StepPlan(now=now, batches=tuple(batches), expired=tuple(expired), skipped=tuple(skipped),
                        chores=tuple(chores), wake_at=wake_at)

    def _batch(self, now: float, pipeline: str, sessions: list[LiveSession],
               spares: list[LiveSession]) -> list[Batch]:
        """Pop each session's head into one batch of `pipeline` (none if no head was left). When a
        spare unit runs is the scheduler's choice, not overhead: only the others time `pre`."""
        items, granted = [], 0
        for k, live in enumerate(sessions + spares):
            media = live.inbox.pop()
            if media is not None:
                live.last_taken = media.arrival
                items.append(WorkItem(live.session_id, media))
                granted += k < len(sessions)
        if not items:
            return []
        self._last_step[pipeline] = now
        if granted:
            self._observe_pre(now, pipeline, items[:granted])
        return [Batch(pipeline, tuple(items))]

    def _spares(self, now: float, pipeline: str, granted: list[LiveSession], spare: list[LiveSession],
                sizes: dict[str, int]) -> list[LiveSession]:
        """The spare units (their sessions, removed from `spare`) that join the batch of `granted`:
        as many as its size allows and fit every live session's slack (the chores' test); with no
        granted unit, only if no other session's unit is due before they would finish."""
        extra = [lv for lv in spare if lv.spec.pipeline == pipeline][: max(0, sizes.get(pipeline, 1) - len(granted))]
        base = self.cost.batch_cost(pipeline, [self._shape(lv) for lv in granted]) if granted else 0.0
        round_cost = self.admission.load().worst_latency_s if extra else 0.0  # once, not per size tried
        while extra:
            group = granted + extra
            ids = {lv.session_id for lv in group}
            total = self.cost.batch_cost(pipeline, [self._shape(lv) for lv in group])
            head_room = min(m.deadline for lv in extra if (m := lv.inbox.peek()) is not None) - now - total
            due = min([d for lv in self._live.values() if not granted and lv.session_id not in ids  # future only:
                       and lv.last_seen is not None  # an overdue unit is a stream that paused
                       and (d := lv.rate.next_due(lv.last_seen, lv.spec.fps, self._fps(lv))) > now], default=math.inf)
            if total - base <= self._chore_budget(now, base, ids, round_cost) and head_room >= 0 and due >= now + total:
                break
            extra.pop()
        for lv in extra:
            spare.remove(lv)
        self.stats.spare_units[pipeline] += len(extra)
        return extra

    def _observe_pre(self, now: float, pipeline: str, items: list[WorkItem]) -> None:
        """The batch could have started at its first unit's arrival (its last one's when the batch
        was held for it, at most the hold's end), or when the engine became free: any later is
        overhead outside the scheduler (`schedulers/overhead.py`)."""
        arrivals = [i.media.arrival for i in items]
        held = self._held.pop(pipeline, None)
        ready = min(arrivals) if held is None else max(min(arrivals), min(max(arrivals), held))
        ready = max(ready, self._free_at)
        self.cost.overhead.observe(pipeline, "pre", max(0.0, now - ready))

    def shape_of(self, session_id: str) -> WorkShape:
        """The work shape a session's units run at now (its applied tier)."""
        live = self._live.get(session_id)
        return self._shape(live) if live is not None else WorkShape()

    def _shape(self, live: LiveSession) -> WorkShape:
        return self.admission.tiers(live.session_id)[live.applied].shape if live.session_id in self.admission \
            else live.spec.shape

    def _fps(self, live: LiveSession) -> float:
        return self.admission.tiers(live.session_id)[live.applied].fps if live.session_id in self.admission \
            else live.spec.fps

    def _superseded(self, live: LiveSession, head: Media, now: float, rounds: Callable[[], dict[str, float]]) -> bool:
        """Whether a video head should give way to the newer unit queued behind it: run first, it
        would push that unit (due a period after it, at the earliest) past its deadline, and every
        unit after it a period later too. Under overload the freshest frame runs; with time to spare
        (a burst of two after network jitter) both do."""
        return self.supersede and live.spec.lane != "voice" and len(live.inbox) > 1 and \
            not live.time_for_both(head, now, rounds()[live.spec.pipeline])

    def _burst(self, live: LiveSession, head: Media, now: float, rounds: Callable[[], dict[str, float]]) -> bool:
        return live.burst(head, now, lambda: rounds()[live.spec.pipeline])  # module doc, 2.

    def _head(self, live: LiveSession, now: float, expired: list[WorkItem], skipped: list[WorkItem],
              rounds: Callable[[], dict[str, float]]) -> tuple[Media | None, bool]:
        """The session's unit to run next, and whether it is a spare (one its tier skips, kept while
        nothing newer is queued, or a burst's second unit is, in case the engine has nothing else to do)."""
        # Video that cannot finish by its deadline is dropped now; voice only once past it (as EDF
        # does): a voice pipeline aggregates chunks and may still use a late one.
        own = 0.0 if live.spec.lane == "voice" else self.cost.cost(live.spec.pipeline, self._shape(live), 1)
        # A prediction that nothing can make it is only a prediction: if it has stopped every step of
        # this pipeline for PROBE_AFTER_S, run one unit anyway, or the model could never learn that the
        # device is fast again (a noisy neighbour gone) and the session would get nothing for ever.
        if now - self._last_step.get(live.spec.pipeline, float("-inf")) >= PROBE_AFTER_S:
            own = 0.0
        fps = self._fps(live)
        head = live.inbox.peek()
        while head is not None:
            if live.last_seen is None or head.arrival > live.last_seen:
                live.last_seen = head.arrival
            if head.deadline < now + own:
                live.inbox.pop()
                expired.append(WorkItem(live.session_id, head))
            elif fps < live.spec.fps and not live.rate.grant(head.arrival, fps):
                if self.spare and (len(live.inbox) == 1 or self._burst(live, head, now, rounds)):
                    return head, True
                live.inbox.pop()
                head.meta["dropped"] = "tier"
                skipped.append(WorkItem(live.session_id, head))
            elif self._superseded(live, head, now, rounds):
                live.inbox.pop()
                head.meta["dropped"] = "superseded"
                skipped.append(WorkItem(live.session_id, head))
                live.rate.give_back(head.arrival)  # its rate credit goes to the newer unit
            else:
                return head, False
            head = live.inbox.peek()
        return None, False

    def _hold_until(self, now: float, pipeline: str, group: list[tuple[LiveSession, Media]], cap: int) -> float | None:
        """When to run this pipeline's batch if it should wait for more sessions, else None."""
        if len(group) >= cap or any(lv.spec.lane == "voice" for lv, _ in group):
            return None
        present = {lv.session_id for lv, _ in group}
        expected: list[tuple[float, LiveSession]] = []
        for live in self._live.values():
            if live.spec.pipeline != pipeline or live.session_id in present or live.last_seen is None:
                continue
            fps = self._fps(live)
            due = live.rate.next_due(live.last_seen, live.spec.fps, fps)
            if now < due <= now + 1.0 / fps:  # streaming, and its next unit is near
                expected.append((due, live))
        if not expected:
            return None
        shapes = [self._shape(lv) for lv, _ in group] + [self._shape(lv) for _, lv in expected]
        full = self.cost.batch_cost(pipeline, shapes[:cap])
        latest = min(m.deadline for _, m in group) - full - self.cost.cost(pipeline, shapes[0], 1)
        # Never wait past the next unit of a session already waiting: it would only trade frames.
        latest = min([latest, *(lv.last_seen + 1.0 / lv.spec.fps for lv, _ in group if lv.last_seen is not None)])
        waits = [due for due, _ in expected if due <= latest]
        if not waits:
            return None
        return min(max(waits), latest)

    def _chores(self, now: float, plan_cost: float) -> list[Chore]:
        chores = list(self._retier)
        self._retier.clear()
        while self._joins and self._joins[0].failed:
            self._joins.popleft()
        if not self._joins:
            return chores
        budget = self._chore_budget(now, plan_cost) - sum(self.cost.cost(c.key, WorkShape(), 1) for c in chores)
        while self._joins:
            join = self._joins[0]
            if join.failed or not join.pieces:
                self._joins.popleft()
                continue
            name, fn = join.pieces[0]
            key = f"{join.pipeline}#{name}"
            known = self.cost.predict(key, WorkShape(), 1)
            need = UNKNOWN_PIECE_S if known is None else known
            forced = not self.stall_free or (now - join.submitted > self.join_timeout_s and not chores)
            if need > budget and not forced:
                break
            join.pieces.popleft()
            join.running += 1
            budget -= need
            chores.append(Chore(join.session_id, key, fn, self._piece_done(join)))
            if not join.pieces:
                self._joins.popleft()
            if forced and self.stall_free:
                self.stats.forced_pieces += 1
                break
            if known is None:  # measure an unknown piece alone before planning more
                break
        return chores

    def _piece_done(self, join: Join) -> Callable[[BaseException | None], None]:
        def done(exc: BaseException | None) -> None:
            join.running -= 1
            if join.failed:
                return
            if exc is not None:
                join.failed = True
                join.done(exc)
            elif not join.pieces and not join.running:
                join.done(None)
        return done

    def _chore_budget(self, now: float, plan_cost: float, popped: Collection[str] = (),
                      round_cost: float | None = None) -> float:
        """Seconds of chores that cannot make any live session late (inf when none is live); the
        sessions in `popped` will have had their head taken; `round_cost`: the predicted worst round
        (admission's load), if the caller has it."""
        if not self._live:
            return float("inf")
        if round_cost is None:
            round_cost = self.admission.load().worst_latency_s
        budget = min(lv.spec.budget_s for lv in self._live.values()) - round_cost
        for live in self._live.values():
            head = live.inbox.peek()
            if head is not None and live.session_id not in popped:
                budget = min(budget, head.deadline - now - round_cost)  # less plan_cost: below
            # ... and no inbox may overflow meanwhile (that would drop a frame as surely as lateness).
            free = max(0, self.inbox_size - len(live.inbox) + (live.session_id in popped))
            budget = min(budget, free / live.spec.fps)
        return budget - plan_cost

    def _apply_tiers(self, now: float) -> None:
        for live in self._live.values():
            if live.session_id not in self.admission:
                continue
            tier = self.admission.tier(live.session_id)
            if tier.level == live.applied:
                continue
            old = self.admission.tiers(live.session_id)[live.applied]
            live.applied = tier.level
            live.changed_at = now
            self.stats.tier_change(live.spec.pipeline, "down" if tier.level > old.level else "up")
            if tier.level > old.level:  # lowered by admission (a preemption) or the policy: hold restores
                self.policy.lowered(now)
            if live.on_tier is not None and tier.shape != old.shape:
                self._retier.append(Chore(live.session_id, f"{live.spec.pipeline}#retier",
                                          functools.partial(live.on_tier, tier)))

    # --- learning -------------------------------------------------------------------------------
    def update(self, plan: StepPlan, outputs: Sequence[StepOutput], elapsed: dict[str, float]) -> None:
        t = plan.now
        ends: dict[str, float] = {}
        for batch in plan.batches:
            seconds = elapsed.get(batch.pipeline)
            if seconds is None:
                continue
            shapes = [self._shape(self._live[i.session_id]) if i.session_id in self._live else WorkShape()
                      for i in batch.items]
            err = self.cost.observe(batch.pipeline, shapes, seconds)
            if err is not None:
                self.stats.cost_error[batch.pipeline] = self.cost.errors()[batch.pipeline]
            t += seconds
            for item in batch.items:
                ends[item.session_id] = t
                if item.media.meta.get("tick"):  # a step asked with no input (`Session.tick`): no unit
                    continue
                late = t > item.deadline
                self._misses.add(t, late)
                self.stats.unit_done(batch.pipeline, late, plan.now - item.media.arrival, seconds, batch.size)
        for chore in plan.chores:
            if chore.key in elapsed:
                self.cost.observe(chore.key, [WorkShape()], elapsed[chore.key])
        superseded = (i for i in plan.skipped if i.media.meta.get("dropped") == "superseded")
        for item in (*plan.expired, *superseded):  # a superseded unit is a miss too: the policy sees overload
            if not item.media.meta.get("tick"):
                self._misses.add(plan.now, True)
                self.stats.unit_expired(self._pipeline_of(item))
        t += sum(v for k, v in elapsed.items() if "#" in k)
        self._free_at = t
        _stamp_step_end(outputs, ends)
        misses, samples = self._misses.counts(t, self.policy.config.window_s)
        change = self.policy.tick(t, self.admission, misses, samples)
        if change is not None:
            self._note(change)

    def _pipeline_of(self, item: WorkItem) -> str:
        live = self._live.get(item.session_id)
        return live.spec.pipeline if live else "unknown"

    def _note(self, change: TierChange) -> None:
        live = self._live.get(change.session_id)
        if live is not None:
            live.reason = change.reason
        if change.direction == "down":
            self._misses.clear()  # judge the new tier on its own units


def _stamp_step_end(outputs: Sequence[StepOutput], ends: dict[str, float]) -> None:
    """Mark each output with its step's end (`meta["step_end"]`, the scheduler's clock) so that the
    server can measure the step-end-to-session part of the latency (`post`)."""
    for out in outputs:
        end = ends.get(out.session_id)
        if end is None:
            continue
        for media in out.media:
            meta = getattr(media, "meta", None)
            if isinstance(meta, dict):
                meta["step_end"] = end
