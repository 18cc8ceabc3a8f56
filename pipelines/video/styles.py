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


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _luma01(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def _sketch(rgb: np.ndarray) -> np.ndarray:
    """Pencil sketch: a dodge blend of luma with a regularised denominator (soft graphite strokes where
    the lightly smoothed luma is darker than its ~6-pixel surround), shaded by the surround's tone, on
    white paper. Smooth in its input: sensor noise stays invisible (see docs/video.md)."""
    cv2 = _cv2()
    lum = _luma01(rgb)
    fine = cv2.GaussianBlur(lum, (0, 0), 0.8)
    wide = cv2.GaussianBlur(lum, (0, 0), 6.0)
    strokes = np.clip((fine + 0.06) / (wide + 0.06), 0.0, 1.0) ** 3
    shade = 0.55 + 0.45 * np.sqrt(np.clip(wide, 0.0, 1.0))
    out = np.clip(250.0 * strokes * shade, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def _cartoon(rgb: np.ndarray) -> np.ndarray:
    """Cartoon: edge-preserving smoothing, saturation x2 and lifted shadows, six flat levels per channel
    joined by smooth steps, and soft dark outlines where the smoothed luma's gradient is strong. Every
    step is continuous, so a one-level input change cannot flip a level or an outline."""
    cv2 = _cv2()
    smooth = cv2.edgePreservingFilter(rgb, flags=1, sigma_s=60, sigma_r=0.45).astype(np.float32) / 255.0
    grey = smooth @ np.array([0.299, 0.587, 0.114], np.float32)
    vivid = np.clip(grey[..., None] + 2.0 * (smooth - grey[..., None]), 0.0, 1.0)  # vivid colours
    vivid = ((vivid + 0.02) / 1.02) ** 0.55  # bright, lifted shadows
    u = vivid * 6.0 - 0.5  # six levels, centred on (k + 0.5) / 6
    k = np.floor(u)
    flat = (k + 0.5 + _smoothstep((u - k - 0.5) / 0.35 + 0.5)) / 6.0 * 255.0
    g = cv2.GaussianBlur(grey, (0, 0), 1.2)
    mag = np.sqrt(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) ** 2)
    edge = 0.9 * _smoothstep((mag - 0.10) / 0.2)[..., None]  # dark outlines
    return np.clip(flat * (1.0 - edge) + 20.0 * edge, 0, 255).astype(np.uint8)


def _sketch_v1(rgb: np.ndarray) -> np.ndarray:
    """The first sketch filter (OpenCV's pencilSketch): its paper grain follows the sensor noise."""
    cv2 = _cv2()
    gray, _ = cv2.pencilSketch(rgb, sigma_s=40, sigma_r=0.08, shade_factor=0.04)
    return np.repeat(np.asarray(gray)[:, :, None], 3, axis=2)


def _cartoon_v1(rgb: np.ndarray) -> np.ndarray:
    """The first cartoon filter: hard 6-level quantization and Canny outlines (discontinuous)."""
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

_V1_FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {**_FILTERS, "sketch": _sketch_v1, "cartoon": _cartoon_v1}
"""The first filter set (until 2026-12-06): sketch and cartoon were ill-conditioned (docs/video.md)."""

FILTER_VERSIONS: tuple[str, ...] = ("v2", "v1")
"""``v2``: the current targets (what the demo model is trained on); ``v1``: the first set, for comparison."""


def apply_style(style: str, rgb: np.ndarray, version: str = "v2") -> np.ndarray:
    """The filter target of `style` for one frame. rgb: [H, W, 3] uint8 -> [H, W, 3] uint8.

    ``version="v1"`` gives the first filter set (see :data:`FILTER_VERSIONS`)."""
    if version not in FILTER_VERSIONS:
        raise ValueError(f"unknown filter version {version!r}; versions: {', '.join(FILTER_VERSIONS)}")
    if style not in _FILTERS:
        raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}")
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", type(rgb).__name__)
        raise ValueError(f"apply_style needs an [H, W, 3] uint8 RGB array, got {shape}")
    out = (_FILTERS if version == "v2" else _V1_FILTERS)[style](np.ascontiguousarray(rgb))
    return np.ascontiguousarray(out, dtype=np.uint8)


def style_index(style: str) -> int:
    """Row of `style` in the demo model's style-embedding table."""
    try:
        return STYLES.index(style)
    except ValueError:
        raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}") from None
