"""Synthetic camera video for training and testing the demo model -- made locally, nothing downloaded.

A clip is a photo that ships with scikit-image, seen through a virtual camera that pans, zooms and
rotates along a smooth random path, with a few flat shapes moving over it and a little sensor noise.
`make_clip` returns ``[T, H, W, 3]`` uint8 RGB frames; apply :func:`~.styles.apply_style` per frame to
get a style's target.

Images are split so tests can measure quality on a photo the model never saw: ``TRAIN_IMAGES`` for
training and ``HOLDOUT_IMAGES`` (the rocket launch) for evaluation and the browser test.

scikit-image and OpenCV are imported lazily: they are needed to make data, never to serve.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np

TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel",
    "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text", "cell", "logo",
)
HOLDOUT_IMAGES: tuple[str, ...] = ("rocket", "grace_hopper")
"""Never trained on: the rocket launch (scikit-image) and a portrait with a face (matplotlib's sample
photo of Grace Hopper; scikit-image's only face, the astronaut, is a training image)."""

Motion = Literal["static", "slow", "fast", "mixed"]


def _cv2() -> Any:
    import cv2

    return cv2


@functools.cache
def load_image(name: str) -> np.ndarray:
    """A scikit-image sample photo as [H, W, 3] uint8 RGB (grey images replicated, alpha dropped)."""
    import skimage.data

    if name not in TRAIN_IMAGES + HOLDOUT_IMAGES:
        raise ValueError(f"unknown image {name!r}; known: {', '.join(TRAIN_IMAGES + HOLDOUT_IMAGES)}")
    if name == "grace_hopper":
        import matplotlib.cbook
        from PIL import Image

        img = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    else:
        img = np.asarray(getattr(skimage.data, name)())
    if img.dtype != np.uint8:
        img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-9))).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _tint(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Give a grey photo a random colour cast, so grey sources still teach colour."""
    if not np.array_equal(img[:, :, 0], img[:, :, 1]):
        return img
    gain = rng.uniform(0.6, 1.15, size=3)
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random hue, saturation and brightness: more colours than a few photos hold (training only)."""
    cv2 = _cv2()
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-25, 25)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
    hsv[..., 2] = np.clip(255.0 * (hsv[..., 2] / 255.0) ** rng.uniform(0.7, 1.5), 0, 255)
    return np.asarray(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB))


def _camera_path(
    rng: np.random.Generator, frames: int, src_hw: tuple[int, int], out_hw: tuple[int, int], motion: Motion
) -> list[np.ndarray]:
    """Affine maps (2x3) from source to output pixels for each frame: a smooth pan/zoom/rotate."""
    sh, sw = src_hw
    oh, ow = out_hw
    base = max(oh / sh, ow / sw)  # the smallest scale that covers the frame
    speed = {"static": 0.0, "slow": 1.0, "fast": 4.0, "mixed": float(rng.choice([0.0, 1.0, 4.0]))}[motion]
    zoom0 = base * rng.uniform(1.05, 1.6)
    zoom1 = zoom0 * (1 + speed * rng.uniform(-0.03, 0.03) * frames / 8)
    rot0 = rng.uniform(-4, 4)
    rot1 = rot0 + speed * rng.uniform(-1.0, 1.0) * frames / 8
    margin_x = max(sw / 2 - ow / 2 / zoom0, 1.0)
    margin_y = max(sh / 2 - oh / 2 / zoom0, 1.0)
    c0 = np.array([sw / 2 + rng.uniform(-0.5, 0.5) * margin_x, sh / 2 + rng.uniform(-0.5, 0.5) * margin_y])
    step = speed * rng.uniform(0.5, 1.5) * 4.0 / zoom0  # source pixels per frame
    ang = rng.uniform(0, 2 * np.pi)
    c1 = c0 + np.array([np.cos(ang), np.sin(ang)]) * step * frames
    cv2 = _cv2()
    maps = []
    for i in range(frames):
        a = i / max(frames - 1, 1)
        a = a * a * (3 - 2 * a)  # ease in/out
        center = (1 - a) * c0 + a * c1
        zoom = max((1 - a) * zoom0 + a * zoom1, base * 1.02)
        m = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), (1 - a) * rot0 + a * rot1, zoom)
        m[:, 2] += np.array([ow / 2, oh / 2]) - center  # put the path centre in the frame centre
        maps.append(m)
    return maps


def _draw_shapes(frame: np.ndarray, shapes: list[dict[str, Any]], t: int) -> None:
    cv2 = _cv2()
    for s in shapes:
        x, y = s["pos"] + s["vel"] * t
        color = tuple(int(c) for c in s["color"])
        if s["kind"] == "circle":
            cv2.circle(frame, (int(x), int(y)), int(s["size"]), color, -1, cv2.LINE_AA)
        elif s["kind"] == "rect":
            r = int(s["size"])
            cv2.rectangle(frame, (int(x) - r, int(y) - r // 2), (int(x) + r, int(y) + r // 2), color, -1, cv2.LINE_AA)
        else:
            r = s["size"]
            pts = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)
            cv2.fillPoly(frame, [pts], color, cv2.LINE_AA)


def make_clip(
    image: str | np.ndarray,
    frames: int,
    size: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
    motion: Motion = "mixed",
    shapes: int = 2,
    noise: float = 2.0,
    jitter: bool = False,
) -> np.ndarray:
    """A synthetic camera clip ``[frames, H, W, 3]`` uint8 of ``image`` (a name or an RGB array).

    ``size`` is (height, width); ``motion`` picks the camera (``"static"`` keeps it still: only the
    shapes move); ``noise`` is the sensor noise standard deviation in 8-bit levels; ``jitter``
    randomises the photo's hue, saturation and brightness.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    cv2 = _cv2()
    rng = np.random.default_rng(seed)
    src = load_image(image) if isinstance(image, str) else np.asarray(image, dtype=np.uint8)
    src = _tint(src, rng)
    if jitter:
        src = _jitter(src, rng)
    oh, ow = size
    maps = _camera_path(rng, frames, src.shape[:2], (oh, ow), motion)
    palette = rng.integers(0, 256, size=(shapes, 3))
    objs = [
        {
            "kind": str(rng.choice(["circle", "rect", "triangle"])),
            "pos": rng.uniform([0.1 * ow, 0.1 * oh], [0.9 * ow, 0.9 * oh]),
            "vel": rng.normal(0, 2.5, size=2),
            "size": rng.uniform(0.04, 0.12) * min(oh, ow),
            "color": palette[i],
        }
        for i in range(shapes)
    ]
    out = np.empty((frames, oh, ow, 3), np.uint8)
    for t, m in enumerate(maps):
        frame = cv2.warpAffine(src, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        _draw_shapes(frame, objs, t)
        if noise > 0:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        out[t] = frame
    return out


def scene_clip(frames: int, size: tuple[int, int] = (256, 256), seed: int = 0, motion: Motion = "slow") -> np.ndarray:
    """A held-out "real-looking scene" (the rocket photo, slow camera, two moving shapes)."""
    return make_clip(HOLDOUT_IMAGES[0], frames, size, seed=seed, motion=motion, shapes=2, noise=1.5)


def face_clip(frames: int, size: tuple[int, int] = (256, 256), seed: int = 0, motion: Motion = "slow") -> np.ndarray:
    """A held-out clip with a person's face (Grace Hopper's portrait, slow camera, one moving shape)."""
    return make_clip(HOLDOUT_IMAGES[1], frames, size, seed=seed, motion=motion, shapes=1, noise=1.5)


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """One [H, W, 3] uint8 RGB frame (even H, W) -> planar YUV 4:2:0 bytes (BT.601 limited range)."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    if h % 2 or w % 2:
        raise ValueError(f"I420 needs an even frame size, got {w}x{h}")
    u = u.reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    v = v.reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    return b"".join(np.clip(p, 0, 255).round().astype(np.uint8).tobytes() for p in (y, u, v))


def write_y4m(path: str | Path, frames: np.ndarray, fps: int = 30) -> Path:
    """Write ``[T, H, W, 3]`` uint8 RGB frames as a ``.y4m`` file (Chromium's fake-camera format)."""
    path = Path(path)
    t, h, w, _ = frames.shape
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(rgb_to_i420(frame))
    return path
