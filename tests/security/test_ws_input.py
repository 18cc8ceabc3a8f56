"""Bounded decode work per WebSocket client: huge or over-compressed frames are refused before
decoding, a fast sender's backlog is dropped undecoded, and each session has a decode budget."""

from __future__ import annotations

import json
import resource
import struct
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from streamserve.core.config import ServerConfig
from streamserve.core.limits import LimitsConfig
from streamserve.transport import wsproto as wp
from streamserve.transport.imagecodec import JpegEncoder
from streamserve.transport.inputguard import DecodeBudget, check_video
from tests.conftest import LiveServer


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def jpeg_message(width: int, height: int, seq: int = 0, colour: int = 90) -> bytes:
    data = JpegEncoder().encode(np.full((height, width, 3), colour, np.uint8))
    return wp.pack_media(wp.MediaHeader(wp.Kind.VIDEO, wp.Format.JPEG, seq, seq * 33_000, width=width,
                                        height=height), data)


def started_ws(server: LiveServer) -> ClientConnection:
    ws = connect(server.url.replace("http://", "ws://") + "/v1/ws", open_timeout=10, max_size=None)
    ws.send(json.dumps({"type": "hello", "version": 1}))
    hello = json.loads(ws.recv(timeout=5))
    assert hello["capabilities"]["max_input"]["pixels"] > 0
    ws.send(json.dumps({"type": "start", "pipeline": "passthrough", "output": {"kinds": ["video"]}}))
    assert json.loads(ws.recv(timeout=5))["type"] == "started"
    return ws


def stats(ws: ClientConnection) -> dict[str, Any]:
    ws.send(json.dumps({"type": "stats", "id": "s"}))
    while True:
        msg = ws.recv(timeout=10)
        if isinstance(msg, str) and json.loads(msg).get("id") == "s":
            return json.loads(msg)  # type: ignore[no-any-return]


def test_4096_square_flat_jpegs_get_a_typed_error_and_memory_stays_flat(live_server: LiveServer) -> None:
    huge = jpeg_message(4096, 4096)
    assert len(huge) < 300_000  # a flat colour: tiny on the wire, 48 MiB decoded
    ws = started_ws(live_server)
    try:
        ws.send(huge)  # the first one may allocate codec state: measure from after it
        first = json.loads(ws.recv(timeout=10))
        before = rss_mb()
        for _ in range(1, 40):
            ws.send(huge)
        errors = [json.loads(ws.recv(timeout=10)) for _ in range(39)]
        after = rss_mb()
        for msg in [first, *errors]:
            assert (msg["type"], msg["code"], msg["fatal"]) == ("error", "input_too_large", False), msg
        assert "4096x4096" in first["message"] and first["max_pixels"] == LimitsConfig().max_input_pixels
        assert after - before < 48, f"RSS grew {after - before:.0f} MB for 39 refused frames"
        # The connection still works: a frame within the limits comes back.
        ws.send(jpeg_message(64, 48, seq=99))
        out = ws.recv(timeout=10)
        assert isinstance(out, bytes) and wp.parse_media(out)[0].width == 64
        assert stats(ws)["connection"]["video_refused"] == 40
    finally:
        ws.close()


def test_a_fast_sender_is_held_to_the_decode_budget(server_factory: Any) -> None:
    limits = LimitsConfig(decode_pixels_per_s=20_000)  # about 5 frames of 64x64 a second
    server: LiveServer = server_factory(ServerConfig(pipeline="passthrough", port=0, limits=limits))
    ws = started_ws(server)
    try:
        frame = jpeg_message(64, 64)
        for _ in range(60):
            ws.send(frame)
        for _ in range(50):  # each stats round trip lets the decoder finish what it holds
            reply = stats(ws)
            connection, session = reply["connection"], reply["session"]
            skipped = connection["video_dropped_budget"] + connection["video_dropped_undecoded"]
            if session["frames_in"] + skipped == 60:
                break
        assert session["frames_in"] + skipped == 60, (session, connection)
        assert session["frames_in"] <= 15 and skipped >= 45, (session, connection)
    finally:
        ws.close()


def test_check_video_refuses_before_decoding() -> None:
    limits = LimitsConfig(max_input_width=640, max_input_height=640, max_input_pixels=640 * 600,
                          max_compression_ratio=100)

    def header(w: int, h: int, fmt: wp.Format = wp.Format.JPEG) -> wp.MediaHeader:
        return wp.MediaHeader(wp.Kind.VIDEO, fmt, 0, 0, width=w, height=h)

    with pytest.raises(wp.ProtocolError, match="641x10 exceeds") as exc:
        check_video(header(641, 10, wp.Format.RGB24), memoryview(b""), limits)
    assert exc.value.code == "input_too_large" and not exc.value.fatal
    with pytest.raises(wp.ProtocolError, match="640x640 exceeds"):
        check_video(header(640, 640), memoryview(b""), limits)
    flat = JpegEncoder().encode(np.zeros((480, 640, 3), np.uint8))  # ~170:1, 921,600 bytes decoded
    check_video(header(640, 480), memoryview(flat), limits)  # under the 1 MB floor: ratio not applied
    big_flat = JpegEncoder().encode(np.zeros((600, 600, 3), np.uint8))
    with pytest.raises(wp.ProtocolError, match=r"would decode to 1080000 bytes .* limit is 100:1"):
        check_video(header(600, 600), memoryview(big_flat), limits)
    # The JPEG's own SOF must match the header (a lying header cannot sneak a big image in).
    with pytest.raises(wp.ProtocolError, match="JPEG is 640x480, header says 64x48") as lie:
        check_video(header(64, 48), memoryview(flat), limits)
    assert lie.value.code == "bad_media" and lie.value.fatal
    sof = bytes.fromhex("ffd8ffc0001108") + struct.pack(">HH", 4096, 4096)
    with pytest.raises(wp.ProtocolError, match="4096x4096, header says 64x48"):
        check_video(header(64, 48), memoryview(sof + b"\0" * 12), limits)


def test_decode_budget_is_a_token_bucket() -> None:
    budget = DecodeBudget(1000, now=0.0)
    assert budget.take(600, 0.0) and not budget.take(600, 0.0)  # one second of burst
    assert budget.take(600, 0.3)  # 400 left + 300 refilled
    assert not budget.take(200, 0.3) and budget.take(100, 0.3)
    assert budget.take(1000, 100.0) and not budget.take(1, 100.0)  # refill is capped at one second


def test_a_jpeg_that_does_not_decode_is_still_a_fatal_bad_media(live_server: LiveServer) -> None:
    """Decoding moved off the read path; its failures still end the connection with the typed error."""
    good = JpegEncoder().encode(np.full((48, 64, 3), 90, np.uint8))
    sof = good.index(b"\xff\xc0")
    broken = good[: sof + 19] + b"\0" * 50  # a valid header and size, then garbage
    ws = started_ws(live_server)
    ws.send(wp.pack_media(wp.MediaHeader(wp.Kind.VIDEO, wp.Format.JPEG, 0, 0, width=64, height=48), broken))
    msg = json.loads(ws.recv(timeout=10))
    assert (msg["type"], msg["code"], msg["fatal"]) == ("error", "bad_media", True), msg
    assert "does not decode" in msg["message"]
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert ws.close_code == 1002
