"""Fake pipelines of known cost for the scheduler tests (no model, simulated clock)."""

from __future__ import annotations

from collections.abc import Sequence

from streamserve.schedulers import Admission, AdmissionConfig, CostModel, SloScheduler, WorkShape
from streamserve.schedulers.policy import DegradePolicy, PolicyConfig

S256 = WorkShape(256, 256, 1)


class Affine:
    """Step time a + b * (work-weighted batch size): a fake device of known speed. Between
    `slow_from` and `slow_until` (simulated seconds) it is `slow` times slower (a noisy neighbour)."""

    def __init__(self, a: float, b: float, ref: WorkShape = S256, slow: float = 1.0,
                 slow_from: float = 0.0, slow_until: float = 0.0) -> None:
        self.a, self.b, self.ref = a, b, ref
        self.slow, self.slow_from, self.slow_until = slow, slow_from, slow_until

    def __call__(self, pipeline: str, shapes: Sequence[WorkShape], now: float = 0.0) -> float:
        factor = self.slow if self.slow_from <= now < self.slow_until else 1.0
        return factor * (self.a + self.b * sum(s.work / self.ref.work for s in shapes))


def seeded(fake: Affine, pipeline: str = "video", shape: WorkShape = S256) -> CostModel:
    cost = CostModel()
    cost.seed(pipeline, shape, {1: fake(pipeline, [shape]), 2: fake(pipeline, [shape] * 2)})
    return cost


def scheduler(cost: CostModel, *, max_batch: int = 8, policy: PolicyConfig | None = None,
              **kwargs: object) -> SloScheduler:
    admission = Admission(cost, AdmissionConfig(max_batch=max_batch))
    return SloScheduler(cost, admission, max_batch=max_batch, policy=DegradePolicy(policy), **kwargs)  # type: ignore[arg-type]
