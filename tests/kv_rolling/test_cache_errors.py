"""Clear errors for bad configurations and bad writes."""

from __future__ import annotations

import pytest
import torch

from streamserve.kv_rolling import KVPool, RollingKVCache


def test_zero_sinks_rejected() -> None:
    with pytest.raises(ValueError, match="num_sinks=0"):
        RollingKVCache(0, 4, 8, 2, 16)


def test_sinks_not_below_capacity_rejected() -> None:
    with pytest.raises(ValueError, match="num_sinks \\(3\\) must be smaller than the capacity"):
        RollingKVCache(3, 0, 8, 2, 16)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"position_policy": "absolute"}, "position_policy='absolute'"),
        ({"layout": "list"}, "layout='list'"),
        ({"sink_refresh_threshold": 2.0}, "sink_refresh_threshold=2.0"),
    ],
)
def test_bad_options_rejected(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RollingKVCache(1, 2, 4, 1, 8, **kw)


def test_block_larger_than_cache_rejected() -> None:
    cache = RollingKVCache(1, 2, 4, 1, 8, dtype=torch.float32)
    big = torch.zeros(1, 1, 13, 8)
    with pytest.raises(ValueError, match="block of 13 tokens is larger than the whole cache \\(12 tokens"):
        cache.write(0, big, big)


def test_wrong_block_shape_rejected() -> None:
    cache = RollingKVCache(1, 2, 4, 1, 8, dtype=torch.float32)
    x = torch.zeros(1, 1, 3, 8)
    with pytest.raises(ValueError, match="k has shape \\(1, 1, 3, 8\\), expected"):
        cache.write(0, x, x)


def test_out_of_order_and_evicted_blocks_rejected() -> None:
    cache = RollingKVCache(1, 2, 4, 1, 8, dtype=torch.float32)
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="block 1 is out of order.*must be 0"):
        cache.write(1, x, x)
    for i in range(5):
        cache.write(i, x, x)
    with pytest.raises(ValueError, match="block 2 is no longer held.*holds blocks \\[0, 3, 4\\]"):
        cache.write(2, x, x)
    with pytest.raises(ValueError, match="no longer held"):
        cache.position_for(1)


def test_pool_errors() -> None:
    pool = KVPool(2, 1, 1, 2, 4, 1, 8, dtype=torch.float32)
    pool.view("a")
    with pytest.raises(RuntimeError, match="KVPool is full: all 1 session slots"):
        pool.view("b")
    with pytest.raises(ValueError, match="unknown session 'b'"):
        pool.reset("b")
    with pytest.raises(ValueError, match="layer=2 out of range"):
        pool.view("a").write(2, 0, torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8))
    with pytest.raises(ValueError, match="num_layers=0"):
        KVPool(0, 1, 1, 2, 4, 1, 8)
    with pytest.raises(ValueError, match="num_sinks=0"):
        KVPool(1, 1, 0, 2, 4, 1, 8)
