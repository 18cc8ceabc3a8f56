"""The cost model: exact on what it measured, scaled for shapes it did not, scored as it learns."""

from __future__ import annotations

import json

import pytest

from streamserve.schedulers import CostModel, WorkShape

S256 = WorkShape(256, 256, 1)
S128 = WorkShape(128, 128, 1)


def test_affine_profile_is_reproduced_exactly_for_any_batch() -> None:
    cost = CostModel()
    cost.seed("video", S256, {1: 0.015, 2: 0.020})
    assert cost.predict("video", S256, 1) == pytest.approx(0.015)
    assert cost.predict("video", S256, 4) == pytest.approx(0.030)  # extrapolated along the line
    assert cost.predict("video", S256, 8) == pytest.approx(0.050)
    assert cost.batch_cost("video", [S256] * 3) == pytest.approx(0.025)


def test_unseen_shape_scales_with_pixels_and_steps() -> None:
    cost = CostModel()
    cost.seed("video", S256, {1: 0.040})
    assert cost.predict("video", S128, 1) == pytest.approx(0.010)  # a quarter of the pixels
    assert cost.predict("video", WorkShape(256, 256, 2), 1) == pytest.approx(0.080)  # twice the steps
    # A mixed batch runs one forward per shape group.
    assert cost.batch_cost("video", [S256, S128, S128]) == pytest.approx(0.040 + 0.020)
    assert cost.predict("voice", S256, 1) is None
    assert cost.cost("voice", S256, 2) == pytest.approx(0.020)  # the default guess, 10 ms per item


def test_online_learning_reports_relative_error() -> None:
    cost = CostModel(alpha=0.5, factor_alpha=1.0, error_alpha=1.0)
    cost.seed("video", S256, {1: 0.010, 4: 0.025})
    err = cost.observe("video", [S256], 0.020)  # predicted 10 ms, took 20 ms
    assert err == pytest.approx(0.5)
    # The machine is twice as slow now: every batch size follows at once, not only the one measured.
    assert cost.speed_factor("video") == pytest.approx(2.0)
    assert cost.predict("video", S256, 1) == pytest.approx(0.020)
    assert cost.predict("video", S256, 4) == pytest.approx(0.050)
    assert cost.predict("video", S128, 1) == pytest.approx(0.005)
    assert cost.errors() == {"video": pytest.approx(0.5)}
    assert cost.observe("video", [S256] * 4, 0.050) == pytest.approx(0.0)
    assert cost.errors()["video"] == pytest.approx(0.0)
    assert cost.observations("video") == 2
    cost.observe("video", [S256], 0.010)  # and back
    assert cost.predict("video", S256, 4) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="at least one item"):
        cost.observe("video", [], 0.1)


def test_profile_round_trips_through_json() -> None:
    cost = CostModel()
    cost.seed("video", S256, {1: 0.02, 4: 0.05})
    again = CostModel.from_dict(json.loads(json.dumps(cost.to_dict())))
    assert again.predict("video", S256, 2) == pytest.approx(cost.predict("video", S256, 2))
    with pytest.raises(ValueError, match="bad cost profile entry for 'video'"):
        CostModel.from_dict({"video": [{"shape": {"width": -1}, "seconds": {}}]})


def test_shape_validation_names_the_value() -> None:
    with pytest.raises(ValueError, match="steps must be in \\[1, 64\\], got 0"):
        WorkShape(steps=0)
    assert WorkShape(audio_ms=20).work == 20
    assert WorkShape(64, 32, 2).work == 64 * 32 * 2


def test_a_shape_measured_at_one_batch_size_batches_like_its_nearest_profiled_shape() -> None:
    cost = CostModel()
    cost.seed("video", S256, {1: 0.020, 2: 0.030, 4: 0.050})  # the warm-up profile: 256x256
    cost.observe("video", [S128], 0.010)  # a 128x128 session, measured at batch 1 only
    one = cost.predict("video", S128, 1)
    assert one is not None
    # Not linear (2x, 4x): along the 256x256 curve, 1.5x and 2.5x the batch-1 time.
    assert cost.predict("video", S128, 2) == pytest.approx(1.5 * one)
    assert cost.predict("video", S128, 4) == pytest.approx(2.5 * one)


def test_spiky_tiny_steps_do_not_run_the_speed_factor_away() -> None:
    """A voice pipeline: 0.4 ms steps, 2% of them an 80 ms stall (GIL, a busy core). The factor and
    the tables learn from one bounded ratio, so their split cannot drift (it reached 1.8e12 in 3000
    steps with separate linear updates, and admission refused a second voice session)."""
    import random

    rng = random.Random(0)
    cost = CostModel()
    voice = WorkShape(audio_ms=32)
    for _ in range(3000):
        n = rng.choice([1, 1, 1, 2, 4])
        cost.observe("voice", [voice] * n, 0.080 if rng.random() < 0.02 else 0.0004 * n)
    assert 0.5 < cost.speed_factor("voice") < 2.0
    for n in (1, 2, 4, 8):
        assert cost.predict("voice", voice, n) == pytest.approx(0.0004 * n, rel=0.25)
    # a lasting slowdown is still followed within a few steps, for every batch size
    for _ in range(12):
        cost.observe("voice", [voice], 0.0010)
    assert cost.predict("voice", voice, 1) == pytest.approx(0.0010, rel=0.15)
    assert cost.predict("voice", voice, 4) == pytest.approx(0.0040, rel=0.25)


def test_a_batch_never_costs_more_than_the_same_items_in_two_smaller_batches() -> None:
    """A size whose entry was learned in a slow spell and is not run since stays stale; it is
    predicted at no more than its cheapest split (the engine can always run that), so the scheduler
    tries it again and relearns it. Sizes that cost less than their splits keep their own entry."""
    cost = CostModel()
    cost.seed("video", S256, {1: 0.015, 2: 0.020, 3: 0.060})  # 3: stale, 4x a single step
    assert cost.predict("video", S256, 1) == pytest.approx(0.015)
    assert cost.predict("video", S256, 2) == pytest.approx(0.020)
    assert cost.predict("video", S256, 3) == pytest.approx(0.035)  # 1 + 2
    assert cost.predict("video", S256, 6) == pytest.approx(0.060)  # 2 + 2 + 2, not 0.18 extrapolated
    assert cost.batch_cost("video", [S256] * 3) == pytest.approx(0.035)
    for _ in range(40):  # the size is run again at its real cost: the entry follows
        cost.observe("video", [S256] * 3, 0.025)
    assert cost.predict("video", S256, 3) == pytest.approx(0.025, rel=0.1)
