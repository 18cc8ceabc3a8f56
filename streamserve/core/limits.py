"""Resource limits and timeouts for everything a client can send (see docs/security.md).

Each limit bounds what one client (or one connection) can make the server hold or do; the CLI
exposes them as `streamserve serve` flags and `STREAMSERVE_*` environment variables.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class LimitsConfig:
    # HTTP
    max_body_bytes: int = 256 * 1024  # any request body (an SDP offer is at most 64 KiB)
    max_patch_bytes: int = 16 * 1024  # a trickle-ICE PATCH (a few candidate lines)
    max_json_depth: int = 16  # nesting of JSON objects/arrays in bodies and query values
    header_timeout_s: float = 10.0  # from connect (or the end of the last response) to a full request head
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this long
    max_connections: int = 1024  # open TCP connections (HTTP + WebSocket); more are closed at once
    # WebSocket media input
    max_input_width: int = 1920
    max_input_height: int = 1920
    max_input_pixels: int = 1920 * 1080  # per frame, checked from the header before decoding
    max_compression_ratio: float = 1000.0  # decoded bytes / JPEG bytes, for frames over 1 MB decoded
    decode_pixels_per_s: float = 1920 * 1080 * 60.0  # per-session decode budget (token bucket, 1 s burst)

    def __post_init__(self) -> None:
        _range("max_body_bytes", self.max_body_bytes, 1024, 1 << 30)
        _range("max_patch_bytes", self.max_patch_bytes, 256, 1 << 30)
        _range("max_json_depth", self.max_json_depth, 2, 1000)
        _range("header_timeout_s", self.header_timeout_s, 0.1, 3600)
        _range("keep_alive_s", self.keep_alive_s, 0.1, 3600)
        _range("max_connections", self.max_connections, 1, 1_000_000)
        _range("max_input_width", self.max_input_width, 16, 4096)
        _range("max_input_height", self.max_input_height, 16, 4096)
        _range("max_input_pixels", self.max_input_pixels, 256, 4096 * 4096)
        _range("max_compression_ratio", self.max_compression_ratio, 10, 1e6)
        _range("decode_pixels_per_s", self.decode_pixels_per_s, 1e4, 1e12)


def _range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
