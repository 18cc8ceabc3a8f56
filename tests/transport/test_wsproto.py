"""The pure parts of the WebSocket protocol: header packing, validation, media and image codecs."""

from __future__ import annotations

import io

import numpy as np
import pytest

from streamserve.core.frames import AudioChunk, VideoFrame
from streamserve.transport import imagecodec as ic
from streamserve.transport import wsproto as wp


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3, y * 4, (x + y) * 2], -1).astype(np.uint8)


def test_header_layout_is_36_bytes_big_endian() -> None:
    assert wp.HEADER_SIZE == 36
    head = wp.MediaHeader(wp.Kind.AUDIO, wp.Format.PCM_S16LE, 2**32 + 5, -1, sample_rate=48_000, channels=2,
                          ref=3, payload_len=8).pack()
    assert head[:8] == b"SS\x01\x02\x10\x01\x00\x00"
    assert head[8:12] == (5).to_bytes(4, "big") and head[12:16] == (3).to_bytes(4, "big")
    assert head[16:24] == b"\xff" * 8 and head[24:28] == (48_000).to_bytes(4, "big")
    assert head[28:30] == b"\x00\x02" and head[32:36] == (8).to_bytes(4, "big")


@pytest.mark.parametrize("fmt", [wp.Format.JPEG, wp.Format.RGB24, wp.Format.I420])
def test_video_round_trip(fmt: wp.Format) -> None:
    codec = wp.MediaCodec()
    rgb = picture()
    frame = VideoFrame(rgb, 0, 1.0, 2.0, meta={"pts_us": 123_456, "ws_seq": 9})
    header, payload = wp.parse_media(codec.encode(frame, seq=4, video_format=fmt, jpeg_quality=95))
    assert (header.seq, header.ref, header.pts_us, header.width, header.height) == (4, 9, 123_456, 64, 48)
    back = codec.decode(header, payload, arrival=5.0, deadline=5.25)
    assert isinstance(back, VideoFrame) and back.data.shape == rgb.shape
    assert back.pts == 123_456 * 9 // 100 and (back.arrival, back.deadline) == (5.0, 5.25)
    assert back.meta == {"pts_us": 123_456, "ws_seq": 4}
    error = np.abs(back.data.astype(int) - rgb).mean()
    assert error == 0 if fmt is wp.Format.RGB24 else error < 3


def test_i420_crops_odd_sizes_and_ref_defaults() -> None:
    frame = VideoFrame(picture(47, 63), 90_000, 0.0, 0.0)  # no pts_us in meta: from pts and time base
    header, _ = wp.parse_media(wp.MediaCodec().encode(frame, seq=0, video_format=wp.Format.I420))
    assert (header.width, header.height, header.pts_us, header.ref) == (62, 46, 1_000_000, None)


def test_audio_round_trip_and_float_conversion() -> None:
    codec = wp.MediaCodec()
    pcm = np.array([[1, 2, 3], [-1, -2, -3]], np.int16)
    header, payload = wp.parse_media(codec.encode(AudioChunk(pcm, 16_000, 0, 0.0, 0.0), seq=1))
    assert bytes(payload) == np.array([1, -1, 2, -2, 3, -3], "<i2").tobytes()  # interleaved little-endian
    back = codec.decode(header, payload, arrival=0.0, deadline=0.0)
    assert isinstance(back, AudioChunk)
    np.testing.assert_array_equal(back.data, pcm)
    floats = AudioChunk(np.array([[0.5, -1.0, 2.0]], np.float32), 8_000, 0, 0.0, 0.0)
    _, payload = wp.parse_media(codec.encode(floats, seq=2))
    assert np.frombuffer(payload, "<i2").tolist() == [16384, -32767, 32767]


def test_jpeg_size_and_quality() -> None:
    data = ic.JpegEncoder().encode(picture(40, 72), 50)
    assert ic.jpeg_size(data) == (72, 40)
    assert ic.jpeg_size(b"\xff\xd8\xff\xd9") is None and ic.jpeg_size(b"GIF89a") is None
    assert ic.quality_to_qscale(100) == 2 and ic.quality_to_qscale(1) == 31
    small = ic.JpegEncoder().encode(picture(), 10)
    large = ic.JpegEncoder().encode(picture(), 100)
    assert len(small) < len(large)
    with pytest.raises(ValueError):
        ic.quality_to_qscale(0)


def test_jpeg_from_pillow_decodes() -> None:
    """A JPEG from another encoder (Pillow, progressive) decodes: interoperability, not just round trips."""
    image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    image.fromarray(picture()).save(buf, format="JPEG", quality=90, progressive=True)
    header = wp.MediaHeader(wp.Kind.VIDEO, wp.Format.JPEG, 0, 0, width=64, height=48)
    head, payload = wp.parse_media(wp.pack_media(header, buf.getvalue()))
    out = wp.MediaCodec().decode(head, payload, arrival=0.0, deadline=0.0)
    assert np.abs(out.data.astype(int) - picture()).mean() < 3


def test_jpeg_size_mismatch_is_bad_media() -> None:
    data = ic.JpegEncoder().encode(picture(), 80)
    header = wp.MediaHeader(wp.Kind.VIDEO, wp.Format.JPEG, 0, 0, width=32, height=48)
    head, payload = wp.parse_media(wp.pack_media(header, data))
    with pytest.raises(wp.ProtocolError) as err:
        wp.MediaCodec().decode(head, payload, arrival=0.0, deadline=0.0)
    assert err.value.code == "bad_media" and "64x48" in str(err.value)


@pytest.mark.parametrize(("text", "code"), [
    ('{"type": "hello", "version": 1, "client": 5}', "bad_message"),
    ('{"type": "start", "output": {"jpeg_quality": 0}}', "bad_message"),
    ('{"type": "start", "output": {"kinds": ["smell"]}}', "bad_message"),
    ('{"type": "start", "pipeline": 1}', "bad_message"),
    ('{"type": "stats", "id": true}', "bad_message"),
    ('{"type": "stats", "id": 9007199254740993}', "bad_message"),
    ('[' * 60_000, "bad_json"),
])
def test_control_validation(text: str, code: str) -> None:
    with pytest.raises(wp.ProtocolError) as err:
        wp.parse_control(text)
    assert err.value.code == code


def test_control_accepts_documented_shapes() -> None:
    msg = wp.parse_control('{"type": "start", "pipeline": null, "params": null, "id": "x", "extra": 1}')
    assert (msg.type, msg.id) == ("start", "x")
    options = wp.OutputOptions.from_start({"output": {"video": "i420", "kinds": ["video", "video"]}})
    assert options.video is wp.Format.I420 and [str(k) for k in options.kinds] == ["video"]
    assert wp.encode_control({"a": np.int64(3), "b": (1, 2)}) == '{"a":3,"b":[1,2]}'


def test_error_message_carries_details() -> None:
    from streamserve.core.errors import InvalidParams

    msg = wp.error_message(InvalidParams("steps", "must be 1..4"), fatal=False, msg_id=3)
    assert msg == {"type": "error", "code": "invalid_params", "message": "steps: must be 1..4", "fatal": False,
                   "field": "steps", "id": 3}
