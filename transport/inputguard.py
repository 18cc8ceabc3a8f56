"""Bounds on the decode work one WebSocket client can cause (see docs/security.md, "Media input").

Checked from the message header and the JPEG's own start-of-frame segment before anything is
decoded: a frame larger than `max_input_width` x `max_input_height` or `max_input_pixels`, or a JPEG
that would decompress more than `max_compression_ratio` times its size, is refused with a typed,
non-fatal `input_too_large` error. A per-session token bucket (`decode_pixels_per_s`, one second of
burst) drops frames beyond the decode budget before decoding; the connection also keeps only the
freshest undecoded frame (`LatestSlot`), so a fast sender never builds a backlog.
"""

from __future__ import annotations

from streamserve.core.limits import LimitsConfig
from streamserve.transport import wsproto as wp
from streamserve.transport.imagecodec import jpeg_size

RATIO_FLOOR_BYTES = 1 << 20  # the compression-ratio limit applies to frames that decode to more than this


def check_video(header: wp.MediaHeader, payload: memoryview, limits: LimitsConfig) -> None:
    """Raise ProtocolError before decoding a frame the limits do not allow (or a JPEG that lies)."""
    w, h = header.width, header.height
    if w > limits.max_input_width or h > limits.max_input_height or w * h > limits.max_input_pixels:
        raise wp.ProtocolError(
            "input_too_large", f"video input {w}x{h} exceeds the limit of {limits.max_input_width}x"
            f"{limits.max_input_height} and {limits.max_input_pixels} pixels; send smaller frames",
            fatal=False, max_width=limits.max_input_width, max_height=limits.max_input_height,
            max_pixels=limits.max_input_pixels)
    if header.format is not wp.Format.JPEG:
        return
    size = jpeg_size(payload)
    if size is None:
        raise wp.ProtocolError("bad_media", "payload is not a baseline/progressive JPEG (no SOF marker)")
    if size != (w, h):
        raise wp.ProtocolError("bad_media", f"JPEG is {size[0]}x{size[1]}, header says {w}x{h}")
    decoded = w * h * 3
    ratio = decoded / max(1, len(payload))
    if decoded > RATIO_FLOOR_BYTES and ratio > limits.max_compression_ratio:
        raise wp.ProtocolError(
            "input_too_large", f"JPEG of {len(payload)} bytes would decode to {decoded} bytes "
            f"({ratio:.0f}:1, the limit is {limits.max_compression_ratio:g}:1)", fatal=False)


class DecodeBudget:
    """A token bucket of decoded pixels per second (capacity: one second's worth)."""

    def __init__(self, pixels_per_s: float, now: float) -> None:
        self.rate = pixels_per_s
        self.tokens = pixels_per_s
        self.last = now

    def take(self, pixels: int, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if pixels > self.tokens:
            return False
        self.tokens -= pixels
        return True
