"""Data parallel serving: one engine per device, each with its own scheduler, sessions placed by headroom.

`streamserve serve --devices cuda:0,cuda:1` (or ``cpu,cpu`` in tests) builds one :class:`Engine` per
entry. A new session goes to the engine a :class:`~streamserve.schedulers.placement.Placement` scores
highest (by default the most goodput headroom from each engine's cost model, fewest sessions while
those are cold), and stays there: its pipeline state and KV cache live on that
device, and every call for it (open, update, step, close) runs on that engine's thread.

Each engine has a *name* for metrics and session stats: the device string, or ``cpu:0``, ``cpu:1``...
when a device is listed more than once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

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
    """

    def __init__(self, devices: Sequence[str], make_engine: MakeEngine, *, max_sessions: int,
                 registry: CollectorRegistry, observer: EngineObserver | None = None,
                 placement: Placement | None = None, goodput: Goodput | None = None) -> None:
        if not devices:
            raise ValueError("at least one device is needed")
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
                           more_sessions=None if r is None else r[0], free_utilization=None if r is None else r[1])
                for i, r in enumerate(warm)]

    def place(self, pipeline: str | None = None) -> int | None:
        """The index of the engine a new session (of ``pipeline``) should open on; None when every
        engine is full. One engine: no cost model is consulted."""
        best = choose(self.placement, self.loads(pipeline if len(self.engines) > 1 else None))
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
