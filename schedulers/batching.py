"""Batch size choice: how many units of a video pipeline one step runs.

A batch of n costs step(n) (the cost model). On a GPU that is nearly flat (4 frames cost ~1.2x one)
and batching multiplies throughput; on a CPU it is nearly linear (4 frames cost ~3.5x one) and
batching gains a few percent of throughput but multiplies latency: every unit of a batch waits for
the whole batch, and a session waits for a round of batches before its own. So the size is chosen,
per pipeline, for the frames it delivers on time. With k live sessions, a round at size n is
ceil(k/n) batches, and a unit's worst latency is a round (the batch in progress when it arrived,
then the ones ahead of it) and its own batch, each started the learned mean `pre` late, plus the
p99 of the step-end-to-session time (`post`; all from `schedulers/overhead.py`, neutral until
measured). Step times spread (`jitter`: measured over predicted): the round's batches are taken
at the mean jitter and one batch at its p99 (a p99 stretch of every batch of a round at once is far
rarer than 1%; and a tail inflated by one slow spell must not rule batching out for a whole window):

    latency(n) = ceil(k/n) * step(n) * jitter_mean + step(n) * jitter_p99 + (ceil(k/n) + 1) * pre + post_p99

The largest size up to the cap whose latency fits the tightest budget of the pipeline's sessions
wins: when every unit is on time, the most frames per second are on time, and a batch never has
less throughput than its units one by one (the largest, not the predicted best throughput: a
prediction for a size that is not run goes stale, and a stale curve must not lock batching out).
If no size fits, the one with the least latency. Admission's load prediction (`predict_load`) and
the scheduler call this same function, so the ledger predicts (and the degradation policy restores
against) the batches that actually run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from streamserve.schedulers.cost import CostModel, WorkShape


@dataclasses.dataclass(frozen=True, slots=True)
class BatchChoice:
    size: int
    latency_s: float  # predicted worst latency of a unit at this size
    fits: bool  # latency_s is within the budget


def batch_latency(cost: CostModel, pipeline: str, shapes: Sequence[WorkShape], size: int) -> float:
    """The predicted worst latency of a unit when the sessions of `shapes` run in batches of `size`
    (the most expensive shapes batched together: the bound must hold for every batch)."""
    return _latency(cost, pipeline, sorted(shapes, key=lambda s: -s.work), size, _overheads(cost, pipeline))


def fitting_batch(cost: CostModel, pipeline: str, shapes: Sequence[WorkShape], budget_s: float,
                  cap: int) -> BatchChoice:
    """The batch size, 1..min(len(shapes), cap), that delivers the most units on time (module doc).
    `shapes`: one per live video session of the pipeline; `budget_s`: their tightest budget."""
    ordered = sorted(shapes, key=lambda s: -s.work)
    over = _overheads(cost, pipeline)  # once per call, not per size: this runs on every plan
    best: BatchChoice | None = None
    for size in range(1, max(1, min(len(ordered), cap)) + 1):
        latency = _latency(cost, pipeline, ordered, size, over)
        choice = BatchChoice(size, latency, latency <= budget_s)
        if best is None or choice.fits or (not best.fits and latency <= best.latency_s):
            best = choice
    assert best is not None
    return best


def _overheads(cost: CostModel, pipeline: str) -> tuple[float, float, float, float]:
    """(jitter mean, jitter p99, pre mean, post p99): the learned latency outside the step."""
    o = cost.overhead
    return (o.mean(pipeline, "jitter"), o.quantile(pipeline, "jitter", 0.99), o.mean(pipeline, "pre"),
            o.quantile(pipeline, "post", 0.99))


def _latency(cost: CostModel, pipeline: str, ordered: Sequence[WorkShape], size: int,
             over: tuple[float, float, float, float]) -> float:
    """The worst latency at `size` (module doc); `ordered`: the shapes, most expensive first."""
    jitter_mean, jitter_p99, pre, post_p99 = over
    step = cost.batch_cost(pipeline, ordered[:size]) if ordered else cost.cost(pipeline, WorkShape(), 1)
    rounds = math.ceil(max(1, len(ordered)) / size)
    return rounds * step * jitter_mean + step * jitter_p99 + (rounds + 1) * pre + post_p99


def video_batch_sizes(cost: CostModel, video: Iterable[tuple[str, WorkShape, float]], cap: int,
                      adapt: bool = True) -> dict[str, int]:
    """Per video pipeline, the batch size to run: `video` holds (pipeline, shape, budget) per live
    session; `cap`: the largest size allowed (max_batch, or the voice lane's cut). `adapt=False`:
    `cap` for every pipeline (the largest batch the caps allow)."""
    by_pipeline: dict[str, list[tuple[WorkShape, float]]] = {}
    for pipeline, shape, budget_s in video:
        by_pipeline.setdefault(pipeline, []).append((shape, budget_s))
    if not adapt:
        return dict.fromkeys(by_pipeline, cap)
    return {p: fitting_batch(cost, p, [s for s, _ in sb], min(b for _, b in sb), cap).size
            for p, sb in by_pipeline.items()}


def round_costs(cost: CostModel, video: Iterable[tuple[str, WorkShape, float]], sizes: dict[str, int]) -> dict[str, float]:
    """Per video pipeline, the predicted time to run every one of its sessions once in batches of
    `sizes` (`video` as for `video_batch_sizes`): how long a session waits between its units when
    all of them stream."""
    shapes: dict[str, list[WorkShape]] = {}
    for pipeline, shape, _ in video:
        shapes.setdefault(pipeline, []).append(shape)
    return {p: math.ceil(len(s) / sizes[p]) * cost.batch_cost(p, s[:sizes[p]]) for p, s in shapes.items()}
