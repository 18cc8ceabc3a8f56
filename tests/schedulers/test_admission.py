"""Goodput admission: the boundary is exact for a known cost, refusals name their limit."""

from __future__ import annotations

import dataclasses

import pytest

from streamserve.schedulers import Admission, AdmissionConfig, SessionSpec, WorkShape, ladder
from streamserve.schedulers.sim import SimSession, simulate

from .helpers import S256, Affine, scheduler, seeded

FIXED = dict(degrade=())  # no lower tiers: admit at the requested quality or refuse


def test_boundary_is_exact_for_a_known_cost() -> None:
    # cost(n) = 10 ms + 5 ms * n; at 30 fps, U(n) = 30 * (0.010 + 0.005 n) <= 0.9  <=>  n <= 4.
    cost = seeded(Affine(0.010, 0.005))
    adm = Admission(cost, AdmissionConfig(max_utilization=0.9))
    spec = SessionSpec("video", S256, fps=30, **FIXED)  # type: ignore[arg-type]
    for i in range(4):
        d = adm.check(f"s{i}", spec)
        assert d.admitted and d.tier is not None and d.tier.level == 0, d
    assert adm.load().utilization == pytest.approx(0.9)
    refused = adm.check("s4", spec)
    assert not refused.admitted and refused.limit == "utilization"
    assert refused.utilization == pytest.approx(30 * (0.010 + 0.005 * 5))
    assert "predicted device utilization 1.05 would exceed 0.90" in refused.reason
    assert refused.retry_after_s == 5.0 and "s4" not in adm
    assert adm.headroom(spec).more_sessions == 0
    adm.release("s0")
    assert adm.headroom(spec).more_sessions == 1
    assert adm.headroom(spec).utilization == pytest.approx(0.75)


def test_latency_limit_and_mixed_rates() -> None:
    cost = seeded(Affine(0.010, 0.005))
    adm = Admission(cost)
    # 15 fps and 30 fps sessions of one shape batch together at 15 fps, the 30 fps one alone between:
    adm.check("a", SessionSpec("video", S256, fps=30, **FIXED))  # type: ignore[arg-type]
    adm.check("b", SessionSpec("video", S256, fps=15, **FIXED))  # type: ignore[arg-type]
    assert adm.load().utilization == pytest.approx(15 * 0.020 + 15 * 0.015)
    tight = SessionSpec("video", S256, fps=1, budget_s=0.03, **FIXED)  # type: ignore[arg-type]
    refused = adm.check("c", tight)  # round (20 ms + 15 ms) + own 15 ms > 30 ms
    assert not refused.admitted and refused.limit == "latency" and "predicted latency" in refused.reason


def test_a_degraded_tier_is_offered_before_refusing() -> None:
    cost = seeded(Affine(0.010, 0.005))
    adm = Admission(cost, AdmissionConfig(max_utilization=0.85))
    for i in range(3):  # U = 30 * 0.025 = 0.75
        assert adm.check(f"s{i}", SessionSpec("video", S256, **FIXED)).admitted  # type: ignore[arg-type]
    # A 4th at 30 fps: U = 30 * 0.030 = 0.9 > 0.85. At f fps it batches with the others f times a
    # second: f * cost(4) + (30 - f) * cost(3). 28.5 fps: 0.8925, 27: 0.885, 24: 0.87, all > 0.85;
    # 20 fps: 0.6 + 0.25 = 0.85: offered tier 4, the best that fits.
    d = adm.check("s3", SessionSpec("video", S256))
    assert d.admitted and d.limit == "degraded" and d.tier is not None
    assert (d.tier.level, d.tier.fps, d.tier.knob) == (4, 20, "fps")
    assert d.utilization == pytest.approx(0.85)
    assert "admitted at a lower tier (tier 4: 20 fps 256x256 1 step)" in d.reason
    assert not adm.check("s4", SessionSpec("video", S256, **FIXED)).admitted  # type: ignore[arg-type]


def test_a_higher_priority_newcomer_lowers_lower_priority_sessions() -> None:
    cost = seeded(Affine(0.010, 0.005))
    adm = Admission(cost)
    for i in range(4):
        adm.check(f"low{i}", SessionSpec("video", S256, priority=0))
    d = adm.check("vip", SessionSpec("video", S256, priority=5, **FIXED))  # type: ignore[arg-type]
    assert d.admitted and d.limit == "preempted" and set(d.lowered) == {f"low{i}" for i in range(4)}
    assert all(adm.tier(f"low{i}").level == len(adm.tiers(f"low{i}")) - 1 for i in range(4))
    assert adm.tier("vip").level == 0


def test_ladder_lowers_frame_rate_then_resolution_then_steps() -> None:
    spec = SessionSpec("video", WorkShape(256, 256, 2), fps=30)
    got = [(t.knob, t.fps, t.shape.width, t.shape.steps) for t in ladder(spec)]
    assert got == [("requested", 30, 256, 2), ("fps", 28.5, 256, 2), ("fps", 27, 256, 2), ("fps", 24, 256, 2),
                   ("fps", 20, 256, 2), ("fps", 15, 256, 2), ("fps", 10, 256, 2),
                   ("resolution", 10, 192, 2), ("resolution", 10, 128, 2), ("steps", 10, 128, 1)]
    custom = SessionSpec("video", WorkShape(256, 256, 2), degrade=("steps", "fps"), min_fps=15)
    assert [(t.knob, t.fps, t.shape.steps) for t in ladder(custom)] == [
        ("requested", 30, 2), ("steps", 30, 1), ("fps", 28.5, 1), ("fps", 27, 1), ("fps", 24, 1), ("fps", 20, 1),
        ("fps", 15, 1)]
    # 25 fps (a PAL camera): 23.75, 22.5, 20, 16.7, 12.5; 25/3 is under min_fps 10.
    assert [round(t.fps, 2) for t in ladder(SessionSpec("video", fps=25))] == [25, 23.75, 22.5, 20, 16.67, 12.5]
    with pytest.raises(ValueError, match="degrade must list distinct knobs"):
        SessionSpec("video", degrade=("fps", "colour"))


def test_simulated_capacity_matches_admission() -> None:
    """The planner's check, exact: at the admitted maximum every unit is on time, at the latency
    the cost model gives (all four arrive together: one batch of 4 = 30 ms)."""
    fake = Affine(0.010, 0.005)
    sched = scheduler(seeded(fake))
    sessions = [SimSession(SessionSpec("video", S256, **FIXED)) for _ in range(6)]  # type: ignore[arg-type]
    result = simulate(sessions, fake, sched, duration=5.0, warmup=1.0)
    assert [s.admitted for s in result.sessions] == [True] * 4 + [False] * 2
    assert result.goodput() == 1.0
    assert result.latency_percentile(99) == pytest.approx(0.030)
    assert result.latency_percentile(50) == pytest.approx(0.030)
    assert result.on_time_fps() == pytest.approx(120.0, rel=0.01)
    one = simulate([SimSession(SessionSpec("video", S256))], fake, scheduler(seeded(fake)), 3.0, warmup=1.0)
    assert one.latency_percentile(99) == pytest.approx(0.015) and one.goodput() == 1.0


def test_a_live_change_is_re_admitted_exactly() -> None:
    # 10 ms + 5 ms per session at 30 fps: U(n) = 0.3 + 0.15 n, 4 sessions use 0.90.
    cost = seeded(Affine(0.010, 0.005))
    adm = Admission(cost, AdmissionConfig())
    fixed = SessionSpec("video", S256, degrade=())
    for i in range(4):
        assert adm.check(f"s{i}", fixed).admitted
    # A raise by 1 fps: U = 0.9 + 1 x cost(1) = 0.915: refused, and s0 keeps its spec and tier.
    refused = adm.change("s0", dataclasses.replace(fixed, fps=31.0))
    assert not refused.admitted and refused.limit == "utilization" and refused.retry_after_s == 5.0
    assert adm.spec("s0").fps == 30.0 and adm.tier("s0").level == 0
    # Allowed to degrade, a raise to 60 fps runs at the new ladder's 30 fps tier (clamped): 57, 54,
    # 48 and 40 fps add (f - 30) x cost(1) > 0 to the 0.9 the four use at 30 fps.
    clamped = adm.change("s0", dataclasses.replace(fixed, fps=60.0, degrade=("fps",)))
    assert clamped.admitted and clamped.limit == "degraded" and clamped.tier is not None
    assert (clamped.tier.level, clamped.tier.fps) == (5, 30.0) and adm.spec("s0").fps == 60.0
    # Lowering two sessions to 10 fps frees room for a 5th at 30 fps:
    # rates 30, 30, 30, 10, 10: 20 x cost(3) + 10 x cost(5) = 0.5 + 0.35 = 0.85.
    assert not adm.check("s4", fixed).admitted
    for sid in ("s0", "s1"):
        lowered = adm.change(sid, dataclasses.replace(fixed, fps=10.0))
        assert lowered.admitted and lowered.limit == "none"
    assert adm.check("s4", fixed).admitted
    assert adm.load().utilization == pytest.approx(0.85)
    # A lowering is applied even on an over-loaded device (it only frees capacity).
    cost.observe("video", [S256], 0.030)  # the device got slower: the load is now over the limit
    assert not adm.load().fits(0.9)
    assert adm.change("s2", dataclasses.replace(fixed, fps=15.0)).admitted
    with pytest.raises(KeyError, match="not admitted"):
        adm.change("nobody", fixed)


def test_the_miss_window_counts_the_late_units_of_its_window() -> None:
    from streamserve.schedulers.policy import MissWindow

    w = MissWindow()
    for t, late in [(0.0, True), (0.5, False), (1.0, True), (1.5, True), (2.0, False)]:
        w.add(t, late)
    assert w.counts(2.0, 5.0) == (3, 5)
    assert w.counts(2.2, 1.0) == (1, 2)  # 1.5 late, 2.0 on time; the older ones forgotten
    w.clear()
    assert w.counts(3.0, 5.0) == (0, 0)
