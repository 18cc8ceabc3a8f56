"""Prometheus metrics, on a registry of the server's own (no module globals)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from streamserve.core.frames import MediaKind
from streamserve.schedulers import SloScheduler
from streamserve.schedulers.overhead import PARTS as OVERHEAD_PARTS

CONTENT_TYPE = CONTENT_TYPE_LATEST
ADMITTED_HOW = ("none", "degraded", "preempted")  # schedulers.admission.Decision.limit when admitted
REFUSAL_LIMITS = ("utilization", "latency", "voice_slack")  # ... when refused

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
        self.admissions = Counter("streamserve_admissions", "Sessions admitted, by how (none: at the "
                                  "requested tier; degraded; preempted)", ["pipeline", "how"], registry=r)
        self.admission_refusals = Counter("streamserve_admission_refusals", "Sessions refused for capacity, "
                                          "by the limit that bound", ["pipeline", "limit"], registry=r)
        self.frames_on_time = Counter("streamserve_frames_on_time", "Outputs delivered by their deadline",
                                      ["pipeline", "kind"], registry=r)
        self.goodput = Gauge("streamserve_goodput", "Units on time / units offered (received), since start",
                             ["pipeline", "kind"], registry=r)
        self._offered: dict[tuple[str, str], int] = {}
        self._on_time: dict[tuple[str, str], int] = {}

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
            for kind in MediaKind:
                self.frames_on_time.labels(name, str(kind))
                self.goodput.labels(name, str(kind))
            for how in ADMITTED_HOW:
                self.admissions.labels(name, how)
            for limit in REFUSAL_LIMITS:
                self.admission_refusals.labels(name, limit)

    # SessionObserver
    def media_in(self, pipeline: str, kind: MediaKind) -> None:
        self.frames_in.labels(pipeline, str(kind)).inc()
        key = (pipeline, str(kind))
        self._offered[key] = self._offered.get(key, 0) + 1
        self.goodput.labels(*key).set(self._on_time.get(key, 0) / self._offered[key])

    def media_dropped(self, pipeline: str, reason: str, count: int = 1) -> None:
        self.dropped.labels(pipeline, reason).inc(count)

    def media_out(self, pipeline: str, kind: MediaKind, latency_s: float, missed: bool) -> None:
        self.frames_out.labels(pipeline, str(kind)).inc()
        if kind is MediaKind.VIDEO:
            self.latency.labels(pipeline).observe(latency_s)
        if missed:
            self.deadline_misses.labels(pipeline).inc()
        else:
            key = (pipeline, str(kind))
            self.frames_on_time.labels(*key).inc()
            self._on_time[key] = self._on_time.get(key, 0) + 1
            self.goodput.labels(*key).set(self._on_time[key] / max(1, self._offered.get(key, 0)))

    # EngineObserver
    def step_done(self, pipeline: str, batch_size: int, seconds: float) -> None:
        self.step_latency.labels(pipeline).observe(seconds)
        self.batch_size.labels(pipeline).observe(batch_size)

    def watch_scheduler(self, scheduler: SloScheduler, pipelines: Iterable[str] = ()) -> None:
        """Report the SLO scheduler's own figures (read when /metrics is scraped), at zero for
        `pipelines` until they have some."""
        self.registry.register(SchedulerCollector(scheduler, pipelines))

    def render(self) -> bytes:
        return generate_latest(self.registry)



class SchedulerCollector(Collector):
    """Tier changes, cost-model error, queueing delay vs compute, units late, predicted utilization."""

    def __init__(self, scheduler: SloScheduler, pipelines: Iterable[str] = ()) -> None:
        self._scheduler = scheduler
        self._pipelines = tuple(pipelines)  # series at zero for these until they have figures

    def _per_pipeline(self, values: dict[str, float]) -> dict[str, float]:
        return {**dict.fromkeys(self._pipelines, 0.0), **values}

    def collect(self) -> Iterator[Metric]:
        snap = self._scheduler.stats.snapshot()  # copies; the engine thread may add a key meanwhile
        tiers = CounterMetricFamily("streamserve_tier_changes", "Session tier changes by the degradation "
                                    "policy", labels=["pipeline", "direction"])
        changes = {**{(p, d): 0 for p in self._pipelines for d in ("down", "up")}, **snap["tier_changes"]}
        for (pipeline, direction), n in changes.items():
            tiers.add_metric([pipeline, direction], n)
        yield tiers
        err = GaugeMetricFamily("streamserve_cost_model_error", "Mean absolute relative error of the cost "
                                "model's step-time predictions (running)", labels=["pipeline"])
        for pipeline, e in self._per_pipeline(snap["cost_error"]).items():
            err.add_metric([pipeline], e)
        yield err
        for name, key, doc in (
            ("streamserve_queue_delay_seconds", "queue_s", "Total seconds units waited before their batch began"),
            ("streamserve_compute_seconds", "compute_s", "Total seconds of the batches units ran in, per unit"),
            ("streamserve_units_scheduled", "units", "Units run by the scheduler"),
            ("streamserve_units_late", "late", "Units run that finished after their deadline"),
            ("streamserve_units_expired", "expired", "Units dropped because they could no longer make it"),
            ("streamserve_units_spare", "spare_units", "Units run above their session's tier rate, in device "
             "time that was spare"),
        ):
            fam = CounterMetricFamily(name, doc, labels=["pipeline"])
            for pipeline, v in self._per_pipeline(snap[key]).items():
                fam.add_metric([pipeline], v)
            yield fam
        util = GaugeMetricFamily("streamserve_predicted_utilization", "The cost model's predicted busy "
                                 "fraction of the device at the sessions' current tiers")
        util.add_metric([], self._scheduler.admission.load().utilization)
        yield util
        # The latency outside the step (schedulers/overhead.py): learned online, used by the planner.
        over = GaugeMetricFamily("streamserve_latency_overhead_seconds", "Non-compute latency per unit, learned "
                                 "online: pre = ready to step start, post = step end to session, "
                                 "arrival = input behind the session's own clock",
                                 labels=["pipeline", "part", "stat"])
        jitter = GaugeMetricFamily("streamserve_step_time_ratio", "Measured step time over the cost model's "
                                   "prediction (its spread is what the planner samples; 0 before any sample)", labels=["pipeline", "stat"])
        summary = self._scheduler.cost.overhead.summary()
        unmeasured: dict[str, dict[str, float]] = {part: {} for part in OVERHEAD_PARTS}  # zeros until sampled
        for pipeline in (*self._pipelines, *(p for p in summary if p not in self._pipelines)):
            for part, stats in {**unmeasured, **summary.get(pipeline, {})}.items():
                if part == "pace":  # a ratio like jitter, for the planner; in /v1/capacity's overhead
                    continue
                for stat in ("mean", "p50", "p99"):
                    if part == "jitter":
                        jitter.add_metric([pipeline, stat], stats.get(stat, 0.0))
                    else:
                        over.add_metric([pipeline, part, stat], stats.get(stat, 0.0))
        yield over
        yield jitter
