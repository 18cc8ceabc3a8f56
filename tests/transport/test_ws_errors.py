"""Malformed and out-of-order input on /v1/ws: a typed `error`, the documented close code, no crash."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from streamserve.core.config import ServerConfig
from streamserve.transport import wsproto as wp
from streamserve.transport.ws import WebSocketTransport
from tests.conftest import LiveServer

HEADER = struct.Struct(">2sBBBBHIIqIHHI")


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer(ServerConfig(pipeline="passthrough", port=0), [WebSocketTransport]).start()
    yield srv
    srv.stop()


def ws_url(server: LiveServer, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/v1/ws" + query


def open_ws(server: LiveServer, *, hello: bool = True, start: bool = False, **kwargs: Any) -> ClientConnection:
    ws = connect(ws_url(server), max_size=None, open_timeout=10, **kwargs)
    if hello:
        ws.send(json.dumps({"type": "hello", "version": 1}))
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
    if start:
        ws.send(json.dumps({"type": "start", "pipeline": "passthrough"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "started"
    return ws


def expect_fatal(ws: ClientConnection, code: str, close_code: int = 1002) -> dict[str, Any]:
    """The next message is a fatal error `code`, then the server closes with `close_code`."""
    msg = json.loads(ws.recv(timeout=5))
    assert msg["type"] == "error" and msg["code"] == code, msg
    assert msg["fatal"] is True and msg["message"]
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert ws.close_code == close_code, (ws.close_code, ws.close_reason)
    return msg  # type: ignore[no-any-return]


def media(kind: int = 1, fmt: int = 2, a: int = 2, b: int = 2, payload: bytes = b"\0" * 12, *,
          magic: bytes = b"SS", version: int = 1, flags: int = 0, reserved: int = 0,
          payload_len: int | None = None) -> bytes:
    n = len(payload) if payload_len is None else payload_len
    return HEADER.pack(magic, version, kind, fmt, flags, reserved, 0, 0, 0, a, b, 0, n) + payload


FATAL_BEFORE_HELLO = [
    pytest.param(media(), "hello_required", id="media-before-hello"),
    pytest.param(json.dumps({"type": "start"}), "hello_required", id="start-before-hello"),
    pytest.param("{not json", "bad_json", id="bad-json-before-hello"),
    pytest.param(json.dumps({"type": "hello", "version": 2}), "unsupported_version", id="hello-v2"),
    pytest.param(json.dumps({"type": "hello"}), "bad_message", id="hello-no-version"),
    pytest.param(json.dumps({"type": "hello", "version": "1"}), "bad_message", id="hello-version-string"),
]


@pytest.mark.parametrize(("message", "code"), FATAL_BEFORE_HELLO)
def test_before_hello(server: LiveServer, message: str | bytes, code: str) -> None:
    ws = open_ws(server, hello=False)
    ws.send(message)
    msg = expect_fatal(ws, code)
    if code == "unsupported_version":
        assert msg["supported"] == [1]


FATAL_AFTER_START = [
    pytest.param(b"SS\x01", "truncated", id="truncated-header"),
    pytest.param(media(payload_len=13), "truncated", id="payload-shorter-than-header-says"),
    pytest.param(media(magic=b"XX"), "bad_header", id="bad-magic"),
    pytest.param(media(flags=0x80), "bad_header", id="reserved-flag"),
    pytest.param(media(reserved=1), "bad_header", id="reserved-bytes"),
    pytest.param(media(version=9), "unsupported_version", id="header-version"),
    pytest.param(media(kind=3), "bad_kind", id="kind-3"),
    pytest.param(media(kind=0), "bad_kind", id="kind-0"),
    pytest.param(media(fmt=16), "bad_format", id="video-with-pcm-format"),
    pytest.param(media(kind=2, fmt=1, a=48000, b=1, payload=b"\0\0"), "bad_format", id="audio-with-jpeg"),
    pytest.param(media(payload=b"\0" * 11), "bad_media", id="rgb24-wrong-size"),
    pytest.param(media(a=0, b=2, payload=b""), "bad_media", id="zero-width"),
    pytest.param(media(a=5000, b=1, payload=b"\0" * 15000), "bad_media", id="too-wide"),
    pytest.param(media(fmt=3, a=3, b=2, payload=b"\0" * 9), "bad_media", id="i420-odd-width"),
    pytest.param(media(fmt=1, payload=b"\xff\xd8garbage"), "bad_media", id="jpeg-garbage"),
    pytest.param(media(kind=2, fmt=16, a=100, b=1, payload=b"\0\0"), "bad_media", id="audio-rate-too-low"),
    pytest.param(media(kind=2, fmt=16, a=48000, b=2, payload=b"\0\0"), "bad_media", id="audio-half-frame"),
    pytest.param("{\"type\": ", "bad_json", id="bad-json"),
    pytest.param("{\"type\": \"update\", \"params\": {\"x\": NaN}}", "bad_json", id="nan"),
    pytest.param("[1, 2]", "bad_message", id="json-array"),
    pytest.param(json.dumps({"type": "dance"}), "bad_message", id="unknown-type"),
    pytest.param(json.dumps({"kind": "update"}), "bad_message", id="no-type"),
    pytest.param(json.dumps({"type": "update"}), "bad_message", id="update-without-params"),
    pytest.param(json.dumps({"type": "update", "params": [1]}), "bad_message", id="params-not-object"),
    pytest.param(json.dumps({"type": "stats", "id": [1]}), "bad_message", id="id-not-scalar"),
    pytest.param(json.dumps({"type": "hello", "version": 1}), "bad_message", id="second-hello"),
]


@pytest.mark.parametrize(("message", "code"), FATAL_AFTER_START)
def test_malformed_after_start(server: LiveServer, message: str | bytes, code: str) -> None:
    ws = open_ws(server, start=True)
    ws.send(message)
    expect_fatal(ws, code)
    # The session of a connection closed by an error ends with it.
    deadline = time.monotonic() + 5
    while server.manager.list() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.manager.list() == []


def test_oversized_media_and_control(server: LiveServer) -> None:
    ws = open_ws(server, start=True)
    ws.send(media(payload=b"\0" * (wp.MAX_MESSAGE_BYTES - wp.HEADER_SIZE + 1)))
    expect_fatal(ws, "too_large", close_code=1009)
    ws = open_ws(server, start=True)
    ws.send(json.dumps({"type": "update", "params": {"prompt": "x" * wp.MAX_CONTROL_BYTES}}))
    expect_fatal(ws, "too_large", close_code=1009)


def test_media_before_start_is_fatal_control_before_start_is_not(server: LiveServer) -> None:
    ws = open_ws(server)
    ws.send(json.dumps({"type": "update", "params": {"mirror": True}, "id": 1}))
    msg = json.loads(ws.recv(timeout=5))
    assert (msg["code"], msg["fatal"], msg["id"]) == ("not_started", False, 1)
    ws.send(media())
    expect_fatal(ws, "not_started")


def test_refused_start_and_update_are_not_fatal(server: LiveServer) -> None:
    ws = open_ws(server)
    try:
        ws.send(json.dumps({"type": "start", "pipeline": "nope", "id": "a"}))
        msg = json.loads(ws.recv(timeout=5))
        assert (msg["code"], msg["fatal"], msg["id"]) == ("unknown_pipeline", False, "a")
        assert "passthrough" in msg["available"]
        ws.send(json.dumps({"type": "start", "params": {"mirror": "yes"}}))
        msg = json.loads(ws.recv(timeout=5))
        assert (msg["code"], msg["field"]) == ("invalid_params", "mirror")
        ws.send(json.dumps({"type": "start", "output": {"video": "rgb24"}}))
        assert json.loads(ws.recv(timeout=5))["type"] == "started"
        ws.send(json.dumps({"type": "start"}))
        assert json.loads(ws.recv(timeout=5))["code"] == "already_started"
        ws.send(json.dumps({"type": "update", "params": {"colour": 1}, "id": 2}))
        msg = json.loads(ws.recv(timeout=5))
        assert (msg["code"], msg["field"], msg["fatal"]) == ("invalid_params", "colour", False)
        ws.send(media())  # still alive: a frame goes through
        out = ws.recv(timeout=5)
        assert isinstance(out, bytes) and out[36:] == b"\0" * 12
    finally:
        ws.close()


def test_session_ended_by_the_server_is_announced(server: LiveServer) -> None:
    ws = open_ws(server)
    ws.send(json.dumps({"type": "start"}))
    started = json.loads(ws.recv(timeout=5))
    sid = started["session_id"]
    owner = {"Authorization": f"Bearer {started['session_secret']}"}
    reply = httpx.delete(f"{server.url}/v1/sessions/{sid}", timeout=5, headers=owner)
    assert reply.status_code == 200
    msg = json.loads(ws.recv(timeout=5))
    assert msg.pop("stats")["session_id"] == sid  # the final stats (docs/protocol.md 3.1)
    assert msg == {"type": "ended", "reason": "ended by API request", "session_id": sid}
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert ws.close_code == 1000


def test_idle_session_ends(server_factory: Any) -> None:
    srv = server_factory(ServerConfig(pipeline="passthrough", port=0, idle_timeout_s=0.3),
                         transports=[WebSocketTransport])
    ws = open_ws(srv, start=True)
    msg = json.loads(ws.recv(timeout=5))
    assert msg["type"] == "ended" and msg["reason"].startswith("idle")
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    assert ws.close_code == 1000


def test_tokens(server_factory: Any) -> None:
    srv = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=("s3cret",)),
                         transports=[WebSocketTransport])
    ws = open_ws(srv, hello=False)
    ws.send(json.dumps({"type": "hello", "version": 1, "token": "wrong"}))
    expect_fatal(ws, "unauthorized", close_code=1008)
    ws = open_ws(srv, hello=False)
    ws.send(json.dumps({"type": "hello", "version": 1}))
    expect_fatal(ws, "unauthorized", close_code=1008)
    for headers, query, token in [({"Authorization": "Bearer s3cret"}, "", None),
                                  ({}, "?token=s3cret", None), ({}, "", "s3cret")]:
        ws = connect(ws_url(srv, query), open_timeout=10, additional_headers=headers)
        ws.send(json.dumps({"type": "hello", "version": 1, **({"token": token} if token else {})}))
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        ws.close()


def test_shutdown_closes_cleanly(server_factory: Any) -> None:
    """uvicorn closes live sockets with 1012 (service restart) before the app's shutdown runs; a
    connection still open when the transport closes gets `ended` and 1001. Either way: clean."""
    srv = server_factory(transports=[WebSocketTransport])
    ws = open_ws(srv, start=True)
    srv.server.should_exit = True
    try:
        msg = json.loads(ws.recv(timeout=10))
        assert msg["type"] == "ended" and msg["reason"] == "server shutting down"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    except ConnectionClosed:
        pass
    assert ws.close_code in (1001, 1012)
