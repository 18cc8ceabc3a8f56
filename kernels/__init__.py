"""Attention kernels: SLA (sparse-linear attention) in Triton, with PyTorch references.

Depends on torch and triton only. Entry points:

* :func:`sla_attention` ``(q, k, v, *, kh, kl, block_q=64, block_k=64, causal=False,
  block_causal=None, proj=None, sm_scale=None, impl="auto", return_block_map=False)``
* :class:`SparseLinearAttention` ``(head_dim, *, kh=0.05, kl=0.10, block_q=64, block_k=64,
  backend="sla"|"dense", impl="auto"|"triton"|"reference")`` -- ``forward(q, k, v, *, causal,
  block_causal)``
* :func:`dense_attention` -- SDPA with the same mask conventions.
* :func:`sla_block_map`, :class:`BlockMap` -- the block classification; :func:`sla_reference` --
  the PyTorch reference.

Tensors are ``[B, H, L, D]``. To run the Triton kernels on CPU set ``TRITON_INTERPRET=1`` before
importing this package and pass ``impl="triton"``.
"""

from __future__ import annotations

from .attention import Backend, Impl, SparseLinearAttention, dense_attention, sla_attention
from .block_map import CRITICAL, HIDDEN, MARGINAL, NEGLIGIBLE, BlockMap, MaskSpec, sla_block_map
from .linear import linear_attention
from .reference import linear_reference, sla_reference, sparse_reference
from .sla import SUPPORTED_HEAD_DIMS, sparse_attention

__all__ = [
    "CRITICAL",
    "HIDDEN",
    "MARGINAL",
    "NEGLIGIBLE",
    "SUPPORTED_HEAD_DIMS",
    "Backend",
    "BlockMap",
    "Impl",
    "MaskSpec",
    "SparseLinearAttention",
    "dense_attention",
    "linear_attention",
    "linear_reference",
    "sla_attention",
    "sla_block_map",
    "sla_reference",
    "sparse_attention",
    "sparse_reference",
]
