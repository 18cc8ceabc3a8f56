"""Attention for the causal DiT: diffusers attention processors that hand the math to a strategy.

`CausalWanDiT` installs :class:`SelfAttnProcessor` on every ``attn1`` and :class:`CrossAttnProcessor`
on every ``attn2`` of a diffusers `WanTransformer3DModel`. The processors use the loaded modules'
own projections (``to_q``/``to_k``/``to_v``/``norm_q``/``norm_k``/``to_out``), so the causal model
and the diffusers model are the same weights in memory. What differs is *which keys a query sees*,
decided by the strategy the DiT sets on the shared :class:`AttentionRouter` for one forward:

* :class:`ClipAttention` -- a whole clip at once with a block-causal mask (training, tests);
* ``StreamAttention`` (:mod:`.stream_attention`) -- new blocks against the rolling KV cache.

With no strategy set the processors behave exactly like diffusers' `WanAttnProcessor`, so the
wrapped transformer's own ``forward`` still works (tests compare the two).

Shapes: hidden states ``[B, L, H*D]``; per-head tensors ``[B, H, L, D]``.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .rope import RopeTable, apply_rope

AttentionBackend = Literal["dense", "sla"]
ATTENTION_BACKENDS: tuple[str, ...] = ("dense", "sla")


class AttentionStrategy(Protocol):
    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: [B, H, L, D] before RoPE -> output [B, H, L, D]."""
        ...

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``[B, H, Lc, D]`` of the prompt for cross-attention in ``layer``."""
        ...


class AttentionRouter:
    """The strategy of the forward in progress, shared by all processors of one model."""

    def __init__(self) -> None:
        self.strategy: AttentionStrategy | None = None


MATH_ATTENTION_SCORES = 1 << 22
"""The most scores (batch x heads x queries x keys) :func:`sdpa` materializes in one batched product on
CPU in bf16; above it, one head of one item at a time."""

TILE_SCORES = 1 << 20
"""The most scores (queries x keys of one head) one of :func:`sdpa`'s per-head products materializes."""


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`` (``mask`` bool, True = may attend),
    except bf16 on CPU without autograd: there ATen's flash kernel runs slower than in fp32 (2.2 vs 2.0
    ms for the demo model's 256 queries x 1,024 keys, 4 heads of 32) while a bf16 matrix product runs
    at about twice the fp32 rate on a CPU with AVX-512 BF16, so the scores are two bf16 products
    around a softmax (1.5 ms; the softmax accumulates in fp32). Up to :data:`MATH_ATTENTION_SCORES`
    scores that is one batched product. Above it the batched bf16 product slows down faster than the
    work grows, so there the products are plain 2-D matrix products, one head of one item at a time,
    in tiles of at most :data:`TILE_SCORES` scores: at 512x512 (1,024 queries x 4,096 keys) 23.5 ms a
    call against 33 (the flash kernel) and 55 (one batched product); a batch of eight 256x256 frames
    steps 10 % faster than with the flash kernel. (Below the budget the per-head loop gains nothing in
    the demo model's step.)"""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= MATH_ATTENTION_SCORES:
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))  # a fresh tensor: no copy
        return torch.matmul(scores.softmax(-1), v)
    b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    q = q * q.shape[-1] ** -0.5
    masks = None if mask is None else mask.expand(b, h, lq, lk)
    out = q.new_empty(b, h, lq, v.shape[-1])
    rows = max(1, TILE_SCORES // max(1, lk))
    for i in range(b):
        for j in range(h):
            kt, vj = k[i, j].t(), v[i, j]
            for r in range(0, lq, rows):
                scores = torch.mm(q[i, j, r : r + rows], kt)
                if masks is not None:
                    scores.masked_fill_(~masks[i, j, r : r + rows], float("-inf"))  # a fresh tensor
                torch.mm(scores.softmax(-1), vj, out=out[i, j, r : r + rows])
    return out


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*D] -> [B, H, L, D]."""
    return x.unflatten(2, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, D] -> [B, L, H*D]."""
    return x.transpose(1, 2).flatten(2)


def self_qkv(attn: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected, qk-normed q, k, v of a diffusers `WanAttention`, each [B, H, L, D]."""
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(hidden).chunk(3, dim=-1)
    else:
        q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    q, k = attn.norm_q(q), attn.norm_k(k)
    h = int(attn.heads)
    return split_heads(q, h), split_heads(k, h), split_heads(v, h)


def cross_kv(attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention keys/values [B, H, Lc, D] of projected prompt states [B, Lc, dim]."""
    if getattr(attn, "fused_projections", False):
        k, v = attn.to_kv(encoder_states).chunk(2, dim=-1)
    else:
        k, v = attn.to_k(encoder_states), attn.to_v(encoder_states)
    k = attn.norm_k(k)
    h = int(attn.heads)
    return split_heads(k, h), split_heads(v, h)


def out_proj(attn: Any, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, H, L, D] attention output -> [B, L, dim] through ``to_out``."""
    hidden = merge_heads(out).type_as(like)
    return attn.to_out[1](attn.to_out[0](hidden))


class SelfAttnProcessor:
    """Processor for ``attn1``: projections here, key selection in the router's strategy."""

    def __init__(self, router: AttentionRouter, layer: int) -> None:
        self.router = router
        self.layer = layer
        self._fallback = WanAttnProcessor()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        strategy = self.router.strategy
        if strategy is None:
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        q, k, v = self_qkv(attn, hidden_states)  # [B, H, L, D]
        out = strategy.self_attention(self.layer, q, k, v)
        return out_proj(attn, out, hidden_states)


class CrossAttnProcessor:
    """Processor for ``attn2``: the strategy may serve cached prompt keys/values."""

    def __init__(self, router: AttentionRouter, layer: int) -> None:
        self.router = router
        self.layer = layer
        self._fallback = WanAttnProcessor()
        self._folded = FoldedCrossAttention()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        strategy = self.router.strategy
        if strategy is None:
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is None:
            raise ValueError("cross-attention needs prompt states")
        h = int(attn.heads)
        k, v = strategy.cross_kv(self.layer, attn, encoder_hidden_states)  # [B, H, Lc, D]
        if self._folded.applies(attn, hidden_states, k):
            folded = self._folded.prepare(attn, k, v)
            if folded is not None:
                return self._folded(attn, hidden_states, folded)
        q = split_heads(attn.norm_q(attn.to_q(hidden_states)), h)  # [B, H, L, D]
        out = sdpa(q, k.to(q.dtype), v.to(q.dtype))
        return out_proj(attn, out, hidden_states)


class FoldedCrossAttention:
    """Cross-attention to a short prompt (the demo's 4 style tokens) on CPU in fp32, with the query's
    RMS-norm weight folded into the keys and the output projection folded into the values.

    For ``Lc`` prompt tokens and ``H`` heads, ``softmax(q_h k_h^T / sqrt(D)) v_h`` summed through
    ``to_out`` is ``P @ V'``: ``P [L, H*Lc]`` holds the heads' probabilities side by side and
    ``V' [H*Lc, dim]`` the prompt's values already multiplied by their head's slice of ``to_out``'s
    weight. The scores of all heads are one product with a block-diagonal ``[H*D, H*Lc]`` key matrix
    (the norm's per-channel weight and ``1/sqrt(D)`` folded in) times the norm's per-token
    ``1/rms(q)``. The softmax is ``exp`` over the row, then a division by each head's sum (one more
    small product with a block-diagonal matrix of ones): ATen's softmax over a last dimension of 4 costs
    as much as the whole attention it replaces. Without the usual max subtraction this is exact only
    while ``exp`` cannot overflow: the scores are bounded by ``sqrt(H) * max ||g * k||`` (the
    normalised query's norm is ``sqrt(H*D)``), and prompts whose bound exceeds :attr:`MAX_SCORE` take
    the unfolded path.

    The per-prompt matrices are cached by key tensor (a session's prompt keys are reused every frame
    until its prompt changes; the weights are taken as frozen, as they are in inference). On the demo
    model this replaces RMSNorm + SDPA + ``to_out`` (~0.6 ms of a layer's cross-attention on one core)
    with ~0.3 ms; it agrees with the unfolded path to float rounding (tests compare them). Long prompts
    (Wan's 512 tokens), half precision, autograd and GPUs take the unfolded path.
    """

    MAX_COLUMNS = 64  # H * Lc: beyond this the block-diagonal product wastes more than it saves
    MAX_SCORE = 60.0  # |score| bound below which exp(score) needs no max subtraction (fp32 overflows at 88)

    def __init__(self) -> None:
        # id(k) -> (weakref(k), weakref(v), (K', V', head-sum ones) or None where the bound rules the fold out)
        self._cache: dict[int, tuple[Any, Any, tuple[torch.Tensor, ...] | None]] = {}

    def applies(self, attn: Any, hidden: torch.Tensor, k: torch.Tensor) -> bool:
        """Whether this call may fold (the module's own layout is checked once per prompt, in `prepare`)."""
        return (hidden.device.type == "cpu" and hidden.dtype == torch.float32 and k.dtype == torch.float32
                and k.shape[1] * k.shape[2] <= self.MAX_COLUMNS and not torch.is_grad_enabled())

    def prepare(self, attn: Any, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The folded keys ``[B, H*D, H*Lc]``, values ``[B, H*Lc, dim]`` and head-sum matrix of a prompt,
        or None when its scores could overflow ``exp`` or the module is not the RMS-normed, biased
        layout the fold assumes."""
        hit = self._cache.get(id(k))
        if hit is not None and hit[0]() is k and hit[1]() is v:
            return hit[2]
        b, h, lc, d = k.shape
        folded: tuple[torch.Tensor, ...] | None = None
        layout_ok = isinstance(attn.norm_q, torch.nn.RMSNorm) and attn.norm_q.weight is not None \
            and attn.to_out[0].bias is not None
        gk = k * attn.norm_q.weight.view(h, 1, d) if layout_ok else None  # [B, H, Lc, D]
        if gk is not None and h**0.5 * float(torch.linalg.vector_norm(gk, dim=-1).max()) <= self.MAX_SCORE:
            kbd = k.new_zeros(b, h * d, h * lc)  # block diagonal: head i's keys at rows/cols of head i
            for i in range(h):
                kbd[:, i * d : (i + 1) * d, i * lc : (i + 1) * lc] = gk[:, i].transpose(-1, -2) * d**-0.5
            wo = attn.to_out[0].weight  # [dim, H*D]
            vp = torch.matmul(v, wo.view(-1, h, d).permute(1, 2, 0)).flatten(1, 2)  # [B, H*Lc, dim]
            ones = torch.block_diag(*[k.new_ones(lc, lc)] * h)[None]  # [1, H*Lc, H*Lc]
            folded = (kbd, vp, ones)
        if len(self._cache) > 64:  # prompts come and go: drop the ones whose keys are gone
            self._cache = {i: e for i, e in self._cache.items() if e[0]() is not None}
        self._cache[id(k)] = (weakref.ref(k), weakref.ref(v), folded)
        return folded

    def __call__(self, attn: Any, hidden: torch.Tensor, folded: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``hidden [B, L, dim]`` with :meth:`prepare`'s matrices -> ``[B, L, dim]``."""
        kbd, vp, ones = folded
        b = hidden.shape[0]
        q = attn.to_q(hidden)  # [B, L, H*D]
        eps = attn.norm_q.eps if attn.norm_q.eps is not None else torch.finfo(q.dtype).eps
        norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)  # [B, L, 1]
        inv_rms = norm.mul_(norm).mul_(1.0 / q.shape[-1]).add_(eps).rsqrt_()
        probs = torch.bmm(q, kbd.expand(b, -1, -1)).mul_(inv_rms).exp_()  # [B, L, H*Lc], unnormalised
        probs.div_(torch.matmul(probs, ones))  # each head's columns by that head's sum
        return torch.baddbmm(attn.to_out[0].bias.view(1, 1, -1), probs, vp.expand(b, -1, -1))


def block_causal_mask(
    num_frames: int, tokens_per_frame: int, num_sinks: int | None = None, window: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean ``[F*S, F*S]`` mask (True = may attend) for a clip of ``F`` frames of ``S`` tokens.

    Frame ``i`` sees frame ``j <= i``; with ``num_sinks``/``window`` only the first ``num_sinks`` frames
    and the ``window`` frames before ``i`` (exactly what the rolling KV cache holds while streaming).
    """
    i = torch.arange(num_frames, device=device)[:, None]
    j = torch.arange(num_frames, device=device)[None, :]
    allowed = j <= i
    if window is not None:
        sinks = num_sinks or 0
        allowed &= (j < sinks) | (i - j <= window)
    return allowed.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class ClipAttention:
    """Strategy for a whole clip in one forward: RoPE at the given positions, block-causal mask."""

    def __init__(self, rope: RopeTable, mask: torch.Tensor | None) -> None:
        self.rope = rope
        self.mask = mask  # [L, L] bool or None (full attention)

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k = apply_rope(q, self.rope), apply_rope(k, self.rope)
        return sdpa(q, k, v, self.mask)

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_kv(attn, encoder_states)
