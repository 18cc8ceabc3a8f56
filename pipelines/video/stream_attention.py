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

from streamserve.kv_rolling import KVPool

from .attention import sdpa
from .model import CrossKV
from .rope import RopeTable, WanRope, apply_rope

AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``attend(layer, q, k, v, mask) -> out``: q ``[N, H, S, D]``, k/v ``[N, H, Lk, D]``, mask
``[N, 1, 1, Lk]`` bool (True = may attend)."""


def dense_attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact attention (PyTorch SDPA; bf16 on CPU: :func:`.attention.sdpa`) with a key-padding/visibility mask."""
    return sdpa(q, k, v, mask)


class StreamAttention:
    """Attention strategy for :meth:`CausalWanDiT.forward_stream` over one :class:`KVPool`.

    Args:
        pool: the rolling caches (one slot per session, one cache per layer); a :class:`KVPool`, or an
            object with its ``view``/``gather``/``write`` API (video-pp's per-stage pools).
        items: ``(session_id, block_index)`` per item, in batch order.
        cross: per layer, the items' prompt keys/values (``[N, H, Lc, D]`` each).
        rope: the model's RoPE tables; ``grid``: tokens ``(h, w)`` of one latent frame.
        window: window blocks each item may see (the pool's window may be larger by the lag).
        attend: the attention kernel (dense SDPA by default; see :mod:`.sla`).

    With a :class:`KVPool` the keys and values of a layer are assembled in one preallocated buffer per
    forward, ``[N, H, cap + S, D]``: each item's cached blocks are read in *slot* order straight from
    the pool storage (no ordered copy, no per-batch gather, no concatenation), rotated there at their
    cache positions (``"reposition"``) or copied (``"refresh"``, keys stored rotated), and the new
    block's keys and values go in the tail. Attention does not depend on key order, so this equals
    the ordered read (to float rounding). Other pools take the :meth:`KVPool.gather` path.
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
        self.direct = isinstance(pool, KVPool)  # read the pool storage in place (see the class doc)
        h, w = grid
        self.tokens = h * w
        self.capacity = pool.capacity_tokens
        positions: list[int] = []
        visible = torch.zeros(len(items), self.capacity, dtype=torch.bool)
        for i, (sid, b) in enumerate(items):
            cache = pool.view(sid).layer(0)
            ordered = cache.block_indices(ordered=True)
            if self.reposition:  # cache-relative: a new block goes right after the held ones
                positions.append(ordered.index(b) if b in ordered else len(ordered))
            else:
                positions.append(cache.position_for(b))
            held = ordered if not self.direct else cache.block_indices(ordered=False)  # sinks first in both
            sinks = min(cache.num_sinks, len(held))
            for j, idx in enumerate(held):
                if idx < b and (j < sinks or b - idx <= window):
                    visible[i, j * self.tokens : (j + 1) * self.tokens] = True
        self.positions = positions
        own = torch.ones(len(items), self.tokens, dtype=torch.bool)
        self.mask = torch.cat([visible, own], dim=1)[:, None, None, :].to(device)  # [N, 1, 1, cap + S]
        # A full cache shows every key to every item: SDPA then runs without a mask (~2 % faster on CPU).
        self._dense_mask = None if bool(visible.all()) else self.mask
        self.table = rope.cached_table(positions, h, w, per_row=True)  # [N, S, D/2]
        self._cache_rope = rope.block_rope(h, w) if self.reposition and not self.direct else None
        self._views = [pool.view(sid) for sid in self.session_ids] if self.direct else []
        self._cache_tables = self._slot_tables(rope, h, w) if self.direct and self.reposition else []
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _slot_tables(self, rope: WanRope, h: int, w: int) -> list[RopeTable]:
        """Per item, the RoPE table of its cache in slot order: each held block at its cache-relative
        position (what an ordered read rotates it at); free slots (masked) continue the sequence."""
        per_session: dict[Hashable, RopeTable] = {}
        for sid in self.unique:
            cache = self.pool.view(sid).layer(0)
            pos = cache.block_positions(ordered=False).tolist()
            pos += list(range(len(pos), cache.capacity_blocks))
            per_session[sid] = rope.cached_table(pos, h, w)  # [1, cap * S, D/2]
        return [per_session[sid] for sid in self.session_ids]

    def _kv_buffers(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[N, H, cap + S, D]`` of one layer, allocated once per forward."""
        n, heads, s, d = like.shape
        if self._buffers is None or self._buffers[0].dtype != like.dtype:
            shape = (n, heads, self.capacity + s, d)
            self._buffers = (torch.empty(shape, dtype=like.dtype, device=like.device),
                             torch.empty(shape, dtype=like.dtype, device=like.device))
        return self._buffers

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: [N, H, S, D] before RoPE
        q_rot = apply_rope(q, self.table)
        if self.direct:
            keys, values = self._assemble(layer, k, v)
        else:
            k_rot = apply_rope(k, self.table)
            cached = self.pool.gather(layer, self.unique, rope=self._cache_rope)  # [U, H, cap, D]
            ck = cached.k.index_select(0, self.rows).to(q.dtype)  # [N, H, cap, D]
            cv = cached.v.index_select(0, self.rows).to(q.dtype)
            keys = torch.cat([ck, k_rot], dim=2)  # [N, H, cap + S, D]
            values = torch.cat([cv, v], dim=2)
        if self.attend is dense_attend:
            out = sdpa(q_rot, keys, values, self._dense_mask)
        else:
            out = self.attend(layer, q_rot, keys, values, self.mask)
        stored = k if self.reposition else keys[:, :, self.capacity :]  # "reposition" keeps keys before RoPE
        self.pool.write(layer, self.session_ids, self.blocks, stored, v)
        return out

    def _assemble(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated) and values of ``layer``: each item's cache in slot order, then its new block."""
        keys, values = self._kv_buffers(k)
        cap = self.capacity
        _rope_into(k, self.table, keys[:, :, cap:])
        values[:, :, cap:].copy_(v)
        for i, view in enumerate(self._views):
            cached = view.layer(layer).keys_values(ordered=False, padded=True)  # [1, H, cap, D], a view
            if self.reposition:
                _rope_into(cached.k, self._cache_tables[i], keys[i : i + 1, :, :cap])
            else:
                keys[i : i + 1, :, :cap].copy_(cached.k)
            values[i : i + 1, :, :cap].copy_(cached.v)
        return keys, values

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross[layer]


def _rope_into(x: torch.Tensor, table: RopeTable, out: torch.Tensor) -> None:
    """``out[...] = apply_rope(x, table)``, rotating straight into ``out`` when it is fp32."""
    if out.dtype == torch.float32:
        apply_rope(x, table, out=out)
    else:
        out.copy_(apply_rope(x, table))
