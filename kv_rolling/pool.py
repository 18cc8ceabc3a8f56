"""Preallocated rolling KV caches for many sessions x layers, handed out as per-session views.

A :class:`KVPool` owns one tensor per K and V of shape ``[layers, max_sessions, H, capacity, D]``
(``capacity = (num_sinks + window) * block_tokens``), allocated once. A session gets a slot and a
:class:`SessionKV` view; the pipeline writes and reads through the view and never sees ring indices.
Each session has its own fill level and stream position, so sessions at different points of their
streams batch together: :meth:`KVPool.gather` returns ``[n, H, capacity, D]`` keys/values plus a
``[n, capacity]`` validity mask (valid tokens are always a prefix of each row).

Typical use in a causal DiT layer ``l`` (policy ``"refresh"``: rotate before writing)::

    view = pool.view(session_id)                    # opens a slot on first use
    pos = view.position_for(block)                  # bounded RoPE position of this frame
    view.write(l, block, rope(k_new, pos), v_new)   # k_new: [1, H, T, D]; overwrites on later steps
    k, v = view.keys_values(l)                      # [1, H, L, D], sinks + window in order
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .cache import KV, Layout, RollingKVCache
from .positions import PositionPolicy, RopeFn


@dataclass(frozen=True)
class BatchedKV:
    """Keys/values of several sessions, padded to the cache capacity.

    k, v: [n, H, capacity, D]; mask: [n, capacity] bool (True = valid token); lengths: [n] int64.
    The tensors are views of pool scratch buffers: use them before the next gather/read on the pool.
    """

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

    def attn_mask(self) -> torch.Tensor:
        """Boolean mask ``[n, 1, 1, capacity]`` for ``scaled_dot_product_attention``."""
        return self.mask[:, None, None, :]


class SessionKV:
    """One session's caches, one per layer. Obtained from :meth:`KVPool.view`."""

    def __init__(self, pool: KVPool, session_id: Hashable, slot: int, layers: list[RollingKVCache]) -> None:
        self.pool = pool
        self.session_id = session_id
        self.slot = slot
        self._layers = layers

    def layer(self, layer: int) -> RollingKVCache:
        """The :class:`RollingKVCache` of ``layer`` (ordered ring reads use a pool scratch row)."""
        if not 0 <= layer < len(self._layers):
            raise ValueError(f"layer={layer} out of range [0, {len(self._layers)})")
        return self._layers[layer]

    def write(self, layer: int, block_index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [1, H, block_tokens, D]. See :meth:`RollingKVCache.write`."""
        self.layer(layer).write(block_index, k, v)

    def keys_values(self, layer: int, *, ordered: bool = True, padded: bool = False) -> KV:
        """[1, H, L, D] keys and values of ``layer``; valid until the next read on this pool."""
        return self.layer(layer).keys_values(ordered=ordered, padded=padded)

    def rotated_keys(self, layer: int, rope: RopeFn, *, ordered: bool = True) -> torch.Tensor:
        """``"reposition"`` policy: keys of ``layer`` rotated at cache-relative positions."""
        return self.layer(layer).rotated_keys(rope, ordered=ordered)

    def position_for(self, block_index: int) -> int:
        """RoPE block position for ``block_index`` (identical in every layer)."""
        return self._layers[0].position_for(block_index)

    @property
    def next_index(self) -> int:
        return self._layers[0].next_index

    @property
    def fill_blocks(self) -> int:
        return self._layers[0].fill_blocks

    @property
    def length(self) -> int:
        return self._layers[0].length

    def reset(self) -> None:
        """Forget this session's blocks in every layer (a stream restart)."""
        for c in self._layers:
            c.reset()

    def __repr__(self) -> str:
        return f"SessionKV(session_id={self.session_id!r}, slot={self.slot}, fill={self.fill_blocks}, next={self.next_index})"


class KVPool:
    """Rolling sink+window KV caches for up to ``max_sessions`` sessions x ``num_layers`` layers.

    All memory is allocated in the constructor; opening, writing, resetting and releasing sessions
    never allocate K/V storage. The cache arguments are those of :class:`RollingKVCache`.
    """

    def __init__(
        self,
        num_layers: int,
        max_sessions: int,
        num_sinks: int,
        window: int,
        block_tokens: int,
        heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        position_policy: PositionPolicy = "refresh",
        refresh_every: int = 50,
        layout: Layout = "ring",
        sink_refresh_threshold: float | None = None,
        restart_at: int | None = None,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be >= 1")
        if max_sessions < 1:
            raise ValueError(f"max_sessions={max_sessions} must be >= 1")
        self.num_layers, self.max_sessions = num_layers, max_sessions
        self._cache_args = dict(
            num_sinks=num_sinks, window=window, block_tokens=block_tokens, position_policy=position_policy,
            refresh_every=refresh_every, layout=layout, sink_refresh_threshold=sink_refresh_threshold,
            restart_at=restart_at,
        )
        # Validates the cache arguments before the big allocation.
        RollingKVCache(num_sinks, window, block_tokens, heads, head_dim, 1, dtype=dtype, device="meta",
                       position_policy=position_policy, refresh_every=refresh_every, layout=layout,
                       sink_refresh_threshold=sink_refresh_threshold, restart_at=restart_at)
        self.capacity_tokens = (num_sinks + window) * block_tokens
        self.capacity_blocks = num_sinks + window
        self.heads, self.head_dim, self.dtype, self.layout = heads, head_dim, dtype, layout
        self.position_policy: PositionPolicy = position_policy
        shape = (num_layers, max_sessions, heads, self.capacity_tokens, head_dim)
        self._k = torch.zeros(shape, dtype=dtype, device=device)  # [layers, S, H, cap, D]
        self._v = torch.zeros(shape, dtype=dtype, device=device)
        self._out_k = torch.empty(shape[1:], dtype=dtype, device=device)  # [S, H, cap, D] read scratch
        self._out_v = torch.empty(shape[1:], dtype=dtype, device=device)
        self._mask = torch.zeros(max_sessions, self.capacity_tokens, dtype=torch.bool, device=device)
        self._arange = torch.arange(self.capacity_tokens, device=device)
        self._lengths = torch.zeros(max_sessions, dtype=torch.long, device=device)
        self._free = list(range(max_sessions - 1, -1, -1))
        self._sessions: dict[Hashable, SessionKV] = {}
        self._views: list[SessionKV | None] = [None] * max_sessions

    # ------------------------------------------------------------------ sessions

    def view(self, session_id: Hashable) -> SessionKV:
        """The session's view, opening a free slot for a new session (``RuntimeError`` when full)."""
        sess = self._sessions.get(session_id)
        if sess is not None:
            return sess
        if not self._free:
            raise RuntimeError(
                f"KVPool is full: all {self.max_sessions} session slots are in use "
                f"(release a session or build the pool with a larger max_sessions)"
            )
        slot = self._free.pop()
        sess = self._views[slot]
        if sess is None:  # first use of this slot: build its layer caches over the pool storage
            out = KV(self._out_k[slot : slot + 1], self._out_v[slot : slot + 1])
            layers = [
                RollingKVCache.over_storage(self._k[l, slot : slot + 1], self._v[l, slot : slot + 1], out=out,
                                            **self._cache_args)  # type: ignore[arg-type]
                for l in range(self.num_layers)  # noqa: E741
            ]
            sess = SessionKV(self, session_id, slot, layers)
            self._views[slot] = sess
        else:
            sess.session_id = session_id
            sess.reset()
        self._sessions[session_id] = sess
        return sess

    def __contains__(self, session_id: Hashable) -> bool:
        return session_id in self._sessions

    @property
    def sessions(self) -> list[Hashable]:
        return list(self._sessions)

    def live_views(self) -> list[SessionKV]:
        """The views of the sessions holding a slot now (a copy: never opens or changes one)."""
        return list(self._sessions.values())

    @property
    def num_free(self) -> int:
        return len(self._free)

    def reset(self, session_id: Hashable) -> None:
        """Stream restart: the session keeps its slot, its blocks are forgotten."""
        self._get(session_id).reset()

    def release(self, session_id: Hashable) -> None:
        """End the session and return its slot to the pool."""
        sess = self._get(session_id)
        sess.reset()
        del self._sessions[session_id]
        self._free.append(sess.slot)

    def _get(self, session_id: Hashable) -> SessionKV:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise ValueError(f"unknown session {session_id!r}; open it with view() first") from None

    # ------------------------------------------------------------------ batched access

    def write(
        self, layer: int, session_ids: Sequence[Hashable], block_indices: Sequence[int],
        k: torch.Tensor, v: torch.Tensor,
    ) -> None:
        """Write one block per session. k, v: [n, H, block_tokens, D], row i for ``session_ids[i]``."""
        if len(session_ids) != k.shape[0] or len(block_indices) != k.shape[0]:
            raise ValueError(
                f"{len(session_ids)} sessions and {len(block_indices)} block indices for a batch of {k.shape[0]}"
            )
        for i, (sid, b) in enumerate(zip(session_ids, block_indices, strict=True)):
            self._get(sid).write(layer, b, k[i : i + 1], v[i : i + 1])

    def gather(
        self, layer: int, session_ids: Sequence[Hashable], *, ordered: bool = True, rope: RopeFn | None = None,
    ) -> BatchedKV:
        """Keys/values of ``layer`` for several sessions at their own fill levels.

        Returns :class:`BatchedKV` with k, v: [n, H, capacity, D] and mask [n, capacity]. With the
        ``"reposition"`` policy pass ``rope`` to get keys rotated at cache-relative positions (the same
        for every row, since each row's valid blocks start at position 0); requires ``ordered``.
        """
        n = len(session_ids)
        if n == 0 or n > self.max_sessions:
            raise ValueError(f"gather needs 1..{self.max_sessions} sessions, got {n}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer={layer} out of range [0, {self.num_layers})")
        sessions = [self._get(s) for s in session_ids]
        if len({s.slot for s in sessions}) != n:
            raise ValueError(f"duplicate sessions in {list(session_ids)}")
        k_out, v_out = self._out_k[:n], self._out_v[:n]
        if not ordered or self.layout == "shift":
            idx = torch.tensor([s.slot for s in sessions], device=self._k.device)
            torch.index_select(self._k[layer], 0, idx, out=k_out)
            torch.index_select(self._v[layer], 0, idx, out=v_out)
        else:
            # Ordered ring reads, one session at a time, straight into row i (they read pool storage only).
            for i, s in enumerate(sessions):
                row = KV(k_out[i : i + 1], v_out[i : i + 1])
                kv = s.layer(layer).keys_values(ordered=True, padded=True, out=row)
                if kv.k.data_ptr() != row.k.data_ptr():
                    row.k.copy_(kv.k)
                    row.v.copy_(kv.v)
        lengths = self._lengths[:n]
        lengths.copy_(torch.tensor([s.length for s in sessions]))
        mask = self._mask[:n]
        torch.lt(self._arange[None, :], lengths[:, None], out=mask)
        if rope is not None:
            if self.position_policy != "reposition" or not ordered:
                raise ValueError("gather(rope=...) needs position_policy='reposition' and ordered=True")
            k_out = rope(k_out, torch.arange(self.capacity_blocks, device=k_out.device))
        return BatchedKV(k_out, v_out, mask, lengths)

    # ------------------------------------------------------------------ memory

    @property
    def bytes_per_session(self) -> int:
        """K+V storage of one session across all layers."""
        return 2 * self.num_layers * self.heads * self.capacity_tokens * self.head_dim * self._k.element_size()

    @property
    def total_bytes(self) -> int:
        """Every tensor the pool holds: storage, read scratch, mask and lengths."""
        tensors = (self._k, self._v, self._out_k, self._out_v, self._mask, self._arange, self._lengths)
        return sum(t.numel() * t.element_size() for t in tensors)

    def __repr__(self) -> str:
        return (f"KVPool(layers={self.num_layers}, sessions={len(self._sessions)}/{self.max_sessions}, "
                f"capacity={self.capacity_blocks} blocks x {self.capacity_tokens // self.capacity_blocks} tokens, "
                f"{self.total_bytes / 2**20:.1f} MiB)")
