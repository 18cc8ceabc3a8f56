"""Few-step flow sampler and motion-aware noise."""

from __future__ import annotations

import pytest
import torch

from streamserve.pipelines.video.motion import MotionEstimator
from streamserve.pipelines.video.sampler import Schedule, add_noise, predict_x0, shift_sigma


def test_even_schedule_and_shift() -> None:
    s = Schedule.even(4, 0.8)
    assert s.sigmas == pytest.approx((0.8, 0.6, 0.4, 0.2))
    assert Schedule.even(1, 0.35).sigmas == (0.35,)
    shifted = Schedule.even(2, 0.5, shift=5.0).effective()
    assert shifted == pytest.approx((2.5 / 3.0, shift_sigma(0.25, 5.0)))
    assert shift_sigma(1.0, 5.0) == pytest.approx(1.0) and shift_sigma(0.0, 5.0) == 0.0
    assert s.scaled(0.4).sigmas == pytest.approx((0.4, 0.3, 0.2, 0.1))


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [((), "1..4 steps"), ((0.5, 0.4, 0.3, 0.2, 0.1), "1..4 steps"), ((0.5, 0.6), "strictly decreasing"),
     ((1.5,), r"in \(0, 1\]"), ((0.0,), r"in \(0, 1\]")],
)
def test_bad_schedules(sigmas: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Schedule(sigmas)


def test_bad_even_arguments() -> None:
    with pytest.raises(ValueError, match=r"steps must be in \[1, 4\], got 5"):
        Schedule.even(5, 0.5)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\], got 0"):
        Schedule.even(2, 0.0)


def test_noise_and_x0_roundtrip() -> None:
    x0, noise = torch.randn(3, 4, 1, 2, 2), torch.randn(3, 4, 1, 2, 2)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    xt = add_noise(x0, noise, sigma)
    v = noise - x0  # the flow-matching target
    torch.testing.assert_close(predict_x0(xt, v, sigma), x0)
    torch.testing.assert_close(add_noise(x0, noise, 0.25), 0.75 * x0 + 0.25 * noise)


def _chunk(value: float) -> torch.Tensor:
    return torch.full((3, 1, 32, 32), value)


def test_motion_lowers_the_first_sigma_with_smoothing() -> None:
    m = MotionEstimator()
    m.update(_chunk(0.0))
    assert m.motion == 0.0
    assert m.first_sigma(0.8) == pytest.approx(0.8)  # still: full strength
    m.update(_chunk(0.5))  # RMS change 0.5 > full_motion 0.2: full motion
    assert m.motion == 1.0
    # StreamDiffusionV2: (0.8 - 0.1 * 1) * 0.9 + 0.8 * 0.1
    assert m.first_sigma(0.8) == pytest.approx(0.71)
    for _ in range(20):
        m.update(_chunk(0.5 if _ % 2 else -0.5))
        sigma = m.first_sigma(0.8)
    assert sigma == pytest.approx(0.7, abs=1e-6)  # the 0.7-0.8 range at full motion


def test_motion_is_proportional_below_full_motion() -> None:
    m = MotionEstimator()
    m.update(_chunk(0.0))
    m.update(_chunk(0.1))  # RMS 0.1 = half of full motion
    assert m.motion == pytest.approx(0.5)


def test_bad_motion_settings() -> None:
    with pytest.raises(ValueError, match="drop"):
        MotionEstimator(drop=1.5)
    with pytest.raises(ValueError, match="full_motion"):
        MotionEstimator(full_motion=0)
    with pytest.raises(ValueError, match="smoothing"):
        MotionEstimator(smoothing=1.0)
