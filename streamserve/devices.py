"""Data parallel serving: one engine per device, each with its own scheduler, sessions placed by headroom.

`streamserve serve --devices cuda:0,cuda:1` (or ``cpu,cpu`` in tests) builds one :class:`Engine` per
entry. A new session goes to the engine a :class:`~streamserve.schedulers.placement.Placement` scores
highest (by default the most goodput headroom from each engine's cost model, fewest sessions while
those are cold), and stays there: its pipeline state and KV cache live on that
device, and every call for it (open, update, step, close) runs on that engine's thread.

Each engine reports its free KV memory (:func:`kv_free_bytes`): on a GPU what
``torch.cuda.mem_get_info`` says is free; on CPU the configured KV budget (``--kv-budget-mb``) minus
what the live sessions' caches hold, measured from their tensors (without a budget: the memory the
OS says is available). Placement skips an engine whose free KV memory cannot hold the new session's
cache (:func:`kv_fits`; the pipeline tells the bytes from the session's shape).

Each engine has a *name* for metrics and session stats: the device string, or ``cpu:0``, ``cpu:1``...
when a device is listed more than once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from streamserve.engine import Engine, EngineObserver
from streamserve.schedulers.placement import EngineLoad, GoodputHeadroom, Placement, choose


def engine_names(devices: Sequence[str]) -> list[str]:
    """Unique names for a device list: repeated entries get an index (``cpu,cpu`` -> ``cpu:0, cpu:1``)."""
    counts = collections.Counter(devices)
    seen: collections.Counter[str] = collections.Counter()
    names = []
    for dev in devices:
        if counts[dev] == 1:
            names.append(dev)
        else:
            names.append(f"{dev}:{seen[dev]}" if ":" not in dev else f"{dev}#{seen[dev]}")
            seen[dev] += 1
    return names


class DeviceMetrics:
    """Per-device series on the server's registry: sessions open, steps and busy seconds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("streamserve_device_sessions", "Sessions open on each device", ["device"],
                              registry=registry)
        self.steps = Counter("streamserve_device_steps", "Pipeline batches run on each device", ["device"],
                             registry=registry)
        self.busy = Counter("streamserve_device_busy_seconds", "Seconds each device spent in pipeline steps",
                            ["device"], registry=registry)


class _DeviceObserver:
    """Forwards engine events to the server's observer and counts them per device."""

    def __init__(self, inner: EngineObserver | None, metrics: DeviceMetrics, name: str) -> None:
        self._inner, self._metrics, self._name = inner, metrics, name

    def step_done(self, pipeline: str, batch_size: int, seconds: float) -> None:
        if self._inner is not None:
            self._inner.step_done(pipeline, batch_size, seconds)
        self._metrics.steps.labels(self._name).inc()
        self._metrics.busy.labels(self._name).inc(seconds)


MakeEngine = Callable[[str, EngineObserver], Engine]
"""``make(device, observer) -> Engine``: the manager builds each engine (scheduler, pipelines)."""

Goodput = Callable[[int, str], "tuple[int, float] | None"]
"""``goodput(engine index, pipeline) -> (more sessions, free utilization)`` from that engine's cost
model (:meth:`~streamserve.gate.SloGate.placement_headroom`), or None while it is cold."""


def available_memory() -> int | None:
    """The memory the OS says is available (``MemAvailable`` of /proc/meminfo), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def kv_free_bytes(device: str, pipelines: Sequence[Any], budget: int | None) -> int | None:
    """Free KV memory of an engine on ``device`` running ``pipelines`` (those created so far).

    GPU: free device memory (``torch.cuda.mem_get_info``), capped by ``budget - held`` when a budget is
    set. CPU: ``budget - held`` (held = the bytes of the live sessions' caches, measured from their
    tensors by each pipeline's ``kv_held_bytes``; pipelines without one hold no KV cache), or the
    memory the OS says is available without a budget (None where it does not say)."""
    held = 0
    for pipe in pipelines:
        fn = getattr(pipe, "kv_held_bytes", None)
        if callable(fn):
            held += int(fn())
    left = None if budget is None else max(0, budget - held)
    if device.startswith("cuda"):
        import torch

        free = int(torch.cuda.mem_get_info(torch.device(device))[0])
        return free if left is None else min(free, left)
    return left if left is not None else available_memory()


def kv_fits(load: EngineLoad, need: int | None) -> bool:
    """Whether ``load``'s free KV memory can hold a new session's cache of ``need`` bytes (unknown
    either way: yes)."""
    return need is None or load.kv_free_bytes is None or load.kv_free_bytes >= need


def choose_fitting(placement: Placement, loads: Sequence[EngineLoad], need: int | None) -> EngineLoad | None:
    """:func:`choose` among the engines whose free KV memory holds ``need`` bytes."""
    return choose(placement, [ld for ld in loads if kv_fits(ld, need)])


class DeviceEngines:
    """The engines of one server and which session runs on which.

    Args:
        devices: torch devices, one engine each (repeats allowed: ``("cpu", "cpu")``).
        make_engine: builds the engine of one device with the observer it must report to.
        max_sessions: sessions one engine may hold.
        registry: where the per-device metrics go; ``observer``: the server-wide engine observer.
        placement: scores engines for new sessions (default :class:`GoodputHeadroom`: by the engines'
            goodput headroom, fewest sessions while a cost model is cold).
        goodput: each engine's goodput headroom for a pipeline (None: fewest sessions always).
        kv_budget: bytes of KV memory one engine may hold (None: the device's free memory).
    """

    def __init__(self, devices: Sequence[str], make_engine: MakeEngine, *, max_sessions: int,
                 registry: CollectorRegistry, observer: EngineObserver | None = None,
                 placement: Placement | None = None, goodput: Goodput | None = None,
                 kv_budget: int | None = None) -> None:
        if not devices:
            raise ValueError("at least one device is needed")
        if kv_budget is not None and kv_budget < 0:
            raise ValueError(f"kv_budget must be >= 0 bytes, got {kv_budget}")
        self.devices = list(devices)
        self.kv_budget = kv_budget
        self.names = engine_names(devices)
        self.metrics = DeviceMetrics(registry)
        self.engines = [make_engine(dev, _DeviceObserver(observer, self.metrics, name))
                        for dev, name in zip(devices, self.names, strict=True)]
        self.max_sessions = max_sessions
        self.placement: Placement = placement or GoodputHeadroom()
        self.goodput = goodput
        self._of: dict[str, int] = {}
        self._count = [0] * len(self.engines)
        self.draining: set[int] = set()
        for name in self.names:  # zero-valued series from the first scrape
            self.metrics.sessions.labels(name).set(0)
            self.metrics.steps.labels(name)
            self.metrics.busy.labels(name)

    def __len__(self) -> int:
        return len(self.engines)

    def loads(self, pipeline: str | None = None) -> list[EngineLoad]:
        """Every engine's load; with ``pipeline``, its goodput headroom too -- for all engines or for
        none (a cold cost model on one engine would make the scores incomparable)."""
        room = [self.goodput(i, pipeline) for i in range(len(self.engines))] \
            if pipeline is not None and self.goodput is not None else []
        warm = [r for r in room if r is not None] if room else []
        if len(warm) != len(self.engines):
            warm = [None] * len(self.engines)  # type: ignore[list-item]
        return [EngineLoad(i, self.names[i], self._count[i], self.max_sessions, i in self.draining,
                           kv_free_bytes=self.kv_free(i),
                           more_sessions=None if r is None else r[0], free_utilization=None if r is None else r[1])
                for i, r in enumerate(warm)]

    def kv_free(self, index: int) -> int | None:
        """Engine ``index``'s free KV memory (all its pipelines' sessions count; None: unknown)."""
        return kv_free_bytes(self.devices[index], list(self.engines[index].created().values()), self.kv_budget)

    def kv_need(self, pipeline: str, params: Any) -> int | None:
        """Bytes of KV cache a new session of ``pipeline`` with ``params`` needs (None: unknown -- the
        pipeline is not loaded yet or keeps no KV cache)."""
        for engine in self.engines:
            need = getattr(engine.created().get(pipeline), "kv_bytes_for", None)
            if callable(need):
                return int(need(params))
        return None

    def place(self, pipeline: str | None = None, kv_need: int | None = None) -> int | None:
        """The index of the engine a new session (of ``pipeline``) should open on; None when every
        engine is full or none has ``kv_need`` bytes of KV memory free. One engine: no cost model is
        consulted (its free KV memory still is)."""
        loads = self.loads(pipeline if len(self.engines) > 1 else None)
        best = choose_fitting(self.placement, loads, kv_need)
        return None if best is None else best.index

    def assign(self, session_id: str, index: int) -> None:
        if session_id in self._of:
            raise ValueError(f"session {session_id!r} is already placed on {self.names[self._of[session_id]]}")
        self._of[session_id] = index
        self._count[index] += 1
        self.metrics.sessions.labels(self.names[index]).set(self._count[index])

    def release(self, session_id: str) -> None:
        index = self._of.pop(session_id, None)
        if index is not None:
            self._count[index] -= 1
            self.metrics.sessions.labels(self.names[index]).set(self._count[index])

    def engine_of(self, session_id: str) -> Engine:
        return self.engines[self._of[session_id]]

    def name_of(self, session_id: str) -> str:
        return self.names[self._of[session_id]]

    @property
    def running(self) -> bool:
        return all(e.running for e in self.engines)
