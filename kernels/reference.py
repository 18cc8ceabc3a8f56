"""Plain-PyTorch reference for SLA: the block map expanded to token masks, everything in fp32.

Same semantics as the Triton path (:mod:`streamserve.kernels.block_map` for the classification):

* ``O_s`` = softmax attention of each query over the tokens of its critical blocks it can see;
* ``O_l`` = ``phi(Q) (phi(K)^T V) / (phi(Q) . colsum phi(K))`` over the tokens of its marginal blocks,
  computed token by token (no pre-aggregation), with ``phi`` = softmax over the head dimension;
* ``O = O_s + proj(O_l)``.

Memory is O(Lq * Lk) per (batch, head): meant for tests and as the CPU fallback, not for speed.
"""

from __future__ import annotations

import torch

from .block_map import CRITICAL, MARGINAL, BlockMap, expand_blocks
from .linear import LINEAR_EPS, apply_proj, feature_map


def sparse_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap,
                     sm_scale: float | None = None) -> torch.Tensor:
    """O_s in fp32: q [B, H, Lq, D], k/v [B, H, Lk, D] -> [B, H, Lq, D]."""
    lq, lk, d = q.shape[2], k.shape[2], q.shape[3]
    scale = d**-0.5 if sm_scale is None else sm_scale
    allow = expand_blocks(bm.classes == CRITICAL, bm.block_q, bm.block_k, lq, lk)  # [B, H, Lq, Lk]
    tok = bm.mask.token_mask(q.device)
    if tok is not None:
        allow = allow & tok
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~allow, float("-inf"))
    p = torch.softmax(s, dim=-1)
    return p @ v.float()


def linear_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap) -> torch.Tensor:
    """O_l in fp32 over marginal tokens: [B, H, Lq, D] (0 where a query has no marginal block)."""
    lq, lk = q.shape[2], k.shape[2]
    marg = expand_blocks(bm.classes == MARGINAL, bm.block_q, bm.block_k, lq, lk).float()  # [B, H, Lq, Lk]
    a = (feature_map(q) @ feature_map(k).transpose(-1, -2)) * marg
    return (a @ v.float()) / (a.sum(-1, keepdim=True) + LINEAR_EPS)


def sla_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap,
                  proj: torch.nn.Module | None = None, sm_scale: float | None = None) -> torch.Tensor:
    """Full SLA output ``O_s + proj(O_l)`` in q's dtype (``proj=None``: sparse attention only)."""
    o = sparse_reference(q, k, v, bm, sm_scale)
    if proj is not None:
        o = o + apply_proj(proj, linear_reference(q, k, v, bm))
    return o.to(q.dtype)
