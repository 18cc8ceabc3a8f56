"""The non-compute part of a unit's latency, learned online from the server's own measurements.

A frame's latency on the real server is not only queueing and compute. Three more parts, per
pipeline, are measured on every step and kept as recent samples (a bounded window):

- ``pre``: seconds from the moment the engine *could* have started a batch (its earliest unit's
  arrival, the end of the previous step, or the end of a batch hold, whichever is last) to the
  moment the scheduler actually planned it: the engine thread waking up, the event loop (decoding
  WebSocket frames) holding the interpreter, the loop's calls between steps. The scheduler's own
  waits (the engine busy with earlier batches, a hold) are not in it: the simulator models those.
- ``post``: seconds from a step's end to its output reaching the session on the event loop
  (hand-over to the loop thread, fan-out), measured when the session is given the output.
- ``jitter``: measured step time over the cost model's prediction for that batch: the spread of
  step times around their mean (a 2-core CPU shared with the event loop and codecs).
- ``pace``: measured step time over the pipeline's slowly moving baseline (its cost tables times
  the cost model's planning factor, `schedulers/cost.py`): like ``jitter``, but with the machine's
  slow spells left in (the fast speed factor behind ``jitter``'s prediction catches up with a spell
  within a few steps). The planner's simulated steps are the profile's times x ``pace``.
- ``arrival``: how late a unit reached the server after its slot on the session's own clock (its
  pts): the client's timer, the network, the transport's decode and the event loop. Measured per
  unit by `ArrivalClock` as its ``arrival - pts`` minus the smallest such offset among the
  session's recent units (the slot of a unit that was not delayed), so it needs no clock sync.

The capacity planner's simulator samples them from their quantiles (`to_dict`): a unit arrives
`arrival` after its slot, a batch starts `pre` later, runs `pace` x its profiled cost (`jitter` x
its predicted cost with a profile that has no `pace`), and each output is seen `post` after the step ends. Successive values are not independent: on a shared CPU a
slow step is mostly followed by another (the event loop or a codec busy on the other core for a
while), and a run of slow steps queues frames where the same slow steps spread out would not. So
each part also keeps its lag-1 rank correlation (in the order measured), and `sampler` draws a
sequence with the learned quantiles and that correlation (an AR(1) chain in normal scores, mapped
through the quantiles: a Gaussian copula).
"""

from __future__ import annotations

import bisect
import collections
import math
import random
import statistics
import threading
from collections.abc import Callable, Mapping
from typing import Any

PARTS = ("pre", "post", "jitter", "pace", "arrival")
NEUTRAL = {"pre": 0.0, "post": 0.0, "jitter": 1.0, "pace": 1.0, "arrival": 0.0}  # what a part is before anything was measured
QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 1.0)
MIN_SAMPLES = 20  # fewer live samples than this: a loaded profile (if any) is used instead
REFRESH = 16  # `quantile` re-sorts a window only after this many new samples (it runs on every plan)


class Overhead:
    """Per (pipeline, part): a window of recent samples, or quantiles loaded from a saved profile.

    Thread-safe: the engine thread adds ``pre``, ``jitter`` and ``pace``, the event loop ``post`` and ``arrival``."""

    def __init__(self, window: int = 2048) -> None:
        if window < MIN_SAMPLES:
            raise ValueError(f"window must be >= {MIN_SAMPLES}, got {window}")
        self._window = window
        self._samples: dict[tuple[str, str], collections.deque[float]] = {}
        self._loaded: dict[tuple[str, str], list[float]] = {}
        self._loaded_lag1: dict[tuple[str, str], float] = {}
        self._sums: dict[tuple[str, str], float] = {}  # running sum of each window (a cheap mean)
        self._seen: dict[tuple[str, str], int] = {}  # samples ever observed (for `quantile`'s cache)
        self._cached: dict[tuple[str, str], tuple[int, list[float] | None]] = {}
        self._lag_cached: dict[tuple[str, str], tuple[int, float]] = {}  # (seen, lag-1) for `lag1`
        self._lock = threading.Lock()

    def observe(self, pipeline: str, part: str, value: float) -> None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{part} must be a finite number >= 0, got {value}")
        key = (pipeline, part)
        with self._lock:
            window = self._samples.get(key)
            if window is None:
                window = self._samples[key] = collections.deque(maxlen=self._window)
            evicted = window[0] if len(window) == window.maxlen else 0.0
            window.append(value)
            self._sums[key] = self._sums.get(key, 0.0) + value - evicted
            self._seen[key] = self._seen.get(key, 0) + 1

    def count(self, pipeline: str, part: str) -> int:
        with self._lock:
            return len(self._samples.get((pipeline, part), ()))

    def quantiles(self, pipeline: str, part: str) -> list[float] | None:
        """The part's value at each of `QUANTILES` (None when neither measured nor loaded)."""
        with self._lock:
            samples = sorted(self._samples.get((pipeline, part), ()))
            loaded = self._loaded.get((pipeline, part))
        if len(samples) >= MIN_SAMPLES or (samples and loaded is None):
            return [_percentile(samples, q) for q in QUANTILES]
        return list(loaded) if loaded is not None else None

    def quantile(self, pipeline: str, part: str, q: float) -> float:
        """The part's value at quantile `q` (one of `QUANTILES`; neutral if unknown). For the
        scheduler's every plan: the window is sorted again only after `REFRESH` new samples."""
        key = (pipeline, part)
        with self._lock:
            seen = self._seen.get(key, 0)
            cached = self._cached.get(key)
        if cached is None or seen - cached[0] >= REFRESH or (seen < MIN_SAMPLES and seen != cached[0]):
            cached = (seen, self.quantiles(pipeline, part))
            with self._lock:
                self._cached[key] = cached
        qs = cached[1]
        return NEUTRAL[part] if qs is None else qs[QUANTILES.index(q)]

    def sample(self, pipeline: str, part: str, rng: random.Random) -> float:
        """A draw from the part's distribution (inverse CDF between the quantiles)."""
        qs = self.quantiles(pipeline, part)
        return NEUTRAL[part] if qs is None else _inverse_cdf(qs, rng.random())

    def lag1(self, pipeline: str, part: str) -> float:
        """The lag-1 rank (Spearman) correlation of the part's live samples in the order measured
        (from a loaded profile while fewer than `MIN_SAMPLES` are live; 0 when unknown)."""
        key = (pipeline, part)
        with self._lock:
            seen = self._seen.get(key, 0)
            cached = self._lag_cached.get(key)
            if cached is not None and seen - cached[0] < 4 * REFRESH:
                return cached[1]  # a scrape of /metrics or /v1/capacity must not re-rank the window each time
            samples = list(self._samples.get(key, ()))
            loaded = self._loaded_lag1.get(key)
        if len(samples) >= MIN_SAMPLES or (samples and loaded is None):
            value = _lag1_rank(samples)
            with self._lock:
                self._lag_cached[key] = (seen, value)
            return value
        return loaded or 0.0

    def sampler(self, pipeline: str, part: str, rng: random.Random) -> Callable[[], float]:
        """Successive draws with the part's quantiles and its lag-1 correlation (module doc). With
        no correlation each draw is `sample`'s (the same use of `rng`)."""
        qs = self.quantiles(pipeline, part)
        if qs is None:
            return lambda: NEUTRAL[part]
        # Spearman -> the normal scores' correlation (kept below 1: a chain that never moves is one draw)
        rho = max(-0.99, min(0.99, 2.0 * math.sin(math.pi * self.lag1(pipeline, part) / 6.0)))
        if rho == 0.0:
            return lambda: _inverse_cdf(qs, rng.random())
        keep, fresh = rho, math.sqrt(1.0 - rho * rho)
        normal = statistics.NormalDist()
        z = rng.gauss(0.0, 1.0)

        def draw() -> float:
            nonlocal z
            z = keep * z + fresh * rng.gauss(0.0, 1.0)
            return _inverse_cdf(qs, normal.cdf(z))

        return draw

    def mean(self, pipeline: str, part: str) -> float:
        """The part's mean (from the quantiles when only a profile is loaded; neutral if unknown)."""
        with self._lock:
            n = len(self._samples.get((pipeline, part), ()))
            if n >= MIN_SAMPLES:
                return self._sums[(pipeline, part)] / n
        qs = self.quantiles(pipeline, part)
        if qs is None:
            return NEUTRAL[part]
        # trapezoids between the quantile points
        return sum((QUANTILES[i + 1] - QUANTILES[i]) * (qs[i] + qs[i + 1]) / 2 for i in range(len(qs) - 1))

    def pipelines(self) -> list[str]:
        with self._lock:
            return sorted({p for p, _ in self._samples} | {p for p, _ in self._loaded})

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per pipeline and part: mean, p50, p99 and the number of live samples (for /metrics)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for pipeline in self.pipelines():
            for part in PARTS:
                qs = self.quantiles(pipeline, part)
                if qs is None:
                    continue
                out.setdefault(pipeline, {})[part] = {
                    "mean": self.mean(pipeline, part), "p50": qs[QUANTILES.index(0.5)],
                    "p99": qs[QUANTILES.index(0.99)], "lag1": self.lag1(pipeline, part),
                    "samples": float(self.count(pipeline, part))}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {"quantiles": [...], "lag1": {pipeline: {part: r}}, pipeline: {part: [value at each quantile]}}."""
        out: dict[str, Any] = {"quantiles": list(QUANTILES)}
        lags: dict[str, dict[str, float]] = {}
        for pipeline in self.pipelines():
            parts = {part: qs for part in PARTS if (qs := self.quantiles(pipeline, part)) is not None}
            if parts:
                out[pipeline] = parts
                lags[pipeline] = {part: self.lag1(pipeline, part) for part in parts}
        if lags:
            out["lag1"] = lags
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Overhead:
        model = cls()
        if list(data.get("quantiles", QUANTILES)) != list(QUANTILES):
            raise ValueError(f"overhead profile quantiles must be {list(QUANTILES)}, got {data.get('quantiles')!r}")
        for pipeline, parts in data.get("lag1", {}).items():
            for part, value in (parts.items() if isinstance(parts, Mapping) else [(None, parts)]):
                if part not in PARTS or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
                    raise ValueError(f"overhead profile lag1 {pipeline!r}/{part}: expected a known part and a "
                                     f"correlation in [-1, 1], got {value!r}")
                model._loaded_lag1[(pipeline, part)] = float(value)
        for pipeline, parts in data.items():
            if pipeline in ("quantiles", "lag1"):
                continue
            if not isinstance(parts, Mapping):
                raise ValueError(f"overhead profile for {pipeline!r} must be an object, got {parts!r}")
            for part, values in parts.items():
                if part not in PARTS:
                    raise ValueError(f"overhead profile for {pipeline!r}: unknown part {part!r} (known: {PARTS})")
                try:
                    qs = [float(v) for v in values]
                except (TypeError, ValueError):
                    raise ValueError(f"overhead profile {pipeline!r}/{part}: expected numbers, got {values!r}") from None
                if len(qs) != len(QUANTILES) or any(b < a for a, b in zip(qs, qs[1:], strict=False)) or qs[0] < 0:
                    raise ValueError(f"overhead profile {pipeline!r}/{part}: expected {len(QUANTILES)} "
                                     f"non-decreasing values >= 0, got {values!r}")
                model._loaded[(pipeline, part)] = qs
        return model


class ArrivalClock:
    """One session's input clock: how late each unit arrived after its slot (``arrival`` samples).

    A unit's offset is ``arrival - pts seconds``; the smallest offset among the session's last
    `window` units is the slot of an undelayed unit, and a unit's lateness is its offset above that.
    Units whose pts do not keep time with their arrivals are not measured: pts going backwards or
    jumping more than `max_gap_s` (a new stream, a paused camera) restart the clock, and while the
    smallest offsets of the window's older and newer halves differ by more than `max_drift_s` (pts
    stamped at a nominal rate the client does not keep) nothing is recorded. Loop thread only."""

    def __init__(self, overhead: Overhead, pipeline: str, window: int = 60, max_drift_s: float = 0.005,
                 max_gap_s: float = 2.0) -> None:
        if window < 4:
            raise ValueError(f"window must be >= 4, got {window}")
        self._overhead, self._pipeline = overhead, pipeline
        self._max_drift, self._max_gap = max_drift_s, max_gap_s
        self._units: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)  # (arrival, pts s)

    def observe(self, arrival: float, pts_s: float) -> float | None:
        """Record the unit's lateness (and return it), or None while the clock cannot be trusted."""
        if self._units:
            last_arrival, last_pts = self._units[-1]
            if pts_s <= last_pts or pts_s - last_pts > self._max_gap or arrival - last_arrival > self._max_gap:
                self._units.clear()
        self._units.append((arrival, pts_s))
        if len(self._units) < (self._units.maxlen or 0):
            return None  # too few units to know the clock yet
        offsets = [a - p for a, p in self._units]
        half = len(offsets) // 2
        older, newer = min(offsets[:half]), min(offsets[half:])
        if abs(newer - older) > self._max_drift:
            return None
        late = offsets[-1] - min(older, newer)
        self._overhead.observe(self._pipeline, "arrival", late)
        return late


def _inverse_cdf(qs: list[float], u: float) -> float:
    """The value at probability `u` of the distribution whose `QUANTILES` are `qs` (linear between them)."""
    i = min(len(QUANTILES) - 2, bisect.bisect_right(QUANTILES, u) - 1)
    lo, hi = QUANTILES[i], QUANTILES[i + 1]
    return qs[i] + (qs[i + 1] - qs[i]) * (u - lo) / (hi - lo)


def _lag1_rank(values: list[float]) -> float:
    """Pearson correlation of each value's rank with the next one's (ties share their mean rank);
    0 for fewer than 3 values or no spread."""
    n = len(values)
    if n < 3:
        return 0.0
    order = sorted(range(n), key=values.__getitem__)
    ranks = [0.0] * n
    i = 0
    while i < n:  # ties get the mean of their ranks
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    try:
        return max(-1.0, min(1.0, statistics.correlation(ranks[:-1], ranks[1:])))
    except statistics.StatisticsError:  # one side has no spread
        return 0.0


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks of an ascending list."""
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    i = min(len(ordered) - 2, int(pos))
    return ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)
