"""Property-based fuzz of /v1/ws: thousands of generated messages (mostly almost-valid), and the server
answers every one with protocol messages only — a typed error with a documented code, or a normal
reply — closes with a documented code, never reports `internal`, and still serves a new client."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streamserve.core.config import ServerConfig
from streamserve.transport import wsproto as wp
from streamserve.transport.ws import WebSocketTransport
from tests.conftest import LiveServer

HEADER = struct.Struct(">2sBBBBHIIqIHHI")
ERROR_CODES = {"hello_required", "unsupported_version", "unauthorized", "timeout", "bad_json", "bad_message",
               "too_large", "truncated", "bad_header", "bad_kind", "bad_format", "bad_media", "not_started",
               "already_started", "unknown_pipeline", "invalid_params", "session_limit", "session_closed"}
CLOSE_CODES = {1000, 1002, 1008, 1009}
EXAMPLES = 900
SENT: dict[str, int] = {"generated": 0, "examples": 0}


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer(ServerConfig(pipeline="passthrough", port=0, max_sessions=64), [WebSocketTransport]).start()
    yield srv
    srv.stop()


# --- strategies ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
control = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "start", "update", "stats", "end", "started", "nope", ""])},
    optional={
        "version": st.sampled_from([1, 2, 0, -1, "1", None]),
        "id": st.one_of(st.integers(), st.text(max_size=200), st.none(), st.lists(st.integers(), max_size=2)),
        "pipeline": st.sampled_from(["passthrough", "video", "", "nope", None, 3]),
        "params": st.one_of(st.dictionaries(st.sampled_from(["mirror", "x", "prompt"]), json_values, max_size=2),
                            json_values),
        "output": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "video": st.sampled_from(["jpeg", "rgb24", "i420", "png"]),
            "jpeg_quality": st.integers(-5, 120), "kinds": st.lists(st.sampled_from(["video", "audio", "x"]))})),
        "token": json_values,
    },
)


@st.composite
def media_messages(draw: st.DrawFn) -> bytes:
    """Headers that are valid field by field more often than not, with payloads that often fit."""
    kind = draw(st.sampled_from([1, 1, 1, 2, 2, 0, 3, 255]))
    fmt = draw(st.sampled_from([1, 2, 3, 16, 0, 4, 17]))
    w = draw(st.sampled_from([2, 4, 8, 16, 0, 1, 3, 4097, 48_000]))
    h = draw(st.sampled_from([2, 4, 8, 1, 2, 0, 4097]))
    if fmt == 2:
        size = w * h * 3
    elif fmt == 3:
        size = w * h * 3 // 2
    elif fmt == 16:
        size = max(h, 1) * 2 * draw(st.integers(1, 64))
    else:
        size = draw(st.integers(0, 64))
    size = min(size, 50_000)
    if fmt == 1 and kind == 1 and draw(st.booleans()):
        payload = wp.JpegEncoder().encode(np.full((8, 8, 3), draw(st.integers(0, 255)), np.uint8))
        w, h = draw(st.sampled_from([(8, 8), (8, 8), (16, 8)]))
    else:
        payload = draw(st.binary(min_size=size, max_size=size)) if size < 256 else bytes(size)
    flags = draw(st.sampled_from([0, 0, 0, 1, 2]))
    magic = draw(st.sampled_from([b"SS", b"SS", b"SS", b"sS"]))
    version = draw(st.sampled_from([1, 1, 1, 2]))
    plen = len(payload) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    header = HEADER.pack(magic, version, kind % 256, fmt, flags, 0, draw(st.integers(0, 2**32 - 1)), 0,
                         draw(st.integers(-(2**63), 2**63 - 1)), w, h, 0, max(plen, 0))
    cut = draw(st.sampled_from([None, None, None, None, 0, 10, 35]))
    message = header + payload
    return message[:cut] if cut is not None else message


messages = st.one_of(
    media_messages(),
    control.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=80),
)
examples = st.tuples(st.sampled_from(["none", "hello", "start"]), st.lists(messages, min_size=1, max_size=8))


# --- the property -------------------------------------------------------------------------------

def check_reply(raw: str | bytes) -> dict[str, Any] | None:
    """Every server message is a protocol message; errors carry a documented code."""
    if isinstance(raw, bytes):
        wp.parse_media(raw)  # outputs are well-formed media messages
        return None
    msg = json.loads(raw)
    assert msg["type"] in wp.SERVER_TYPES, msg
    if msg["type"] == "error":
        assert msg["code"] in ERROR_CODES, msg
        assert isinstance(msg["message"], str) and isinstance(msg["fatal"], bool)
    return msg  # type: ignore[no-any-return]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(example=examples)
def test_fuzz_messages(server: LiveServer, example: tuple[str, list[str | bytes]]) -> None:
    prelude, batch = example
    SENT["examples"] += 1
    SENT["generated"] += len(batch)
    url = server.url.replace("http://", "ws://") + "/v1/ws"
    with connect(url, max_size=None, open_timeout=10, close_timeout=5) as ws:
        if prelude != "none":
            ws.send(json.dumps({"type": "hello", "version": 1}))
            check_reply(ws.recv(timeout=5))
        if prelude == "start":
            ws.send(json.dumps({"type": "start", "output": {"kinds": ["video", "audio"]}}))
            assert check_reply(ws.recv(timeout=5))["type"] == "started"  # type: ignore[index]
        try:
            for message in batch:
                ws.send(message)
            ws.send(json.dumps({"type": "stats", "id": "probe"}))  # alive: answered; closed: raises
            while True:
                msg = check_reply(ws.recv(timeout=10))
                if msg is not None and msg.get("id") == "probe" and msg["type"] in ("stats", "error"):
                    break
        except ConnectionClosed:
            assert ws.close_code in CLOSE_CODES, (ws.close_code, ws.close_reason)


def test_fuzz_covered_enough_and_server_still_serves(server: LiveServer) -> None:
    """Runs after the fuzz (file order): ≥ 2,000 messages went in, and a new client works."""
    if SENT["examples"] == 0:
        pytest.skip("the fuzz test did not run (selected alone)")
    assert SENT["generated"] >= 2_000, SENT
    url = server.url.replace("http://", "ws://") + "/v1/ws"
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello", "version": 1}))
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        ws.send(json.dumps({"type": "start", "output": {"video": "rgb24"}}))
        assert json.loads(ws.recv(timeout=5))["type"] == "started"
        ws.send(HEADER.pack(b"SS", 1, 1, 2, 0, 0, 5, 0, 0, 2, 2, 0, 12) + bytes(range(12)))
        out = ws.recv(timeout=5)
        assert isinstance(out, bytes) and out[36:] == bytes(range(12))
    for _ in range(100):
        if not server.manager.list():
            break
        time.sleep(0.05)
    assert server.manager.list() == []
