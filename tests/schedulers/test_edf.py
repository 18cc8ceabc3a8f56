"""EDF order, batching, expiry and the latency model, with a fake clock and no model."""

from __future__ import annotations

import numpy as np
import pytest

from streamserve.core import FakeClock, StepOutput, VideoFrame
from streamserve.schedulers import EDFScheduler, LatencyModel
from streamserve.session import FreshestQueue


def frame(pts: int, deadline: float, arrival: float = 0.0) -> VideoFrame:
    return VideoFrame(np.zeros((2, 2, 3), np.uint8), pts, arrival, deadline)


def make(sched: EDFScheduler, sid: str, pipeline: str, *deadlines: float) -> FreshestQueue:
    q = FreshestQueue(8)
    for i, d in enumerate(deadlines):
        q.put(frame(i, d))
    sched.add(sid, pipeline, q)
    return q


def test_earliest_deadline_first_across_pipelines() -> None:
    sched = EDFScheduler(max_batch=8)
    make(sched, "a", "video", 3.0)
    make(sched, "b", "passthrough", 1.0)
    make(sched, "c", "video", 2.0)
    plan = sched.schedule(now=0.0)
    assert [b.pipeline for b in plan.batches] == ["passthrough", "video"]
    assert plan.batches[0].session_ids == ("b",)
    assert plan.batches[1].session_ids == ("c", "a")  # deadline order inside the batch


def test_one_item_per_session_per_step_keeps_order() -> None:
    sched = EDFScheduler()
    q = make(sched, "a", "video", 1.0, 2.0, 3.0)
    pts = []
    for _ in range(3):
        plan = sched.schedule(0.0)
        assert plan.size == 1
        pts.append(plan.batches[0].items[0].media.pts)
    assert pts == [0, 1, 2]
    assert len(q) == 0
    assert sched.schedule(0.0).empty


def test_batches_are_capped_and_the_rest_wait() -> None:
    sched = EDFScheduler(max_batch=2)
    for sid, d in [("a", 4.0), ("b", 1.0), ("c", 3.0), ("d", 2.0)]:
        make(sched, sid, "video", d)
    first = sched.schedule(0.0)
    assert first.batches[0].session_ids == ("b", "d")
    second = sched.schedule(0.0)
    assert second.batches[0].session_ids == ("c", "a")


def test_expired_items_are_dropped_not_run() -> None:
    clock = FakeClock(0.0)
    sched = EDFScheduler()
    make(sched, "a", "video", 0.5, 0.9, 2.0)
    clock.advance(1.0)
    plan = sched.schedule(clock.now())
    assert [item.media.pts for item in plan.expired] == [0, 1]
    assert [item.media.pts for item in plan.batches[0].items] == [2]


def test_add_twice_and_remove() -> None:
    sched = EDFScheduler()
    make(sched, "a", "video", 1.0)
    with pytest.raises(ValueError, match="'a' is already scheduled"):
        sched.add("a", "video", FreshestQueue(1))
    sched.remove("a")
    sched.remove("a")  # idempotent
    assert sched.schedule(0.0).empty and len(sched) == 0
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        EDFScheduler(max_batch=0)


def test_update_feeds_latency_model() -> None:
    sched = EDFScheduler()
    make(sched, "a", "video", 1.0)
    make(sched, "b", "video", 1.0)
    plan = sched.schedule(0.0)
    sched.update(plan, [StepOutput("a"), StepOutput("b")], {"video": 0.04})
    assert sched.latency.predict("video", 2) == pytest.approx(0.04)


def test_latency_model_interpolates_and_extrapolates() -> None:
    m = LatencyModel(alpha=1.0)
    assert m.predict("x", 1) is None
    m.observe("x", 1, 0.010)
    assert m.predict("x", 4) == pytest.approx(0.040)  # one point: linear in size
    m.observe("x", 4, 0.025)
    assert m.predict("x", 2) == pytest.approx(0.015)
    assert m.predict("x", 8) == pytest.approx(0.045)
    m2 = LatencyModel(alpha=0.5)
    m2.observe("y", 1, 1.0)
    m2.observe("y", 1, 0.0)
    assert m2.predict("y", 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        m.observe("x", 0, 0.1)
