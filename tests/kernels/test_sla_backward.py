"""Backward parity (dQ, dK, dV, and the projection's gradients) against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from streamserve.kernels import SparseLinearAttention, sla_attention, sla_reference
from tests.kernels.helpers import GRAD_TOL, TOL, assert_close_named, qkv, random_proj, requires_interpreter

pytestmark = requires_interpreter

CASES = [
    pytest.param(2, 2, 200, 200, {}, id="L200-B2-H2"),
    pytest.param(1, 2, 100, 300, {}, id="Lq100-Lk300"),
    pytest.param(1, 2, 160, 160, {"causal": True}, id="causal"),
    pytest.param(1, 1, 90, 200, {"block_causal": 40}, id="frame-causal"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("b", "h", "lq", "lk", "mask"), CASES)
def test_gradients_match_reference(b: int, h: int, lq: int, lk: int, mask: dict, dtype: torch.dtype) -> None:
    q, k, v = qkv(b, h, lq, lk, 64, dtype, seed=lq * 7 + lk, grad=True)
    proj = random_proj(64)
    out, bm = sla_attention(q, k, v, kh=0.25, kl=0.25, block_q=32, block_k=32, proj=proj, impl="triton",
                            return_block_map=True, **mask)
    ref = sla_reference(q, k, v, bm, proj)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(out, (q, k, v, proj.weight), do)
    want = torch.autograd.grad(ref, (q, k, v, proj.weight), do)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
    for name, g, w in zip(("dq", "dk", "dv", "dproj"), got, want, strict=True):
        assert g.dtype == w.dtype, name
        assert_close_named(name, g, w, GRAD_TOL[dtype])


def test_gradients_reach_zero_initialised_projection() -> None:
    layer = SparseLinearAttention(64, kh=0.25, kl=0.25, block_q=32, block_k=32, impl="triton")
    assert torch.count_nonzero(layer.proj.weight) == 0
    q, k, v = qkv(1, 2, 128, 128, 64, seed=11, grad=True)
    out = layer(q, k, v)
    out.square().sum().backward()
    assert layer.proj.weight.grad is not None and layer.proj.bias.grad is not None
    assert torch.count_nonzero(layer.proj.weight.grad) > 0
    # Same gradient as the reference implementation of the same layer.
    ref_layer = SparseLinearAttention(64, kh=0.25, kl=0.25, block_q=32, block_k=32, impl="reference")
    qr, kr, vr = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    ref_layer(qr, kr, vr).square().sum().backward()
    assert ref_layer.proj.weight.grad is not None
    torch.testing.assert_close(layer.proj.weight.grad, ref_layer.proj.weight.grad, **GRAD_TOL[torch.float32])
    # With a zero projection the linear branch gets no gradient: dq equals the sparse-only gradient.
    assert q.grad is not None and qr.grad is not None
    torch.testing.assert_close(q.grad, qr.grad, **GRAD_TOL[torch.float32])
