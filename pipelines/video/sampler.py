"""Few-step flow-matching sampler for video-to-video (the Wan / CausVid convention).

Noise level ``sigma`` in ``(0, 1]``: ``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model sees
timestep ``t = 1000 * sigma`` and predicts the velocity ``v = noise - x0``, so ``x0 = x_sigma - sigma*v``.
Video-to-video starts from the *input* latent noised to the first sigma (the "strength"); each step
predicts ``x0`` and, unless it was the last, re-noises it to the next sigma (consistency sampling, as
CausVid/StreamDiffusionV2's DMD-distilled generators do).

A schedule is a short decreasing list of sigmas, given directly or derived from ``steps`` and
``strength`` (evenly spaced: ``strength * (steps - i) / steps``). ``shift`` warps sigmas as Wan's
flow scheduler does (``shift * s / (1 + (shift - 1) * s)``; real Wan checkpoints use 5, the demo 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

MAX_STEPS = 4


def shift_sigma(sigma: float, shift: float) -> float:
    """Wan's time shift of a sigma in [0, 1]."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Decreasing noise levels of one block's denoising steps (before ``shift``)."""

    sigmas: tuple[float, ...]
    shift: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.sigmas) <= MAX_STEPS:
            raise ValueError(f"a schedule has 1..{MAX_STEPS} steps, got {len(self.sigmas)}: {self.sigmas}")
        if any(not 0.0 < s <= 1.0 for s in self.sigmas):
            raise ValueError(f"sigmas must be in (0, 1], got {self.sigmas}")
        if any(a <= b for a, b in zip(self.sigmas, self.sigmas[1:], strict=False)):
            raise ValueError(f"sigmas must be strictly decreasing, got {self.sigmas}")
        if not 0.1 <= self.shift <= 20.0:
            raise ValueError(f"shift must be in [0.1, 20], got {self.shift}")

    @classmethod
    def even(cls, steps: int, strength: float, shift: float = 1.0) -> Schedule:
        """``steps`` evenly spaced sigmas from ``strength`` down: ``strength * (steps - i) / steps``."""
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        return cls(tuple(strength * (steps - i) / steps for i in range(steps)), shift)

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    def scaled(self, first: float) -> Schedule:
        """The same schedule with its first sigma moved to ``first`` (motion-aware noise); later sigmas
        are scaled by the same factor so the list stays decreasing."""
        factor = first / self.sigmas[0]
        return Schedule(tuple(s * factor for s in self.sigmas), self.shift)

    def effective(self) -> tuple[float, ...]:
        """Sigmas after the time shift: what noises the latents and what the model is told."""
        return tuple(shift_sigma(s, self.shift) for s in self.sigmas)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Model timesteps (0..1000) of sigmas."""
    return sigmas * 1000.0


def _expand(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A float, an ``[N]`` tensor (one sigma per batch row) or a tensor that already broadcasts."""
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() == 1:
            sigma = sigma.reshape(-1, *([1] * (like.dim() - 1)))
        return sigma.to(like.dtype)
    return sigma


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise``; sigma a float, ``[N]`` or broadcastable to x0."""
    sigma = _expand(sigma, x0)
    return (1 - sigma) * x0 + sigma * noise


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``x_t - sigma * velocity`` (flow matching, ``v = noise - x0``)."""
    sigma = _expand(sigma, x_t)
    return x_t - sigma * velocity


def validate_timesteps(values: Sequence[float]) -> tuple[float, ...]:
    """Check an explicit sigma list (used by the pipeline's ``timesteps`` parameter)."""
    return Schedule(tuple(float(v) for v in values)).sigmas


class SigmaTable:
    """StreamDiffusionV2's flow-matching sigmas: ``steps`` levels ``s_i = 1 - i / steps`` (i < steps),
    warped by ``shift``; a model timestep ``t`` maps to the sigma whose ``1000 * sigma`` is nearest.

    StreamDiffusionV2 (its ``FlowMatchScheduler(shift=8, sigma_min=0, extra_one_step=True)`` with
    1,000 steps) converts the velocity to ``x0`` and re-noises with these sigmas while the model is
    told the listed timestep itself, so ``t = 700`` is denoised with ``sigma(700) ~= 0.69986``.
    """

    def __init__(self, shift: float = 8.0, steps: int = 1000) -> None:
        if not 0.1 <= shift <= 20.0:
            raise ValueError(f"shift must be in [0.1, 20], got {shift}")
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        base = torch.linspace(1.0, 0.0, steps + 1)[:-1]  # [steps], float32 as StreamDiffusionV2 builds it
        self.shift = shift
        sigmas = shift * base / (1.0 + (shift - 1.0) * base)
        self.sigmas = sigmas.double()  # [steps]
        self.timesteps = (sigmas * 1000.0).double()

    def sigma(self, t: float) -> float:
        """The table sigma nearest to model timestep ``t`` (0..1000)."""
        return float(self.sigmas[int(torch.argmin((self.timesteps - t).abs()))])
