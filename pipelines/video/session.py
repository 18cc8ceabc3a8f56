"""Per-session streaming state of the `video` pipeline: pending frames, blocks in flight, prompt blend.

A session turns camera frames into latent *blocks* (one latent frame: 1 video frame for the demo VAE,
4 for Wan's), each denoised in ``steps`` steps. With stream batch the blocks of the last ``steps``
chunks are in flight together -- block ``n`` at step 0, ``n-1`` at step 1, ... -- and every forward
finishes the oldest one (lag ``steps - 1`` blocks). Without it a block runs all its steps at once.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Hashable

import torch

from streamserve.core.frames import VideoFrame

from .model import CausalWanDiT, CrossKV
from .motion import MotionEstimator
from .params import VideoParams


@dataclasses.dataclass
class Work:
    """One latent block in flight."""

    block: int  # stream index of the (first) block (the KV cache's block index)
    x: torch.Tensor  # [C, F, h, w] current noisy latent (F = 1, or 2 for StreamDiffusionV2's first chunk)
    sigmas: tuple[float, ...]  # effective noise levels of its steps (noising and x0)
    frames: list[VideoFrame]  # the input frames it answers (their timing goes to the outputs)
    step: int = 0
    timesteps: tuple[float, ...] = ()  # what the model is told per step, / 1000 (default: the sigmas)

    @property
    def sigma(self) -> float:
        return self.sigmas[self.step]

    @property
    def t(self) -> float:
        """The model timestep of the current step, / 1000."""
        return (self.timesteps or self.sigmas)[self.step]

    @property
    def last(self) -> bool:
        return self.step == len(self.sigmas) - 1


class PromptBlend:
    """The session's prompt states, fading from the old prompt to a new one over some frames.

    Prompt *states* are the DiT's projected embeddings ``[1, Lc, dim]``; their cross-attention
    keys/values are cached per layer and recomputed only while a blend is running. ``mono`` is how
    grey the prompt's output is (1 for the demo's monochrome styles, 0 otherwise); it fades with the
    prompt and drives the decoder's grayscale head.
    """

    @torch.inference_mode()
    def __init__(self, dit: CausalWanDiT, embeds: torch.Tensor, mono: float = 0.0) -> None:
        self.dit = dit
        self.text = ""
        self._from = self._to = self._states(embeds)
        self._mono_from = self._mono_to = float(mono)
        self.alpha = 1.0
        self._rate = 1.0
        self.cross: CrossKV = dit.cross_kv(self._to)

    @torch.inference_mode()
    def _states(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.dit.embed_prompt(embeds.to(self.dit.device))

    @property
    def length(self) -> int:
        return int(self._to.shape[1])

    @torch.inference_mode()
    def start(self, embeds: torch.Tensor, frames: int, mono: float = 0.0) -> None:
        """Fade to ``embeds [1, Lc, text_dim]`` (grey by ``mono``) over ``frames`` frames (0: at once)."""
        new = self._states(embeds)
        if new.shape != self._to.shape:  # a different prompt length cannot blend: switch
            frames = 0
        self._mono_from, self._mono_to = (self.mono() if frames > 0 else float(mono)), float(mono)
        self._from = self.current() if new.shape == self._to.shape else new
        self._to = new
        self.alpha = 0.0 if frames > 0 else 1.0
        self._rate = 1.0 / frames if frames > 0 else 1.0
        self.cross = self.dit.cross_kv(self.current())

    def mono(self) -> float:
        """How grey the output is at the blend's current point, in [0, 1]."""
        return self._mono_from + (self._mono_to - self._mono_from) * self.alpha

    def current(self) -> torch.Tensor:
        return torch.lerp(self._from, self._to, self.alpha) if self.alpha < 1.0 else self._to

    @torch.inference_mode()
    def advance(self, frames: int) -> None:
        """Move the blend on by ``frames`` video frames."""
        if self.alpha >= 1.0:
            return
        self.alpha = min(1.0, self.alpha + self._rate * frames)
        self.cross = self.dit.cross_kv(self.current())


@dataclasses.dataclass
class SessionState:
    """Everything the pipeline keeps for one session."""

    session_id: str
    params: VideoParams
    width: int
    height: int
    latent_hw: tuple[int, int]
    grid: tuple[int, int]  # tokens per latent frame (h, w)
    pool_key: tuple[int, int, int, int]  # (latent h, latent w, extra cache blocks, caches per session)
    vae_state: object
    prompt: PromptBlend
    generator: torch.Generator
    noise: list[torch.Tensor]  # fixed noise per step ([C, 1, h, w] each)
    motion: MotionEstimator = dataclasses.field(default_factory=MotionEstimator)
    pending: list[tuple[VideoFrame, torch.Tensor]] = dataclasses.field(default_factory=list)
    inflight: deque[Work] = dataclasses.field(default_factory=deque)  # newest first
    next_block: int = 0
    blocks_done: int = 0
    last_sigma: float = 0.0
    caches: list[Hashable] = dataclasses.field(default_factory=list)  # KV cache ids: [id] or one per step
    prefill: Work | None = None  # StreamDiffusionV2's two-frame first chunk, waiting to run

    def cache_for(self, work: Work) -> Hashable:
        """The KV cache a work's current step reads and writes."""
        return self.caches[work.step] if len(self.caches) > 1 else self.caches[0]

    def noise_for(self, step: int, like: torch.Tensor) -> torch.Tensor:
        if self.params.fixed_noise:
            return self.noise[step]
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)
