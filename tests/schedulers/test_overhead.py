"""The non-compute latency the server learns (pre / post / jitter), and what the planner does with it."""

from __future__ import annotations

import json
import random

import pytest

from streamserve.core.plan import StepOutput
from streamserve.planner import plan
from streamserve.schedulers import CostModel, SessionSpec
from streamserve.schedulers.overhead import QUANTILES, Overhead
from streamserve.schedulers.sim import SimInbox, SimUnit

from .helpers import S256, Affine, scheduler, seeded


def test_quantiles_and_samples_follow_the_measurements() -> None:
    over = Overhead()
    for i in range(101):
        over.observe("video", "post", i / 1000)  # 0 .. 100 ms, evenly
    qs = over.quantiles("video", "post")
    assert qs is not None and qs[QUANTILES.index(0.5)] == pytest.approx(0.050)
    assert qs[QUANTILES.index(0.99)] == pytest.approx(0.099) and qs[-1] == pytest.approx(0.100)
    rng = random.Random(1)
    draws = sorted(over.sample("video", "post", rng) for _ in range(20_000))
    assert draws[10_000] == pytest.approx(0.050, abs=0.002) and draws[19_800] == pytest.approx(0.099, abs=0.002)
    assert over.mean("video", "post") == pytest.approx(0.050)
    # Nothing measured: neutral (no delay, steps as predicted).
    assert over.sample("voice", "pre", rng) == 0.0 and over.sample("voice", "jitter", rng) == 1.0
    with pytest.raises(ValueError, match="part must be one of"):
        over.observe("video", "queue", 0.1)
    with pytest.raises(ValueError, match="finite number >= 0"):
        over.observe("video", "pre", -0.001)


def test_profile_round_trip_and_bad_profiles_are_named() -> None:
    cost = CostModel()
    cost.seed("video", S256, {1: 0.020, 2: 0.030})
    for _ in range(30):
        cost.overhead.observe("video", "pre", 0.004)
    again = CostModel.from_dict(json.loads(json.dumps(cost.to_dict())))
    assert again.overhead.quantiles("video", "pre") == [pytest.approx(0.004)] * len(QUANTILES)
    assert again.predict("video", S256, 2) == pytest.approx(0.030)
    with pytest.raises(ValueError, match="non-decreasing"):
        CostModel.from_dict({"_overhead": {"video": {"pre": [0.2, 0.1] + [0.3] * (len(QUANTILES) - 2)}}})
    with pytest.raises(ValueError, match="unknown part 'queue'"):
        CostModel.from_dict({"_overhead": {"video": {"queue": [0.0] * len(QUANTILES)}}})


def test_profile_carries_the_machine_speed_now_and_the_step_time_spread() -> None:
    cost = CostModel(factor_alpha=1.0)
    cost.seed("video", S256, {1: 0.010, 2: 0.015})
    cost.observe("video", [S256], 0.020)  # the machine got twice as slow
    exported = CostModel.from_dict(cost.to_dict())
    assert exported.predict("video", S256, 2) == pytest.approx(0.030)  # not the profiled 15 ms
    assert cost.overhead.quantiles("video", "jitter") == [pytest.approx(2.0)] * len(QUANTILES)


def test_scheduler_measures_the_delay_it_did_not_choose() -> None:
    cost = seeded(Affine(0.010, 0.005))
    sched = scheduler(cost, hold=False)
    inbox = SimInbox(2)
    sched.add("a", "video", inbox, SessionSpec("video", S256))
    frame = SimUnit(0, arrival=1.000, deadline=1.250)
    inbox.put(frame)
    plan1 = sched.schedule(1.004)  # the engine saw it 4 ms after it arrived (idle engine)
    assert len(plan1.batches) == 1
    assert cost.overhead.quantiles("video", "pre") == [pytest.approx(0.004)] * len(QUANTILES)
    out = StepOutput("a", (frame,))  # type: ignore[arg-type]
    sched.update(plan1, [out], {"video": 0.015})
    # The next unit, queued while the engine ran: the engine free at 1.019, planned at 1.021.
    inbox.put(SimUnit(1, arrival=1.010, deadline=1.260))
    sched.update(sched.schedule(1.021), [], {"video": 0.015})
    assert sorted(cost.overhead._samples[("video", "pre")]) == [pytest.approx(0.002), pytest.approx(0.004)]
    assert frame.meta["step_end"] == pytest.approx(1.019)  # for the server's `post`


def test_planner_adds_the_learned_overhead_exactly() -> None:
    # 10 ms + 5 ms per session; every batch starts 5 ms late and every output is seen 10 ms after
    # its step: one session's p99 is 15 + 5 + 10 = 30 ms, and 4 sessions no longer fit in 0.9 of
    # the device once 5 ms per batch is lost (U = 0.9 + 30 x 0.005).
    cost = seeded(Affine(0.010, 0.005))
    for _ in range(50):
        cost.overhead.observe("video", "pre", 0.005)
        cost.overhead.observe("video", "post", 0.010)
        cost.overhead.observe("video", "jitter", 1.0)
    report = plan(cost, SessionSpec("video", S256), duration=8.0, max_sessions=5)
    assert report.sweep[0].p99_ms == pytest.approx(30.0) and report.sweep[0].goodput == 1.0
    assert report.overhead["pre"]["mean"] == pytest.approx(0.005)
    assert report.simulated_capacity == 3 and report.admission_capacity == 3  # admission counts `pre` too
    bare = plan(cost, SessionSpec("video", S256), duration=8.0, max_sessions=5, overhead=Overhead())
    assert bare.sweep[0].p99_ms == pytest.approx(15.0) and bare.simulated_capacity == 4


def test_a_pessimistic_cost_model_probes_and_recovers() -> None:
    # The model believes a step takes 400 ms (a slow spell that ended), longer than the 250 ms
    # deadline: every unit looks hopeless. The device really takes 15 ms. A probe every 0.5 s
    # lets it measure that, and the session is then served at its full rate.
    from streamserve.schedulers.sim import SimSession, simulate

    cost = CostModel(factor_alpha=0.5)
    cost.seed("video", S256, {1: 0.400, 2: 0.600})
    result = simulate([SimSession(SessionSpec("video", S256))], Affine(0.010, 0.005), scheduler(cost), 8.0,
                      warmup=3.0, admit_all=True)
    assert cost.predict("video", S256, 1) == pytest.approx(0.015, rel=0.2)
    assert result.goodput() >= 0.99 and result.on_time_fps() == pytest.approx(30, rel=0.05)
