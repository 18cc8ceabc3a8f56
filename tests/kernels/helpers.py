"""Shared inputs and tolerances for the kernel tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from streamserve.kernels.sla import KERNELS_INTERPRETED

# Tolerances against the fp32 reference (max abs error and relative error, torch.testing style).
TOL: dict[torch.dtype, dict[str, Any]] = {torch.float32: {"atol": 2e-5, "rtol": 1e-4}, torch.float16: {"atol": 3e-3, "rtol": 3e-3}}
# Gradients accumulate more rounding (fp16 inputs are rounded to fp16 inside the kernels).
GRAD_TOL: dict[torch.dtype, dict[str, Any]] = {torch.float32: {"atol": 5e-5, "rtol": 1e-4}, torch.float16: {"atol": 1e-2, "rtol": 1e-2}}

requires_interpreter = pytest.mark.skipif(
    not KERNELS_INTERPRETED and not torch.cuda.is_available(),
    reason="needs CUDA or TRITON_INTERPRET=1 (set by conftest.py before the kernels are imported)",
)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def qkv(b: int, h: int, lq: int, lk: int, d: int = 64, dtype: torch.dtype = torch.float32, seed: int = 0,
        grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, h, lk, d, generator=g)
    v = torch.randn(b, h, lk, d, generator=g)
    out = tuple(x.to(device=device(), dtype=dtype).requires_grad_(grad) for x in (q, k, v))
    return out[0], out[1], out[2]


def random_proj(d: int, seed: int = 1) -> torch.nn.Linear:
    """A projection with non-zero weights, so the linear branch shows in the output."""
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Linear(d, d)
    with torch.no_grad():
        p.weight.copy_(torch.randn(d, d, generator=g) * 0.5)
        p.bias.zero_()
    return p.to(device())


def assert_close_named(name: str, got: torch.Tensor, want: torch.Tensor, tol: dict[str, Any]) -> None:
    """``torch.testing.assert_close`` in fp32 with ``name`` leading the failure message."""
    try:
        torch.testing.assert_close(got.float(), want.float(), **tol)
    except AssertionError as e:
        raise AssertionError(f"{name}: {e}") from None
