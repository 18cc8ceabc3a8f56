"""Video autoencoders with a streaming interface: frames in, one latent frame out, and back.

The pipeline talks to a :class:`StreamingVAE`: per session it keeps an opaque state (a causal VAE's
convolution caches), asks how many new video frames make the next latent frame, encodes them and
later decodes latent frames into video frames. Two implementations:

* :class:`DemoVAE` wraps :class:`TinyAutoencoder`, the embedded demo model's autoencoder: 8x spatial
  compression to 16 channels, **no temporal compression** (one latent frame per video frame, so a
  block is a single camera frame and adds no buffering latency). It is a PCA-initialised patch
  autoencoder plus a small convolutional refiner that hides the 8x8 seams; stateless.
* ``WanStreamingVAE`` (:mod:`.wan_vae`) wraps diffusers' `AutoencoderKLWan` (8x spatial, 4x temporal,
  causal 3-D convolutions) with per-session caches: the first latent frame comes from 1 video frame,
  every later one from 4.

Pixel tensors are ``[N, 3, F, H, W]`` in ``[-1, 1]``; latents are ``[N, C, 1, h, w]``, normalised to
roughly unit variance per channel (what the DiT is trained on).
"""

from __future__ import annotations

import abc
import json
from collections import deque
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .guided import GuidedDecoder
from .resize import stack


class StreamingVAE(abc.ABC):
    """Streaming encode/decode over many sessions, each with its own causal state."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    @abc.abstractmethod
    def new_state(self) -> Any:
        """Fresh per-session state (``None`` for a stateless autoencoder)."""

    @abc.abstractmethod
    def frames_needed(self, state: Any) -> int:
        """Video frames that make the session's next latent frame."""

    @abc.abstractmethod
    def encode(self, frames: list[torch.Tensor], states: list[Any]) -> torch.Tensor:
        """frames[i]: ``[3, F_i, H, W]`` (``F_i = frames_needed``) -> latents ``[N, C, 1, h, w]``."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor, states: list[Any]) -> list[torch.Tensor]:
        """latents ``[N, C, 1, h, w]`` -> per item ``[3, F_i, H, W]`` in ``[-1, 1]``."""

    def set_prompt(self, state: Any, prompt_states: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """The session's current prompt states ``[1, L, dim]`` (blended), before its blocks are decoded.
        A decoder that depends on the style reads them; the default ignores them."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Parameter memory."""


class TinyAutoencoder(nn.Module):
    """Patch autoencoder: ``factor x factor`` RGB patches <-> ``latent_channels`` per latent pixel.

    The linear encoder/decoder start as the PCA of training patches (:meth:`init_pca`); the refiner
    (a 3x3 convolution over the latent grid, then a per-pixel projection back to a patch) adds what a
    linear basis cannot, including continuity across patch borders. Its last layer starts at zero.
    """

    shift: torch.Tensor  # [C] latent normalisation (buffers)
    scale: torch.Tensor

    def __init__(self, latent_channels: int = 16, factor: int = 8, hidden: int = 96) -> None:
        super().__init__()
        if latent_channels < 1 or factor < 1 or hidden < 1:
            raise ValueError(f"bad TinyAutoencoder config: channels={latent_channels} factor={factor} hidden={hidden}")
        self.config = {"latent_channels": latent_channels, "factor": factor, "hidden": hidden}
        self.latent_channels, self.factor = latent_channels, factor
        self.encoder = nn.Conv2d(3, latent_channels, factor, stride=factor)
        self.decoder = nn.ConvTranspose2d(latent_channels, 3, factor, stride=factor)
        self.refine = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, 3 * factor * factor, 1),
            nn.PixelShuffle(factor),
        )
        last = cast(nn.Conv2d, self.refine[2])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(cast(torch.Tensor, last.bias))
        self.register_buffer("shift", torch.zeros(latent_channels))
        self.register_buffer("scale", torch.ones(latent_channels))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] in [-1, 1] -> normalised latents [B, C, H/f, W/f]."""
        z = self.encoder(x)
        return (z - self.shift[:, None, None]) / self.scale[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, h, w] -> [B, 3, h*f, w*f] (not clamped)."""
        z = z * self.scale[:, None, None] + self.shift[:, None, None]
        return self.decoder(z) + self.refine(z)

    @torch.no_grad()
    def init_pca(self, images: torch.Tensor) -> None:
        """Set the linear encoder/decoder to the PCA of ``images [B, 3, H, W]`` (in [-1, 1]) patches
        and the latent normalisation to unit variance per channel."""
        f, c = self.factor, self.latent_channels
        patches = F.unfold(images.float(), f, stride=f).transpose(1, 2).reshape(-1, 3 * f * f)  # [P, 3ff]
        mean = patches.mean(0)
        _, s, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        basis = vh[:c]  # [C, 3ff], orthonormal rows
        std = s[:c] / (patches.shape[0] - 1) ** 0.5
        w = basis.reshape(c, 3, f, f)
        self.encoder.weight.copy_(w)
        self.decoder.weight.copy_(w)
        # A transposed convolution has one bias per colour channel, not per patch pixel: use the mean
        # colour as its bias and let the encoder absorb the rest, z = basis @ (x - bias_patch).
        dec_bias = cast(torch.Tensor, self.decoder.bias)
        dec_bias.copy_(mean.reshape(3, f, f).mean((1, 2)))
        bias_patch = dec_bias[:, None, None].expand(3, f, f).reshape(-1)
        cast(torch.Tensor, self.encoder.bias).copy_(-(basis @ bias_patch))
        self.shift.copy_(basis @ (mean - bias_patch))  # normalised latents are zero-mean ...
        self.scale.copy_(std.clamp_min(1e-4))  # ... and unit-variance per channel

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": "TinyAutoencoder", **self.config}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> TinyAutoencoder:
        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise ValueError(f"{folder} is not a TinyAutoencoder folder (config.json + model.safetensors)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.pop("_class_name", None) != "TinyAutoencoder":
            raise ValueError(f"{cfg_path} does not describe a TinyAutoencoder")
        model = cls(**cfg)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: missing keys {missing}, unexpected keys {unexpected}")
        return model


class GuideState(deque[torch.Tensor]):
    """A guided session's decoder state: the encoded camera frames not yet decoded (a queue) and the
    style vector (the prompt states averaged over tokens) set by :meth:`DemoVAE.set_prompt`."""

    style: torch.Tensor | None = None


class DemoVAE(StreamingVAE):
    """:class:`TinyAutoencoder` behind the streaming interface: one video frame per latent frame.

    With a ``guide`` (:class:`~.guided.GuidedDecoder`) the decoder also reads the camera frame each
    latent frame came from: the per-session state is the queue of encoded frames not yet decoded
    (blocks are decoded in the order they were encoded, possibly a few steps later)."""

    temporal_factor = 1

    def __init__(self, model: TinyAutoencoder, guide: GuidedDecoder | None = None) -> None:
        self.model = model.eval()
        self.guide = guide.eval() if guide is not None else None
        self.latent_channels = model.latent_channels
        self.spatial_factor = model.factor

    def new_state(self) -> GuideState | None:
        return GuideState() if self.guide is not None else None

    def set_prompt(self, state: Any, prompt_states: torch.Tensor) -> None:
        if isinstance(state, GuideState) and self.guide is not None and self.guide.style_dim:
            state.style = prompt_states.detach().reshape(-1, prompt_states.shape[-1]).mean(0)

    def frames_needed(self, state: Any) -> int:
        return 1

    @torch.inference_mode()
    def encode(self, frames: list[torch.Tensor], states: list[Any]) -> torch.Tensor:
        p = next(self.model.parameters())
        x = stack([f[:, -1] for f in frames]).to(p.device, p.dtype)  # [N, 3, H, W]
        if self.guide is not None:
            for frame, st in zip(x.unbind(0), states, strict=True):
                st.append(frame)  # [3, H, W], decoded with the block it makes
        return self.model.encode(x)[:, :, None]  # [N, C, 1, h, w]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, states: list[Any]) -> list[torch.Tensor]:
        p = next(self.model.parameters())
        z = latents[:, :, 0].to(p.device, p.dtype)  # [N, C, h, w]
        if self.guide is not None:
            style = None
            if self.guide.style_dim:
                if any(getattr(st, "style", None) is None for st in states):
                    raise ValueError("this demo model's decoder needs each session's style: call set_prompt first")
                style = torch.stack([st.style for st in states]).to(p.device, p.dtype)
            guides = stack([st.popleft() for st in states])  # [N, 3, H, W]
            x = self.guide(z, guides, style).clamp(-1, 1)
        else:
            x = self.model.decode(z).clamp(-1, 1)  # [N, 3, H, W]
        return list(x[:, :, None].unbind(0))

    @property
    def nbytes(self) -> int:
        mods = [self.model] + ([self.guide] if self.guide is not None else [])
        return sum(t.numel() * t.element_size() for m in mods for t in m.state_dict().values())
