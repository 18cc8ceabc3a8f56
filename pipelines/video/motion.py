"""Motion-aware noise (StreamDiffusionV2): less noise when the camera moves fast.

Fast motion makes the previous frames in the KV cache a poor guide to the new one, and strong noise
then produces smearing and ghosting; a slower scene can take more noise for a stronger style. Per new
chunk of input frames the estimator measures motion as the largest RMS difference between
consecutive frames (pixels in [-1, 1], on a small grey thumbnail), normalises it to ``[0, 1]`` by
``full_motion`` (StreamDiffusionV2: 0.2) and lowers the first sigma linearly::

    target = strength * (1 - drop * motion)          # drop = 0.125: 0.8 -> 0.7 at full motion
    sigma  = (1 - smoothing) * target + smoothing * previous_sigma

which with StreamDiffusionV2's ``strength = 0.8`` gives its 0.7-0.8 range and its 0.9/0.1 smoothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

THUMBNAIL = 64


def thumbnail(frames: torch.Tensor) -> torch.Tensor:
    """frames ``[3, F, H, W]`` in [-1, 1] -> grey thumbnails ``[F, t, t]`` for motion estimates."""
    grey = frames.float().mean(0, keepdim=True)  # [1, F, H, W]
    size = (min(THUMBNAIL, frames.shape[-2]), min(THUMBNAIL, frames.shape[-1]))
    return F.interpolate(grey.transpose(0, 1), size=size, mode="area")[:, 0]


class MotionEstimator:
    """Per-session motion estimate and the motion-aware first sigma."""

    def __init__(self, drop: float = 0.125, full_motion: float = 0.2, smoothing: float = 0.1) -> None:
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"drop must be in [0, 1), got {drop}")
        if full_motion <= 0:
            raise ValueError(f"full_motion must be > 0, got {full_motion}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.drop, self.full_motion, self.smoothing = drop, full_motion, smoothing
        self._last: torch.Tensor | None = None  # [t, t] thumbnail of the previous frame
        self.motion = 0.0  # last normalised motion, in [0, 1]
        self.sigma: float | None = None  # smoothed first sigma

    def update(self, frames: torch.Tensor) -> float:
        """Measure the motion of a chunk ``[3, F, H, W]`` (against the previous chunk's last frame)."""
        thumbs = thumbnail(frames)  # [F, t, t]
        if self._last is not None and self._last.shape == thumbs.shape[1:]:
            thumbs_all = torch.cat([self._last[None], thumbs])
        else:
            thumbs_all = thumbs
        if thumbs_all.shape[0] >= 2:
            rms = (thumbs_all[1:] - thumbs_all[:-1]).pow(2).mean((1, 2)).sqrt()  # [F]
            self.motion = float((rms.max() / self.full_motion).clamp(0, 1))
        self._last = thumbs[-1]
        return self.motion

    def first_sigma(self, strength: float) -> float:
        """The smoothed, motion-lowered first sigma for a schedule starting at ``strength``."""
        target = strength * (1.0 - self.drop * self.motion)
        if self.sigma is None:
            self.sigma = target
        else:
            self.sigma = (1.0 - self.smoothing) * target + self.smoothing * self.sigma
        return min(self.sigma, strength)
