"""SparseLinearAttention module (sla/dense switch) and the wrapper's input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamserve.kernels import SparseLinearAttention, dense_attention, sla_attention
from streamserve.kernels import sla as sla_module
from tests.kernels.helpers import TOL, device, qkv, requires_interpreter


def test_dense_backend_is_sdpa() -> None:
    layer = SparseLinearAttention(64, backend="dense")
    q, k, v = qkv(2, 2, 100, 100, 64, seed=1)
    assert torch.equal(layer(q, k, v), F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(layer(q, k, v, causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_dense_masks_align_queries_to_the_end_of_the_keys() -> None:
    q, k, v = qkv(1, 1, 3, 8, 64, seed=2)
    out = dense_attention(q, k, v, block_causal=4)
    # Queries are tokens 5, 6, 7 (frame 1): they see all 8 keys.
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    out = dense_attention(q, k, v, causal=True)
    want = torch.cat([F.scaled_dot_product_attention(q[:, :, i : i + 1], k[:, :, : 6 + i], v[:, :, : 6 + i])
                      for i in range(3)], dim=2)
    torch.testing.assert_close(out, want)


@requires_interpreter
@pytest.mark.parametrize("mask", [{}, {"block_causal": 32}], ids=["full", "frame"])
def test_switching_backend_kh_one_sla_equals_dense(mask: dict) -> None:
    layer = SparseLinearAttention(64, kh=1.0, kl=0.0, block_q=32, block_k=32, impl="triton")
    q, k, v = qkv(1, 2, 96, 160, 64, seed=3)
    sla = layer(q, k, v, **mask)
    layer.backend = "dense"
    torch.testing.assert_close(sla, layer(q, k, v, **mask), **TOL[torch.float32])


@requires_interpreter
def test_triton_and_reference_impls_agree() -> None:
    layer = SparseLinearAttention(64, kh=0.2, kl=0.2, block_q=32, block_k=32, impl="triton")
    with torch.no_grad():
        layer.proj.weight.normal_()
    q, k, v = qkv(1, 2, 120, 120, 64, seed=4)
    a = layer(q, k, v)
    layer.impl = "reference"
    torch.testing.assert_close(a, layer(q, k, v), **TOL[torch.float32])
    assert "kh=0.2" in repr(layer)


def test_module_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="backend='flash'"):
        SparseLinearAttention(64, backend="flash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kh=0"):
        SparseLinearAttention(64, kh=0)
    layer = SparseLinearAttention(64)
    q, k, v = qkv(1, 1, 64, 64, 128)
    with pytest.raises(ValueError, match="head dim 128 != the layer's head_dim=64"):
        layer(q, k, v)


@pytest.mark.parametrize(
    ("shapes", "kw", "match"),
    [
        (((1, 1, 64, 32), (1, 1, 64, 32)), {}, "head dim D=32 is not supported.*\\(64, 128\\)"),
        (((1, 1, 64, 96), (1, 1, 64, 96)), {}, "head dim D=96"),
        (((1, 2, 64, 64), (1, 1, 64, 64)), {}, "shape mismatch"),
        (((1, 64, 64), (1, 1, 64, 64)), {}, "must be \\[B, H, L, D\\]"),
        (((1, 1, 64, 64), (1, 1, 64, 64)), {"block_q": 48}, "block_q=48 is not supported"),
        (((1, 1, 64, 64), (1, 1, 32, 64)), {"causal": True}, "causal attention needs Lq <= Lk"),
        (((1, 1, 64, 64), (1, 1, 64, 64)), {"causal": True, "block_causal": 8}, "either causal=True"),
    ],
)
def test_wrapper_rejects_bad_inputs(shapes: tuple, kw: dict, match: str) -> None:
    q = torch.randn(*shapes[0], device=device())
    k = torch.randn(*shapes[1], device=device())
    with pytest.raises(ValueError, match=match):
        sla_attention(q, k, k, kh=0.5, kl=0.0, impl="triton", **kw)


def test_wrapper_rejects_mixed_dtypes_and_strided_head_dim() -> None:
    q, k, v = qkv(1, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="dtypes differ"):
        sla_attention(q, k.half(), v, kh=0.5, kl=0.0, impl="triton")
    qt = torch.randn(1, 1, 64, 64, device=device()).transpose(-1, -2)
    with pytest.raises(ValueError, match="contiguous in its last dimension"):
        sla_attention(qt, k, v, kh=0.5, kl=0.0, impl="triton")
    with pytest.raises(ValueError, match="impl='cuda'"):
        sla_attention(q, k, v, kh=0.5, kl=0.0, impl="cuda")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only checks")
def test_cpu_needs_the_interpreter_and_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = qkv(1, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="bfloat16 tl.dot is silently wrong"):
        sla_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), kh=0.5, kl=0.0, impl="triton")
    monkeypatch.setattr(sla_module, "KERNELS_INTERPRETED", False)  # as if imported without TRITON_INTERPRET=1
    with pytest.raises(ValueError, match="need a CUDA device, or TRITON_INTERPRET=1"):
        sla_attention(q, k, v, kh=0.5, kl=0.0, impl="triton")
    # The reference needs neither.
    assert sla_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), kh=0.5, kl=0.0).dtype == torch.bfloat16
