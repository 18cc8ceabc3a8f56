"""The SLO gate: how a session gets onto an engine run by `SloScheduler`.

    spec = build_spec(...)                  # engine thread: the pipeline names its work shape
    decision = admission.check(id, spec)    # admit (reserving capacity), offer a tier, or refuse
    join: the pipeline's open pieces run as scheduler chores between other sessions' steps
    scheduler.add(...)                      # when the last piece is done

A refusal raises `OverCapacity` (HTTP 503 + Retry-After, a typed WebSocket error). Tier changes the
policy makes come back through `apply_tier` (engine thread): the pipeline's params are the user's
with resolution/steps lowered as the tier says. `admission.headroom()` is what a multi-device
placer asks each engine.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamserve.core.config import SessionConfig
from streamserve.core.errors import OverCapacity
from streamserve.core.frames import AudioChunk, Media, VideoFrame
from streamserve.core.plan import Batch, WorkItem
from streamserve.engine import Engine
from streamserve.metrics import Metrics
from streamserve.pipelines.base import Pipeline
from streamserve.qos import Qos, build_spec, params_for_tier, update_qos
from streamserve.schedulers import Decision, Join, SessionSpec, SloScheduler, Tier
from streamserve.schedulers.overhead import ArrivalClock
from streamserve.session import Session

log = logging.getLogger(__name__)


class SloGate:
    def __init__(self, engine: Engine, scheduler: SloScheduler, metrics: Metrics) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.admission = scheduler.admission
        self.metrics = metrics
        self._specs: dict[str, SessionSpec] = {}
        self._qos: dict[str, Qos] = {}
        self._params: dict[str, Any] = {}  # the user's params as last applied (engine thread), before the
        # session's own copy is updated on the loop: a re-tier chore in between must not undo them
        self._profiles: dict[str, concurrent.futures.Future[Any]] = {}
        self._default_specs: dict[str, SessionSpec] = {}

    # --- the warm-up profile --------------------------------------------------------------------
    def profile(self, name: str, sizes: tuple[int, ...] = (1, 2, 4, 8), reps: int = 3) -> dict[int, float]:
        """Engine thread: measure the pipeline's step time at its default shape (`measure_profile`)
        and seed the cost model with it. Runs at server start for the default pipeline and before
        the first session of any other. Returns seconds by batch size."""
        pipe = self.engine.pipeline(name)
        params = type(pipe).Params()
        spec = build_spec(pipe, name, params, Qos(), SessionConfig())
        sizes = tuple(sorted({min(n, self.scheduler.max_batch) for n in sizes}))
        self._default_specs[name] = spec
        seconds = measure_profile(pipe, name, params, spec, sizes, reps)
        if seconds:
            self.scheduler.cost.seed(name, spec.shape, seconds)
            log.info("cost profile of %s at %s: %s", name, spec.shape.key,
                     {n: f"{t * 1000:.1f} ms" for n, t in seconds.items()})
        return seconds

    def ensure_profile(self, name: str) -> concurrent.futures.Future[Any]:
        """The profile of `name`, measured once (queued on the engine thread the first time)."""
        fut = self._profiles.get(name)
        if fut is None:
            fut = self._profiles[name] = self.engine.call(lambda: self.profile(name))
        return fut

    # --- sessions -------------------------------------------------------------------------------
    async def open(self, session: Session, qos: Qos) -> None:
        """Admit and open `session` on the engine, or raise OverCapacity / the pipeline's ValueError."""
        name = session.pipeline
        try:
            await asyncio.wrap_future(self.ensure_profile(name))
        except Exception as exc:  # admission then starts from a default guess and learns online
            log.warning("profiling pipeline %s failed: %s", name, exc)
        def checked_spec() -> SessionSpec:  # engine thread; the request as sent, before any tier
            pipe = self.engine.pipeline(name)
            pipe.check_params(session.params)
            return build_spec(pipe, name, session.params, qos, session.config)

        spec = await asyncio.wrap_future(self.engine.call(checked_spec))
        decision = self.admission.check(session.id, spec)
        if not decision.admitted:
            self.metrics.admission_refusals.labels(name, decision.limit).inc()
            log.info("session refused (%s): %s", decision.limit, decision.reason)
            raise OverCapacity(decision.reason, decision.limit, decision.retry_after_s, decision.utilization)
        self.metrics.admissions.labels(name, decision.limit).inc()
        self._specs[session.id] = spec
        self._qos[session.id] = qos
        session.slo_info = functools.partial(self.info, session.id, decision.reason)
        clock = ArrivalClock(self.scheduler.cost.overhead, name)  # how late its input arrives (the planner's)

        def arrived(media: Media) -> None:
            clock.observe(media.arrival, media.seconds)

        session.on_arrival = arrived
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        params = params_for_tier(session.params, spec, decision.tier)

        def submit() -> None:
            pieces = self.engine.pipeline(name).open_pieces(session.id, params)

            def finished(exc: BaseException | None) -> None:
                if exc is not None:
                    done.set_exception(exc)
                    return
                self.scheduler.add(session.id, name, session.inbox, spec,
                                   on_tier=functools.partial(self.apply_tier, session, spec))
                done.set_result(None)

            self.scheduler.submit(Join(session.id, name, collections.deque(pieces), finished,
                                       self.engine.clock.now()))

        try:
            await asyncio.wrap_future(self.engine.call(submit))
            await asyncio.wrap_future(done)
        except BaseException:
            self.forget(session.id)
            self.engine.call(lambda: self._abandon(session))
            raise

    def _abandon(self, session: Session) -> None:
        """Engine thread: undo a join that failed or whose opener went away."""
        self.scheduler.remove(session.id)
        self.engine.pipeline(session.pipeline).close_session(session.id)

    def forget(self, session_id: str) -> None:
        self._specs.pop(session_id, None)
        self._qos.pop(session_id, None)
        self._params.pop(session_id, None)
        self.admission.release(session_id)

    def apply_tier(self, session: Session, spec: SessionSpec, tier: Tier) -> None:
        """Engine thread (a re-tier chore): run the session at `tier` (of its current spec: a live
        change may have replaced the `spec` it was opened with)."""
        spec = self._specs.get(session.id, spec)
        params = self._params.get(session.id, session.params)
        self.engine.pipeline(session.pipeline).update_params(session.id, params_for_tier(params, spec, tier))
        log.info("session %s now at %s", session.id, tier.describe())

    def pipeline_params(self, session: Session, params: Any) -> Any:
        """`params` kept at the session's current tier (what `update` applies when the work is unchanged)."""
        spec = self._specs.get(session.id)
        if spec is None or session.id not in self.admission:
            return params
        return params_for_tier(params, spec, self.admission.tier(session.id))

    async def update(self, session: Session, params: Any, changes: Mapping[str, Any] | None = None) -> None:
        """A live change from the user: new pipeline `params` and QoS `changes` (fps, priority, min_fps,
        degrade). If the session's work shape or rate changes, it is re-admitted (`Admission.change`):
        applied at tier 0 if it fits, at a lower tier of the new ladder (clamped) if only that fits, or
        refused with `OverCapacity` (HTTP 503 + Retry-After, a typed WS error), the session then
        keeping its params, QoS and tier. A change that lowers the work is always applied and frees
        capacity. Otherwise the params are applied at the session's current tier."""
        name = session.pipeline
        qos = self._qos.get(session.id, Qos())
        if changes:
            qos = update_qos(qos, changes)

        def apply() -> Decision | None:  # engine thread: the ledger and the pipeline change together
            pipe = self.engine.pipeline(name)
            old = self._specs.get(session.id)
            if old is None or session.id not in self.admission:
                pipe.update_params(session.id, params)
                return None
            pipe.check_params(params)  # as requested: a lower tier may render another size
            spec = build_spec(pipe, name, params, qos, session.config)
            current = self.admission.tier(session.id)
            if spec == old:
                pipe.update_params(session.id, params_for_tier(params, spec, current))
                self._params[session.id] = params
                return None
            decision = self.admission.change(session.id, spec)
            if not decision.admitted:
                return decision
            try:
                pipe.update_params(session.id, params_for_tier(params, spec, decision.tier))
            except BaseException:
                self.admission.restore(session.id, old, current.level)
                raise
            self._params[session.id] = params
            self._specs[session.id] = spec
            self.scheduler.respec(session.id, spec, decision.reason)
            return decision

        decision = await asyncio.wrap_future(self.engine.call(apply))
        if decision is not None and not decision.admitted:
            self.metrics.admission_refusals.labels(name, decision.limit).inc()
            log.info("change refused for session %s (%s): %s", session.id, decision.limit, decision.reason)
            raise OverCapacity(decision.reason, decision.limit, decision.retry_after_s, decision.utilization)
        if decision is not None:
            self.metrics.admissions.labels(name, "change" if decision.limit == "none" else "change_degraded").inc()
        self._qos[session.id] = qos

    def delivered(self, pipeline: str, media: Media, now: float) -> None:
        """Loop thread: an output reached its session; learn the step-end-to-session latency."""
        end = media.meta.get("step_end")
        if isinstance(end, float):
            self.scheduler.cost.overhead.observe(pipeline, "post", max(0.0, now - end))

    def capacity(self) -> dict[str, Any]:
        """Headroom for one more default session of each profiled pipeline, tiers, the cost profile."""
        load = self.admission.load()
        headroom = {}
        for name, spec in self._default_specs.items():
            room = self.admission.headroom(spec)
            headroom[name] = {"more_sessions": room.more_sessions, "spec": {"fps": spec.fps, **spec.shape.to_dict()}}
        return {"scheduler": "slo", "admission": True, "utilization": round(load.utilization, 4),
                "max_utilization": self.admission.config.max_utilization, "headroom": headroom,
                "sessions": [{"session_id": sid, **(self.scheduler.tier_info(sid) or {})}
                             for sid in self.admission.levels()],
                "cost_model_error": self.scheduler.cost.errors(), "overhead": self.scheduler.cost.overhead.summary(),
                "profile": self.scheduler.cost.to_dict()}

    def placement_headroom(self, name: str, limit: int = 64) -> tuple[int, float] | None:
        """Goodput headroom of this engine for one more default session of pipeline `name`: (how many
        more fit at tier 0, max utilization - predicted utilization). None while the cost model is
        cold (profile not measured yet: it is queued here, so a later placement finds it warm)."""
        fut = self.ensure_profile(name)
        spec = self._default_specs.get(name)
        if not fut.done() or fut.exception() is not None or spec is None:
            return None
        if self.scheduler.cost.predict(name, spec.shape, 1) is None:
            return None
        room = self.admission.headroom(spec, limit=limit)
        return room.more_sessions, room.free

    def info(self, session_id: str, admitted: str) -> dict[str, Any] | None:
        """The session's tier and why, for its stats (and the demo page's overlay)."""
        tier = self.scheduler.tier_info(session_id)
        return None if tier is None else {**tier, "admission": admitted}


def synthetic_unit(spec: SessionSpec, i: int) -> Media:
    """A stand-in input of the spec's shape for profiling: a mid-grey frame or a silent chunk."""
    if spec.lane == "voice" or spec.shape.audio_ms:
        samples = max(1, int(16_000 * (spec.shape.audio_ms or 20) / 1000))
        return AudioChunk(np.zeros((1, samples), np.int16), 16_000, i * samples, 0.0, 1e9)
    w, h = spec.shape.width or 64, spec.shape.height or 64
    pixels = np.full((h, w, 3), 128, np.uint8)  # [H, W, 3]
    return VideoFrame(pixels, i * 3000, 0.0, 1e9)


def measure_profile(pipe: Pipeline, name: str, params: Any, spec: SessionSpec, sizes: tuple[int, ...],
                    reps: int = 3) -> dict[int, float]:
    """Step time of `pipe` for each batch size in `sizes`: throwaway sessions, synthetic input,
    the median of `reps` steps after one warm step. Sizes beyond the sessions the pipeline can
    hold are left out."""
    ids: list[str] = []
    seconds: dict[int, float] = {}
    try:
        for i in range(max(sizes)):
            sid = f"__profile{i}__"
            try:
                pipe.open_session(sid, params)
            except ValueError:  # the pipeline holds fewer sessions: profile what fits
                break
            ids.append(sid)
        for n in (n for n in sizes if n <= len(ids)):
            times = []
            for r in range(reps + 1):
                batch = Batch(name, tuple(WorkItem(sid, synthetic_unit(spec, r)) for sid in ids[:n]))
                t0 = time.perf_counter()
                pipe.step(batch)
                times.append(time.perf_counter() - t0)
            seconds[n] = statistics.median(times[1:])
    finally:
        for sid in ids:
            pipe.close_session(sid)
    return seconds
