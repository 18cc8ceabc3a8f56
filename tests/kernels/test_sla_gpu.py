"""GPU-only checks: bf16 parity and the real (compiled) kernels at realistic shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamserve.kernels import sla_attention, sla_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _qkv(b: int, h: int, lq: int, lk: int, d: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(b, h, n, d, device="cuda", generator=g, dtype=dtype).requires_grad_(True)
            for n in (lq, lk, lk)]


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("mask", [{}, {"block_causal": 1560}], ids=["full", "frame"])
def test_bf16_forward_and_backward_match_reference(d: int, mask: dict) -> None:
    q, k, v = _qkv(2, 4, 1560, 3 * 1560, d, torch.bfloat16)
    proj = torch.nn.Linear(d, d, device="cuda")
    out, bm = sla_attention(q, k, v, kh=0.1, kl=0.1, proj=proj, impl="triton", return_block_map=True, **mask)
    ref = sla_reference(q, k, v, bm, proj)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(ref, (q, k, v), do)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), atol=5e-2, rtol=5e-2)


def test_kh_one_equals_flash_sdpa_bf16() -> None:
    q, k, v = _qkv(1, 12, 1560, 6 * 1560, 128, torch.bfloat16)
    out = sla_attention(q, k, v, kh=1.0, kl=0.0, impl="triton")
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=2e-2, rtol=2e-2)


# Launch configurations closest to sm_90's 227 KB of shared memory per block (compiled for sm_90 with
# Triton 3.9: fp32 at D=128 with 64-token blocks takes 176/208/209 KB in forward/dQ/dK-dV; 128-token
# blocks 96-130 KB and the most register spills; see docs/gpu.md). Each must launch and match the
# reference, forward and backward. The CPU suites run only under the interpreter, which has no limit.
@pytest.mark.parametrize(("dtype", "d", "block_q", "block_k"), [
    (torch.float32, 128, 64, 64),
    (torch.bfloat16, 128, 128, 128),
    (torch.bfloat16, 128, 128, 64),
    (torch.float16, 64, 128, 128),
], ids=["fp32-D128-b64", "bf16-D128-b128", "bf16-D128-bq128", "fp16-D64-b128"])
def test_launch_configurations_at_the_shared_memory_edge(dtype: torch.dtype, d: int, block_q: int,
                                                         block_k: int) -> None:
    q, k, v = _qkv(1, 2, 600, 1000, d, dtype)
    out, bm = sla_attention(q, k, v, kh=0.2, kl=0.1, block_q=block_q, block_k=block_k, impl="triton",
                            return_block_map=True, block_causal=200)
    ref = sla_reference(q, k, v, bm)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(ref, (q, k, v), do)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), atol=5 * tol, rtol=5 * tol)
