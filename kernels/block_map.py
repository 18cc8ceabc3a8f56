"""SLA block classification: which key blocks each query block attends to exactly, linearly, or not at all.

Semantics (shared by the Triton path and the PyTorch reference):

1. Tokens are grouped in blocks: ``block_q`` queries, ``block_k`` keys (the last block of each may be
   shorter). ``nq = ceil(Lq / block_q)``, ``nk = ceil(Lk / block_k)``.
2. Masking (optional). Queries are aligned to the *end* of the keys: query ``i`` sits at position
   ``i + Lk - Lq`` (a chunk of the newest tokens against a cache that ends with them). With
   ``causal`` a key ``j`` is visible to query ``i`` iff ``j // F <= (i + Lk - Lq) // F`` where ``F`` is
   the frame size (1 for token-causal; ``block_causal=F`` for frame-causal video). For a query block a
   key block is *fully visible* (every query sees every key), *partial*, or *hidden*. Without a mask
   every key block is fully visible. Fully visible blocks always form a prefix ``[0, n_full)``.
3. Pooled scores: ``Qp = mean of each query block``, ``Kp = mean of each key block of (K - mean_t K)``
   (SageAttention's smooth-K), ``S = Qp Kp^T / sqrt(D)``, per (batch, head).
4. Per query block, among its ``n_full`` fully visible key blocks ranked by ``S``:
   the top ``n_c = clamp(ceil(kh * n_full), 1, n_full)`` are *critical* (exact softmax attention),
   the bottom ``n_n = min(floor(kl * n_full), n_full - n_c)`` are *negligible* (skipped), the rest are
   *marginal* (linear attention); when ``kh + kl > 1`` critical blocks take precedence. Partial blocks are always critical (their token mask is applied
   exactly). So every query block keeps at least one critical block and every query sees a key.

Class codes in :attr:`BlockMap.classes`: ``1`` critical, ``0`` marginal, ``-1`` negligible, ``-2`` hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CRITICAL, MARGINAL, NEGLIGIBLE, HIDDEN = 1, 0, -1, -2
_EPS_FRAC = 1e-6  # so that kh * n = 1.0000000000000002 does not round up to 2


@dataclass(frozen=True)
class MaskSpec:
    """Token visibility: ``causal`` with frame size ``frame`` (1 = token-causal), queries end-aligned."""

    lq: int
    lk: int
    causal: bool = False
    frame: int = 1

    @property
    def offset(self) -> int:
        return self.lk - self.lq

    def token_mask(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """``[Lq, Lk]`` bool visibility, or ``None`` when everything is visible."""
        if not self.causal:
            return None
        qi = torch.arange(self.lq, device=device) + self.offset
        kj = torch.arange(self.lk, device=device)
        return (kj[None, :] // self.frame) <= (qi[:, None] // self.frame)


@dataclass(frozen=True)
class BlockMap:
    """Result of :func:`sla_block_map` for q ``[B, H, Lq, D]`` and k ``[B, H, Lk, D]``."""

    classes: torch.Tensor  # [B, H, nq, nk] int8, see module docstring
    lut: torch.Tensor  # [B, H, nq, max_critical] int32: critical key blocks, ascending; padding repeats the last
    counts: torch.Tensor  # [B, H, nq] int32: number of critical blocks per query block
    n_full: torch.Tensor  # [nq] int64: key blocks [0, n_full) are fully visible to the query block
    scores: torch.Tensor  # [B, H, nq, nk] fp32 pooled scores (-inf where hidden)
    block_q: int
    block_k: int
    mask: MaskSpec

    @property
    def nq(self) -> int:
        return self.classes.shape[2]

    @property
    def nk(self) -> int:
        return self.classes.shape[3]

    def class_mask(self, cls: int) -> torch.Tensor:
        """``[B, H, nq, nk]`` bool: blocks of class ``cls``."""
        return self.classes == cls

    def kv_lut(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse lookup for the backward pass: for each key block the query blocks that hold it as
        critical. Returns ``(lut [B, H, nk, max], counts [B, H, nk])``, ascending like :attr:`lut`."""
        return _lut_from_mask(self.class_mask(CRITICAL).transpose(-1, -2))

    def sparsity(self) -> float:
        """Fraction of (query block, key block) pairs computed exactly."""
        return float(self.counts.sum()) / float(self.classes.numel())


def num_blocks(length: int, block: int) -> int:
    return (length + block - 1) // block


def mean_pool(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of ``block`` tokens. x: [B, H, L, D] -> [B, H, ceil(L/block), D] (fp32);
    the last block averages only its real tokens. Sums accumulate in fp32 without copying ``x``."""
    b, h, length, d = x.shape
    full = length // block
    parts = []
    if full:
        parts.append(x[:, :, : full * block].reshape(b, h, full, block, d).sum(dim=3, dtype=torch.float32) / block)
    if length > full * block:
        parts.append(x[:, :, full * block :].sum(dim=2, keepdim=True, dtype=torch.float32) / (length - full * block))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def block_visibility(mask: MaskSpec, block_q: int, block_k: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(any_visible, fully_visible)``, each ``[nq, nk]`` bool, for the token mask ``mask``."""
    nq, nk = num_blocks(mask.lq, block_q), num_blocks(mask.lk, block_k)
    if not mask.causal:
        ones = torch.ones(nq, nk, dtype=torch.bool, device=device)
        return ones, ones
    qb = torch.arange(nq, device=device)
    kb = torch.arange(nk, device=device)
    q_first = qb * block_q + mask.offset
    q_last = torch.clamp((qb + 1) * block_q, max=mask.lq) - 1 + mask.offset
    k_first = kb * block_k
    k_last = torch.clamp((kb + 1) * block_k, max=mask.lk) - 1
    f = mask.frame
    any_vis = (k_first[None, :] // f) <= (q_last[:, None] // f)
    full_vis = (k_last[None, :] // f) <= (q_first[:, None] // f)
    return any_vis, full_vis


def sla_block_map(
    q: torch.Tensor, k: torch.Tensor, *, kh: float, kl: float, block_q: int = 64, block_k: int = 64,
    causal: bool = False, frame: int = 1,
) -> BlockMap:
    """Classify key blocks per query block (see the module docstring). q: [B, H, Lq, D], k: [B, H, Lk, D]."""
    check_fractions(kh, kl)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    mask = MaskSpec(lq, lk, causal, frame)
    qp = mean_pool(q, block_q)  # [B, H, nq, D]
    # Smooth-K: pool(K - mean_t K) = pool(K) - mean_t K (pooling is linear; no copy of K).
    kp = mean_pool(k, block_k) - k.mean(dim=2, keepdim=True, dtype=torch.float32)  # [B, H, nk, D]
    scores = (qp @ kp.transpose(-1, -2)) / math.sqrt(d)  # [B, H, nq, nk]
    any_vis, full_vis = block_visibility(mask, block_q, block_k, q.device)
    nq, nk = any_vis.shape
    scores = scores.masked_fill(~any_vis, float("-inf"))

    # Rank fully visible blocks by score; partial and hidden blocks go last (they are classified apart).
    rank_key = scores.masked_fill(~full_vis, float("-inf"))
    order = torch.sort(rank_key, dim=-1, descending=True, stable=True).indices  # [B, H, nq, nk]
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(nk, device=q.device).expand_as(order))
    n_full = full_vis.sum(dim=-1)  # [nq]; a prefix: blocks [0, n_full)
    nf = n_full.to(torch.float64)
    n_c = torch.clamp(torch.ceil(kh * nf - _EPS_FRAC), min=1).minimum(nf).to(torch.long)  # 0 iff n_full == 0
    n_n = torch.minimum(torch.floor(kl * nf + _EPS_FRAC), nf - n_c).to(torch.long)

    r = rank  # [B, H, nq, nk]
    classes = torch.full((b, h, nq, nk), MARGINAL, dtype=torch.int8, device=q.device)
    classes[r < n_c[:, None]] = CRITICAL
    classes[(r >= (n_full - n_n)[:, None]) & full_vis] = NEGLIGIBLE
    partial = any_vis & ~full_vis
    classes[partial.expand_as(classes)] = CRITICAL
    classes[(~any_vis).expand_as(classes)] = HIDDEN
    lut, counts = _lut_from_mask(classes == CRITICAL)
    return BlockMap(classes, lut, counts, n_full, scores, block_q, block_k, mask)


def _lut_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask: [..., n] bool -> (indices of True entries ascending [..., max_count] int32, counts int32).
    Rows shorter than ``max_count`` repeat their last index (harmless for loops bounded by count)."""
    counts = mask.sum(dim=-1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    idx = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :width]
    last = idx.gather(-1, (counts.clamp(min=1) - 1)[..., None])
    pos = torch.arange(width, device=mask.device)
    idx = torch.where(pos < counts[..., None], idx, last)
    return idx.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()


def expand_blocks(block_mask: torch.Tensor, block_q: int, block_k: int, lq: int, lk: int) -> torch.Tensor:
    """[..., nq, nk] block mask -> [..., Lq, Lk] token mask."""
    m = block_mask.repeat_interleave(block_q, dim=-2)[..., :lq, :]
    return m.repeat_interleave(block_k, dim=-1)[..., :lk]


def check_fractions(kh: float, kl: float) -> None:
    if not 0.0 < kh <= 1.0:
        raise ValueError(f"kh={kh} must be in (0, 1]: the fraction of key blocks attended exactly")
    if not 0.0 <= kl < 1.0:
        raise ValueError(f"kl={kl} must be in [0, 1): the fraction of key blocks skipped")
