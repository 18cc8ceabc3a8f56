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
        q = split_heads(attn.norm_q(attn.to_q(hidden_states)), h)  # [B, H, L, D]
        k, v = strategy.cross_kv(self.layer, attn, encoder_hidden_states)  # [B, H, Lc, D]
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return out_proj(attn, out, hidden_states)


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
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_kv(attn, encoder_states)
