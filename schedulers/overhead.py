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

The capacity planner's simulator samples all three from their quantiles (`to_dict`): a batch starts
`pre` later, runs `jitter` x its predicted cost, and each output is seen `post` after the step ends.
"""

from __future__ import annotations

import bisect
import collections
import math
import random
import threading
from collections.abc import Mapping
from typing import Any

PARTS = ("pre", "post", "jitter")
NEUTRAL = {"pre": 0.0, "post": 0.0, "jitter": 1.0}  # what a part is before anything was measured
QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 1.0)
MIN_SAMPLES = 20  # fewer live samples than this: a loaded profile (if any) is used instead
REFRESH = 16  # `quantile` re-sorts a window only after this many new samples (it runs on every plan)


class Overhead:
    """Per (pipeline, part): a window of recent samples, or quantiles loaded from a saved profile.

    Thread-safe: the engine thread adds ``pre`` and ``jitter``, the event loop ``post``."""

    def __init__(self, window: int = 2048) -> None:
        if window < MIN_SAMPLES:
            raise ValueError(f"window must be >= {MIN_SAMPLES}, got {window}")
        self._window = window
        self._samples: dict[tuple[str, str], collections.deque[float]] = {}
        self._loaded: dict[tuple[str, str], list[float]] = {}
        self._sums: dict[tuple[str, str], float] = {}  # running sum of each window (a cheap mean)
        self._seen: dict[tuple[str, str], int] = {}  # samples ever observed (for `quantile`'s cache)
        self._cached: dict[tuple[str, str], tuple[int, list[float] | None]] = {}
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
        if qs is None:
            return NEUTRAL[part]
        u = rng.random()
        i = min(len(QUANTILES) - 2, bisect.bisect_right(QUANTILES, u) - 1)
        lo, hi = QUANTILES[i], QUANTILES[i + 1]
        return qs[i] + (qs[i + 1] - qs[i]) * (u - lo) / (hi - lo)

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
                    "p99": qs[QUANTILES.index(0.99)], "samples": float(self.count(pipeline, part))}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {"quantiles": [...], pipeline: {part: [value at each quantile]}}."""
        out: dict[str, Any] = {"quantiles": list(QUANTILES)}
        for pipeline in self.pipelines():
            parts = {part: qs for part in PARTS if (qs := self.quantiles(pipeline, part)) is not None}
            if parts:
                out[pipeline] = parts
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Overhead:
        model = cls()
        if list(data.get("quantiles", QUANTILES)) != list(QUANTILES):
            raise ValueError(f"overhead profile quantiles must be {list(QUANTILES)}, got {data.get('quantiles')!r}")
        for pipeline, parts in data.items():
            if pipeline == "quantiles":
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


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks of an ascending list."""
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    i = min(len(ordered) - 2, int(pos))
    return ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)
