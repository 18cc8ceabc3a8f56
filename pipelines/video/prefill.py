"""StreamDiffusionV2's first chunk: two latent frames in one forward, attending to each other.

StreamDiffusionV2 starts a stream with 1 + 4 video frames, which Wan's VAE encodes to two latent
frames, and denoises both in one forward (all steps, before any other block): every token of the
chunk attends to every other token of it, both ways, at RoPE frame positions 0 and 1. Their keys and
values become blocks 0 and 1 of the rolling cache (of every per-step cache, as StreamDiffusionV2
copies its cache to each denoising step's row after this first chunk).

Shapes: q, k, v ``[1, H, F*S, D]`` for ``F`` frames of ``S`` tokens.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from streamserve.kv_rolling import KVPool

from .attention import sdpa
from .model import CrossKV
from .rope import WanRope, apply_rope


class PrefillAttention:
    """Attention strategy for :meth:`CausalWanDiT.forward_chunk`: one session's first ``frames``
    blocks, full attention among them, written as blocks ``0..frames-1`` to each cache in ``caches``.

    Args:
        pool: the rolling caches; ``caches``: the cache ids (in ``pool``) of the session, all fresh.
        cross: per layer, the session's prompt keys/values (``[1, H, Lc, D]`` each).
        rope: the model's RoPE tables; ``grid``: tokens ``(h, w)`` of one latent frame.
        frames: latent frames in the chunk.
    """

    def __init__(
        self, pool: KVPool, caches: Sequence[Hashable], cross: CrossKV, rope: WanRope, grid: tuple[int, int],
        frames: int,
    ) -> None:
        if not caches:
            raise ValueError("a prefill needs at least one cache")
        for cid in caches:
            if pool.view(cid).next_index not in (0, frames):  # fresh, or a later step of the same chunk
                raise ValueError(f"cache {cid!r} already holds blocks {pool.view(cid).layer(0).block_indices()}; "
                                 f"a prefill starts a stream")
        self.pool, self.caches, self.cross, self.frames = pool, list(caches), cross, frames
        h, w = grid
        self.tokens = h * w
        device = pool.view(self.caches[0]).layer(0).storage.k.device
        self.table = rope.table(torch.arange(frames, device=device), h, w)  # [1, F*S, D/2]
        self.reposition = pool.position_policy == "reposition"

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q, k, v: [1, H, F*S, D] before RoPE
        q_rot, k_rot = apply_rope(q, self.table), apply_rope(k, self.table)
        out = sdpa(q_rot, k_rot, v)  # no mask: both ways within the chunk
        stored = k if self.reposition else k_rot
        s = self.tokens
        for cid in self.caches:
            for b in range(self.frames):
                self.pool.write(layer, [cid], [b], stored[:, :, b * s : (b + 1) * s], v[:, :, b * s : (b + 1) * s])
        return out

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross[layer]
