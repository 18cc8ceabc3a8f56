"""SLA (sparse-linear attention) for drop-in use: a functional form and an ``nn.Module``.

``O = O_s + proj(O_l)`` where ``O_s`` is exact softmax attention over each query block's critical key
blocks and ``O_l`` linear attention over its marginal blocks (see :mod:`.block_map` for the
classification, :mod:`.linear` for the linear part, :mod:`.sla` for the Triton kernels). ``proj`` is a
learnable ``D x D`` linear layer initialised to zero, so an untrained layer equals block-sparse
attention and fine-tuning learns the compensation.

Implementations: ``impl="triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``), ``"reference"``
(plain PyTorch, token masks), ``"auto"`` (Triton on CUDA, the reference elsewhere).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .block_map import BlockMap, MaskSpec, check_fractions, sla_block_map
from .linear import apply_proj, linear_attention
from .reference import linear_reference, sparse_reference
from .sla import check_inputs, sparse_attention

Impl = Literal["auto", "triton", "reference"]
Backend = Literal["sla", "dense"]


def _frame(causal: bool, block_causal: int | None, lq: int, lk: int) -> tuple[bool, int]:
    if block_causal is not None:
        if causal:
            raise ValueError("pass either causal=True (token-causal) or block_causal=<frame tokens>, not both")
        if block_causal < 1:
            raise ValueError(f"block_causal={block_causal} must be a frame size in tokens (>= 1)")
        causal, frame = True, block_causal
    else:
        frame = 1
    if causal and lq > lk:
        raise ValueError(f"causal attention needs Lq <= Lk (queries are the last Lq of the keys); got Lq={lq}, Lk={lk}")
    return causal, frame


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3] or k.shape != v.shape:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def sla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    kh: float,
    kl: float,
    block_q: int = 64,
    block_k: int = 64,
    causal: bool = False,
    block_causal: int | None = None,
    proj: nn.Module | None = None,
    sm_scale: float | None = None,
    impl: Impl = "auto",
    return_block_map: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, BlockMap]:
    """Sparse-linear attention. q: [B, H, Lq, D]; k, v: [B, H, Lk, D] -> [B, H, Lq, D] (q's dtype).

    Args:
        kh: fraction of (fully visible) key blocks per query block attended exactly (critical).
        kl: fraction skipped (negligible); the rest go through linear attention (marginal).
        block_q, block_k: block sizes (16, 32, 64 or 128).
        causal: token-causal mask, queries aligned to the end of the keys.
        block_causal: frame-causal mask with frames of this many tokens (e.g. 1560 for Wan 480p).
        proj: the ``D x D`` projection of the linear branch; ``None`` skips the linear branch
            (equivalent to a zero-initialised projection, and cheaper).
        impl: ``"triton"``, ``"reference"`` or ``"auto"``.
        return_block_map: also return the :class:`BlockMap`.
    """
    _check_shapes(q, k, v)
    causal, frame = _frame(causal, block_causal, q.shape[2], k.shape[2])
    if impl == "auto":
        impl = "triton" if q.is_cuda else "reference"
    if impl not in ("triton", "reference"):
        raise ValueError(f"impl={impl!r}; expected 'auto', 'triton' or 'reference'")
    if impl == "triton":
        check_inputs(q, k, v, block_q, block_k)
    bm = sla_block_map(q, k, kh=kh, kl=kl, block_q=block_q, block_k=block_k, causal=causal, frame=frame)
    if impl == "triton":
        o = sparse_attention(q, k, v, bm, sm_scale).float()
        if proj is not None:
            o = o + apply_proj(proj, linear_attention(q, k, v, bm))
    else:
        o = sparse_reference(q, k, v, bm, sm_scale)
        if proj is not None:
            o = o + apply_proj(proj, linear_reference(q, k, v, bm))
    out = o.to(q.dtype)
    return (out, bm) if return_block_map else out


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    block_causal: int | None = None, sm_scale: float | None = None,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the same mask conventions as :func:`sla_attention`."""
    _check_shapes(q, k, v)
    lq, lk = q.shape[2], k.shape[2]
    causal, frame = _frame(causal, block_causal, lq, lk)
    if causal and frame == 1 and lq == lk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=sm_scale)
    mask = MaskSpec(lq, lk, causal, frame).token_mask(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sm_scale)


class SparseLinearAttention(nn.Module):
    """Drop-in attention core: ``forward(q, k, v) -> o`` on ``[B, H, L, D]`` tensors.

    ``backend="sla"`` runs sparse-linear attention with a learnable zero-initialised projection
    ``proj: Linear(head_dim, head_dim)``; ``backend="dense"`` runs ``scaled_dot_product_attention``
    (the projection is then unused). ``backend`` and ``impl`` are plain attributes and may be switched
    at any time (e.g. dense for the first frames, SLA once the cache is long).
    """

    def __init__(
        self,
        head_dim: int,
        *,
        kh: float = 0.05,
        kl: float = 0.10,
        block_q: int = 64,
        block_k: int = 64,
        backend: Backend = "sla",
        impl: Impl = "auto",
        proj_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if backend not in ("sla", "dense"):
            raise ValueError(f"backend={backend!r}; expected 'sla' or 'dense'")
        check_fractions(kh, kl)
        self.head_dim, self.kh, self.kl = head_dim, kh, kl
        self.block_q, self.block_k = block_q, block_k
        self.backend: Backend = backend
        self.impl: Impl = impl
        self.proj = nn.Linear(head_dim, head_dim, dtype=proj_dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the projection: the layer then equals block-sparse attention."""
        with torch.no_grad():
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
        block_causal: int | None = None,
    ) -> torch.Tensor:
        """q: [B, H, Lq, D]; k, v: [B, H, Lk, D] -> [B, H, Lq, D]."""
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"head dim {q.shape[-1]} != the layer's head_dim={self.head_dim}")
        if self.backend == "dense":
            return dense_attention(q, k, v, causal=causal, block_causal=block_causal)
        out = sla_attention(q, k, v, kh=self.kh, kl=self.kl, block_q=self.block_q, block_k=self.block_k,
                            causal=causal, block_causal=block_causal, proj=self.proj, impl=self.impl)
        assert isinstance(out, torch.Tensor)
        return out

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, kh={self.kh}, kl={self.kl}, block_q={self.block_q}, "
                f"block_k={self.block_k}, backend={self.backend!r}, impl={self.impl!r}")
