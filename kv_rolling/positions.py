"""RoPE position policies for a rolling KV cache.

A stream of unbounded length must never index past the end of a RoPE table. Two policies keep the
positions bounded; both count positions in *blocks* (one block = one latent frame or one audio/text
chunk), which is what a video DiT's temporal RoPE axis needs. A 1-D token RoPE turns a block position
``p`` into token positions ``p * block_tokens + t`` (see :func:`block_rope_1d`).

``"reposition"`` (StreamingLLM)
    Keys are stored *before* RoPE. Whenever the cache is read, each cached block is rotated at its
    position inside the cache: sinks at ``0 .. S-1``, the window right after them, the newest block
    last. The largest position ever used is ``num_sinks + window - 1``.

``"refresh"`` (StreamDiffusionV2)
    Keys are stored *after* RoPE, rotated at the block's absolute position in the stream. The next
    position grows by one per new block; when it reaches ``refresh_every`` (default 50) it jumps back to
    ``num_sinks + window - 1`` (the position the newest block has when a cache has just filled), so
    every position stays ``< refresh_every``. Sinks keep their positions; window blocks written before
    the jump keep theirs until they roll out of the window (at most ``window`` blocks later).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

PositionPolicy = Literal["refresh", "reposition"]
POSITION_POLICIES: tuple[str, ...] = ("refresh", "reposition")

RopeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``rope(x, block_positions) -> x_rotated``.

``x: [B, H, n_blocks * block_tokens, D]`` keys in block order; ``block_positions: [n_blocks]`` int64,
the RoPE position of each block. Must return a tensor of the same shape (a video DiT's 3-D RoPE uses
the block position as the frame axis and the token's rank within its block for the spatial axes).
"""


class RefreshClock:
    """Assigns bounded absolute block positions for the ``"refresh"`` policy.

    Positions run ``0, 1, 2, ...``; when the next one would reach ``refresh_every`` it restarts at
    ``restart_at``. Every position handed out is in ``[0, refresh_every)``.
    """

    def __init__(self, refresh_every: int, restart_at: int) -> None:
        if restart_at >= refresh_every:
            raise ValueError(
                f"refresh_every={refresh_every} must be greater than the cache capacity - 1 "
                f"({restart_at}); otherwise the position would refresh before the cache has filled"
            )
        self.refresh_every = refresh_every
        self.restart_at = restart_at
        self.next_position = 0
        self.refreshes = 0

    def peek(self) -> int:
        """The position the next new block will get."""
        return self.next_position

    def advance(self) -> int:
        """Hand out the next position and move on."""
        pos = self.next_position
        self.next_position += 1
        if self.next_position >= self.refresh_every:
            self.next_position = self.restart_at
            self.refreshes += 1
        return pos

    def reset(self) -> None:
        self.next_position = 0
        self.refreshes = 0


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables for 1-D RoPE (rotate-half convention).

    positions: [L] int64 token positions. Returns ``cos, sin`` of shape [L, head_dim].
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [L, D/2]
    ang = torch.cat([ang, ang], dim=-1)  # [L, D]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope_1d(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotate ``x: [..., L, D]`` at token ``positions: [L]`` (rotate-half RoPE, computed in fp32)."""
    d = x.shape[-1]
    cos, sin = rope_cos_sin(positions, d, theta)  # [L, D]
    xf = x.float()
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def block_rope_1d(block_tokens: int, theta: float = 10000.0) -> RopeFn:
    """A :data:`RopeFn` for 1-D token RoPE: block position ``p`` covers tokens ``p*T .. p*T+T-1``."""

    def rope(x: torch.Tensor, block_positions: torch.Tensor) -> torch.Tensor:
        # x: [B, H, n*T, D]; block_positions: [n]
        t = torch.arange(block_tokens, device=block_positions.device)
        tok = (block_positions[:, None] * block_tokens + t[None, :]).reshape(-1)  # [n*T]
        if tok.numel() != x.shape[-2]:
            raise ValueError(f"rope: {x.shape[-2]} tokens but {block_positions.numel()} blocks of {block_tokens}")
        return apply_rope_1d(x, tok, theta)

    return rope
