"""WebSocket streaming protocol, version 1: message framing, validation and media codecs. Pure: no I/O.

`docs/protocol.md` is the normative description; this module is its reference implementation, used
by both the server endpoint (`streamserve.transport.ws`) and the Python client (`streamserve.client`).

Two kinds of WebSocket message:

- text: one JSON object with a `"type"` (control: hello, start, update, stats, end; replies, errors);
- binary: one media unit, a fixed 36-byte big-endian header (`HEADER`) followed by the payload.

Everything here raises `ProtocolError` (a typed, coded `StreamserveError`) for malformed input.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamserve.core.errors import StreamserveError
from streamserve.core.frames import AudioChunk, Media, MediaKind, VideoFrame
from streamserve.transport.imagecodec import JpegDecoder, JpegEncoder, i420_to_rgb, jpeg_size, rgb_to_i420

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
SUBPROTOCOL = "streamserve.v1"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # one media message, header included
MAX_CONTROL_BYTES = 64 * 1024  # one JSON control message, UTF-8 encoded
MAX_DIMENSION = 4096
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
MAX_CHANNELS = 8
MAX_ID_LENGTH = 128

MAGIC = b"SS"
# magic, version, kind, format, flags, reserved16, seq, ref, pts_us, a, b, reserved16, payload_len
HEADER = struct.Struct(">2sBBBBHIIqIHHI")
HEADER_SIZE = HEADER.size  # 36
FLAG_REF = 0x01  # the `ref` field is valid: this output answers the input unit with sequence `ref`
U32 = 2**32

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011


class Kind(enum.IntEnum):
    VIDEO = 1
    AUDIO = 2


class Format(enum.IntEnum):
    JPEG = 1
    RGB24 = 2
    I420 = 3
    PCM_S16LE = 16


VIDEO_FORMATS = {"jpeg": Format.JPEG, "rgb24": Format.RGB24, "i420": Format.I420}
AUDIO_FORMATS = {"pcm_s16le": Format.PCM_S16LE}
_KIND_FORMATS = {Kind.VIDEO: set(VIDEO_FORMATS.values()), Kind.AUDIO: set(AUDIO_FORMATS.values())}

CLIENT_TYPES = frozenset({"hello", "start", "update", "stats", "record", "end"})
SERVER_TYPES = frozenset({"hello", "started", "updated", "stats", "recording", "ended", "error", "event"})


class ProtocolError(StreamserveError):
    """Malformed or out-of-order input. `code` is one of the error codes of docs/protocol.md."""

    status = 400

    def __init__(self, code: str, message: str, *, fatal: bool = True, close_code: int = CLOSE_PROTOCOL_ERROR,
                 **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal
        self.close_code = close_code
        self.details = details

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), **self.details}


def error_message(exc: StreamserveError, *, fatal: bool, msg_id: str | int | None = None) -> dict[str, Any]:
    """The `error` control message for `exc` (its code, message and any extra fields such as `field`)."""
    body = {k: v for k, v in exc.to_dict().items() if k not in ("error", "message")}
    out: dict[str, Any] = {"type": "error", "code": exc.code, "message": str(exc), "fatal": fatal, **body}
    if msg_id is not None:
        out["id"] = msg_id
    return out


# --- binary media messages ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class MediaHeader:
    """The fixed header of a media message. Video uses width/height; audio sample_rate/channels."""

    kind: Kind
    format: Format
    seq: int
    pts_us: int
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    ref: int | None = None
    payload_len: int = 0

    def pack(self) -> bytes:
        a, b = (self.width, self.height) if self.kind is Kind.VIDEO else (self.sample_rate, self.channels)
        flags = FLAG_REF if self.ref is not None else 0
        return HEADER.pack(MAGIC, PROTOCOL_VERSION, self.kind, self.format, flags, 0, self.seq % U32,
                           (self.ref or 0) % U32, self.pts_us, a, b, 0, self.payload_len)


def pack_media(header: MediaHeader, payload: bytes | memoryview) -> bytes:
    """One binary message: `header` (its payload_len set to len(payload)) then `payload`."""
    head = dataclasses.replace(header, payload_len=len(payload)).pack()
    if HEADER_SIZE + len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"media message of {HEADER_SIZE + len(payload)} bytes exceeds "
                            f"{MAX_MESSAGE_BYTES}", close_code=CLOSE_TOO_BIG)
    return head + bytes(payload)


def parse_media(data: bytes | bytearray | memoryview) -> tuple[MediaHeader, memoryview]:
    """Validate a binary message and split it into its header and payload (not yet decoded)."""
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"media message of {size} bytes exceeds {MAX_MESSAGE_BYTES}",
                            close_code=CLOSE_TOO_BIG)
    if size < HEADER_SIZE:
        raise ProtocolError("truncated", f"media message of {size} bytes is shorter than the "
                            f"{HEADER_SIZE}-byte header")
    view = memoryview(data)
    magic, version, kind, fmt, flags, res1, seq, ref, pts_us, a, b, res2, payload_len = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError("bad_header", f"media header must start with {MAGIC!r}, got {bytes(magic)!r}")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError("unsupported_version", f"media header version {version}; supported: "
                            f"{list(SUPPORTED_VERSIONS)}")
    if flags & ~FLAG_REF or res1 or res2:
        raise ProtocolError("bad_header", f"reserved header bits must be 0 (flags={flags:#04x}, "
                            f"reserved={res1}, {res2})")
    if kind not in Kind._value2member_map_:
        raise ProtocolError("bad_kind", f"unknown media kind {kind}; known: 1 (video), 2 (audio)")
    k = Kind(kind)
    if fmt not in Format._value2member_map_ or Format(fmt) not in _KIND_FORMATS[k]:
        allowed = sorted(int(f) for f in _KIND_FORMATS[k])
        raise ProtocolError("bad_format", f"format {fmt} is not a {k.name.lower()} format; allowed: {allowed}")
    if payload_len != size - HEADER_SIZE:
        raise ProtocolError("truncated", f"header says {payload_len} payload bytes, message carries "
                            f"{size - HEADER_SIZE}")
    f = Format(fmt)
    if k is Kind.VIDEO:
        header = MediaHeader(k, f, seq, pts_us, width=a, height=b, payload_len=payload_len,
                             ref=ref if flags & FLAG_REF else None)
        _check_video(header)
    else:
        header = MediaHeader(k, f, seq, pts_us, sample_rate=a, channels=b, payload_len=payload_len,
                             ref=ref if flags & FLAG_REF else None)
        _check_audio(header)
    return header, view[HEADER_SIZE:]


def _check_video(h: MediaHeader) -> None:
    if not (1 <= h.width <= MAX_DIMENSION and 1 <= h.height <= MAX_DIMENSION):
        raise ProtocolError("bad_media", f"video size {h.width}x{h.height} is outside 1..{MAX_DIMENSION}")
    if h.format is Format.RGB24 and h.payload_len != h.width * h.height * 3:
        raise ProtocolError("bad_media", f"rgb24 {h.width}x{h.height} needs {h.width * h.height * 3} bytes, "
                            f"got {h.payload_len}")
    if h.format is Format.I420:
        if h.width % 2 or h.height % 2:
            raise ProtocolError("bad_media", f"i420 needs even dimensions, got {h.width}x{h.height}")
        if h.payload_len != h.width * h.height * 3 // 2:
            raise ProtocolError("bad_media", f"i420 {h.width}x{h.height} needs {h.width * h.height * 3 // 2} "
                                f"bytes, got {h.payload_len}")


def _check_audio(h: MediaHeader) -> None:
    if not MIN_SAMPLE_RATE <= h.sample_rate <= MAX_SAMPLE_RATE:
        raise ProtocolError("bad_media", f"sample rate {h.sample_rate} is outside "
                            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
    if not 1 <= h.channels <= MAX_CHANNELS:
        raise ProtocolError("bad_media", f"channel count {h.channels} is outside 1..{MAX_CHANNELS}")
    frame = 2 * h.channels
    if h.payload_len == 0 or h.payload_len % frame:
        raise ProtocolError("bad_media", f"pcm_s16le payload must be a positive multiple of {frame} bytes "
                            f"({h.channels} channels), got {h.payload_len}")


# --- JSON control messages ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """A validated control message: its `type`, the optional request `id`, and the whole object."""

    type: str
    id: str | int | None
    body: dict[str, Any]


def encode_control(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_control(text: str | bytes, *, types: frozenset[str] = CLIENT_TYPES) -> Control:
    """Parse and validate one control message of one of `types` (the client's by default)."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_CONTROL_BYTES:
        raise ProtocolError("too_large", f"control message of {size} bytes exceeds {MAX_CONTROL_BYTES}",
                            close_code=CLOSE_TOO_BIG)
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"control message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"control message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in types:
        raise ProtocolError("bad_message", f"unknown control message type {kind!r}; expected one of "
                            f"{sorted(types)}")
    msg_id = obj.get("id")
    if msg_id is not None and not (
        (isinstance(msg_id, str) and len(msg_id) <= MAX_ID_LENGTH)
        or (isinstance(msg_id, int) and not isinstance(msg_id, bool) and abs(msg_id) < 2**53)
    ):
        raise ProtocolError("bad_message", f"`id` must be a string of at most {MAX_ID_LENGTH} characters or "
                            f"an integer, got {msg_id!r}")
    if types is CLIENT_TYPES:
        _VALIDATORS[kind](obj)
    return Control(kind, msg_id, obj)


def _expect(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False,
            nullable: bool = False) -> Any:
    if name not in obj:
        if required:
            raise ProtocolError("bad_message", f"`{obj['type']}` needs `{name}`")
        return None
    value = obj[name]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError("bad_message", f"`{obj['type']}.{name}` must be {names}, got {value!r}")
    return value


def _check_hello(obj: dict[str, Any]) -> None:
    version = _expect(obj, "version", int, required=True)
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError("unsupported_version", f"protocol version {version} is not supported; "
                            f"supported: {list(SUPPORTED_VERSIONS)}", supported=list(SUPPORTED_VERSIONS))
    _expect(obj, "client", str)
    _expect(obj, "token", str)
    _expect(obj, "capabilities", dict)


def _check_start(obj: dict[str, Any]) -> None:
    _expect(obj, "pipeline", str, nullable=True)
    _expect(obj, "params", dict, nullable=True)
    output = _expect(obj, "output", dict, nullable=True) or {}
    video = output.get("video", "jpeg")
    if video not in VIDEO_FORMATS:
        raise ProtocolError("bad_message", f"`start.output.video` must be one of {sorted(VIDEO_FORMATS)}, "
                            f"got {video!r}")
    audio = output.get("audio", "pcm_s16le")
    if audio not in AUDIO_FORMATS:
        raise ProtocolError("bad_message", f"`start.output.audio` must be one of {sorted(AUDIO_FORMATS)}, "
                            f"got {audio!r}")
    quality = output.get("jpeg_quality", 85)
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ProtocolError("bad_message", f"`start.output.jpeg_quality` must be an integer in 1..100, "
                            f"got {quality!r}")
    kinds = output.get("kinds", ["video", "audio"])
    if not isinstance(kinds, list) or not all(k in ("video", "audio") for k in kinds):
        raise ProtocolError("bad_message", f"`start.output.kinds` must be a list of \"video\"/\"audio\", "
                            f"got {kinds!r}")


def _check_update(obj: dict[str, Any]) -> None:
    _expect(obj, "params", dict, required=True)


def _check_nothing(obj: dict[str, Any]) -> None:
    return None


def _check_record(obj: dict[str, Any]) -> None:
    _expect(obj, "record", bool, required=True)
    _expect(obj, "format", str)
    _expect(obj, "audio", bool)


_VALIDATORS = {"hello": _check_hello, "start": _check_start, "update": _check_update,
               "stats": _check_nothing, "record": _check_record, "end": _check_nothing}


@dataclasses.dataclass(frozen=True, slots=True)
class OutputOptions:
    """What a client asked for in `start.output`."""

    video: Format = Format.JPEG
    jpeg_quality: int = 85
    kinds: tuple[MediaKind, ...] = (MediaKind.VIDEO, MediaKind.AUDIO)

    @classmethod
    def from_start(cls, body: Mapping[str, Any]) -> OutputOptions:
        output = body.get("output") or {}
        kinds = tuple(MediaKind(k) for k in dict.fromkeys(output.get("kinds", ["video", "audio"])))
        return cls(VIDEO_FORMATS[output.get("video", "jpeg")], output.get("jpeg_quality", 85), kinds)

    def to_dict(self) -> dict[str, Any]:
        video = next(name for name, f in VIDEO_FORMATS.items() if f is self.video)
        return {"video": video, "audio": "pcm_s16le", "jpeg_quality": self.jpeg_quality,
                "kinds": [str(k) for k in self.kinds]}


# --- media <-> messages -------------------------------------------------------------------------


class MediaCodec:
    """Turns media messages into `Media` and back. Holds JPEG codec state: one per direction per peer."""

    def __init__(self) -> None:
        self._decoder = JpegDecoder()
        self._encoder = JpegEncoder()

    def decode(self, header: MediaHeader, payload: memoryview, *, arrival: float, deadline: float) -> Media:
        """A `VideoFrame` or `AudioChunk` from a validated message; raises ProtocolError(bad_media)."""
        meta = {"pts_us": header.pts_us, "ws_seq": header.seq}
        if header.kind is Kind.AUDIO:
            samples = np.frombuffer(payload, dtype="<i2").reshape(-1, header.channels)
            pts = header.pts_us * header.sample_rate // 1_000_000
            return AudioChunk(np.ascontiguousarray(samples.T, dtype=np.int16), header.sample_rate, pts,
                              arrival, deadline, meta=meta)
        if header.format is Format.RGB24:
            rgb = np.frombuffer(payload, dtype=np.uint8).reshape(header.height, header.width, 3).copy()
        elif header.format is Format.I420:
            rgb = i420_to_rgb(bytes(payload), header.width, header.height)
        else:
            size = jpeg_size(payload)
            if size is None:
                raise ProtocolError("bad_media", "payload is not a baseline/progressive JPEG (no SOF marker)")
            if size != (header.width, header.height):
                raise ProtocolError("bad_media", f"JPEG is {size[0]}x{size[1]}, header says "
                                    f"{header.width}x{header.height}")
            try:
                rgb = self._decoder.decode(bytes(payload))
            except ValueError as exc:
                raise ProtocolError("bad_media", f"JPEG does not decode: {exc}") from None
            if rgb.shape[:2] != (header.height, header.width):
                raise ProtocolError("bad_media", f"JPEG decoded to {rgb.shape[1]}x{rgb.shape[0]}, header "
                                    f"says {header.width}x{header.height}")
        pts = header.pts_us * 9 // 100  # microseconds -> 1/90000 s
        return VideoFrame(rgb, pts, arrival, deadline, meta=meta)

    def encode(self, media: Media, *, seq: int, video_format: Format = Format.JPEG, jpeg_quality: int = 85,
               ref: int | None = None) -> bytes:
        """One binary message for `media`. `ref` defaults to the input sequence it was made from."""
        pts_us = media.meta.get("pts_us")
        if not isinstance(pts_us, int):
            pts_us = round(media.pts * (media.time_base or 0) * 1_000_000)
        if ref is None:
            ws_seq = media.meta.get("ws_seq")
            ref = ws_seq if isinstance(ws_seq, int) else None
        if isinstance(media, AudioChunk):
            pcm = media.data
            if pcm.dtype != np.int16:
                pcm = (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype(np.int16)
            payload = np.ascontiguousarray(pcm.T).astype("<i2", copy=False).tobytes()
            header = MediaHeader(Kind.AUDIO, Format.PCM_S16LE, seq, pts_us, sample_rate=media.sample_rate,
                                 channels=media.channels, ref=ref)
            return pack_media(header, payload)
        rgb = media.data
        if video_format is Format.RGB24:
            data = np.ascontiguousarray(rgb).tobytes()
        elif video_format is Format.I420:
            if media.width % 2 or media.height % 2:  # I420 needs even sizes: crop the odd row/column
                rgb = rgb[: media.height // 2 * 2, : media.width // 2 * 2]
            data = rgb_to_i420(rgb)
        else:
            data = self._encoder.encode(rgb, jpeg_quality)
        header = MediaHeader(Kind.VIDEO, video_format, seq, pts_us, width=rgb.shape[1], height=rgb.shape[0],
                             ref=ref)
        return pack_media(header, data)
