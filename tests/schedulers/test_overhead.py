"""The non-compute latency the server learns (pre / post / jitter / arrival), and what the planner does with it."""

from __future__ import annotations

import json
import math
import random

import pytest

from streamserve.core.plan import StepOutput
from streamserve.planner import plan
from streamserve.schedulers import CostModel, SessionSpec
from streamserve.schedulers.overhead import QUANTILES, ArrivalClock, Overhead
from streamserve.schedulers.sim import SimInbox, SimSession, SimUnit, simulate

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
    cost = CostModel(factor_alpha=1.0, plan_alpha=1.0)
    cost.seed("video", S256, {1: 0.010, 2: 0.015})
    cost.observe("video", [S256], 0.020)  # the machine got twice as slow
    exported = CostModel.from_dict(cost.to_dict())
    assert exported.predict("video", S256, 2) == pytest.approx(0.030)  # not the profiled 15 ms
    assert cost.overhead.quantiles("video", "jitter") == [pytest.approx(2.0)] * len(QUANTILES)
    assert cost.overhead.quantiles("video", "pace") == [pytest.approx(2.0)] * len(QUANTILES)


def test_the_planning_speed_does_not_lag_a_server_slower_than_its_warm_up_profile() -> None:
    # Served, the step takes 1.15x the warm-up profile's: after a few steps the planning speed says
    # so (the factor is a running mean at first), and pace is ~1 around it, not 1.15 for hundreds of steps.
    cost = CostModel()
    cost.seed("video", S256, {1: 0.010, 2: 0.015})
    for _ in range(100):
        cost.observe("video", [S256], 0.0115)
    assert CostModel.from_dict(cost.to_dict()).predict("video", S256, 1) == pytest.approx(0.0115, rel=0.01)
    assert cost.overhead.quantile("video", "pace", 0.5) == pytest.approx(1.0, abs=0.01)
    assert cost.overhead.mean("video", "pace") == pytest.approx(1.0, abs=0.01)  # the first step's 1.15 only


def test_pace_keeps_the_slow_spells_that_jitter_forgets() -> None:
    # 10 ms steps, with spells of 20 steps at 20 ms. The fast speed factor catches up within a few
    # steps of a spell, so measured / predicted (`jitter`) is back near 1 for most of it; `pace`,
    # against the slow planning factor, stays near 2 through every spell, and the profile's step time
    # is the machine's over the last few hundred steps (about 10 x 0.8 + 20 x 0.2 = 12 ms).
    cost = CostModel()
    cost.seed("video", S256, {1: 0.010, 2: 0.015})
    for k in range(1060):  # ends 60 steps after a spell
        cost.observe("video", [S256], 0.020 if k % 100 >= 80 else 0.010)
    jitter, pace = cost.overhead.quantiles("video", "jitter"), cost.overhead.quantiles("video", "pace")
    assert jitter is not None and pace is not None
    at = QUANTILES.index(0.9)
    assert jitter[at] < 1.3 and pace[at] > 1.6  # the spells' 20% of steps: at 2x in pace, not in jitter
    assert cost.overhead.lag1("video", "pace") > 0.8
    assert CostModel.from_dict(cost.to_dict()).predict("video", S256, 1) == pytest.approx(0.0115, rel=0.1)


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


def test_arrival_lateness_is_measured_on_the_sessions_own_clock() -> None:
    # The client's pts clock starts at 1000 s, the server's at 5 s (no sync needed); frames every
    # 1/30 s, every tenth one 20 ms late. Once 30 units are known, each unit's lateness is exact.
    over = Overhead()
    clock = ArrivalClock(over, "video", window=30)
    got = []
    for k in range(120):
        late = 0.020 if k % 10 == 7 else 0.0
        got.append(clock.observe(5.0 + k / 30 + late, 1000.0 + k / 30))
    assert got[:29] == [None] * 29
    assert got[29:] == [pytest.approx(0.020 if k % 10 == 7 else 0.0, abs=1e-9) for k in range(29, 120)]
    assert over.count("video", "arrival") == 91

    # pts that do not keep time with the arrivals (stamped at 30 fps, sent at 28): nothing recorded.
    drifting = Overhead()
    clock = ArrivalClock(drifting, "video", window=30)
    assert all(clock.observe(k / 28, k / 30) is None for k in range(200))
    assert drifting.count("video", "arrival") == 0
    # A new stream (pts back to 0) restarts the clock: 29 units before the first sample again.
    clock = ArrivalClock(over, "video", window=30)
    results = [clock.observe(10.0 + k / 30, k / 30) for k in range(40)]
    results += [clock.observe(12.0 + k / 30, k / 30) for k in range(40)]
    assert results[29:40] == [0.0] * 11 and results[40:69] == [None] * 29 and results[69] == 0.0
    with pytest.raises(ValueError, match="window must be >= 4"):
        ArrivalClock(over, "video", window=2)


def test_the_simulator_delays_arrivals_as_learned_and_queues_behind_late_units() -> None:
    # A 25 ms step at 30 fps: with punctual arrivals every frame takes exactly 25 ms. With 2 % of
    # units up to 30 ms late, a late unit's successor can arrive while it runs and waits for it:
    # at most 25 + (30 + 25 - 33.3) ms = 46.7 ms, and never a late unit itself (it finds the engine idle).
    def run(over: Overhead) -> list[float]:
        cost = seeded(Affine(0.020, 0.005))
        result = simulate([SimSession(SessionSpec("video", S256, degrade=()))], Affine(0.020, 0.005),
                          scheduler(cost, hold=False), 20.0, warmup=1.0, admit_all=True, overhead=over, seed=3)
        assert result.goodput() == 1.0
        return sorted(result.sessions[0].latencies)

    punctual = run(Overhead())
    assert punctual[0] == pytest.approx(0.025) and punctual[-1] == pytest.approx(0.025)
    over = Overhead()
    for k in range(100):
        over.observe("video", "arrival", 0.030 if k < 2 else 0.0)
    late = run(over)
    assert late[0] == pytest.approx(0.025) and len(late) >= len(punctual) - 1
    assert 0.025 + 1e-6 < late[-1] <= 0.025 + 0.030 + 0.025 - 1 / 30 + 1e-6
    assert sum(v > 0.025 + 1e-6 for v in late) < 0.03 * len(late)
    report = plan(seeded(Affine(0.020, 0.005)), SessionSpec("video", S256), duration=4.0, max_sessions=1,
                  overhead=over)
    assert report.overhead["arrival"]["p99"] == pytest.approx(0.030) and "arrival mean" in report.text()


def test_lag1_is_the_rank_correlation_of_successive_samples_and_profiles_carry_it() -> None:
    from streamserve.schedulers.overhead import _lag1_rank

    assert _lag1_rank([1.0, 2.0] * 50) == pytest.approx(-1.0)
    assert _lag1_rank([float(k // 10) for k in range(100)]) > 0.95  # runs of equal values
    assert _lag1_rank([0.5] * 30) == 0.0 and _lag1_rank([1.0, 2.0]) == 0.0
    rng = random.Random(0)
    assert abs(_lag1_rank([rng.random() for _ in range(2000)])) < 0.06
    over = Overhead()
    for k in range(200):
        over.observe("video", "jitter", 1.6 if k % 50 < 10 else 1.0)  # slow spells of 10 steps
    assert over.lag1("video", "jitter") == pytest.approx(_lag1_rank([1.6 if k % 50 < 10 else 1.0 for k in range(200)]))
    again = Overhead.from_dict(json.loads(json.dumps(over.to_dict())))
    assert again.lag1("video", "jitter") == pytest.approx(over.lag1("video", "jitter")) and again.lag1("video", "pre") == 0.0
    with pytest.raises(ValueError, match=r"lag1 'video'/jitter: expected a known part and a correlation in \[-1, 1\], got 3"):
        Overhead.from_dict({"lag1": {"video": {"jitter": 3}}})


def test_the_sampler_keeps_the_quantiles_and_the_correlation() -> None:
    # Samples from an AR(1) chain (normal scores correlated 0.8): the sampler's draws have the same
    # median and about the same lag-1 rank correlation; without correlation it is `sample` itself.
    from streamserve.schedulers.overhead import _lag1_rank

    src, z = random.Random(5), 0.0
    over = Overhead()
    for _ in range(2000):
        z = 0.8 * z + 0.6 * src.gauss(0, 1)
        over.observe("video", "jitter", 1.0 + 0.1 * math.exp(0.5 * z))  # a monotone map: ranks kept
    learned = over.lag1("video", "jitter")
    assert 0.72 < learned < 0.85  # (6 / pi) asin(0.8 / 2) = 0.786
    draw = over.sampler("video", "jitter", random.Random(1))
    draws = [draw() for _ in range(20_000)]
    qs = over.quantiles("video", "jitter")
    assert qs is not None and sorted(draws)[10_000] == pytest.approx(qs[QUANTILES.index(0.5)], rel=0.02)
    assert _lag1_rank(draws) == pytest.approx(learned, abs=0.05)
    flat = Overhead()
    for k in range(100):
        flat.observe("video", "post", 0.001 * ((k * 37) % 100))
    with_rng, reference = random.Random(9), random.Random(9)
    plain = Overhead.from_dict({**flat.to_dict(), "lag1": {}})  # the quantiles only: no correlation
    iid = plain.sampler("video", "post", with_rng)
    assert [iid() for _ in range(50)] == [plain.sample("video", "post", reference) for _ in range(50)]


def test_slow_spells_queue_frames_where_the_same_slow_steps_spread_out_do_not() -> None:
    # A 25 ms step at 30 fps; one step in ten takes 1.6x (40 ms, longer than the 33 ms period).
    # Spread out, a slow step delays one frame a little; in spells of ten, frames queue.
    def p99(order: list[float]) -> float:
        over = Overhead()
        for value in order:
            over.observe("video", "jitter", value)
        report = plan(seeded(Affine(0.020, 0.005)), SessionSpec("video", S256, degrade=()), duration=30.0,
                      max_sessions=1, overhead=over)
        return report.sweep[0].p99_ms

    spells = [1.6 if k % 100 < 10 else 1.0 for k in range(1000)]
    spread = [1.6 if k % 10 == 0 else 1.0 for k in range(1000)]
    assert p99(spells) > p99(spread) + 15.0
    over = Overhead.from_dict({"lag1": {"video": {"jitter": 0.9}}, "video": {"jitter": [1.0] * len(QUANTILES)}})
    report = plan(seeded(Affine(0.020, 0.005)), SessionSpec("video", S256), duration=2.0, max_sessions=1, overhead=over)
    assert "jitter mean 1.00x p99 1.00x lag-1 0.90" in report.text()  # the plan says what it assumed
