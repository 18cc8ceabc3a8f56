"""The SLO scheduler on the simulator (same code as the server, simulated clock, fake devices of
known speed): degradation order and hysteresis, priority, stall-free joins, voice slack, holding."""

from __future__ import annotations

import pytest

from streamserve.schedulers import CostModel, SessionSpec, WorkShape
from streamserve.schedulers.admission import voice_slack
from streamserve.schedulers.sim import SimSession, simulate

from .helpers import S256, Affine, scheduler, seeded

VOICE = WorkShape(audio_ms=20)


def levels(result, sid: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [lvl for _, lvl in next(s for s in result.sessions if s.session_id == sid).tiers]


def test_noisy_neighbour_degrades_in_order_then_restores_without_flapping() -> None:
    # 3 sessions fit (U = 30 * 0.020 = 0.6); from t=3 s to t=8 s the device is 2.5x slower.
    fake = Affine(0.010, 0.005, slow=2.5, slow_from=3.0, slow_until=8.0)
    sched = scheduler(seeded(fake))
    sessions = [SimSession(SessionSpec("video", S256, priority=p), phase=i * 0.007) for i, p in enumerate([0, 0, 1])]
    result = simulate(sessions, fake, sched, duration=20.0)
    ladder = sched.admission.tiers("s0")
    assert [t.knob for t in ladder] == ["requested", "fps", "fps", "resolution", "resolution"]
    # Low-priority sessions go all the way down, one rung at a time, before the high-priority one moves;
    # then everything comes back, each level visited once per direction (no flapping).
    for sid in ("s0", "s1"):
        path = levels(result, sid)
        assert path[: path.index(4) + 1] == [0, 1, 2, 3, 4]
        assert path[path.index(4):] == sorted(path[path.index(4):], reverse=True)
    assert levels(result, "s2") == [0, 1, 0]
    first_down = {sid: next(t for t, lvl in s.tiers if lvl > 0) for sid, s in
                  ((s.session_id, s) for s in result.sessions)}
    assert first_down["s2"] > max(first_down["s0"], first_down["s1"]) > 3.0
    assert all(t >= 8.0 for s in result.sessions for (t, lvl), prev in zip(s.tiers[1:], s.tiers, strict=False)
               if lvl < prev[1])  # restores only after the neighbour left
    assert levels(result, "s0")[-1] == 0 and levels(result, "s2")[-1] == 0
    assert sum(sched.stats.tier_changes.values()) <= 2 * (4 + 4 + 1)
    assert sched.cost.predict("video", S256, 3) == pytest.approx(0.025, rel=0.1)  # learned the recovery
    # The high-priority session kept most of its frames; the lowered ones were decimated evenly.
    s0, _, s2 = result.sessions
    assert s2.on_time > 1.5 * s0.on_time and s0.skipped > 100 and s0.late == 0


def test_hysteresis_holds_a_tier_while_load_sits_between_thresholds() -> None:
    """Restoring needs predicted utilization <= 0.7 after the restore; 0.7 < U < 0.9 keeps the tier."""
    fake = Affine(0.010, 0.005)
    sched = scheduler(seeded(fake))
    adm = sched.admission
    for i in range(2):
        adm.check(f"s{i}", SessionSpec("video", S256))  # U = 30 * 0.020 = 0.6
    adm.set_level("s0", 1)  # 15 fps: U = 15 * 0.020 + 15 * 0.015 = 0.525
    assert adm.load().utilization == pytest.approx(0.525)
    assert adm.load({"s0": 0}).utilization == pytest.approx(0.6)
    change = sched.policy.tick(10.0, adm, late=0, samples=100)
    assert change is not None and (change.old_level, change.new_level, change.direction) == (1, 0, "up")
    adm.check("s2", SessionSpec("video", S256, degrade=()))  # U = 30 * 0.025 = 0.75 at tier 0
    adm.set_level("s0", 1)  # U = 15 * 0.025 + 15 * 0.020 = 0.675; restoring would give 0.75 > 0.7
    assert adm.load().utilization == pytest.approx(0.675)
    assert sched.policy.tick(20.0, adm, late=0, samples=100) is None
    assert adm.tier("s0").level == 1
    # Misses over 1% degrade even when the model says all fits (the model can be wrong).
    change = sched.policy.tick(30.0, adm, late=2, samples=100)
    assert change is not None and change.direction == "down" and "2.0% of recent frames late" in change.reason


def test_stall_free_joins_keep_the_others_on_time() -> None:
    """5 sessions join 3 live ones; opening costs 8 x 25 ms. In pieces between steps, the live
    sessions lose nothing; opened in one blocking call (stall_free=False) they drop frames."""
    fake = Affine(0.002, 0.003)
    pieces = (("encode", 0.025),) * 8

    def run(stall_free: bool):  # type: ignore[no-untyped-def]
        sched = scheduler(seeded(fake), stall_free=stall_free)
        live = [SimSession(SessionSpec("video", S256), phase=i * 0.011) for i in range(3)]
        joining = [SimSession(SessionSpec("video", S256), start=1.0 + 0.2 * i, phase=0.003 * i,
                              join_pieces=pieces) for i in range(5)]
        return simulate(live + joining, fake, sched, duration=5.0), sched

    ours, sched = run(True)
    assert all(s.admitted and s.joined_at is not None for s in ours.sessions)
    for s in ours.sessions[:3]:
        assert (s.late, s.expired, s.dropped) == (0, 0, 0) and s.on_time >= 149
    assert sched.stats.forced_pieces == 0
    blocking, _ = run(False)
    lost = [s.late + s.expired + s.dropped for s in blocking.sessions[:3]]
    assert min(lost) >= 10
    # Joins take longer in pieces, but all finish.
    assert max(s.joined_at or 0 for s in ours.sessions) < 4.0


def test_voice_never_waits_behind_a_video_batch_longer_than_its_slack() -> None:
    cost = CostModel()
    cost.seed("video", S256, {1: 0.02, 2: 0.04})
    cost.seed("voice", VOICE, {1: 0.004, 2: 0.008})

    def step(pipeline: str, shapes: object, now: float) -> float:
        return (0.004 if pipeline == "voice" else 0.02) * len(shapes)  # type: ignore[arg-type]

    def run(with_voice: bool):  # type: ignore[no-untyped-def]
        sched = scheduler(cost)
        sizes: list[int] = []
        schedule = sched.schedule

        def spy(now: float):  # type: ignore[no-untyped-def]
            plan = schedule(now)
            sizes.extend(b.size for b in plan.batches if b.pipeline == "video")
            return plan

        sched.schedule = spy  # type: ignore[method-assign]
        sessions = [SimSession(SessionSpec("video", S256, fps=5, degrade=())) for _ in range(6)]
        if with_voice:
            sessions.append(SimSession(SessionSpec("voice", VOICE, fps=50, budget_s=0.1, lane="voice"),
                                       phase=0.0013))
        return simulate(sessions, step, sched, duration=5.0, warmup=0.5), sizes

    alone, sizes = run(False)
    assert max(sizes) == 6 and alone.goodput() == 1.0
    mixed, sizes = run(True)
    voice = mixed.sessions[-1]
    slack = voice_slack([0.1], [50], 0.004)
    assert slack == pytest.approx(0.08)
    assert max(sizes) == 4 and 0.02 * max(sizes) <= slack  # video batches cut to the voice slack
    assert voice.admitted and voice.on_time >= 220 and (voice.late, voice.expired, voice.dropped) == (0, 0, 0)
    assert max(voice.latencies) <= 0.1
    assert mixed.goodput() == 1.0  # and video still makes every deadline


def test_holding_a_batch_forms_full_batches_from_staggered_clients() -> None:
    """4 clients 8 ms apart: holding for the stragglers runs one batch of 4 per frame period
    (U = 30 * 0.030 = 0.9) instead of four batches of 1 (30 * 4 * 0.015 = 1.8: overload)."""
    fake = Affine(0.010, 0.005)
    sessions = [SimSession(SessionSpec("video", S256, degrade=()), phase=i * 0.008) for i in range(4)]
    held = simulate(sessions, fake, scheduler(seeded(fake)), duration=4.0, warmup=1.0)
    assert held.goodput() == 1.0 and held.on_time_fps() == pytest.approx(120, rel=0.02)
    assert held.latency_percentile(99) == pytest.approx(0.024 + 0.030, abs=0.002)
    greedy = simulate(sessions, fake, scheduler(seeded(fake), hold=False), duration=4.0, warmup=1.0)
    assert greedy.on_time_fps() < held.on_time_fps()


def test_priority_decides_who_keeps_quality_under_overload() -> None:
    """5 sessions let in over capacity (U = 30 * 0.035 = 1.05): the policy lowers priority-0
    sessions one rung at a time, spread (never the same one twice while another is untouched), and
    stops as soon as it fits: two at 15 fps give 15 * 0.035 + 15 * 0.025 = 0.9. The priority-5
    session never moves and never misses."""
    fake = Affine(0.010, 0.005)
    sched = scheduler(seeded(fake))
    priorities = [0, 5, 0, 0, 0]
    sessions = [SimSession(SessionSpec("video", S256, priority=p), phase=i * 0.006) for i, p in enumerate(priorities)]
    result = simulate(sessions, fake, sched, duration=12.0, admit_all=True)
    vip = result.sessions[1]
    assert levels(result, "s1") == [0] and vip.expired == vip.late == 0
    lowered = [sched.admission.tier(f"s{i}").level for i in (0, 2, 3, 4)]
    assert sorted(lowered) == [0, 0, 1, 1]
    assert sched.admission.load().fits(0.9)
    tail = simulate(sessions, fake, scheduler(seeded(fake)), duration=12.0, admit_all=True, warmup=6.0)
    assert tail.goodput() >= 0.99  # once settled, >= 99% of the offered frames on time
