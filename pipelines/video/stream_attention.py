"""Self-attention of new latent blocks against the rolling KV cache (`streamserve.kv_rolling`).

One forward of the DiT processes ``N`` items. An item is one latent frame (block ``b``) of one
session at one denoising step; with stream batch several items of the same session are in flight
at once (block ``n`` at step 0, block ``n-1`` at step 1, ...). In every layer each item:

1. rotates its queries and keys at its block's RoPE position (the cache's position policy decides it);
2. attends to the cached blocks it may see -- the sinks and the ``window`` blocks before ``b`` that
   are held, never ``b`` itself or a later block -- plus its own tokens;
3. writes its keys/values as block ``b``: a new block is appended (the oldest window block rolls
   out), a block already held is overwritten (a later denoising step of the same frame).

All reads of a layer happen before its writes, so the items of one forward see the same cache
state whatever their order. The cache window is ``window + lag`` blocks (``lag`` = blocks in flight
minus one) so the oldest in-flight item still sees a full window.

Shapes: q, k, v ``[N, H, S, D]`` (``S`` tokens per block); cache reads ``[U, H, cap, D]`` for the
``U`` distinct sessions; masks ``[N, 1, 1, cap + S]``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from streamserve.kv_rolling import KVPool

from .model import CrossKV
from .rope import WanRope, apply_rope

AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``attend(layer, q, k, v, mask) -> out``: q ``[N, H, S, D]``, k/v ``[N, H, Lk, D]``, mask
``[N, 1, 1, Lk]`` bool (True = may attend)."""


def dense_attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact attention (PyTorch SDPA) with a key-padding/visibility mask."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class StreamAttention:
    """Attention strategy for :meth:`CausalWanDiT.forward_stream` over one :class:`KVPool`.

    Args:
        pool: the rolling caches (one slot per session, one cache per layer).
        items: ``(session_id, block_index)`` per item, in batch order.
        cross: per layer, the items' prompt keys/values (``[N, H, Lc, D]`` each).
        rope: the model's RoPE tables; ``grid``: tokens ``(h, w)`` of one latent frame.
        window: window blocks each item may see (the pool's window may be larger by the lag).
        attend: the attention kernel (dense SDPA by default; see :mod:`.sla`).
    """

    def __init__(
        self,
        pool: KVPool,
        items: Sequence[tuple[Hashable, int]],
        cross: CrossKV,
        rope: WanRope,
        grid: tuple[int, int],
        window: int,
        attend: AttendFn = dense_attend,
    ) -> None:
        if not items:
            raise ValueError("a stream forward needs at least one item")
        self.pool = pool
        self.cross = cross
        self.attend = attend
        self.session_ids = [sid for sid, _ in items]
        self.blocks = [b for _, b in items]
        self.unique = list(dict.fromkeys(self.session_ids))
        row_of = {sid: i for i, sid in enumerate(self.unique)}
        device = pool.view(self.unique[0]).layer(0).storage.k.device  # KVPool has no public .device
        self.rows = torch.tensor([row_of[sid] for sid in self.session_ids], device=device)
        self.reposition = pool.position_policy == "reposition"
        h, w = grid
        self.tokens = h * w
        positions: list[int] = []
        visible = torch.zeros(len(items), pool.capacity_tokens, dtype=torch.bool)
        for i, (sid, b) in enumerate(items):
            cache = pool.view(sid).layer(0)
            held = cache.block_indices(ordered=True)
            sinks = min(cache.num_sinks, len(held))
            if self.reposition:  # cache-relative: a new block goes right after the held ones
                positions.append(held.index(b) if b in held else len(held))
            else:
                positions.append(cache.position_for(b))
            for j, idx in enumerate(held):
                if idx < b and (j < sinks or b - idx <= window):
                    visible[i, j * self.tokens : (j + 1) * self.tokens] = True
        self.positions = positions
        own = torch.ones(len(items), self.tokens, dtype=torch.bool)
        self.mask = torch.cat([visible, own], dim=1)[:, None, None, :].to(device)  # [N, 1, 1, cap + S]
        self.table = rope.table(torch.tensor(positions, device=device)[:, None], h, w)  # [N, S, D/2]
        self._cache_rope = rope.block_rope(h, w) if self.reposition else None

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: [N, H, S, D] before RoPE
        q_rot = apply_rope(q, self.table)
        k_rot = apply_rope(k, self.table)
        cached = self.pool.gather(layer, self.unique, rope=self._cache_rope)  # [U, H, cap, D]
        ck = cached.k.index_select(0, self.rows).to(q.dtype)  # [N, H, cap, D]
        cv = cached.v.index_select(0, self.rows).to(q.dtype)
        keys = torch.cat([ck, k_rot], dim=2)  # [N, H, cap + S, D]
        values = torch.cat([cv, v], dim=2)
        out = self.attend(layer, q_rot, keys, values, self.mask)
        stored = k if self.reposition else k_rot  # "reposition" keeps keys before RoPE
        self.pool.write(layer, self.session_ids, self.blocks, stored, v)
        return out

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross[layer]
