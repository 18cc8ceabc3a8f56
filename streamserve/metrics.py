"""Prometheus metrics, on a registry of the server's own (no module globals)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamserve.core.frames import MediaKind

CONTENT_TYPE = CONTENT_TYPE_LATEST

SOURCES = ("webrtc", "whip", "websocket")  # `source` of SessionFactory.open, one per transport
DROP_REASONS = ("inbox", "expired")  # Session.count_dropped reasons

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Implements `SessionObserver` and `EngineObserver`; `render()` gives the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("streamserve_frames_in", "Media units received", ["pipeline", "kind"],
                                registry=r)
        self.frames_out = Counter("streamserve_frames_out", "Media units delivered", ["pipeline", "kind"],
                                 registry=r)
        self.dropped = Counter("streamserve_frames_dropped", "Media units dropped, by reason",
                               ["pipeline", "reason"], registry=r)
        self.deadline_misses = Counter("streamserve_deadline_misses", "Outputs delivered after their deadline",
                                       ["pipeline"], registry=r)
        self.latency = Histogram("streamserve_frame_latency_seconds", "Arrival to output-ready latency",
                                 ["pipeline"], buckets=_STEP_BUCKETS, registry=r)
        self.step_latency = Histogram("streamserve_step_latency_seconds", "Seconds per pipeline step",
                                      ["pipeline"], buckets=_STEP_BUCKETS, registry=r)
        self.batch_size = Histogram("streamserve_batch_size", "Sessions per pipeline step", ["pipeline"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.active_sessions = Gauge("streamserve_active_sessions", "Sessions currently open", ["pipeline"],
                                     registry=r)
        self.sessions_total = Counter("streamserve_sessions", "Sessions opened", ["pipeline", "source"],
                                      registry=r)
        self.session_errors = Counter("streamserve_session_errors", "Sessions ended by an error",
                                      ["pipeline"], registry=r)

    def prime(self, pipelines: Iterable[str], *, sources: Iterable[str] = SOURCES,
              drop_reasons: Iterable[str] = DROP_REASONS) -> None:
        """Create every series for `pipelines` at zero, so a scrape of a fresh server shows zeros (and
        `rate()` works from the first sample) instead of families without samples."""
        sources, drop_reasons = tuple(sources), tuple(drop_reasons)
        for name in pipelines:
            for kind in MediaKind:
                self.frames_in.labels(name, str(kind))
                self.frames_out.labels(name, str(kind))
            for reason in drop_reasons:
                self.dropped.labels(name, reason)
            for source in sources:
                self.sessions_total.labels(name, source)
            for family in (self.deadline_misses, self.latency, self.step_latency, self.batch_size,
                           self.active_sessions, self.session_errors):
                family.labels(name)

    # SessionObserver
    def media_in(self, pipeline: str, kind: MediaKind) -> None:
        self.frames_in.labels(pipeline, str(kind)).inc()

    def media_dropped(self, pipeline: str, reason: str, count: int = 1) -> None:
        self.dropped.labels(pipeline, reason).inc(count)

    def media_out(self, pipeline: str, kind: MediaKind, latency_s: float, missed: bool) -> None:
        self.frames_out.labels(pipeline, str(kind)).inc()
        if kind is MediaKind.VIDEO:
            self.latency.labels(pipeline).observe(latency_s)
        if missed:
            self.deadline_misses.labels(pipeline).inc()

    # EngineObserver
    def step_done(self, pipeline: str, batch_size: int, seconds: float) -> None:
        self.step_latency.labels(pipeline).observe(seconds)
        self.batch_size.labels(pipeline).observe(batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)

