"""Still-image codecs for the WebSocket protocol: JPEG (PyAV's mjpeg) and raw I420 <-> RGB24.

Encoders and decoders keep one PyAV codec context and rebuild it when the size or quality changes;
each instance belongs to one connection direction (not thread-safe, cheap to make).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

# Start-of-frame markers that carry the image size (C4 DHT, C8 JPG and CC DAC are not SOFs).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment without decoding it; None if not a JPEG.

    Checked before decoding so a hostile header cannot make the decoder allocate a huge image.
    """
    b = bytes(data)
    n = len(b)
    if n < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stand-alone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any SOF
            return None
        length = (b[i + 2] << 8) | b[i + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height = (b[i + 5] << 8) | b[i + 6]
            width = (b[i + 7] << 8) | b[i + 8]
            return width, height
        i += 2 + length
    return None


def quality_to_qscale(quality: int) -> int:
    """JPEG quality 1..100 (100 best) to FFmpeg's mjpeg qscale 31..2 (2 best)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")
    return round(31 - (quality - 1) * 29 / 99)


class JpegEncoder:
    """RGB24 [H, W, 3] uint8 -> baseline JPEG bytes (4:2:0)."""

    def __init__(self) -> None:
        self._ctx: av.VideoCodecContext | None = None
        self._key: tuple[int, int, int] | None = None

    def encode(self, rgb: np.ndarray, quality: int = 85) -> bytes:
        height, width = rgb.shape[:2]
        q = quality_to_qscale(quality)
        if self._ctx is None or self._key != (width, height, q):
            ctx = av.CodecContext.create("mjpeg", "w")
            assert isinstance(ctx, av.VideoCodecContext)
            ctx.width, ctx.height = width, height
            ctx.pix_fmt = "yuvj420p"
            ctx.time_base = Fraction(1, 30)
            ctx.options = {"qmin": str(q), "qmax": str(q)}
            self._ctx, self._key = ctx, (width, height, q)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuvj420p")
        packets = self._ctx.encode(frame)
        return b"".join(bytes(p) for p in packets)


class JpegDecoder:
    """JPEG bytes -> RGB24 [H, W, 3] uint8. Raises ValueError for data that does not decode."""

    def __init__(self) -> None:
        self._ctx: av.VideoCodecContext | None = None

    def decode(self, data: bytes) -> np.ndarray:
        if self._ctx is None:
            ctx = av.CodecContext.create("mjpeg", "r")
            assert isinstance(ctx, av.VideoCodecContext)
            self._ctx = ctx
        try:
            frames = self._ctx.decode(av.Packet(data))
            if not frames:
                raise ValueError("the decoder produced no image")
            return frames[-1].to_ndarray(format="rgb24")
        except (av.FFmpegError, ValueError) as exc:
            self._ctx = None  # a fresh context for the next image: this one may hold broken state
            raise ValueError(str(exc)) from None


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """RGB24 [H, W, 3] (even H and W) -> planar I420 bytes: Y (H*W), U (H*W/4), V (H*W/4)."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    planar: np.ndarray = frame.reformat(format="yuv420p").to_ndarray()  # [H*3/2, W]
    return planar.tobytes()


def i420_to_rgb(data: bytes, width: int, height: int) -> np.ndarray:
    """Planar I420 bytes (even width and height) -> RGB24 [H, W, 3] uint8."""
    planar = np.frombuffer(data, dtype=np.uint8).reshape(height * 3 // 2, width)
    return av.VideoFrame.from_ndarray(planar, format="yuv420p").to_ndarray(format="rgb24")
