"""Goodput admission: the capacity ledger of one engine (one device).

The ledger holds every live (and reserved) session's spec and current tier. `load()` predicts, from
the cost model, what the engine must do per second to serve them all at their tiers:

- **utilization**: per pipeline and shape, sessions sorted by frame rate f1 >= f2 >= ... >= fn batch
  together: all n at rate fn, the fastest n-1 at the extra rate f(n-1) - fn, and so on, so
  U = sum_k (f_k - f_{k+1}) * cost(k) (batches split at `max_batch`). U is the fraction of each
  second the device computes; above `max_utilization` queues grow and deadlines slip.
- **latency**: a video unit may wait for one round of every group's batch before its own runs:
  round + own batch <= the session's budget (voice, served first, is bounded by the voice slack).
  Every batch also loses the delay the server learned before a batch starts (`pre`).
- **voice slack**: video batches are cut so that a voice chunk never waits behind one longer than
  its slack (budget minus the voice work queued meanwhile, `voice_slack`); that smaller batch is
  what the utilization uses.
- **batch size**: a video pipeline's batches are as large as the scheduler will run them: the size
  that delivers the most frames on time (`schedulers/batching.py`, the same function the scheduler
  calls; `adapt_batch=False`: as large as the caps allow).

`check(session_id, spec)` admits a new session at the best tier for which every session still fits
(tier 0, or a degraded tier it is told about); failing that, if the newcomer outranks live sessions,
at the cost of lowering those to their floor; otherwise refuses, naming the binding limit. An
admitted session is reserved at once (two concurrent opens cannot both take the last slot) until
`release`. Thread-safe: the event loop checks, the engine thread's policy moves tiers.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping

from streamserve.schedulers.batching import video_batch_sizes
from streamserve.schedulers.cost import CostModel, WorkShape
from streamserve.schedulers.spec import SessionSpec, Tier, ladder


@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionConfig:
    max_utilization: float = 0.9  # admit / degrade above this predicted busy fraction
    restore_utilization: float = 0.7  # restore a tier only if the load stays below this (hysteresis)
    max_batch: int = 8
    retry_after_s: float = 5.0
    adapt_batch: bool = True  # video batches of the size that fits the deadline (schedulers/batching.py)

    def __post_init__(self) -> None:
        if not 0.05 <= self.max_utilization <= 1.0:
            raise ValueError(f"max_utilization must be in [0.05, 1], got {self.max_utilization}")
        if not 0.0 < self.restore_utilization < self.max_utilization:
            raise ValueError(f"restore_utilization must be in (0, max_utilization={self.max_utilization}), "
                             f"got {self.restore_utilization}")
        if not 1 <= self.max_batch <= 256:
            raise ValueError(f"max_batch must be in [1, 256], got {self.max_batch}")
        if not 0.0 < self.retry_after_s <= 3600:
            raise ValueError(f"retry_after_s must be in (0, 3600], got {self.retry_after_s}")


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    utilization: float
    latency_ok: bool
    voice_ok: bool
    worst_latency_s: float  # the largest predicted (round + own batch) over sessions
    video_batch_cap: int  # video batch size the voice lane allows
    video_batch: Mapping[str, int] = dataclasses.field(default_factory=dict)  # per pipeline: the size run

    def fits(self, max_utilization: float) -> bool:
        return self.utilization <= max_utilization + 1e-12 and self.latency_ok and self.voice_ok

    def limit(self, max_utilization: float) -> str:
        """The binding limit's name: voice_slack, utilization or latency ("none" if it fits)."""
        if not self.voice_ok:
            return "voice_slack"
        if self.utilization > max_utilization + 1e-12:
            return "utilization"
        if not self.latency_ok:
            return "latency"
        return "none"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    tier: Tier | None
    limit: str  # "none" when admitted at tier 0; else what bound it
    reason: str
    utilization: float  # predicted, with the new session at the offered tier (or at its floor if refused)
    retry_after_s: float = 0.0
    lowered: tuple[str, ...] = ()  # live sessions lowered to make room (a higher-priority newcomer)

    def to_dict(self) -> dict[str, object]:
        return {"admitted": self.admitted, "limit": self.limit, "reason": self.reason,
                "utilization": round(self.utilization, 4),
                "tier": self.tier.to_dict() if self.tier else None,
                **({"retry_after_s": self.retry_after_s} if not self.admitted else {})}


@dataclasses.dataclass(frozen=True, slots=True)
class Headroom:
    """What one engine can still take: its predicted utilization and how many more sessions of a
    given spec fit at tier 0 (the multi-device placer picks the engine with the most)."""

    utilization: float
    free: float  # max_utilization - utilization (may be negative when overloaded)
    more_sessions: int


@dataclasses.dataclass(slots=True)
class _Entry:
    spec: SessionSpec
    tiers: list[Tier]
    level: int = 0

    @property
    def tier(self) -> Tier:
        return self.tiers[self.level]


def predict_load(cost: CostModel, entries: Iterable[tuple[SessionSpec, Tier]], max_batch: int,
                 adapt_batch: bool = True) -> Load:
    """The load of serving `entries` (spec, tier) on one engine; see the module docstring."""
    items = list(entries)
    voice = [(s, t) for s, t in items if s.lane == "voice"]
    video = [(s, t) for s, t in items if s.lane != "voice"]
    voice_round = _round_cost(cost, voice, max_batch)
    cap, voice_ok = max_batch, True
    if voice:
        slack = voice_slack([s.budget_s for s, _ in voice], [s.fps for s, _ in voice], voice_round)
        cap = video_batch_cap(cost, [(s.pipeline, t.shape) for s, t in video], slack, max_batch)
        voice_ok = cap >= 1
        cap = max(cap, 1)
    sizes = video_batch_sizes(cost, [(s.pipeline, t.shape, s.budget_s) for s, t in video], cap, adapt_batch)
    util = _utilization(cost, voice, max_batch) + _utilization(cost, video, sizes)
    round_s = voice_round + _round_cost(cost, video, sizes)
    # Voice goes first (earlier deadlines) and waits for at most one cut video batch: `voice_ok`.
    # A video unit may wait for a round of every batch, then run in its own.
    latencies = [(round_s + cost.cost(s.pipeline, t.shape, 1), s.budget_s) for s, t in video]
    worst = max((lat for lat, _ in latencies), default=voice_round)
    latency_ok = all(lat <= budget for lat, budget in latencies)
    return Load(util, latency_ok, voice_ok, worst, cap, sizes)


def voice_slack(budgets: list[float], rates: list[float], voice_round: float) -> float:
    """The longest video batch c a voice chunk may wait behind: it then waits c, plus the chunks that
    queued meanwhile (c x rate of them, `voice_round` seconds each), plus its own round:
    c + (c * rate + 1) * voice_round <= budget."""
    return (min(budgets) - voice_round) / (1.0 + max(rates) * voice_round)


def video_batch_cap(cost: CostModel, video: list[tuple[str, WorkShape]], slack: float, max_batch: int) -> int:
    """The largest video batch whose predicted cost is within `slack` (0 if not even one fits)."""
    if not video:
        return max_batch
    worst = max(video, key=lambda pv: cost.cost(pv[0], pv[1], 1))
    n = 0
    while n < max_batch and cost.cost(worst[0], worst[1], n + 1) <= slack:
        n += 1
    return n


def _groups(items: list[tuple[SessionSpec, Tier]]) -> dict[tuple[str, WorkShape], list[float]]:
    groups: dict[tuple[str, WorkShape], list[float]] = {}
    for spec, tier in items:
        groups.setdefault((spec.pipeline, tier.shape), []).append(tier.fps)
    return groups


def _chunked(cost: CostModel, pipeline: str, shape: WorkShape, n: int, cap: int) -> float:
    """n sessions' batches of at most `cap`, each also losing the learned delay before its start
    (`pre`, schedulers/overhead.py: zero until the server measured it)."""
    full, rest = divmod(n, cap)
    total = full * cost.cost(pipeline, shape, cap)
    batches = full + (1 if rest else 0)
    return total + (cost.cost(pipeline, shape, rest) if rest else 0.0) + batches * cost.overhead.mean(pipeline, "pre")


def _utilization(cost: CostModel, items: list[tuple[SessionSpec, Tier]], cap: int | Mapping[str, int]) -> float:
    """`cap`: the batch size, one for all pipelines or per pipeline."""
    total = 0.0
    for (pipeline, shape), rates in _groups(items).items():
        rates.sort(reverse=True)
        size = cap if isinstance(cap, int) else cap[pipeline]
        for k, f in enumerate(rates, start=1):
            nxt = rates[k] if k < len(rates) else 0.0
            if f > nxt:
                total += (f - nxt) * _chunked(cost, pipeline, shape, k, size)
    return total


def _round_cost(cost: CostModel, items: list[tuple[SessionSpec, Tier]], cap: int | Mapping[str, int]) -> float:
    return sum(_chunked(cost, p, s, len(r), cap if isinstance(cap, int) else cap[p]) for (p, s), r in _groups(items).items())


class Admission:
    def __init__(self, cost: CostModel, config: AdmissionConfig | None = None) -> None:
        self.cost = cost
        self.config = config or AdmissionConfig()
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # --- the ledger -----------------------------------------------------------------------------
    def check(self, session_id: str, spec: SessionSpec) -> Decision:
        """Admit (and reserve) or refuse `spec`; see the module docstring."""
        cfg = self.config
        tiers = ladder(spec)
        with self._lock:
            if session_id in self._entries:
                raise ValueError(f"session {session_id!r} is already admitted")
            live = [(e.spec, e.tier) for e in self._entries.values()]
            for tier in tiers:
                load = predict_load(self.cost, [*live, (spec, tier)], cfg.max_batch, cfg.adapt_batch)
                if load.fits(cfg.max_utilization):
                    self._entries[session_id] = _Entry(spec, tiers, tier.level)
                    reason = "fits at the requested quality" if tier.level == 0 else (
                        f"admitted at a lower tier ({tier.describe()}): the requested one would put "
                        f"the device over its limit")
                    return Decision(True, tier, "none" if tier.level == 0 else "degraded", reason,
                                    load.utilization)
            lower = [sid for sid, e in self._entries.items() if e.spec.priority < spec.priority]
            if lower:
                floor = [(e.spec, e.tiers[-1] if sid in lower else e.tier) for sid, e in self._entries.items()]
                for tier in tiers:
                    load = predict_load(self.cost, [*floor, (spec, tier)], cfg.max_batch, cfg.adapt_batch)
                    if load.fits(cfg.max_utilization):
                        for sid in lower:
                            entry = self._entries[sid]
                            entry.level = len(entry.tiers) - 1
                        self._entries[session_id] = _Entry(spec, tiers, tier.level)
                        return Decision(True, tier, "preempted", f"admitted at {tier.describe()} by lowering "
                                        f"{len(lower)} lower-priority session(s) to their floor",
                                        load.utilization, lowered=tuple(lower))
            load = predict_load(self.cost, [*live, (spec, tiers[-1])], cfg.max_batch, cfg.adapt_batch)
            limit = load.limit(cfg.max_utilization)
            return Decision(False, None, limit, self._refusal(spec, tiers[-1], load, limit, len(live)),
                            load.utilization, cfg.retry_after_s)

    def change(self, session_id: str, spec: SessionSpec) -> Decision:
        """Re-admit a live session asking for `spec` (a live change of its frame rate, resolution,
        steps or priority). It gets the best tier of the new ladder that fits beside the others at
        their current tiers, or failing that the best one that does not raise the predicted load (so
        a change that lowers work is never refused, and frees what it no longer uses); otherwise it
        is refused and keeps its current spec and tier. Lower-priority sessions are not pushed down
        for a change (only for a newcomer, `check`)."""
        cfg = self.config
        tiers = ladder(spec)
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                raise KeyError(f"session {session_id!r} is not admitted")
            others = [(e.spec, e.tier) for sid, e in self._entries.items() if sid != session_id]
            now = predict_load(self.cost, [*others, (entry.spec, entry.tier)], cfg.max_batch, cfg.adapt_batch)
            for tier in tiers:
                load = predict_load(self.cost, [*others, (spec, tier)], cfg.max_batch, cfg.adapt_batch)
                fits = load.fits(cfg.max_utilization)
                if fits or (load.utilization <= now.utilization + 1e-12
                            and load.worst_latency_s <= now.worst_latency_s + 1e-12 and load.voice_ok >= now.voice_ok):
                    self._entries[session_id] = _Entry(spec, tiers, tier.level)
                    if tier.level == 0:
                        reason = "the change fits at the requested quality" if fits else \
                            "the change lowers the load (the device is over its limit)"
                    else:
                        reason = (f"the change runs at a lower tier ({tier.describe()}): the requested one "
                                  f"would put the device over its limit")
                    return Decision(True, tier, "none" if tier.level == 0 else "degraded", reason, load.utilization)
            load = predict_load(self.cost, [*others, (spec, tiers[-1])], cfg.max_batch, cfg.adapt_batch)
            limit = load.limit(cfg.max_utilization)
            return Decision(False, None, limit, "change refused, the session keeps its current quality: "
                            + self._refusal(spec, tiers[-1], load, limit, len(others)), load.utilization,
                            cfg.retry_after_s)

    def restore(self, session_id: str, spec: SessionSpec, level: int) -> None:
        """Put a session back on `spec` at `level` (undo a `change` the pipeline then refused)."""
        tiers = ladder(spec)
        if not 0 <= level < len(tiers):
            raise ValueError(f"level must be in [0, {len(tiers) - 1}], got {level}")
        with self._lock:
            if session_id in self._entries:
                self._entries[session_id] = _Entry(spec, tiers, level)

    def _refusal(self, spec: SessionSpec, floor: Tier, load: Load, limit: str, live: int) -> str:
        what = f"{spec.pipeline} at {floor.describe()}"
        if limit == "voice_slack":
            return (f"{what}: a video batch would hold voice chunks longer than their slack "
                    f"({live} live session(s))")
        if limit == "latency":
            return (f"{what}: predicted latency {load.worst_latency_s * 1000:.0f} ms exceeds a session's "
                    f"deadline budget ({live} live session(s))")
        return (f"{what}: predicted device utilization {load.utilization:.2f} would exceed "
                f"{self.config.max_utilization:.2f} ({live} live session(s) at their lowest tiers or current ones)")

    def ensure(self, session_id: str, spec: SessionSpec) -> None:
        """Register a session that skipped `check` (a scheduler used without admission)."""
        with self._lock:
            if session_id not in self._entries:
                self._entries[session_id] = _Entry(spec, ladder(spec))

    def release(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # --- tiers (moved by the degradation policy) ------------------------------------------------
    def tier(self, session_id: str) -> Tier:
        with self._lock:
            return self._entries[session_id].tier

    def tiers(self, session_id: str) -> list[Tier]:
        with self._lock:
            return list(self._entries[session_id].tiers)

    def spec(self, session_id: str) -> SessionSpec:
        with self._lock:
            return self._entries[session_id].spec

    def set_level(self, session_id: str, level: int) -> Tier:
        with self._lock:
            entry = self._entries[session_id]
            if not 0 <= level < len(entry.tiers):
                raise ValueError(f"level must be in [0, {len(entry.tiers) - 1}] for {session_id!r}, got {level}")
            entry.level = level
            return entry.tier

    def levels(self) -> dict[str, tuple[SessionSpec, int, int]]:
        """session id -> (spec, current level, number of tiers)."""
        with self._lock:
            return {sid: (e.spec, e.level, len(e.tiers)) for sid, e in self._entries.items()}

    def load(self, override: Mapping[str, int] | None = None) -> Load:
        """The predicted load at the current tiers (`override`: session id -> level to try)."""
        with self._lock:
            items = [(e.spec, e.tiers[(override or {}).get(sid, e.level)]) for sid, e in self._entries.items()]
        return predict_load(self.cost, items, self.config.max_batch, self.config.adapt_batch)

    def headroom(self, spec: SessionSpec | None = None, limit: int = 1000) -> Headroom:
        """Utilization now, and how many more sessions like `spec` fit at tier 0."""
        with self._lock:
            live = [(e.spec, e.tier) for e in self._entries.values()]
        util = predict_load(self.cost, live, self.config.max_batch, self.config.adapt_batch).utilization
        more = 0
        if spec is not None:
            tier0 = ladder(spec)[0]
            cfg = self.config
            while more < limit and predict_load(self.cost, [*live, *[(spec, tier0)] * (more + 1)],
                                                cfg.max_batch, cfg.adapt_batch).fits(cfg.max_utilization):
                more += 1
        return Headroom(util, self.config.max_utilization - util, more)
