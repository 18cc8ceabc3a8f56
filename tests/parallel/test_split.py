"""Stage ranges and the balancer (pure logic, no ranks)."""

from __future__ import annotations

import pytest

from streamserve.pipelines.video.parallel.split import (
    Balancer,
    BalancerConfig,
    Move,
    apply_move,
    check_ranges,
    split_layers,
)


def test_split_layers_contiguous_and_even() -> None:
    assert split_layers(30, 2) == [range(0, 15), range(15, 30)]
    assert split_layers(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    check_ranges(split_layers(7, 3), 7)
    with pytest.raises(ValueError, match=r"stages must be in \[1, 4\].*got 5"):
        split_layers(4, 5)
    with pytest.raises(ValueError, match="does not continue at block 2"):
        check_ranges([range(0, 2), range(3, 4)], 4)


def test_apply_move() -> None:
    ranges = [range(0, 2), range(2, 4)]
    assert apply_move(ranges, Move(1, 0, 1)) == [range(0, 1), range(1, 4)]
    assert apply_move(ranges, Move(2, 1, 0)) == [range(0, 3), range(3, 4)]
    with pytest.raises(ValueError, match="not on the boundary"):
        apply_move(ranges, Move(0, 0, 1))
    with pytest.raises(ValueError, match="holds one block"):
        apply_move([range(0, 1), range(1, 4)], Move(0, 0, 1))


def test_balancer_moves_after_patience_then_cools_down() -> None:
    bal = Balancer(BalancerConfig(threshold=0.25, patience=3, cooldown=5, smoothing=1.0))
    ranges = [range(0, 4), range(4, 8)]
    slow0 = [2.0, 1.0]  # stage 0 twice as slow: one block to stage 1 lowers the max (1.75 < 2)
    assert bal.observe(slow0, ranges) is None
    assert bal.observe(slow0, ranges) is None
    move = bal.observe(slow0, ranges)
    assert move == Move(3, 0, 1)
    ranges = apply_move(ranges, move)
    for _ in range(5):  # cooldown: no proposal even though still unbalanced
        assert bal.observe(slow0, ranges) is None
    assert bal.moves == 1


def test_balancer_hysteresis_ignores_small_or_noisy_imbalance() -> None:
    bal = Balancer(BalancerConfig(threshold=0.25, patience=3, cooldown=0, smoothing=1.0))
    ranges = [range(0, 4), range(4, 8)]
    for _ in range(20):
        assert bal.observe([1.2, 1.0], ranges) is None  # 20% slower: within the threshold
    for t in ([2.0, 1.0], [1.0, 1.0], [2.0, 1.0], [1.0, 1.0]):
        assert bal.observe(t, ranges) is None  # never `patience` unbalanced forwards in a row
    # A move that would not lower the slowest stage is never proposed (1 block each: nothing to give).
    assert all(bal.observe([3.0, 1.0], [range(0, 1), range(1, 2)]) is None for _ in range(10))


def test_configured_video_pp_class() -> None:
    from streamserve.pipelines.video.parallel.pipeline import PipelinedVideoPipeline, with_stages

    cls = with_stages(3, ["cpu", "cpu", "cpu"])
    assert issubclass(cls, PipelinedVideoPipeline) and cls.name == "video-pp"
    with pytest.raises(ValueError, match=r"3 stages need 3 devices, got \['cuda:0'\]"):
        with_stages(3, ["cuda:0"])
    with pytest.raises(ValueError, match="stages must be in"):
        with_stages(0)
