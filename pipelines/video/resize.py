"""Fit camera frames of any size to the model's resolution, and turn results back into frames.

The model works at one resolution per session (``width x height``, multiples of 16). An input of
another shape is fitted by the session's ``resize`` mode:

* ``"letterbox"`` (default) -- scale to fit inside, pad the rest with black: nothing is cut off, the
  output has bars where the aspect ratios differ;
* ``"crop"`` -- scale to cover, cut the centre: no bars, the edges are lost;
* ``"stretch"`` -- scale each axis independently: everything kept, shapes distorted.

The output is always the model's resolution. Resampling is torch's antialiased bilinear filter, so
serving needs neither OpenCV nor Pillow.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_frame(rgb: np.ndarray, width: int, height: int, mode: str = "letterbox") -> torch.Tensor:
    """rgb [H, W, 3] uint8 -> [3, height, width] float32 in [-1, 1]."""
    # Planar before the conversion: a float copy of the permuted view would keep the pixel-interleaved
    # layout, and every consumer (the VAE, the guide features, stacking) wants planes (~0.2 ms at 256^2).
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous().float().div_(127.5).sub_(1.0)
    h, w = x.shape[1:]
    if (h, w) == (height, width):
        return x
    if mode == "stretch":
        return _resize(x, height, width)
    scale = min(width / w, height / h) if mode == "letterbox" else max(width / w, height / h)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    y = _resize(x, nh, nw)
    if mode == "crop":
        top, left = (nh - height) // 2, (nw - width) // 2
        return y[:, top : top + height, left : left + width].contiguous()
    out = torch.full((3, height, width), -1.0)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, top : top + nh, left : left + nw] = y
    return out


def stack(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.stack(tensors, dim)``; one tensor is returned as a view with the new axis (no copy)."""
    if len(tensors) == 1:
        return tensors[0].unsqueeze(dim)
    return torch.stack(tensors, dim=dim)


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # x: [3, H, W]
    return F.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]


def to_rgb(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    y = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)
    return y.permute(1, 2, 0).contiguous().cpu().numpy()
