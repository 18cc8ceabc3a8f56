"""RollingKVCache: dense equivalence before it is full, exact sink+window contents after, layouts agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamserve.kv_rolling import RollingKVCache, block_rope_1d

B, H, T, D = 2, 3, 4, 8


def make(layout: str = "ring", **kw: object) -> RollingKVCache:
    args: dict = dict(dtype=torch.float32, layout=layout)
    args.update(kw)
    return RollingKVCache(2, 3, T, H, D, B, **args)


@pytest.mark.parametrize("layout", ["ring", "shift"])
def test_before_full_equals_dense_attention(layout: str, blocks: list) -> None:
    cache = make(layout)
    for i in range(cache.capacity_blocks):
        k, v = blocks[i]
        # Denoising steps rewrite the same block; only the last write counts.
        cache.write(i, torch.randn_like(k), torch.randn_like(v))
        cache.write(i, k, v)
        assert cache.fill_blocks == i + 1
        q = torch.randn(B, H, T, D)
        kc, vc = cache.keys_values()
        k_all = torch.cat([blk[0] for blk in blocks[: i + 1]], dim=2)
        v_all = torch.cat([blk[1] for blk in blocks[: i + 1]], dim=2)
        assert kc.shape == (B, H, (i + 1) * T, D)
        torch.testing.assert_close(F.scaled_dot_product_attention(q, kc, vc),
                                   F.scaled_dot_product_attention(q, k_all, v_all), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["ring", "shift"])
def test_after_overflow_holds_sinks_then_last_window_blocks(layout: str, blocks: list) -> None:
    cache = make(layout)
    for i in range(len(blocks)):
        cache.write(i, *blocks[i])
        if i >= cache.capacity_blocks:
            want = [0, 1, i - 2, i - 1, i]
            assert cache.block_indices() == want
            kc, vc = cache.keys_values()
            assert torch.equal(kc, torch.cat([blocks[j][0] for j in want], dim=2))
            assert torch.equal(vc, torch.cat([blocks[j][1] for j in want], dim=2))
            # Slot order holds the same blocks (zero-copy read).
            ku, _ = cache.keys_values(ordered=False)
            got = sorted(cache.block_indices(ordered=False))
            assert got == want
            for slot, j in enumerate(cache.block_indices(ordered=False)):
                assert torch.equal(ku[:, :, slot * T : (slot + 1) * T], blocks[j][0])


def test_ring_and_shift_agree_on_random_write_sequences() -> None:
    g = torch.Generator().manual_seed(0)
    caches = [make("ring", sink_refresh_threshold=0.3), make("shift", sink_refresh_threshold=0.3)]
    nxt = 0
    for step in range(200):
        held = caches[0].block_indices()
        if held and torch.rand((), generator=g) < 0.4:  # rewrite a held block
            idx = held[int(torch.randint(len(held), (), generator=g))]
        else:
            idx = nxt
            nxt += 1
        k = torch.randn(B, H, T, D, generator=g) + (step // 25)  # content drifts: sinks get refreshed
        v = torch.randn(B, H, T, D, generator=g)
        for c in caches:
            c.write(idx, k, v)
        a, b = caches
        assert a.block_indices() == b.block_indices()
        assert torch.equal(a.block_positions(), b.block_positions())
        ka, va = a.keys_values()
        kb, vb = b.keys_values()
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    assert caches[0].sink_replacements == caches[1].sink_replacements > 0


def test_overwrite_does_not_append(blocks: list) -> None:
    cache = make()
    for i in range(7):
        cache.write(i, *blocks[i])
    before = cache.block_indices()
    for _ in range(3):
        cache.write(6, *blocks[10])
        cache.write(0, *blocks[11])  # a sink can be rewritten too
    assert cache.block_indices() == before and cache.next_index == 7
    kc, _ = cache.keys_values()
    assert torch.equal(kc[:, :, -T:], blocks[10][0])
    assert torch.equal(kc[:, :, :T], blocks[11][0])


def test_padded_read_and_mask(blocks: list) -> None:
    cache = make()
    for i in range(3):
        cache.write(i, *blocks[i])
    kp, _ = cache.keys_values(padded=True)
    mask = cache.valid_mask()
    assert kp.shape == (B, H, cache.capacity_tokens, D)
    assert mask.tolist() == [True] * 3 * T + [False] * 2 * T
    q = torch.randn(B, H, T, D)
    kc, vc = cache.keys_values()
    _, vp = cache.keys_values(padded=True)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, kp, vp, attn_mask=mask[None, None, None, :]),
                               F.scaled_dot_product_attention(q, kc, vc))


def test_refresh_policy_positions_are_bounded_and_restart() -> None:
    cache = make(position_policy="refresh", refresh_every=10)
    positions = []
    for i in range(30):
        positions.append(cache.position_for(i))
        assert cache.next_position == positions[-1]
        cache.write(i, torch.zeros(B, H, T, D), torch.zeros(B, H, T, D))
        assert cache.position_for(i) == positions[-1]
    # capacity 5: positions 0..9, then restart at capacity - 1 = 4 and run up to 9 again.
    assert positions[:10] == list(range(10))
    assert positions[10:16] == [4, 5, 6, 7, 8, 9]
    assert max(positions) < 10
    # Sinks keep their positions; the window holds the latest ones.
    assert cache.block_positions().tolist()[:2] == [0, 1]


def test_refresh_every_must_exceed_capacity() -> None:
    with pytest.raises(ValueError, match="refresh_every=4 must be greater"):
        make(position_policy="refresh", refresh_every=4)


def test_reposition_rotates_at_cache_relative_positions(blocks: list) -> None:
    rope = block_rope_1d(T)
    cache = make(position_policy="reposition")
    for i in range(12):
        assert cache.position_for(i) == min(i, cache.capacity_blocks - 1)
        cache.write(i, *blocks[i])
        assert cache.position_for(i) == min(i, cache.capacity_blocks - 1)
    kc, _ = cache.keys_values()
    want = rope(kc, torch.arange(5))
    torch.testing.assert_close(cache.rotated_keys(rope), want, rtol=0, atol=0)
    # Slot order gives the same rotated blocks, permuted.
    ku = cache.rotated_keys(rope, ordered=False)
    order = cache.block_indices(ordered=True)
    for slot, j in enumerate(cache.block_indices(ordered=False)):
        r = order.index(j)
        assert torch.equal(ku[:, :, slot * T : (slot + 1) * T], want[:, :, r * T : (r + 1) * T])
    with pytest.raises(ValueError, match="rotated_keys\\(\\) is for position_policy='reposition'"):
        make().rotated_keys(rope)


def test_reposition_attention_matches_streaming_llm(blocks: list) -> None:
    """q of the newest block at the last cache position attends over sinks + window at 0..n-1."""
    rope = block_rope_1d(T)
    cache = make(position_policy="reposition")
    for i in range(9):
        cache.write(i, *blocks[i])
    q = torch.randn(B, H, T, D)
    q_rot = rope(q, torch.tensor([cache.position_for(8)]))
    out = F.scaled_dot_product_attention(q_rot, cache.rotated_keys(rope), cache.keys_values().v)
    held = [0, 1, 6, 7, 8]
    k_ref = rope(torch.cat([blocks[j][0] for j in held], 2), torch.arange(5))
    v_ref = torch.cat([blocks[j][1] for j in held], 2)
    ref = F.scaled_dot_product_attention(rope(q, torch.tensor([4])), k_ref, v_ref)
    torch.testing.assert_close(out, ref)


def test_adaptive_sink_refresh_replaces_dissimilar_sink() -> None:
    a = torch.zeros(B, H, T, D)
    a[..., 0] = 1.0
    b = torch.zeros(B, H, T, D)
    b[..., 1] = 1.0
    cache = make(sink_refresh_threshold=0.5)
    off = make()
    for c in (cache, off):
        for i in range(6):
            c.write(i, a + 0.01 * i, a)
    assert cache.sink_replacements == 0
    for c in (cache, off):
        c.write(6, b, b)  # a scene change ...
        c.write(7, b, b)  # ... becomes final when the stream moves on: block 6 is considered
    assert cache.sink_replacements == 1
    assert 6 in cache.block_indices()[:2]
    j = cache.block_indices()[:2].index(6)
    assert torch.equal(cache.keys_values().k[:, :, j * T : (j + 1) * T], b)
    assert off.block_indices()[:2] == [0, 1] and off.sink_replacements == 0
    # Block 6 lives in a sink and in the window: a rewrite updates both copies.
    cache.write(6, 2 * b, b)
    k = cache.keys_values().k
    assert torch.equal(k[:, :, j * T : (j + 1) * T], 2 * b)


def test_reset_forgets_everything(blocks: list) -> None:
    cache = make()
    for i in range(8):
        cache.write(i, *blocks[i])
    cache.reset()
    assert cache.fill_blocks == 0 and cache.next_index == 0 and cache.block_indices() == []
    cache.write(0, *blocks[3])
    assert torch.equal(cache.keys_values().k, blocks[3][0])


def test_constant_memory_over_10000_blocks() -> None:
    for policy in ("refresh", "reposition"):
        cache = RollingKVCache(3, 3, 2, 1, 4, dtype=torch.float32, position_policy=policy)  # type: ignore[arg-type]
        k = torch.randn(1, 1, 2, 4)
        ptrs = (cache.storage.k.data_ptr(), cache.storage.v.data_ptr())
        nbytes = cache.nbytes
        max_pos = 0
        for i in range(10_000):
            max_pos = max(max_pos, cache.position_for(i))
            cache.write(i, k, k)
        kc, _ = cache.keys_values()
        assert (cache.storage.k.data_ptr(), cache.storage.v.data_ptr()) == ptrs
        assert cache.nbytes == nbytes and kc.shape == (1, 1, 12, 4)
        assert len(cache._win_pos) == 3 and len(cache._sink_ids) == 3  # bookkeeping stays bounded
        assert cache.block_indices() == [0, 1, 2, 9997, 9998, 9999]
        assert max_pos < (50 if policy == "refresh" else cache.capacity_blocks)
