"""Block classification: lookup table vs torch.topk, counts, index ranges, masks, pre-aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from streamserve.kernels import CRITICAL, HIDDEN, MARGINAL, NEGLIGIBLE, sla_block_map
from streamserve.kernels.block_map import mean_pool
from streamserve.kernels.linear import block_states, marginal_state, marginal_state_explicit
from tests.kernels.helpers import qkv


def test_lut_equals_topk_of_pooled_scores() -> None:
    q, k, _ = qkv(2, 3, 300, 500, 64, seed=1)
    bm = sla_block_map(q, k, kh=0.2, kl=0.1, block_q=32, block_k=32)
    nk = bm.nk  # 16 key blocks
    n_c = math.ceil(0.2 * nk)
    top = torch.topk(bm.scores, n_c, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(bm.counts, torch.full_like(bm.counts, n_c))
    assert torch.equal(bm.lut[..., :n_c].long(), top)
    # Independent recomputation of the pooled scores: smooth-K, mean per block, scaled dot product.
    ks = k - k.mean(dim=2, keepdim=True)
    kp = torch.stack([ks[:, :, i : i + 32].mean(2) for i in range(0, 500, 32)], dim=2)
    qp = torch.stack([q[:, :, i : i + 32].mean(2) for i in range(0, 300, 32)], dim=2)
    torch.testing.assert_close(bm.scores, qp @ kp.transpose(-1, -2) / 8.0)


def test_row_counts_and_index_ranges() -> None:
    q, k, _ = qkv(1, 2, 200, 1000, 64, seed=2)
    bm = sla_block_map(q, k, kh=0.05, kl=0.3, block_q=64, block_k=64)
    nk = bm.nk
    assert (bm.nq, nk) == (4, 16)
    counts = [(bm.classes == c).sum(-1) for c in (CRITICAL, MARGINAL, NEGLIGIBLE, HIDDEN)]
    assert (counts[0] == 1).all()  # ceil(0.05 * 16) = 1: at least one critical block
    assert (counts[2] == 4).all()  # floor(0.3 * 16)
    assert (counts[1] == 11).all() and (counts[3] == 0).all()
    assert ((bm.lut >= 0) & (bm.lut < nk)).all()
    assert bm.lut.dtype == torch.int32 and bm.counts.dtype == torch.int32
    # Negligible blocks are the lowest-scored, critical the highest.
    s = bm.scores
    crit_min = s.masked_fill(bm.classes != CRITICAL, float("inf")).amin(-1)
    marg_max = s.masked_fill(bm.classes != MARGINAL, float("-inf")).amax(-1)
    marg_min = s.masked_fill(bm.classes != MARGINAL, float("inf")).amin(-1)
    negl_max = s.masked_fill(bm.classes != NEGLIGIBLE, float("-inf")).amax(-1)
    assert (crit_min >= marg_max).all() and (marg_min >= negl_max).all()


def test_lut_rows_are_ascending_and_padded_with_last() -> None:
    q, k, _ = qkv(1, 1, 256, 256, 64, seed=3)
    bm = sla_block_map(q, k, kh=0.4, kl=0.0, block_q=32, block_k=32, causal=True)
    for i in range(bm.nq):
        n = int(bm.counts[0, 0, i])
        row = bm.lut[0, 0, i].tolist()
        assert row[:n] == sorted(row[:n]) and len(set(row[:n])) == n
        assert all(x == row[n - 1] for x in row[n:])
        assert set(row[:n]) == set(torch.nonzero(bm.classes[0, 0, i] == CRITICAL).flatten().tolist())
    kv_lut, kv_cnt = bm.kv_lut()
    for j in range(bm.nk):
        n = int(kv_cnt[0, 0, j])
        assert set(kv_lut[0, 0, j, :n].tolist()) == set(torch.nonzero(bm.classes[0, 0, :, j] == CRITICAL).flatten().tolist())


def test_causal_map_structure() -> None:
    q, k, _ = qkv(1, 2, 256, 256, 64, seed=4)
    bm = sla_block_map(q, k, kh=0.3, kl=0.3, block_q=32, block_k=32, causal=True)
    c = bm.classes[0, 0]
    idx = torch.arange(8)
    assert (c[idx[:, None] < idx[None, :]] == HIDDEN).all()  # above the diagonal: nothing visible
    assert (c.diagonal() == CRITICAL).all()  # partial diagonal blocks are always exact
    assert bm.n_full.tolist() == list(range(8))
    # Marginal and negligible blocks only where the whole block is visible.
    assert ((c == MARGINAL) | (c == NEGLIGIBLE))[idx[:, None] >= idx[None, :]].sum() > 0
    assert not ((c == MARGINAL) | (c == NEGLIGIBLE))[idx[:, None] <= idx[None, :]].any()


def test_frame_causal_partial_blocks_are_critical() -> None:
    q, k, _ = qkv(1, 1, 100, 300, 64, seed=5)
    bm = sla_block_map(q, k, kh=0.1, kl=0.0, block_q=32, block_k=32, causal=True, frame=50)
    # Query block 0 holds positions 200..231 (frame 4): it sees keys < 250. Key blocks 0..6 (0..223) are
    # fully visible, block 7 (224..255) is partial (250..255 are frame 5), blocks 8, 9 are hidden.
    any_vis = bm.classes != HIDDEN
    assert any_vis[0, 0, 0].tolist() == [True] * 8 + [False] * 2
    assert bm.classes[0, 0, 0, 7] == CRITICAL and int(bm.n_full[0]) == 7
    assert (bm.counts >= 1).all()


def test_tiny_kh_keeps_one_critical_block_per_row() -> None:
    q, k, _ = qkv(1, 1, 64, 2048, 64, seed=6)
    bm = sla_block_map(q, k, kh=1e-6, kl=0.9, block_q=64, block_k=64)
    assert bm.counts.tolist() == [[[1]]]
    assert int((bm.classes == NEGLIGIBLE).sum()) == math.floor(0.9 * 32)


def test_mean_pool_handles_a_short_last_block() -> None:
    x = torch.randn(1, 1, 70, 8)
    p = mean_pool(x, 32)
    torch.testing.assert_close(p[0, 0, 2], x[0, 0, 64:].mean(0))
    torch.testing.assert_close(p[0, 0, 0], x[0, 0, :32].mean(0))


@pytest.mark.parametrize("mask", [{}, {"causal": True}, {"causal": True, "frame": 40}], ids=["full", "causal", "frame"])
def test_pre_aggregation_equals_explicit_complement(mask: dict) -> None:
    q, k, v = qkv(2, 2, 160, 200, 64, seed=7)
    bm = sla_block_map(q, k, kh=0.2, kl=0.3, block_q=32, block_k=32, **mask)
    states = block_states(k, v, 32)  # [B, H, nk, D*D + D]
    pre = marginal_state(states, bm)
    explicit = marginal_state_explicit(states, bm)
    torch.testing.assert_close(pre, explicit, atol=2e-4, rtol=1e-5)
    # And the explicit sum is literally the sum over the marginal blocks of each row.
    b, h, i = 1, 0, bm.nq - 1
    marg = torch.nonzero(bm.classes[b, h, i] == MARGINAL).flatten()
    torch.testing.assert_close(explicit[b, h, i], states[b, h, marg].sum(0))


@pytest.mark.parametrize(
    ("kh", "kl", "match"), [(0.0, 0.1, "kh=0.0 must be in \\(0, 1\\]"), (1.5, 0.0, "kh=1.5"), (0.1, 1.0, "kl=1.0")]
)
def test_bad_fractions_rejected(kh: float, kl: float, match: str) -> None:
    q, k, _ = qkv(1, 1, 64, 64, 64)
    with pytest.raises(ValueError, match=match):
        sla_block_map(q, k, kh=kh, kl=kl)
