"""The demo model's named styles and the classical image filters it was trained to imitate.

Each style name is a "prompt" of the embedded demo model. `apply_style(style, rgb)` is the filter that
produced that style's training targets: it exists for training and for tests that check the model's
output against it (the browser test, the quality test). The pipeline never calls it while serving, and
OpenCV is imported lazily so serving does not need it.

A style is a pure per-frame function of its input, so a static scene gives a static target (no
flicker by construction), which is what the model is trained to reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

STYLES: tuple[str, ...] = ("watercolor", "sketch", "cartoon", "sepia", "noir", "thermal")
"""Style names, in the order of the demo model's style-embedding table."""

MONOCHROME: frozenset[str] = frozenset({"sketch", "noir"})
"""Styles whose targets are grey by definition: the demo model's output stage projects them to luma."""

STYLE_PROMPTS: dict[str, str] = {
    "watercolor": "a soft watercolor painting on warm paper, smooth washes of colour",
    "sketch": "a pencil sketch on white paper, grey graphite strokes",
    "cartoon": "a vivid flat-shaded cartoon with bold black outlines",
    "sepia": "an old sepia photograph, warm brown tones",
    "noir": "a high-contrast black and white film noir still",
    "thermal": "a thermal camera image, inferno colour map",
}
"""A text prompt per style, used when a text-encoder model (a real Wan checkpoint) is asked for a style."""


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a dev dependency
        raise ImportError(
            "apply_style needs OpenCV (pip install opencv-python-headless); serving does not"
        ) from exc
    return cv2


def _watercolor(rgb: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    paint = np.asarray(cv2.stylization(rgb, sigma_s=60, sigma_r=0.45)).astype(np.float32)
    paper = np.array([255.0, 248.0, 232.0], np.float32)  # washes of colour on warm paper
    return np.clip(0.72 * paint + 0.28 * paper, 0, 255).astype(np.uint8)


def _sketch(rgb: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    gray, _ = cv2.pencilSketch(rgb, sigma_s=40, sigma_r=0.08, shade_factor=0.04)
    return np.repeat(np.asarray(gray)[:, :, None], 3, axis=2)


def _cartoon(rgb: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    smooth = cv2.edgePreservingFilter(rgb, flags=1, sigma_s=60, sigma_r=0.45)
    hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.6 + 30, 0, 255)  # vivid colours
    hsv[..., 2] = 255.0 * (hsv[..., 2] / 255.0) ** 0.55  # bright, lifted shadows
    vivid = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    flat = (np.floor(vivid / 256.0 * 6) + 0.5) * (256.0 / 6)  # six flat levels per channel
    grey = cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, 60, 140) > 0  # black outlines
    flat[edges] = 20.0
    return np.clip(flat, 0, 255).astype(np.uint8)


def _sepia(rgb: np.ndarray) -> np.ndarray:
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    out = rgb.astype(np.float32) @ m.T
    out = (out - 128.0) * 1.1 + 128.0  # a touch of contrast
    return np.clip(out, 0, 255).astype(np.uint8)


def _noir(rgb: np.ndarray) -> np.ndarray:
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    x = gray / 255.0
    x = 1.0 / (1.0 + np.exp(-(x - 0.5) * 9.0))  # strong S-curve
    lo, hi = 1.0 / (1.0 + np.exp(4.5)), 1.0 / (1.0 + np.exp(-4.5))
    x = (x - lo) / (hi - lo)
    out = np.clip(x * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def _thermal(rgb: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    bgr = cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO)
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


_FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "watercolor": _watercolor,
    "sketch": _sketch,
    "cartoon": _cartoon,
    "sepia": _sepia,
    "noir": _noir,
    "thermal": _thermal,
}


def apply_style(style: str, rgb: np.ndarray) -> np.ndarray:
    """The filter target of `style` for one frame. rgb: [H, W, 3] uint8 -> [H, W, 3] uint8."""
    if style not in _FILTERS:
        raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}")
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", type(rgb).__name__)
        raise ValueError(f"apply_style needs an [H, W, 3] uint8 RGB array, got {shape}")
    out = _FILTERS[style](np.ascontiguousarray(rgb))
    return np.ascontiguousarray(out, dtype=np.uint8)


def style_index(style: str) -> int:
    """Row of `style` in the demo model's style-embedding table."""
    try:
        return STYLES.index(style)
    except ValueError:
        raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}") from None
