"""Per-layer rolling KV cache: a few sink blocks that stay, plus a sliding window of recent blocks.

Memory is preallocated once: ``num_sinks + window`` slots of ``block_tokens`` tokens each. A *block*
is the unit of writing and eviction (all tokens of one latent frame, or one audio/text chunk). Blocks
carry a stream index ``0, 1, 2, ...`` chosen by the caller:

* ``write(i, k, v)`` with ``i`` already held overwrites it in place (a denoising step rewrites the
  frame it is working on; nothing is appended);
* ``write(i, k, v)`` with ``i == next_index`` appends: the first ``num_sinks`` blocks of a stream fill
  the sink slots, later ones the window; when the window is full its oldest block is evicted;
* any other index raises ``ValueError`` (an evicted block, or a gap in the stream).

Two layouts with identical observable behaviour (tests check they agree):

``"ring"`` (default)
    The window is a ring buffer: a new block overwrites the oldest slot, nothing moves. Reading in
    stream order copies the window into a preallocated output buffer; reading in slot order
    (``ordered=False``) is a zero-copy view.
``"shift"``
    The window is kept in stream order by moving every block one slot left on eviction. Reads are
    zero-copy views; each eviction moves ``window - 1`` blocks.

Attention over a cache whose keys already carry their RoPE rotation does not depend on the order of
the keys, so the ``"refresh"`` policy may read with ``ordered=False`` and skip the copy.

Shapes: keys and values are ``[B, H, L, D]``; one written block is ``[B, H, block_tokens, D]``.
"""

from __future__ import annotations

from collections import deque
from typing import Literal, NamedTuple

import torch

from .positions import POSITION_POLICIES, PositionPolicy, RefreshClock, RopeFn

Layout = Literal["ring", "shift"]
LAYOUTS: tuple[str, ...] = ("ring", "shift")


class KV(NamedTuple):
    """Keys and values read from a cache: each ``[B, H, L, D]``."""

    k: torch.Tensor
    v: torch.Tensor


class RollingKVCache:
    """Sink + sliding-window KV cache for one attention layer, in constant memory.

    Args:
        num_sinks: blocks kept forever at the start of the cache (>= 1).
        window: most recent blocks kept after the sinks (>= 1). Capacity = ``num_sinks + window``.
        block_tokens: tokens per block (every written block has exactly this many).
        heads, head_dim, batch: the ``H``, ``D`` and ``B`` of ``[B, H, L, D]``.
        position_policy: ``"refresh"`` (keys stored after RoPE, bounded absolute positions) or
            ``"reposition"`` (keys stored before RoPE, rotated at cache-relative positions on read);
            see :mod:`streamserve.kv_rolling.positions`.
        refresh_every: for ``"refresh"``: positions restart before reaching this (StreamDiffusionV2: 50).
        restart_at: for ``"refresh"``: the position a refresh restarts at (default ``num_sinks + window
            - 1``; StreamDiffusionV2, whose cache also counts the block being generated: ``num_sinks +
            window``).
        layout: ``"ring"`` or ``"shift"`` (see the module docstring).
        sink_refresh_threshold: adaptive sink refresh, off when ``None``. When the stream moves past a
            window block (its last write is final), its mean key/value is compared with each sink's
            (cosine, averaged over K and V); if the least similar sink scores below the threshold,
            that sink slot is replaced by a copy of the block.
    """

    def __init__(
        self,
        num_sinks: int,
        window: int,
        block_tokens: int,
        heads: int,
        head_dim: int,
        batch: int = 1,
        *,
        dtype: torch.dtype = torch.float16,
        device: torch.device | str = "cpu",
        position_policy: PositionPolicy = "refresh",
        refresh_every: int = 50,
        layout: Layout = "ring",
        sink_refresh_threshold: float | None = None,
        restart_at: int | None = None,
    ) -> None:
        _check_config(num_sinks, window, block_tokens, heads, head_dim, batch, position_policy, layout,
                      sink_refresh_threshold)
        cap = (num_sinks + window) * block_tokens
        k = torch.zeros(batch, heads, cap, head_dim, dtype=dtype, device=device)
        v = torch.zeros_like(k)
        self._init(k, v, num_sinks, window, block_tokens, position_policy, refresh_every, layout,
                   sink_refresh_threshold, own_out=layout == "ring", restart_at=restart_at)

    @classmethod
    def over_storage(
        cls,
        k_store: torch.Tensor,
        v_store: torch.Tensor,
        *,
        num_sinks: int,
        window: int,
        block_tokens: int,
        position_policy: PositionPolicy = "refresh",
        refresh_every: int = 50,
        layout: Layout = "ring",
        sink_refresh_threshold: float | None = None,
        out: KV | None = None,
        restart_at: int | None = None,
    ) -> RollingKVCache:
        """A cache over caller-owned storage ``[B, H, (num_sinks + window) * block_tokens, D]``
        (used by :class:`~streamserve.kv_rolling.pool.KVPool`). ``out`` is the buffer, same shape,
        that ordered ring reads copy into (it may be shared by several caches whose reads are used
        one at a time); without it the first such read allocates one."""
        b, h, cap, d = k_store.shape
        _check_config(num_sinks, window, block_tokens, h, d, b, position_policy, layout, sink_refresh_threshold)
        if v_store.shape != k_store.shape or cap != (num_sinks + window) * block_tokens:
            raise ValueError(
                f"storage shapes {tuple(k_store.shape)}/{tuple(v_store.shape)} do not match "
                f"(num_sinks + window) * block_tokens = {(num_sinks + window) * block_tokens} tokens"
            )
        self = cls.__new__(cls)
        if out is not None and (out.k.shape != k_store.shape or out.v.shape != k_store.shape):
            raise ValueError(f"out buffers must have the storage shape {tuple(k_store.shape)}")
        self._init(k_store, v_store, num_sinks, window, block_tokens, position_policy, refresh_every, layout,
                   sink_refresh_threshold, own_out=False, restart_at=restart_at)
        self._out = out
        return self

    def _init(
        self, k: torch.Tensor, v: torch.Tensor, num_sinks: int, window: int, block_tokens: int,
        position_policy: PositionPolicy, refresh_every: int, layout: Layout,
        sink_refresh_threshold: float | None, *, own_out: bool, restart_at: int | None = None,
    ) -> None:
        self.num_sinks, self.window, self.block_tokens = num_sinks, window, block_tokens
        self.batch, self.heads, _, self.head_dim = k.shape
        self.position_policy: PositionPolicy = position_policy
        self.layout: Layout = layout
        self.sink_refresh_threshold = sink_refresh_threshold
        self._k, self._v = k, v  # [B, H, slots*T, D]; slot j = tokens j*T .. (j+1)*T-1
        self._own_out = own_out
        self._out: KV | None = KV(torch.empty_like(k), torch.empty_like(v)) if own_out else None
        restart = num_sinks + window - 1 if restart_at is None else restart_at
        if restart < 0:
            raise ValueError(f"restart_at={restart_at} must be >= 0")
        if position_policy == "reposition":  # the clock is unused; keep its range check out of the way
            refresh_every = max(refresh_every, restart + 1)
        self._clock = RefreshClock(refresh_every, restart)
        self.sink_replacements = 0
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every block (a stream restart). Storage is kept; nothing is reallocated."""
        self._sink_ids: list[int] = []  # stream index held by sink slot j
        self._sink_pos: list[int] = []  # its RoPE position ("refresh" policy)
        self._win_pos: deque[int] = deque()  # positions of window blocks, oldest first
        self._head = 0  # ring: window slot (0..W-1) of the oldest window block
        self._next_index = 0
        self._clock.reset()

    @property
    def capacity_blocks(self) -> int:
        return self.num_sinks + self.window

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_tokens

    @property
    def fill_blocks(self) -> int:
        """Blocks currently held (sinks + window)."""
        return len(self._sink_ids) + len(self._win_pos)

    @property
    def length(self) -> int:
        """Valid tokens: ``fill_blocks * block_tokens``."""
        return self.fill_blocks * self.block_tokens

    @property
    def is_full(self) -> bool:
        return self.fill_blocks == self.capacity_blocks

    @property
    def next_index(self) -> int:
        """The stream index the next appended block must have."""
        return self._next_index

    @property
    def next_position(self) -> int:
        """RoPE block position of the next new block: ``position_for(next_index)``."""
        return self.position_for(self._next_index)

    @property
    def nbytes(self) -> int:
        """Bytes of K/V storage (plus the ordered-read buffer when this cache owns one)."""
        n = 2 * self._k.numel() * self._k.element_size()
        return 2 * n if self._own_out else n

    @property
    def storage(self) -> KV:
        """The raw slot storage ``[B, H, capacity_tokens, D]`` (for memory checks; do not write)."""
        return KV(self._k, self._v)

    def block_indices(self, ordered: bool = True) -> list[int]:
        """Stream indices of the held blocks: sinks then window, oldest first (or in slot order)."""
        n_win = len(self._win_pos)
        first = self._next_index - n_win
        win = list(range(first, self._next_index))
        if not ordered and self.layout == "ring" and len(win) == self.window:
            win = [win[(s - self._head) % self.window] for s in range(self.window)]
        return list(self._sink_ids) + win

    def block_positions(self, ordered: bool = True) -> torch.Tensor:
        """RoPE positions ``[fill_blocks]`` (int64, on the cache device) of the held blocks, in the
        order :meth:`keys_values` returns them with the same ``ordered`` flag."""
        n_s, n_w = len(self._sink_ids), len(self._win_pos)
        if self.position_policy == "reposition":
            win = list(range(n_s, n_s + n_w))
        else:
            win = list(self._win_pos)
        if not ordered and self.layout == "ring" and n_w == self.window:
            win = [win[(s - self._head) % self.window] for s in range(self.window)]
        sinks = list(range(n_s)) if self.position_policy == "reposition" else list(self._sink_pos)
        return torch.tensor(sinks + win, dtype=torch.long, device=self._k.device)

    def position_for(self, block_index: int) -> int:
        """The RoPE (block) position to rotate block ``block_index``'s queries and keys at.

        Valid for a held block and for ``next_index`` (the block about to be appended). With
        ``"refresh"`` the keys passed to :meth:`write` must already be rotated at this position.
        """
        if block_index == self._next_index:
            if self.position_policy == "refresh":
                return self._clock.peek()
            if len(self._sink_ids) < self.num_sinks:
                return len(self._sink_ids)
            return self.num_sinks + min(len(self._win_pos) + 1, self.window) - 1
        slots = self._slots_of(block_index)
        if not slots:
            raise ValueError(self._not_held_msg(block_index))
        s = slots[-1]  # prefer the window copy (its position is the block's own)
        if s < self.num_sinks:
            return s if self.position_policy == "reposition" else self._sink_pos[s]
        logical = (s - self.num_sinks - self._head) % self.window
        if self.position_policy == "reposition":
            return len(self._sink_ids) + logical
        return self._win_pos[logical]

    # ------------------------------------------------------------------ write

    def write(self, block_index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store block ``block_index``. k, v: [B, H, block_tokens, D] (cast to the cache dtype).

        Overwrites the block if it is held, appends it if ``block_index == next_index`` (evicting the
        oldest window block when the window is full), and raises ``ValueError`` otherwise.
        """
        self._check_block(k, v)
        slots = self._slots_of(block_index)
        if not slots:
            if block_index != self._next_index:
                raise ValueError(self._not_held_msg(block_index))
            slots = [self._append()]
        for s in slots:
            self._copy_into(s, k, v)

    def _append(self) -> int:
        """Make room for block ``next_index``; returns its slot."""
        pos = self._clock.advance() if self.position_policy == "refresh" else 0
        if len(self._sink_ids) < self.num_sinks:
            self._sink_ids.append(self._next_index)
            self._sink_pos.append(pos)
            self._next_index += 1
            return len(self._sink_ids) - 1
        if self.sink_refresh_threshold is not None and self._win_pos:
            self._maybe_refresh_sink()
        if len(self._win_pos) == self.window:  # evict the oldest window block
            self._win_pos.popleft()
            if self.layout == "ring":
                self._head = (self._head + 1) % self.window
            else:
                for i in range(self.window - 1):
                    self._copy_slot(self.num_sinks + i + 1, self.num_sinks + i)
        self._win_pos.append(pos)
        self._next_index += 1
        return self._window_slot(len(self._win_pos) - 1)

    def _maybe_refresh_sink(self) -> None:
        """Adaptive sink refresh: consider the newest window block, now final."""
        cand = self._next_index - 1
        if cand in self._sink_ids:
            return
        src = self._window_slot(len(self._win_pos) - 1)
        mk, mv = self._slot_mean(src)  # [B*H*D]
        sims = []
        for j in range(self.num_sinks):
            sk, sv = self._slot_mean(j)
            ck = torch.nn.functional.cosine_similarity(mk, sk, dim=0)
            cv = torch.nn.functional.cosine_similarity(mv, sv, dim=0)
            sims.append(0.5 * (ck + cv))
        sim = torch.stack(sims)
        j = int(sim.argmin())
        assert self.sink_refresh_threshold is not None
        if float(sim[j]) < self.sink_refresh_threshold:
            self._copy_slot(src, j)
            self._sink_ids[j] = cand
            self._sink_pos[j] = self._win_pos[-1]
            self.sink_replacements += 1

    # ------------------------------------------------------------------ read

    def keys_values(self, *, ordered: bool = True, padded: bool = False, out: KV | None = None) -> KV:
        """Cached keys and values, each ``[B, H, L, D]``.

        ``L = length`` (valid tokens only), or ``capacity_tokens`` when ``padded`` (then
        :meth:`valid_mask` says which are valid; they are always a prefix). ``ordered=True`` gives
        sinks then window blocks oldest to newest; ``ordered=False`` gives slot order (same set of
        blocks, zero-copy). The result may be a view of internal buffers: use it before the next
        write or read of this cache. ``out`` is an optional ``[B, H, capacity_tokens, D]`` pair to
        receive an ordered ring read.
        """
        n = self.capacity_tokens if padded else self.length
        if not ordered or self.layout == "shift" or len(self._win_pos) < self.window or self._head == 0:
            return KV(self._k[:, :, :n], self._v[:, :, :n])
        if out is None:
            if self._out is None:
                self._out = KV(torch.empty_like(self._k), torch.empty_like(self._v))
                self._own_out = True
            out = self._out
        t, s0 = self.block_tokens, self.num_sinks * self.block_tokens
        split = (self.num_sinks + self._head) * t  # first slot of the oldest window block
        tail = self.capacity_tokens - split  # tokens from the oldest block to the end of storage
        for src, dst in ((self._k, out.k), (self._v, out.v)):
            dst[:, :, :s0].copy_(src[:, :, :s0])
            dst[:, :, s0 : s0 + tail].copy_(src[:, :, split:])
            dst[:, :, s0 + tail :].copy_(src[:, :, s0:split])
        return KV(out.k[:, :, :n], out.v[:, :, :n])

    def valid_mask(self) -> torch.Tensor:
        """``[capacity_tokens]`` bool: which positions of a padded read hold valid tokens."""
        m = torch.zeros(self.capacity_tokens, dtype=torch.bool, device=self._k.device)
        m[: self.length] = True
        return m

    def rotated_keys(self, rope: RopeFn, *, ordered: bool = True, padded: bool = False) -> torch.Tensor:
        """``"reposition"`` policy: keys ``[B, H, L, D]`` rotated at their cache-relative block
        positions by ``rope(k, block_positions)`` (sinks at 0.., the window right after)."""
        if self.position_policy != "reposition":
            raise ValueError(
                f"rotated_keys() is for position_policy='reposition'; this cache uses "
                f"{self.position_policy!r}, whose keys are stored already rotated"
            )
        k = self.keys_values(ordered=ordered, padded=padded).k
        pos = self.block_positions(ordered=ordered)
        if padded and pos.numel() < self.capacity_blocks:  # unfilled slots continue the sequence
            extra = torch.arange(pos.numel(), self.capacity_blocks, device=pos.device)
            pos = torch.cat([pos, extra])
        return rope(k, pos)

    # ------------------------------------------------------------------ internals

    def _window_slot(self, logical: int) -> int:
        return self.num_sinks + (self._head + logical) % self.window

    def _slots_of(self, block_index: int) -> list[int]:
        slots = [j for j, b in enumerate(self._sink_ids) if b == block_index]
        first = self._next_index - len(self._win_pos)
        if self._win_pos and first <= block_index < self._next_index:
            slots.append(self._window_slot(block_index - first))
        return slots

    def _not_held_msg(self, block_index: int) -> str:
        if block_index > self._next_index or block_index < 0:
            return (f"block {block_index} is out of order: blocks are appended one by one and the next "
                    f"new block must be {self._next_index}")
        return (f"block {block_index} is no longer held (evicted); the cache holds blocks "
                f"{self.block_indices()} and the next new block is {self._next_index}")

    def _check_block(self, k: torch.Tensor, v: torch.Tensor) -> None:
        want = (self.batch, self.heads, self.block_tokens, self.head_dim)
        if k.dim() == 4 and k.shape[2] > self.capacity_tokens:
            raise ValueError(
                f"block of {k.shape[2]} tokens is larger than the whole cache ({self.capacity_tokens} tokens "
                f"= ({self.num_sinks} sinks + {self.window} window) x {self.block_tokens}); split it into "
                f"blocks of block_tokens={self.block_tokens}"
            )
        for name, x in (("k", k), ("v", v)):
            if tuple(x.shape) != want:
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected [B, H, block_tokens, D] = {want}")
            if x.device != self._k.device:
                raise ValueError(f"{name} is on {x.device}, the cache on {self._k.device}")

    def _copy_into(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        a, b = slot * self.block_tokens, (slot + 1) * self.block_tokens
        self._k[:, :, a:b].copy_(k)
        self._v[:, :, a:b].copy_(v)

    def _copy_slot(self, src: int, dst: int) -> None:
        t = self.block_tokens
        self._k[:, :, dst * t : (dst + 1) * t].copy_(self._k[:, :, src * t : (src + 1) * t])
        self._v[:, :, dst * t : (dst + 1) * t].copy_(self._v[:, :, src * t : (src + 1) * t])

    def _slot_mean(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.block_tokens
        mk = self._k[:, :, slot * t : (slot + 1) * t].float().mean(dim=2).reshape(-1)  # [B*H*D]
        mv = self._v[:, :, slot * t : (slot + 1) * t].float().mean(dim=2).reshape(-1)
        return mk, mv

    def __repr__(self) -> str:
        return (f"RollingKVCache(sinks={self.num_sinks}, window={self.window}, block_tokens={self.block_tokens}, "
                f"fill={self.fill_blocks}/{self.capacity_blocks}, next={self._next_index}, "
                f"policy={self.position_policy!r}, layout={self.layout!r})")


def _check_config(
    num_sinks: int, window: int, block_tokens: int, heads: int, head_dim: int, batch: int,
    position_policy: str, layout: str, sink_refresh_threshold: float | None,
) -> None:
    if num_sinks < 1:
        raise ValueError(
            f"num_sinks={num_sinks}: a rolling cache needs at least one sink block (attention sinks keep "
            f"the stream stable); use a plain window cache if you really want none"
        )
    if window < 1:
        raise ValueError(
            f"window={window}: num_sinks ({num_sinks}) must be smaller than the capacity "
            f"num_sinks + window ({num_sinks + window}); at least one window block is needed"
        )
    for name, val in (("block_tokens", block_tokens), ("heads", heads), ("head_dim", head_dim), ("batch", batch)):
        if val < 1:
            raise ValueError(f"{name}={val} must be >= 1")
    if position_policy not in POSITION_POLICIES:
        raise ValueError(f"position_policy={position_policy!r}; expected one of {POSITION_POLICIES}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
    if sink_refresh_threshold is not None and not -1.0 <= sink_refresh_threshold <= 1.0:
        raise ValueError(f"sink_refresh_threshold={sink_refresh_threshold} must be a cosine in [-1, 1] or None")
