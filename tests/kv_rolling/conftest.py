"""Shared helpers for the rolling KV cache tests (CPU, tiny shapes)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # SLA-over-cache test: Triton kernels under the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(2)


def rand_block(b: int, h: int, t: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, d, generator=g).to(dtype)


@pytest.fixture
def blocks() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """20 random (k, v) blocks of shape [2, 3, 4, 8]."""
    return [(rand_block(2, 3, 4, 8, 2 * i), rand_block(2, 3, 4, 8, 2 * i + 1)) for i in range(20)]
