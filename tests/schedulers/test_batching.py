"""Batch size choice (`schedulers/batching.py`): batches as large as the deadline allows, not as
large as the group allows. On a CPU-like device (4 frames cost 3.7x one) small batches deliver more
frames on time; on a GPU-like one (4 cost 1.2x one) it keeps batching. Admission predicts the same."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from streamserve.schedulers import SessionSpec, SloScheduler, WorkShape
from streamserve.schedulers.batching import batch_latency, fitting_batch, video_batch_sizes
from streamserve.schedulers.overhead import QUANTILES, Overhead
from streamserve.schedulers.sim import SimSession, simulate

from .helpers import S256, Affine, scheduler, seeded

CPU = Affine(0.003, 0.030)  # 1 frame 33 ms, 4 frames 123 ms (this 2-core CPU)
GPU = Affine(0.01867, 0.00133)  # 1 frame 20 ms, 4 frames 24 ms (1.2x)


def loaded_server() -> Overhead:
    """A loaded 2-core server's latency outside the step: outputs reach their sessions 90 ms after
    the step at the median (180 ms p99), steps spread by up to 1.25x at p99, a few ms before each."""
    return Overhead.from_dict({"quantiles": list(QUANTILES), "video": {
        "pre": [0, 0, 0, 0.001, 0.002, 0.003, 0.005, 0.006, 0.008, 0.010, 0.012, 0.02],
        "post": [0.09 * x for x in (0.2, 0.4, 0.5, 0.7, 1.0, 1.3, 1.6, 1.8, 1.9, 2.0, 2.1, 2.5)],
        "jitter": [0.8, 0.9, 0.92, 0.96, 1.0, 1.04, 1.09, 1.13, 1.19, 1.25, 1.3, 1.5]}})


class Counting:
    """The fake device, counting the batches it runs and their units."""

    def __init__(self, fake: Affine) -> None:
        self.fake, self.batches, self.units = fake, 0, 0

    def __call__(self, pipeline: str, shapes: Sequence[WorkShape], now: float = 0.0) -> float:
        self.batches += 1
        self.units += len(shapes)
        return self.fake(pipeline, shapes, now)

    @property
    def mean_batch(self) -> float:
        return self.units / self.batches


def test_the_largest_batch_whose_worst_latency_fits() -> None:
    # 4 sessions, budget 250 ms. Batch n: ceil(4/n) batches a round, plus the unit's own batch.
    cost = seeded(CPU)
    cost.seed("video", S256, {1: 0.033, 4: 0.123})
    choice = fitting_batch(cost, "video", [S256] * 4, 0.25, 8)
    assert (choice.size, choice.fits) == (4, True) and choice.latency_s == pytest.approx(2 * 0.123)
    # A slower post-step path (90 ms median, 180 ms p99) and spread steps: no size fits any more
    # (batches of 4: 0.123 + 1.25 * 0.123 + 2 * pre + 0.18); the least latency is batches of 1.
    cost.overhead = loaded_server()
    pre = cost.overhead.mean("video", "pre")
    choice = fitting_batch(cost, "video", [S256] * 4, 0.25, 8)
    assert (choice.size, choice.fits) == (1, False)
    assert choice.latency_s == pytest.approx(4 * 0.033 + 1.25 * 0.033 + 5 * pre + 0.18, rel=0.01)
    four = batch_latency(cost, "video", [S256] * 4, 4)
    assert four == pytest.approx(0.123 + 1.25 * 0.123 + 2 * pre + 0.18, rel=0.01)
    assert fitting_batch(cost, "video", [S256] * 4, four, 8).size == 4  # a budget that fits 4 again
    # On a GPU-like device batching stays: 2 x 24 ms x ~1.1 + 180 ms fits.
    gpu = seeded(GPU)
    gpu.overhead = loaded_server()
    assert fitting_batch(gpu, "video", [S256] * 4, 0.25, 8).size == 4
    assert fitting_batch(gpu, "video", [S256] * 4, 0.4, 2).size == 2  # never past the cap
    assert fitting_batch(gpu, "video", [S256] * 3, 0.4, 8).size == 3  # nor past the sessions
    # Off: the cap for every pipeline.
    assert video_batch_sizes(cost, [("video", S256, 0.25)] * 4, 8, adapt=False) == {"video": 8}
    assert video_batch_sizes(cost, [("video", S256, 0.25)] * 4, 8) == {"video": 1}


def test_admission_predicts_the_batches_the_scheduler_runs() -> None:
    cost = seeded(CPU)
    cost.overhead = loaded_server()
    sched = scheduler(cost)
    for i in range(4):
        sched.admission.ensure(f"s{i}", SessionSpec("video", S256))
    load = sched.admission.load()
    assert load.video_batch == {"video": 1}
    assert load.utilization == pytest.approx(4 * 30 * 0.033 + 4 * 30 * cost.overhead.mean("video", "pre"))
    sched.adapt_batch = False  # the switch moves the ledger with it
    assert sched.admission.config.adapt_batch is False and sched.admission.load().video_batch == {"video": 8}
    assert not scheduler(seeded(CPU), adapt_batch=False).admission.config.adapt_batch


def simulate_cameras(fake: Affine, **kwargs: object) -> tuple[float, float]:
    """4 cameras at 30 fps, 256², tiers fixed, everyone admitted, on a loaded server: (on-time fps,
    mean batch size)."""
    cost = seeded(fake)
    cost.overhead = loaded_server()
    device = Counting(fake)
    sessions = [SimSession(SessionSpec("video", S256, degrade=()), phase=i * 0.008) for i in range(4)]
    result = simulate(sessions, device, scheduler(cost, **kwargs), duration=8.0, warmup=1.0,  # type: ignore[arg-type]
                      admit_all=True, overhead=loaded_server())
    return result.on_time_fps(), device.mean_batch


def test_on_a_cpu_small_batches_deliver_more_frames_on_time() -> None:
    """The device runs about a quarter of what is offered whatever the scheduler does. Batches of 4
    deliver 12% more frames but a third of them late; batches of 1 deliver nearly all on time."""
    adaptive, adaptive_batch = simulate_cameras(CPU)
    fixed, fixed_batch = simulate_cameras(CPU, adapt_batch=False)
    single, _ = simulate_cameras(CPU, max_batch=1)
    assert fixed_batch > 3.9 and adaptive_batch == 1.0
    assert adaptive == pytest.approx(28.1, abs=0.5) and fixed == pytest.approx(19.6, abs=0.5)
    assert adaptive > 1.4 * fixed and adaptive >= single


def test_on_a_gpu_it_keeps_batching() -> None:
    adaptive, adaptive_batch = simulate_cameras(GPU)
    fixed, _ = simulate_cameras(GPU, adapt_batch=False)
    single, _ = simulate_cameras(GPU, max_batch=1)
    assert adaptive_batch > 3.9 and adaptive >= fixed
    assert adaptive == pytest.approx(119.6, abs=1.0) and single < 0.4 * adaptive


def test_the_serve_flag_turns_it_off() -> None:
    from streamserve.cli import build_parser, config_from_args
    from streamserve.manager import make_scheduler

    parser = build_parser()
    on, off = (config_from_args(parser.parse_args(["serve", *flags])) for flags in ([], ["--no-adapt-batch"]))
    assert (on.adapt_batch, off.adapt_batch) == (True, False)
    sched_on, sched_off = make_scheduler(on), make_scheduler(off)
    assert isinstance(sched_on, SloScheduler) and isinstance(sched_off, SloScheduler)
    assert (sched_on.adapt_batch, sched_off.adapt_batch) == (True, False)
