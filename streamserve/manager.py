"""SessionManager: opens, finds and ends sessions, and owns the engine they run on.

Implements `streamserve.core.ports.SessionFactory` for the transports. Lives on the asyncio loop;
work for the pipelines goes to the engine thread through `Engine.call`, and outputs come back through
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from streamserve.core.clock import SYSTEM_CLOCK, Clock
from streamserve.core.config import ServerConfig
from streamserve.core.errors import (
    InvalidParams,
    OverCapacity,
    SessionLimitReached,
    SessionNotFound,
    StreamBusy,
)
from streamserve.core.params import parse_params
from streamserve.core.plan import StepOutput, WorkItem
from streamserve.devices import DeviceEngines
from streamserve.engine import Engine, EngineObserver
from streamserve.gate import SloGate
from streamserve.metrics import Metrics
from streamserve.pipelines import registry
from streamserve.pipelines.base import Pipeline
from streamserve.pipelines.process import importable, process_pipeline
from streamserve.qos import QOS_KEYS, split_qos
from streamserve.schedulers import (
    Admission,
    AdmissionConfig,
    CostModel,
    EDFScheduler,
    FifoScheduler,
    Scheduler,
    SloScheduler,
)
from streamserve.session import Session

log = logging.getLogger(__name__)
_OPENING = ""  # a stream name taken by an open still in flight (no session id yet)


def make_scheduler(config: ServerConfig) -> Scheduler:
    """The server's scheduler: `slo` (docs/serving.md), or a baseline (`edf`, `fifo`: no admission)."""
    if config.scheduler == "edf":
        return EDFScheduler(max_batch=config.max_batch)
    if config.scheduler == "fifo":
        return FifoScheduler(max_batch=config.max_batch)
    cost = CostModel()
    admission = Admission(cost, AdmissionConfig(max_utilization=config.max_utilization,
                                                restore_utilization=0.7 * config.max_utilization / 0.9,
                                                max_batch=config.max_batch, retry_after_s=config.retry_after_s))
    return SloScheduler(cost, admission, max_batch=config.max_batch, inbox_size=config.session.inbox_size,
                        adapt_batch=config.adapt_batch, spare=config.spare_frames)


class SessionManager:
    def __init__(self, config: ServerConfig, *, metrics: Metrics | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._streams: dict[str, str] = {}  # stream name -> session id (also reserved while opening)
        self._opening = 0  # slots reserved by opens still awaiting the engine (see _reserve_slot)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.Task[None] | None = None
        # One engine per device (data parallel), each with its own scheduler (and, with the SLO scheduler,
        # its own admission gate); sessions are placed by headroom (streamserve.devices).
        self.gates: list[SloGate | None] = []
        self.devices = DeviceEngines(config.devices or (config.device,), self._make_engine,
                                     max_sessions=config.max_sessions, registry=self.metrics.registry,
                                     observer=self.metrics, goodput=self._goodput,
                                     kv_budget=None if config.kv_budget_mb is None else int(config.kv_budget_mb * 2**20))
        self.scheduler = self.engine.scheduler
        self.gate = self.gates[0]  # the first device's (the only one without --devices)

    def _make_engine(self, device: str, observer: EngineObserver) -> Engine:
        scheduler = make_scheduler(self.config)
        engine = Engine(scheduler, functools.partial(self._create_pipeline, device=device),
                        self._deliver_threadsafe, device=device, clock=self._clock, observer=observer)
        gate = None
        if isinstance(scheduler, SloScheduler):
            gate = SloGate(engine, scheduler, self.metrics)
            if not any(self.gates):  # the scheduler figures in /metrics are the first device's
                self.metrics.watch_scheduler(scheduler, registry.available())
        self.gates.append(gate)
        return engine

    def _goodput(self, index: int, pipeline: str) -> tuple[int, float] | None:
        """Placement: engine `index`'s goodput headroom for `pipeline` (None without an SLO gate or
        while its cost model is cold)."""
        gate = self.gates[index]
        return None if gate is None else gate.placement_headroom(pipeline)

    @property
    def engine(self) -> Engine:
        """The first device's engine (the only one without --devices)."""
        return self.devices.engines[0]

    def _gate_of(self, session_id: str) -> SloGate | None:
        return self.gates[self.devices.engines.index(self.devices.engine_of(session_id))]

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self, warm: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        for engine in self.devices.engines:
            engine.start()
        self._reaper = asyncio.create_task(self._reap_idle(), name="session-reaper")
        if warm:
            for engine in self.devices.engines:
                fut = engine.call(functools.partial(self._warm, engine))
                fut.add_done_callback(self._log_warmup)
        for gate in self.gates:  # seed the cost model before the first session asks
            if warm and gate is not None:
                gate.ensure_profile(self.config.pipeline).add_done_callback(self._log_warmup)

    def _warm(self, engine: Engine) -> None:
        engine.pipeline(self.config.pipeline).warmup()

    def _log_warmup(self, fut: Any) -> None:
        if fut.exception() is not None:
            log.error("warming up pipeline %r failed: %s", self.config.pipeline, fut.exception())

    async def stop(self) -> None:
        for sid in list(self._sessions):
            await self.close(sid, "server shutting down")
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for engine in self.devices.engines:
            await asyncio.to_thread(engine.stop)

    def _create_pipeline(self, name: str, device: str | None = None) -> Pipeline:
        cls = registry.get_class(name)
        options: dict[str, Any] = {}
        accepted = inspect.signature(cls.__init__).parameters
        if self.config.model and "model" in accepted:
            options["model"] = self.config.model
        options.update({k: v for k, v in self.config.pipeline_options if k in accepted})
        if self.config.model_process and cls.own_process:
            if importable(cls):
                cls = process_pipeline(cls)
            else:
                log.info("pipeline %s runs in the server's process: a child cannot import %s", name, cls.__qualname__)
        pipe = cls(device=device or self.config.device, **options)
        pipe.ticker = self._tick
        pipe.warmup()
        return pipe

    def _tick(self, session_id: str) -> None:
        """A pipeline asks for a step of `session_id` with no new input (any thread: `Session.tick`)."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.tick()

    # --- SessionFactory -------------------------------------------------------------------------
    async def open(self, pipeline: str | None, params: Mapping[str, Any] | None, *, source: str,
                   stream: str | None = None) -> Session:
        name = pipeline or self.config.pipeline
        cls = registry.get_class(name)  # raises UnknownPipeline listing the available ones
        with self._reserve_stream(stream), self._reserve_slot():
            return await self._open(name, cls, params, source=source, stream=stream)

    @contextlib.contextmanager
    def _reserve_stream(self, stream: str | None) -> Iterator[None]:
        """Take the stream name before the first `await` of an open (two opens of one name: one wins),
        give it back if the open fails before its session takes it over."""
        if stream is None:
            yield
            return
        if stream in self._streams:
            raise StreamBusy(stream)
        self._streams[stream] = _OPENING
        try:
            yield
        finally:
            if self._streams.get(stream) == _OPENING:
                del self._streams[stream]

    @contextlib.contextmanager
    def _reserve_slot(self) -> Iterator[None]:
        """Take one of `max_sessions` slots before the first `await` of an open, give it back after.

        Checking `len(self._sessions)` alone let concurrent opens all pass while each awaited the
        engine; counting the opens in flight makes check-and-take atomic on the loop thread.
        """
        if len(self._sessions) + self._opening >= self.config.max_sessions:
            raise SessionLimitReached(self.config.max_sessions)
        self._opening += 1
        try:
            yield
        finally:
            self._opening -= 1

    async def _open(self, name: str, cls: Any, params: Mapping[str, Any] | None, *, source: str,
                    stream: str | None) -> Session:
        qos, params = split_qos(params)
        parsed: Any = parse_params(cls.Params, params)
        try:
            # bytes of the session's KV cache at its shape; off the loop: a pipeline in a child process
            # (`streamserve serve`'s default) answers after the step in flight
            need = await asyncio.to_thread(self.devices.kv_need, name, parsed)
        except ValueError:
            need = None  # a shape the model cannot serve: the open reports it
        index = self.devices.place(name, need)
        if index is None:
            if need is not None and self.devices.place(name) is not None:
                raise OverCapacity(f"no device has {need / 2**20:.1f} MiB of KV memory free for this session",
                                   "kv_memory", self.config.retry_after_s, 0.0)
            raise SessionLimitReached(self.config.max_sessions)
        engine = self.devices.engines[index]
        session = Session(
            name, cls.Params, parsed, inputs=cls.inputs, outputs=cls.outputs, config=self.config.session,
            source=source, stream=stream, clock=self._clock, observer=self.metrics, on_input=engine.wake,
            on_update=self._on_update, control_keys=QOS_KEYS,
        )
        session.device = self.devices.names[index]
        self.devices.assign(session.id, index)
        if stream is not None:
            self._streams[stream] = session.id
        try:
            gate = self.gates[index]
            if gate is not None:
                await gate.open(session, qos)  # admission (503 OverCapacity) + a stall-free join
            else:
                await asyncio.wrap_future(engine.call(lambda: self._open_on_engine(session, engine)))
        except ValueError as exc:
            self._release_stream(session)
            self.devices.release(session.id)
            if isinstance(exc, InvalidParams):
                raise
            raise InvalidParams("params", str(exc)) from exc
        except BaseException:
            self._release_stream(session)
            self.devices.release(session.id)
            raise
        session.touch()  # the idle clock starts now: an open that waited for a loading model is not idle
        self._sessions[session.id] = session
        self.metrics.active_sessions.labels(name).inc()
        self.metrics.sessions_total.labels(name, source).inc()
        log.info("session %s opened: pipeline=%s source=%s stream=%s device=%s", session.id, name, source,
                 stream, session.device)
        return session

    def _open_on_engine(self, session: Session, engine: Engine) -> None:
        pipe = engine.pipeline(session.pipeline)
        pipe.open_session(session.id, session.params)
        engine.scheduler.add(session.id, session.pipeline, session.inbox)

    def _release_stream(self, session: Session) -> None:
        if session.stream is not None and self._streams.get(session.stream) == session.id:
            del self._streams[session.stream]

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    def by_stream(self, stream: str) -> Session | None:
        sid = self._streams.get(stream)
        return self._sessions.get(sid) if sid else None

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    async def close(self, session_id: str, reason: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._release_stream(session)
        session.close(reason)
        self.metrics.active_sessions.labels(session.pipeline).dec()
        gate = self._gate_of(session_id)
        if gate is not None:
            gate.forget(session_id)
        engine = self.devices.engine_of(session_id)
        self.devices.release(session_id)

        def _close_on_engine() -> None:
            engine.scheduler.remove(session_id)
            engine.pipeline(session.pipeline).close_session(session_id)

        try:
            await asyncio.wrap_future(engine.call(_close_on_engine))
        except RuntimeError as exc:  # the engine already stopped: nothing left to free
            log.debug("closing %s on a stopped engine: %s", session_id, exc)

    # --- engine callbacks -----------------------------------------------------------------------
    async def _on_update(self, session: Session, params: Any, qos: Mapping[str, Any] | None = None) -> None:
        """Apply `params` (and QoS changes, re-admitted by the SLO gate) on the engine thread; the
        pipeline's ValueError becomes InvalidParams."""
        engine, gate = self.devices.engine_of(session.id), self._gate_of(session.id)
        try:
            if gate is not None:
                await gate.update(session, params, qos)
                return
            if qos:
                key = next(iter(qos))
                raise InvalidParams(key, f"a QoS key; it applies only with the slo scheduler (this server runs "
                                    f"{self.config.scheduler})")
            fut: concurrent.futures.Future[None] = engine.call(
                lambda: engine.pipeline(session.pipeline).update_params(session.id, params))
            await asyncio.wrap_future(fut)
        except InvalidParams:
            raise
        except ValueError as exc:
            raise InvalidParams(_field_of(exc, params), str(exc)) from None

    def _deliver_threadsafe(self, outputs: Sequence[StepOutput], expired: Sequence[WorkItem]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(self._deliver, outputs, expired)

    def _deliver(self, outputs: Sequence[StepOutput], expired: Sequence[WorkItem]) -> None:
        now = self._clock.now()
        for item in expired:
            session = self._sessions.get(item.session_id)
            if session is not None and not item.media.meta.get("tick"):  # a tick is no input to lose
                session.count_dropped(item.media.meta.get("dropped", "expired"))  # "tier": a lower frame rate
        for out in outputs:
            session = self._sessions.get(out.session_id)
            if session is None:
                continue
            for kind in out.flush:  # control first: barge-in drops queued agent audio
                session.flush(kind)
            for event in out.events:
                session.publish(event)
            gate = self._gate_of(out.session_id) if out.media else None
            for media in out.media:
                session.deliver(media)
                if gate is not None:
                    gate.delivered(session.pipeline, media, now)
            if out.error is not None:
                session.counts["errors"] += 1
                self.metrics.session_errors.labels(session.pipeline).inc()
                task = asyncio.ensure_future(self.close(session.id, f"pipeline error: {out.error}"))
                task.add_done_callback(lambda t: t.exception())

    async def _reap_idle(self) -> None:
        timeout = self.config.idle_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 2))
            now = self._clock.now()
            for session in list(self._sessions.values()):
                if now - session.last_seen > timeout:
                    await self.close(session.id, f"idle: no media or control for {timeout:g} s")


def _field_of(exc: ValueError, params: Any) -> str:
    """The parameter a pipeline's ValueError is about: the field its message starts with, else `params`."""
    import dataclasses

    words = str(exc).replace(":", " ").split()
    names = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(params) else set()
    return words[0] if words and words[0] in names else "params"
