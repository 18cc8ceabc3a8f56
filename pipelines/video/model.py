"""The causal streaming DiT: a diffusers `WanTransformer3DModel` run block-causally.

Wan2.1's architecture -- a 1x2x2 patch embedding, 3-D RoPE, per-block self-attention, cross-attention
to prompt embeddings and timestep modulation -- is used as diffusers builds it: `CausalWanDiT` wraps a
loaded `WanTransformer3DModel`, installs attention processors (:mod:`.attention`) and calls the
model's own submodules (``patch_embedding``, ``condition_embedder``, ``blocks[i]``, ``norm_out``,
``proj_out``). No weight is copied: a real checkpoint loaded with ``from_pretrained`` and the demo
model are the same class, and the wrapped model's stock ``forward`` keeps working.

Two ways to run it:

* :meth:`CausalWanDiT.forward_clip` -- a clip ``[B, C, F, H, W]`` in one forward with a block-causal
  mask (training; a per-frame timestep lets every frame sit at its own noise level);
* :meth:`CausalWanDiT.forward_stream` -- one latent frame per item ``[N, C, 1, H, W]`` against the
  rolling KV cache through :class:`~.stream_attention.StreamAttention`.

The output is Wan's flow-matching velocity ``v = noise - x0`` (so ``x0 = x_t - sigma * v``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from .attention import (
    AttentionRouter,
    AttentionStrategy,
    ClipAttention,
    CrossAttnProcessor,
    SelfAttnProcessor,
    block_causal_mask,
)
from .attention import cross_kv as _cross_kv
from .block import block_forward, fast_block_ok
from .rope import WanRope

CrossKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the prompt's cross-attention keys and values, each ``[B, H, Lc, D]``."""

NUM_TRAIN_TIMESTEPS = 1000.0
"""Wan's timestep scale: the model sees ``t = sigma * 1000``."""


class CausalWanDiT(nn.Module):
    """Block-causal wrapper around a diffusers `WanTransformer3DModel` (weights shared, not copied).

    Args:
        transformer: a text-to-video Wan2.1 transformer (``patch_size[0] == 1``, no image branch).
    """

    def __init__(self, transformer: WanTransformer3DModel) -> None:
        super().__init__()
        tr: Any = transformer  # diffusers' model classes are opaque to mypy
        cfg = tr.config
        pt, ph, pw = (int(p) for p in cfg.patch_size)
        if pt != 1:
            raise ValueError(f"the causal DiT needs a temporal patch of 1 (one latent frame per block), got {pt}")
        if cfg.image_dim is not None or cfg.added_kv_proj_dim is not None:
            raise ValueError("image-to-video Wan checkpoints (image_dim/added_kv_proj_dim) are not supported")
        self.transformer: Any = tr
        self.patch = (ph, pw)
        self.heads = int(cfg.num_attention_heads)
        self.head_dim = int(cfg.attention_head_dim)
        self.dim = self.heads * self.head_dim
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels or cfg.in_channels)
        self.text_dim = int(cfg.text_dim)
        self.num_layers = len(tr.blocks)
        self.router = AttentionRouter()
        for i, block in enumerate(tr.blocks):
            block.attn1.set_processor(SelfAttnProcessor(self.router, i))
            block.attn2.set_processor(CrossAttnProcessor(self.router, i))
        self.rope = WanRope(tr.rope)
        self._fast_ok = [fast_block_ok(block) for block in tr.blocks]  # see :mod:`.block`

    # ------------------------------------------------------------------ geometry

    def token_grid(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        """Tokens per side of one latent frame; ValueError when the patch does not divide it."""
        ph, pw = self.patch
        if latent_h % ph or latent_w % pw:
            raise ValueError(f"latent size {latent_h}x{latent_w} is not divisible by the patch {ph}x{pw}")
        h, w = latent_h // ph, latent_w // pw
        self.rope.check_grid(h, w)
        return h, w

    def to(self, *args: Any, **kwargs: Any) -> CausalWanDiT:
        """``nn.Module.to``, also moving the RoPE tables (plain tensors, not buffers)."""
        out = super().to(*args, **kwargs)
        self.rope.to(self.device)
        return out

    # ------------------------------------------------------------------ conditioning

    def embed_prompt(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Text-encoder (or style) embeddings ``[B, Lc, text_dim]`` -> prompt states ``[B, Lc, dim]``."""
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != self.text_dim:
            raise ValueError(f"prompt embeddings must be [B, L, {self.text_dim}], got {tuple(prompt_embeds.shape)}")
        proj = self.transformer.condition_embedder.text_embedder
        return proj(prompt_embeds.to(self.dtype))  # type: ignore[no-any-return]

    def cross_kv(self, prompt_states: torch.Tensor) -> CrossKV:
        """Cross-attention keys/values of ``prompt_states [B, Lc, dim]`` for every layer."""
        return [_cross_kv(block.attn2, prompt_states) for block in self.transformer.blocks]

    def _time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep ``[M]`` (0..1000) -> temb ``[M, dim]`` and block modulation ``[M, 6, dim]``."""
        ce = self.transformer.condition_embedder
        t = ce.timesteps_proj(timestep.float())
        t = t.to(next(ce.time_embedder.parameters()).dtype)
        temb = ce.time_embedder(t).to(self.dtype)  # diffusers keeps time_embedder in fp32; the rest is not
        proj = ce.time_proj(ce.act_fn(temb)).unflatten(1, (6, -1))
        return temb, proj.to(self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.patch_embedding.weight.dtype  # type: ignore[no-any-return]

    @property
    def device(self) -> torch.device:
        return self.transformer.patch_embedding.weight.device  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ core

    def _run(
        self,
        x: torch.Tensor,
        temb: torch.Tensor,
        proj: torch.Tensor,
        prompt_states: torch.Tensor,
        strategy: AttentionStrategy,
    ) -> torch.Tensor:
        """Shared body. x: [B, C, F, H, W]; temb/proj per sample ([B, dim]/[B, 6, dim]) or per token
        ([B, L, dim]/[B, L, 6, dim]). Returns velocity [B, C_out, F, H, W]."""
        hidden = self.embed(x)
        hidden = self.run_blocks(hidden, proj, prompt_states, strategy, range(self.num_layers))
        return self.head(hidden, temb, tuple(x.shape))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding: x [B, C, F, H, W] -> tokens [B, L, dim]."""
        return self.transformer.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2).contiguous()  # type: ignore[no-any-return]

    def run_blocks(
        self, hidden: torch.Tensor, proj: torch.Tensor, prompt_states: torch.Tensor, strategy: AttentionStrategy,
        layers: range,
    ) -> torch.Tensor:
        """Blocks ``layers`` (a contiguous range: one pipeline stage, or all) over hidden [B, L, dim].

        Without gradients (serving) each block runs :func:`~.block.block_forward`, the same function
        in fewer passes; with gradients (training) diffusers' own forward."""
        blocks = self.transformer.blocks
        fast = not torch.is_grad_enabled() and proj.dim() == 3  # inference, per-sample modulation
        self.router.strategy = strategy
        try:
            for i in layers:
                if fast and self._fast_ok[i]:
                    hidden = block_forward(blocks[i], hidden, prompt_states, proj)
                else:
                    hidden = blocks[i](hidden, prompt_states, proj, None)
        finally:
            self.router.strategy = None
        return hidden

    def head(self, hidden: torch.Tensor, temb: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Output norm + projection + unpatchify: hidden [B, L, dim] -> velocity [B, C_out, F, H, W] of
        an input of ``shape`` ``(B, C, F, H, W)``."""
        tr = self.transformer
        b, _, f, hl, wl = shape
        ph, pw = self.patch
        h, w = hl // ph, wl // pw
        table = tr.scale_shift_table  # [1, 2, dim]
        if temb.dim() == 3:  # per token
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (tr.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        out = tr.proj_out(hidden)  # [B, L, C_out * ph * pw]
        out = out.reshape(b, f, h, w, 1, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # [B, C_out, F, H, W]

    def time_embedding(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep ``[M]`` (0..1000) -> temb ``[M, dim]`` and block modulation ``[M, 6, dim]``."""
        return self._time(timestep)

    def forward_clip(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        prompt_states: torch.Tensor,
        *,
        frame_positions: torch.Tensor | None = None,
        num_sinks: int | None = None,
        window: int | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        """A whole clip with a block-causal mask.

        x: [B, C, F, H, W] noisy latents; timestep: [B] or [B, F] (0..1000, per frame); prompt_states:
        [B, Lc, dim]; frame_positions: [F] or [B, F] RoPE frame positions (default ``0..F-1``);
        ``num_sinks``/``window`` restrict each frame's context as the rolling cache does; ``causal=False``
        gives full attention (Wan's bidirectional model). Returns velocity [B, C_out, F, H, W].
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, F, H, W], got {tuple(x.shape)}")
        b, _, f, hl, wl = x.shape
        h, w = self.token_grid(hl, wl)
        s = h * w
        if frame_positions is None:
            frame_positions = torch.arange(f, device=x.device)
        table = self.rope.table(frame_positions, h, w)
        mask = block_causal_mask(f, s, num_sinks, window, device=x.device) if causal else None
        if timestep.dim() == 1:
            temb, proj = self._time(timestep)  # [B, dim], [B, 6, dim]
        else:
            temb_f, proj_f = self._time(timestep.reshape(-1))  # [B*F, ...]
            temb = temb_f.reshape(b, f, 1, -1).expand(b, f, s, -1).reshape(b, f * s, -1)
            proj = proj_f.reshape(b, f, 1, 6, -1).expand(b, f, s, 6, -1).reshape(b, f * s, 6, -1)
        return self._run(x, temb, proj, prompt_states, ClipAttention(table, mask))

    def forward_stream(self, x: torch.Tensor, timestep: torch.Tensor, strategy: AttentionStrategy) -> torch.Tensor:
        """One latent frame per item against the rolling cache.

        x: [N, C, 1, H, W]; timestep: [N] (0..1000); ``strategy`` (a ``StreamAttention``) knows each
        item's session, block, position and prompt keys/values. Returns velocity [N, C_out, 1, H, W].
        """
        if x.dim() != 5 or x.shape[2] != 1:
            raise ValueError(f"stream input must be [N, C, 1, H, W], got {tuple(x.shape)}")
        temb, proj = self._time(timestep)
        # The prompt states are not read: the strategy serves cached cross-attention keys/values.
        empty_context = torch.empty(x.shape[0], 0, self.dim, dtype=self.dtype, device=x.device)
        return self._run(x, temb, proj, empty_context, strategy)

    def forward_chunk(self, x: torch.Tensor, timestep: torch.Tensor, strategy: AttentionStrategy) -> torch.Tensor:
        """Several latent frames per item in one forward, the strategy deciding what they attend to
        (StreamDiffusionV2's first chunk: :class:`~.prefill.PrefillAttention`).

        x: [N, C, F, H, W]; timestep: [N] (0..1000). Returns velocity [N, C_out, F, H, W].
        """
        if x.dim() != 5:
            raise ValueError(f"chunk input must be [N, C, F, H, W], got {tuple(x.shape)}")
        temb, proj = self._time(timestep)
        empty_context = torch.empty(x.shape[0], 0, self.dim, dtype=self.dtype, device=x.device)
        return self._run(x, temb, proj, empty_context, strategy)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_wan_config(
    dim: int = 128, heads: int = 4, layers: int = 4, ffn: int = 384, channels: int = 16, text_dim: int = 64,
    freq_dim: int = 64, rope_max_seq_len: int = 64,
) -> dict[str, object]:
    """A `WanTransformer3DModel` config for small models (the demo model, tests)."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    head_dim = dim // heads
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim {head_dim} must be even and >= 6 for Wan's 3-D RoPE")
    return dict(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=rope_max_seq_len,
    )


def latent_tokens(height: int, width: int, vae_factor: int, patch: Sequence[int] = (2, 2)) -> int:
    """Tokens per latent frame of an ``height x width`` video frame."""
    return math.prod((height // vae_factor // patch[0], width // vae_factor // patch[1]))
