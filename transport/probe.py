"""Frames that carry their own index, for measuring delivery and glass-to-glass latency end to end.

The index is drawn as a band of big black/white cells across the bottom 3/8 of the frame: 3 rows of
8 cells, 24 bits = a 12-bit index and its 12-bit complement (a misread fails the check instead of
producing a wrong index). Cells are an eighth of the frame wide and tall, so the code survives VP8 at
low bitrates and any rescaling; `web_demo`-side readers (the browser test) sample the same cell
centres. Above the band is a moving colour picture, so the stream looks like video.

`StampedVideoTrack` sends such frames at a fixed rate and remembers when each left; `read_stamp`
recovers the index from a received RGB frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamserve.core.frames import VIDEO_TIME_BASE

ROWS, COLS = 3, 8
INDEX_BITS = 12
INDEX_MODULO = 1 << INDEX_BITS
BAND_TOP = 5 / 8  # the code band spans [5/8, 1) of the height


def cell_centres(height: int, width: int) -> list[tuple[int, int]]:
    """(y, x) of the 24 cell centres, bit 0 first (row-major)."""
    cell_h, cell_w = height / 8, width / COLS
    top = height * BAND_TOP
    return [(int(top + (r + 0.5) * cell_h), int((c + 0.5) * cell_w)) for r in range(ROWS) for c in range(COLS)]


def _bits(index: int) -> list[int]:
    value = (index % INDEX_MODULO) | ((~index & (INDEX_MODULO - 1)) << INDEX_BITS)
    return [(value >> bit) & 1 for bit in range(ROWS * COLS)]


def picture(index: int, height: int, width: int) -> np.ndarray:
    """A moving colour gradient with a sweeping bar: [H, W, 3] uint8 RGB."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = index / 90.0
    img = np.empty((height, width, 3), dtype=np.float32)
    img[..., 0] = 0.5 + 0.5 * np.sin(2 * np.pi * (x + phase))
    img[..., 1] = 0.5 + 0.5 * np.sin(2 * np.pi * (y + 0.5 * phase) + 2.0)
    img[..., 2] = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y - phase) + 4.0)
    out = (img * 220 + 20).astype(np.uint8)
    bar = int((index * 4) % max(width, 1))
    out[:, bar : bar + max(2, width // 40)] = 255
    return out


def stamp(index: int, height: int, width: int, image: np.ndarray | None = None) -> np.ndarray:
    """A frame [H, W, 3] uint8 showing `index` in the code band (on `image`, default `picture`)."""
    if height < 16 or width < 16:
        raise ValueError(f"stamped frames must be at least 16x16, got {width}x{height}")
    out = picture(index, height, width) if image is None else image.copy()
    top = int(height * BAND_TOP)
    cell_h = height / 8
    for bit, value in enumerate(_bits(index)):
        r, c = divmod(bit, COLS)
        y0, y1 = int(top + r * cell_h), int(top + (r + 1) * cell_h)
        x0, x1 = int(c * width / COLS), int((c + 1) * width / COLS)
        out[y0:y1, x0:x1] = 255 if value else 0
    return out


def read_stamp(rgb: np.ndarray) -> int | None:
    """The index drawn by `stamp`, or None if the band does not check out. rgb: [H, W, 3] uint8."""
    height, width = rgb.shape[:2]
    half_h, half_w = max(1, int(height / 32)), max(1, int(width / 32))
    value = 0
    for bit, (y, x) in enumerate(cell_centres(height, width)):
        patch = rgb[y - half_h : y + half_h, x - half_w : x + half_w]
        if patch.mean() > 127:
            value |= 1 << bit
    index, check = value & (INDEX_MODULO - 1), value >> INDEX_BITS
    if check != (~index & (INDEX_MODULO - 1)):
        return None
    return index


def unwrap(index: int, previous: int | None, modulo: int = INDEX_MODULO) -> int:
    """Extend an index counted modulo `modulo` to the full count, given the previous full index."""
    if previous is None:
        return index
    base = previous - previous % modulo + index
    candidates = (base - modulo, base, base + modulo)
    return min(candidates, key=lambda c: abs(c - previous))


class StampedVideoTrack(MediaStreamTrack):
    """Sends `stamp(i)` frames at `fps` and records when each one left (`sent_at[i]`, monotonic)."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: float = 30.0, frames: int | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.frames = frames
        self.sent_at: dict[int, float] = {}
        self._start: float | None = None
        self._index = 0
        # Rendering every frame costs CPU the measurement should not pay: cache one cycle of pictures.
        self._pictures = [picture(i, height, width) for i in range(30)]

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live" or (self.frames is not None and self._index >= self.frames):
            self.stop()
            raise MediaStreamError
        index = self._index
        self._index += 1
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + index / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data = stamp(index, self.height, self.width, self._pictures[index % len(self._pictures)])
        frame = av.VideoFrame.from_ndarray(data, format="rgb24")
        frame.pts = round(index / self.fps / VIDEO_TIME_BASE)
        frame.time_base = Fraction(VIDEO_TIME_BASE)
        self.sent_at[index] = time.monotonic()
        return frame


class StampReader:
    """Reads the index of every frame of a received track: `seen` holds (index, monotonic time)."""

    def __init__(self, on_frame: Callable[[], None] | None = None) -> None:
        self.seen: list[tuple[int, float]] = []
        self.unreadable = 0
        self.last_frame: np.ndarray | None = None  # [H, W, 3] RGB of the latest frame
        self._on_frame = on_frame

    async def consume(self, track: MediaStreamTrack, mirrored: bool = False) -> None:
        """Read until the track ends (or the task is cancelled)."""
        previous: int | None = None
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                rgb = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                self.last_frame = rgb
                index = read_stamp(rgb[:, ::-1] if mirrored else rgb)
                if index is None:
                    self.unreadable += 1
                else:
                    previous = unwrap(index, previous)
                    self.seen.append((previous, now))
                if self._on_frame is not None:
                    self._on_frame()
        except MediaStreamError:
            return

    def latencies(self, sent_at: dict[int, float]) -> list[float]:
        """Seconds from send to receipt of every frame seen whose send time is known."""
        return [t - sent_at[i] for i, t in self.seen if i in sent_at]
