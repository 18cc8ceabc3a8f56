"""The cost model: what one step of a pipeline costs, as a function of batch size and work shape.

A `WorkShape` is what a session asks of its pipeline per step: resolution, denoising steps, stream
batch (video) or audio chunk length (voice). For each (pipeline, shape) the model keeps a
`LatencyModel` table (an exponentially weighted mean per batch size, interpolated between measured
sizes, extrapolated linearly). A shape never measured is estimated from the nearest measured shape
of the same pipeline, scaled by the ratio of their `work` (pixels x steps, or audio milliseconds):
diffusion cost grows roughly with both.

Seeded by a warm-up profile (`seed`, or `from_dict` of a saved profile), then learned online from
every step the engine measures (`observe`): a per-pipeline *speed factor* follows the machine getting
slower or faster (a noisy neighbour, thermal throttling) within a few steps, for every batch size
and shape at once, while the tables learn the shape of the cost curve slowly, in the factor's units.
Both learn from the same signal, the measured ÷ predicted ratio, in log space (the factor by its
`factor_alpha` power, the measured table entry by what is left of it to the power `alpha`), each step bounded to a factor of
`MAX_STEP_RATIO`: so one spike moves the prediction by a bounded amount, and the split between the
factor and the tables cannot drift (with separate linear updates a pipeline of tiny, spiky steps
drove the factor to 1e12 and every stale batch size's prediction with it). Each observation first
scores the prediction it replaces:
`errors()` gives the running mean absolute relative error per pipeline, which /metrics reports.
`overhead` (`schedulers/overhead.py`) learns the latency outside the step (wake-up and event-loop
delay, step-time spread, step end to session); `to_dict` exports both.

The fast factor whitens what it follows: within a few steps of a slow spell the prediction has caught
up and measured ÷ predicted (`jitter`, what the batch-size rule bounds) is back near 1. A planner that
multiplied a fixed step time by `jitter` would see the onsets of slow spells but never the spells.
So a second, slow *planning factor* (a running geometric mean of the ratio, then an exponential one
over ~1 / `plan_alpha` = 200 steps) follows the same signal, each step's
time over the table times that factor is learned as `pace` (spread and correlation of the step time
itself), and `to_dict` exports the tables times the planning factor: the machine's speed over the
last few seconds, around which `pace` varies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from streamserve.schedulers.latency import LatencyModel
from streamserve.schedulers.overhead import Overhead

MAX_STEP_RATIO = 4.0  # one measurement counts as at most 4x (or 1/4 of) what was predicted
DEFAULT_UNKNOWN_S = 0.010  # the guess for a pipeline never measured (admission then learns quickly)
OVERHEAD_KEY = "_overhead"  # the profile's entry for the learned non-compute latency (`Overhead`)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkShape:
    """Per-step work of one session. Zero width/height: the pipeline has no resolution knob."""

    width: int = 0
    height: int = 0
    steps: int = 1
    stream_batch: bool = False
    audio_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.width < 0 or self.height < 0:
            raise ValueError(f"width and height must be >= 0, got {self.width}x{self.height}")
        if not 1 <= self.steps <= 64:
            raise ValueError(f"steps must be in [1, 64], got {self.steps}")
        if not 0.0 <= self.audio_ms <= 60_000:
            raise ValueError(f"audio_ms must be in [0, 60000], got {self.audio_ms}")

    @property
    def work(self) -> float:
        """Relative work units: pixels x steps for video, milliseconds for audio, else steps."""
        if self.audio_ms:
            return self.audio_ms
        pixels = self.width * self.height if self.width and self.height else 1
        return float(pixels * self.steps)

    @property
    def key(self) -> str:
        sb = "sb" if self.stream_batch else "seq"
        if self.audio_ms:
            return f"audio{self.audio_ms:g}ms"
        if self.width and self.height:
            return f"{self.width}x{self.height}/{self.steps}st/{sb}"
        return f"{self.steps}st/{sb}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CostModel:
    """Predicted seconds per batch of a pipeline; thread-compatible (one writer, the engine thread)."""

    def __init__(self, alpha: float = 0.05, factor_alpha: float = 0.2, error_alpha: float = 0.05,
                 plan_alpha: float = 0.005) -> None:
        for name, value in (("factor_alpha", factor_alpha), ("error_alpha", error_alpha), ("plan_alpha", plan_alpha)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        self._table = LatencyModel(alpha)
        self._factor: dict[str, float] = {}
        self._factor_alpha = factor_alpha
        self._plan: dict[str, float] = {}  # the slow planning factor per pipeline (module doc)
        self._plan_seen: dict[str, int] = {}  # steps the planning factor has learned from (its warm start)
        self._plan_alpha = plan_alpha
        self._shapes: dict[str, dict[str, WorkShape]] = {}  # pipeline -> shape key -> shape
        # (pipeline, shape key) -> bounded cost of 1, 2, ... items (`predict`); cleared on every change
        self._bounded: dict[tuple[str, str], list[float]] = {}
        self._error_alpha = error_alpha
        self._error: dict[str, float] = {}
        self._observations: dict[str, int] = {}
        self.overhead = Overhead()  # the latency outside the step itself (schedulers/overhead.py)

    @staticmethod
    def _name(pipeline: str, shape: WorkShape) -> str:
        return f"{pipeline}|{shape.key}"

    # --- learning -------------------------------------------------------------------------------
    def seed(self, pipeline: str, shape: WorkShape, seconds_by_batch: Mapping[int, float]) -> None:
        """Set measured (warm-up) step times for batch sizes of one shape, replacing what was there
        (and resetting the pipeline's speed factor)."""
        self._bounded.clear()
        self._shapes.setdefault(pipeline, {})[shape.key] = shape
        self._factor.pop(pipeline, None)
        self._plan.pop(pipeline, None)
        self._plan_seen.pop(pipeline, None)
        name = self._name(pipeline, shape)
        for n, seconds in seconds_by_batch.items():
            self._table.reset(name, int(n), float(seconds))

    def observe(self, pipeline: str, shapes: Iterable[WorkShape], seconds: float) -> float | None:
        """Learn from one measured batch (one shape per item). Returns the relative error of the
        prediction made before this measurement (None when nothing was predicted yet)."""
        groups = _group(shapes)
        if not groups:
            raise ValueError("a batch has at least one item")
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        known = pipeline in self._shapes
        predicted = self.batch_cost(pipeline, [s for s, n in groups.items() for _ in range(n)]) if known else None
        # The speed factor moves fast (the machine got slower or faster: every size and shape of
        # this pipeline at once); the tables learn the rest, in the factor's units, more slowly.
        # Both step geometrically on the same bounded ratio (see the module's docstring).
        ratio = 1.0
        if predicted and seconds > 0:
            ratio = min(MAX_STEP_RATIO, max(1.0 / MAX_STEP_RATIO, seconds / predicted))
            fast = self._factor.get(pipeline, 1.0)
            plan = self._plan.get(pipeline, fast)
            pace = seconds / (predicted / fast * plan)  # over the tables x the planning factor
            if "#" not in pipeline:  # chores ("video#open") are not steps
                self.overhead.observe(pipeline, "pace", pace)
            bounded = min(MAX_STEP_RATIO, max(1.0 / MAX_STEP_RATIO, pace))
            seen = self._plan_seen[pipeline] = self._plan_seen.get(pipeline, 0) + 1
            # a running geometric mean at first (no lag behind a server slower than its warm-up
            # profile), then an exponential one over ~1 / plan_alpha steps
            self._plan[pipeline] = plan * bounded ** max(self._plan_alpha, 1.0 / seen)
            self._factor[pipeline] = fast * ratio ** self._factor_alpha
        # Attribute the measured time to each shape in proportion to its predicted share.
        self._bounded.clear()  # the factor moved
        shares = {s: self.predict(pipeline, s, n) or 0.0 for s, n in groups.items()}
        total = sum(shares.values())
        for shape, n in groups.items():
            part = seconds * (shares[shape] / total) if total > 0 else seconds / len(groups)
            self._shapes.setdefault(pipeline, {})[shape.key] = shape
            self._table.scale(self._name(pipeline, shape), n, ratio ** ((1.0 - self._factor_alpha) * self._table.alpha),
                              part / self._factor.get(pipeline, 1.0))
        self._bounded.clear()  # the tables moved
        self._observations[pipeline] = self._observations.get(pipeline, 0) + 1
        if predicted is None or seconds <= 0:
            return None
        if predicted > 0 and "#" not in pipeline:  # chores ("video#open") are not steps
            self.overhead.observe(pipeline, "jitter", seconds / predicted)
        err = abs(predicted - seconds) / seconds
        old = self._error.get(pipeline)
        self._error[pipeline] = err if old is None else old + self._error_alpha * (err - old)
        return err

    # --- prediction -----------------------------------------------------------------------------
    def predict(self, pipeline: str, shape: WorkShape, batch_size: int) -> float | None:
        """Seconds for a batch of `batch_size` items of one shape; None if the pipeline is unmeasured.

        Never more than the same items run as smaller batches (which the engine could always do): a
        batch size whose entry was learned in a slow spell and is no longer chosen would otherwise
        keep its stale cost, and with it keep sessions from being restored after the spell. The
        bounded costs are kept until the model next learns (the scheduler asks for every size at
        every step)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        best = self._bounded.setdefault((pipeline, shape.key), [])  # best[k - 1]: k items, one batch or several
        while len(best) < batch_size:
            k = len(best) + 1
            own = self._predict_one(pipeline, shape, k)
            if own is None:
                return None
            best.append(min([own, *(best[a - 1] + best[k - a - 1] for a in range(1, k // 2 + 1))]))
        return best[batch_size - 1]

    def _predict_one(self, pipeline: str, shape: WorkShape, batch_size: int) -> float | None:
        shapes = self._shapes.get(pipeline)
        if not shapes:
            return None
        factor = self._factor.get(pipeline, 1.0)
        if shape.key in shapes:
            name = self._name(pipeline, shape)
            sizes = self._table.sizes(name)
            if len(sizes) == 1 and sizes[0] != batch_size:  # one size measured: borrow the curve's shape
                curved = self._along_curve(pipeline, shape, sizes[0], batch_size)
                if curved is not None:
                    return curved * factor
            base = self._table.predict(name, batch_size)
            return None if base is None else base * factor
        ref = min(shapes.values(), key=lambda s: abs(math.log(s.work / shape.work)))
        base = self._table.predict(self._name(pipeline, ref), batch_size)
        return None if base is None else base * factor * shape.work / ref.work

    def _along_curve(self, pipeline: str, shape: WorkShape, measured: int, batch_size: int) -> float | None:
        """A shape measured at one batch size only: scale that measurement along the batch curve of
        the nearest shape measured at several (a 128x128 session after a 256x256 warm-up profile
        batches like 256x256 does, not linearly)."""
        others = [s for s in self._shapes[pipeline].values()
                  if s.key != shape.key and len(self._table.sizes(self._name(pipeline, s))) >= 2]
        if not others:
            return None
        ref = self._name(pipeline, min(others, key=lambda s: abs(math.log(s.work / shape.work))))
        at_n, at_m = self._table.predict(ref, batch_size), self._table.predict(ref, measured)
        own = self._table.predict(self._name(pipeline, shape), measured)
        if at_n is None or not at_m or own is None:
            return None
        return own * at_n / at_m

    def cost(self, pipeline: str, shape: WorkShape, batch_size: int) -> float:
        """`predict`, with a default guess for a pipeline never measured."""
        got = self.predict(pipeline, shape, batch_size)
        return DEFAULT_UNKNOWN_S * batch_size if got is None else got

    def batch_cost(self, pipeline: str, shapes: Iterable[WorkShape]) -> float:
        """A batch mixing shapes runs one forward per shape group (as the video pipeline does)."""
        return sum(self.cost(pipeline, s, n) for s, n in _group(shapes).items())

    # --- reporting ------------------------------------------------------------------------------
    def errors(self) -> dict[str, float]:
        """Per pipeline: running mean absolute relative error of the predictions."""
        return dict(self._error)

    def speed_factor(self, pipeline: str) -> float:
        """Measured over profiled step time, recently (1.0: as profiled; 2.0: twice as slow)."""
        return self._factor.get(pipeline, 1.0)

    def observations(self, pipeline: str) -> int:
        return self._observations.get(pipeline, 0)

    def planning_factor(self, pipeline: str) -> float:
        """Like `speed_factor`, over the last few hundred steps (what `to_dict` exports)."""
        return self._plan.get(pipeline, self._factor.get(pipeline, 1.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able profile: per pipeline, per shape, seconds by batch size at the machine's speed
        over the last few seconds (the planning factor applied; `pace` varies around it), and under
        `_overhead` the learned non-compute latency."""
        snap = self._table.snapshot()
        out: dict[str, Any] = {}
        for pipeline, shapes in self._shapes.items():
            factor = self.planning_factor(pipeline)
            out[pipeline] = [{"shape": s.to_dict(), "seconds": {str(n): t * factor for n, t in
                                                                 snap.get(self._name(pipeline, s), {}).items()}}
                             for s in shapes.values()]
        overhead = self.overhead.to_dict()
        if len(overhead) > 1:
            out[OVERHEAD_KEY] = overhead
        return out

    @classmethod
    def from_dict(cls, profile: Mapping[str, Any]) -> CostModel:
        model = cls()
        for pipeline, entries in profile.items():
            if pipeline == OVERHEAD_KEY:
                if not isinstance(entries, Mapping):
                    raise ValueError(f"bad cost profile: {OVERHEAD_KEY} must be an object, got {entries!r}")
                model.overhead = Overhead.from_dict(entries)
                continue
            for entry in entries:
                try:
                    shape = WorkShape(**entry["shape"])
                    seconds = {int(n): float(t) for n, t in entry["seconds"].items()}
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"bad cost profile entry for {pipeline!r}: {entry!r} ({exc})") from None
                model.seed(pipeline, shape, seconds)
        return model


def _group(shapes: Iterable[WorkShape]) -> dict[WorkShape, int]:
    groups: dict[WorkShape, int] = {}
    for s in shapes:
        groups[s] = groups.get(s, 0) + 1
    return groups
