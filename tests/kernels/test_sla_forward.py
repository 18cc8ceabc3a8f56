"""Forward parity of the Triton SLA path against the PyTorch reference (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamserve.kernels import sla_attention, sla_reference, sparse_attention, sparse_reference
from tests.kernels.helpers import TOL, qkv, random_proj, requires_interpreter

pytestmark = requires_interpreter

# (B, H, Lq, Lk, D, mask) -- lengths that are not block multiples, Lq != Lk, B > 1, H > 1.
CASES = [
    pytest.param(1, 2, 200, 200, 64, {}, id="L200"),
    pytest.param(2, 2, 100, 300, 64, {}, id="stream-Lq100-Lk300"),
    pytest.param(1, 2, 130, 130, 128, {"causal": True}, id="causal-D128"),
    pytest.param(2, 1, 96, 250, 64, {"block_causal": 50}, id="frame-causal-Lq<Lk"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("b", "h", "lq", "lk", "d", "mask"), CASES)
def test_forward_matches_reference(b: int, h: int, lq: int, lk: int, d: int, mask: dict, dtype: torch.dtype) -> None:
    q, k, v = qkv(b, h, lq, lk, d, dtype, seed=lq + lk)
    proj = random_proj(d)
    out, bm = sla_attention(q, k, v, kh=0.25, kl=0.25, block_q=32, block_k=32, proj=proj, impl="triton",
                            return_block_map=True, **mask)
    ref = sla_reference(q, k, v, bm, proj)
    assert out.shape == (b, h, lq, d) and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
    # The three classes are all present, so both branches are exercised.
    assert {int(c) for c in bm.classes.unique()} >= {1, 0, -1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_long_non_multiple_length(dtype: torch.dtype) -> None:
    q, k, v = qkv(1, 1, 1000, 1000, 64, dtype, seed=7)
    proj = random_proj(64)
    out, bm = sla_attention(q, k, v, kh=0.1, kl=0.2, proj=proj, impl="triton", return_block_map=True)
    assert bm.nq == bm.nk == 16 and int(bm.counts.min()) == 2
    torch.testing.assert_close(out.float(), sla_reference(q, k, v, bm, proj).float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("mask", [{}, {"causal": True}], ids=["full", "causal"])
def test_kh_one_equals_sdpa(dtype: torch.dtype, mask: dict) -> None:
    q, k, v = qkv(2, 2, 200, 200, 64, dtype, seed=3)
    out = sla_attention(q, k, v, kh=1.0, kl=0.0, impl="triton", **mask)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=bool(mask))
    torch.testing.assert_close(out.float(), want, **TOL[dtype])


def test_kh_one_with_query_chunk_against_cache_equals_sdpa() -> None:
    q, k, v = qkv(1, 2, 70, 210, 64, seed=4)
    out = sla_attention(q, k, v, kh=1.0, kl=0.0, block_q=32, block_k=64, impl="triton")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[torch.float32])


def test_sparse_part_alone_matches_reference() -> None:
    q, k, v = qkv(1, 2, 150, 150, 64, seed=5)
    _, bm = sla_attention(q, k, v, kh=0.3, kl=0.3, block_q=32, block_k=32, impl="reference", return_block_map=True)
    torch.testing.assert_close(sparse_attention(q, k, v, bm), sparse_reference(q, k, v, bm), **TOL[torch.float32])


def test_strided_inputs_from_a_larger_buffer() -> None:
    """A rolling cache hands out k/v as views of its storage (not contiguous); they are accepted as is."""
    q, k_full, v_full = qkv(1, 2, 64, 320, 64, seed=6)
    k, v = k_full[:, :, :200], v_full[:, :, :200]
    assert not k.is_contiguous()
    out, bm = sla_attention(q, k, v, kh=0.5, kl=0.0, impl="triton", return_block_map=True)
    torch.testing.assert_close(out, sla_reference(q, k, v, bm), **TOL[torch.float32])


def test_untrained_projection_gives_sparse_attention() -> None:
    q, k, v = qkv(1, 1, 128, 128, 64, seed=8)
    zero = torch.nn.Linear(64, 64)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    a = sla_attention(q, k, v, kh=0.25, kl=0.25, proj=zero, impl="triton")
    b = sla_attention(q, k, v, kh=0.25, kl=0.25, proj=None, impl="triton")
    assert torch.equal(a, b)


def test_deterministic() -> None:
    q, k, v = qkv(2, 2, 150, 150, 64, seed=9, grad=True)
    proj = random_proj(64)
    runs = []
    for _ in range(2):
        out = sla_attention(q, k, v, kh=0.25, kl=0.25, block_q=32, block_k=32, proj=proj, impl="triton")
        assert isinstance(out, torch.Tensor)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        runs.append((out.detach(), *grads))
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)


def test_reference_impl_is_the_cpu_default() -> None:
    q, k, v = qkv(1, 1, 100, 100, 64, seed=10)
    auto = sla_attention(q, k, v, kh=0.3, kl=0.2, impl="auto")
    ref = sla_attention(q, k, v, kh=0.3, kl=0.2, impl="reference")
    assert torch.equal(auto, ref)
