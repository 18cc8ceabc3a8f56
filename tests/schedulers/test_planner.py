"""`streamserve plan` on a device of known speed: capacities and latencies the cost model implies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamserve.cli import main
from streamserve.planner import plan
from streamserve.schedulers import SessionSpec, ladder
from streamserve.schedulers.sim import SimSession, simulate

from .helpers import S256, Affine, scheduler, seeded


def test_plan_predicts_capacity_and_latency_of_a_known_device() -> None:
    # 10 ms + 5 ms per session at 30 fps: 4 sessions use 0.9 of the device, 5 would need 1.05.
    report = plan(seeded(Affine(0.010, 0.005)), SessionSpec("video", S256), duration=8.0, max_sessions=6)
    assert report.admission_capacity == 4 and report.simulated_capacity == 4
    one, four, five = report.sweep[0], report.sweep[3], report.sweep[4]
    assert one.p99_ms == pytest.approx(15.0) and one.goodput == 1.0  # a batch of one, never waiting
    assert four.goodput == 1.0 and four.on_time_fps == pytest.approx(120, rel=0.02)
    assert 30.0 <= four.p99_ms <= 30.0 + 1000 / 30  # its batch, plus at most one frame period held
    assert five.goodput < 0.99
    over = report.overload
    assert (over["offered"], over["admitted"], over["refused"]) == (6, 4, 2)
    assert over["goodput"] == 1.0 and over["p99_ms"] < 250 and "utilization" in over["refusal"]


def test_plan_command_writes_plot_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, out = tmp_path / "plan.png", tmp_path / "plan.json"
    assert main(["plan", "--step-ms", "10,5", "--duration", "4", "--max-sessions", "5",
                 "--png", str(png), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "capacity (>= 99% of frames on time): 4 session(s) simulated, 4 admitted" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = json.loads(out.read_text())
    assert saved["simulated_capacity"] == 4 and len(saved["sweep"]) == 5 and "video" in saved["profile"]
    with pytest.raises(SystemExit, match="--step-ms wants 'A,B'"):
        main(["plan", "--step-ms", "ten"])


@pytest.mark.parametrize(("bare_fps", "tier_fps"), [(25.0, 20.0), (30.0, 27.0), (31.0, 27.0), (32.0, 28.5),
                                                    (33.4, 30.0), (40.0, 30.0)])
@pytest.mark.parametrize("spare", [False, True])
def test_a_camera_is_served_at_nine_tenths_of_what_the_device_can_do(bare_fps: float, tier_fps: float,
                                                                     spare: bool) -> None:
    """One 30 fps camera on a device whose bare pipeline runs `bare_fps` (simulated, the real
    scheduler): admission picks the best rung that loads the device <= 0.9, and the decimated stream
    delivers it on time. Served / min(bare, input) >= 0.9 whenever bare >= 30 (the old ladder, 1/2 and
    1/3, served 15 fps here: 0.5). Below 30 FPS no rung can reach 0.9 x bare at a 0.9 load limit;
    the spare frames (a tier is a floor: an otherwise idle device runs the frames its rate skips)
    serve what the device can do at any speed, still on time."""
    step = 1.0 / bare_fps
    fake = Affine(step, 0.0)
    sched = scheduler(seeded(fake), spare=spare)
    report = simulate([SimSession(SessionSpec("video", S256))], fake, sched, 12.0, warmup=2.0)
    one = report.sessions[0]
    assert one.tiers[-1][1] == next(t.level for t in ladder(SessionSpec("video", S256)) if t.fps == tier_fps)
    served = one.on_time / report.duration
    assert one.late == one.expired == 0
    if spare:
        assert served == pytest.approx(min(bare_fps, 30.0), rel=0.01)
        assert sched.stats.spare_units["video"] >= (min(bare_fps, 30.0) - tier_fps) * report.duration - 1
        return
    assert served == pytest.approx(tier_fps, rel=0.01) and sched.stats.spare_units["video"] == 0
    if bare_fps >= 30:
        assert served / min(bare_fps, 30.0) >= 0.9 - 0.01  # exactly 0.9 at 30 and 27 fps
