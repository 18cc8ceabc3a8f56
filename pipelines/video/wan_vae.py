"""Streaming causal encode/decode with diffusers' `AutoencoderKLWan` (Wan2.1's video VAE).

Wan's VAE is causal in time: its 3-D convolutions look only backwards, keeping the last frames of
every layer's input in a feature cache. diffusers runs that cache inside one ``encode``/``decode``
call (the first chunk is 1 frame, then chunks of 4); here each session keeps its own caches across
calls, so a live stream is encoded chunk by chunk with exactly the numbers an offline encode of the
whole video would give:

* encode: the first latent frame comes from 1 video frame, every later one from the next 4;
* decode: the first latent frame gives 1 video frame, every later one 4.

The caches hold a couple of frames per layer, so memory per session is constant. Latents are
normalised with the VAE's ``latents_mean``/``latents_std`` like diffusers' Wan pipelines.
Only Wan2.1-style VAEs (no ``patch_size``) are supported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .vae import StreamingVAE


@dataclasses.dataclass
class WanVAEState:
    """One session's causal-convolution caches."""

    enc: list[Any]
    dec: list[Any]
    encoded: int = 0  # latent frames encoded so far
    decoded: int = 0  # latent frames decoded so far


def _count_causal_convs(module: torch.nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


class WanStreamingVAE(StreamingVAE):
    """`AutoencoderKLWan` with per-session streaming state (see the module docstring)."""

    spatial_factor = 8
    temporal_factor = 4

    def __init__(self, vae: Any) -> None:
        cfg = vae.config
        if getattr(cfg, "patch_size", None) is not None:
            raise ValueError("Wan VAEs with patch_size (Wan2.2) are not supported; use a Wan2.1 VAE")
        self.vae = vae.eval()
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = int(getattr(vae, "spatial_compression_ratio", 8))
        self._n_enc = _count_causal_convs(vae.encoder)
        self._n_dec = _count_causal_convs(vae.decoder)
        p = next(vae.parameters())
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=p.device).view(1, -1, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32, device=p.device).view(1, -1, 1, 1, 1)

    def new_state(self) -> WanVAEState:
        return WanVAEState(enc=[None] * self._n_enc, dec=[None] * self._n_dec)

    def frames_needed(self, state: WanVAEState) -> int:
        return 1 if state.encoded == 0 else 4

    @torch.inference_mode()
    def encode(self, frames: list[torch.Tensor], states: list[WanVAEState]) -> torch.Tensor:
        p = next(self.vae.parameters())
        out = []
        for x, st in zip(frames, states, strict=True):  # caches are per session: one at a time
            want = self.frames_needed(st)
            if x.shape[1] != want:
                raise ValueError(f"Wan VAE chunk {st.encoded} needs {want} frame(s), got {x.shape[1]}")
            h = self.vae.encoder(x[None].to(p.device, p.dtype), feat_cache=st.enc, feat_idx=[0])
            mu = self.vae.quant_conv(h)[:, : self.latent_channels]  # [1, C, 1, h, w] (the posterior mean)
            out.append((mu.float() - self._mean) * self._inv_std)
            st.encoded += 1
        return torch.cat(out).to(p.dtype)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, states: list[WanVAEState]) -> list[torch.Tensor]:
        p = next(self.vae.parameters())
        out = []
        for z, st in zip(latents.unbind(0), states, strict=True):
            z = z[None].float() / self._inv_std + self._mean
            x = self.vae.post_quant_conv(z.to(p.dtype))
            y = self.vae.decoder(x, feat_cache=st.dec, feat_idx=[0], first_chunk=st.decoded == 0)
            st.decoded += 1
            out.append(y[0].clamp(-1, 1))  # [3, F, H, W]
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.vae.parameters())
