"""Rolling sink + window KV caches that stream forever in constant memory.

Public API (see ``docs/kernels.md`` for the full guide):

* :class:`RollingKVCache` -- one layer's cache: ``write(block_index, k, v)`` (overwrite or append),
  ``keys_values()`` -> ``KV(k, v)`` each ``[B, H, L, D]`` (sinks, then window oldest to newest),
  ``position_for(block_index)`` (bounded RoPE block position), ``rotated_keys(rope)`` for the
  ``"reposition"`` policy, ``valid_mask()`` for padded reads.
* :class:`KVPool` -- preallocated caches for many sessions x layers; ``view(session_id)`` ->
  :class:`SessionKV`; ``gather(layer, session_ids)`` -> :class:`BatchedKV` (padded + mask);
  ``reset``/``release``; ``bytes_per_session``/``total_bytes``.
* :mod:`.positions` -- position policies (``"refresh"``, ``"reposition"``) and a 1-D RoPE helper.
"""

from __future__ import annotations

from .cache import KV, LAYOUTS, Layout, RollingKVCache
from .pool import BatchedKV, KVPool, SessionKV
from .positions import (
    POSITION_POLICIES,
    PositionPolicy,
    RefreshClock,
    RopeFn,
    apply_rope_1d,
    block_rope_1d,
)

__all__ = [
    "KV",
    "LAYOUTS",
    "POSITION_POLICIES",
    "BatchedKV",
    "KVPool",
    "Layout",
    "PositionPolicy",
    "RefreshClock",
    "RollingKVCache",
    "RopeFn",
    "SessionKV",
    "apply_rope_1d",
    "block_rope_1d",
]
