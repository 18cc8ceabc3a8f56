"""docs/protocol.md, byte by byte: a raw TCP socket, a hand-written WebSocket handshake and framing
(RFC 6455), and headers packed with `struct` from the document's table — no streamserve code on the
client side."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamserve.core.config import ServerConfig
from streamserve.transport.ws import WebSocketTransport
from tests.conftest import LiveServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
HEADER = ">2sBBBBHIIqIHHI"  # section 2.2 of the document
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer(ServerConfig(pipeline="passthrough", port=0), [WebSocketTransport]).start()
    yield srv
    srv.stop()


class RawWebSocket:
    """The client half of RFC 6455 over a plain socket: masked frames out, unmasked frames in."""

    def __init__(self, port: int, path: str = "/v1/ws", extra: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: streamserve.v1\r\n{extra}\r\n")
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed during the handshake"
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), lines[0]
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        assert headers["sec-websocket-accept"] == accept
        assert headers["sec-websocket-protocol"] == "streamserve.v1"
        self.headers = headers

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(head + mask + masked)

    def send_json(self, obj: dict[str, object]) -> None:
        self.send(0x1, json.dumps(obj).encode())

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed mid-frame"
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next whole message; continuation frames are joined."""
        message, first_opcode = b"", None
        while True:
            b0, b1 = self._read(2)
            assert not b1 & 0x80, "server frames are never masked"
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._read(8))
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping: answer and go on
                self.send(0xA, payload)
                continue
            first_opcode = first_opcode if first_opcode is not None else opcode
            message += payload
            if b0 & 0x80:
                return first_opcode, message

    def recv_json(self) -> dict[str, object]:
        opcode, payload = self.recv()
        assert opcode == 0x1, f"expected a text frame, got opcode {opcode}"
        return json.loads(payload)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


def doc_example() -> bytes:
    """The hex dump of section 2.2's example, exactly as the document prints it."""
    text = DOC.read_text()
    block = text.split("Example: a 2×2 red RGB24 frame", 1)[1].split("```", 2)[1]
    return bytes.fromhex(re.sub(r"\s+", "", block))


def test_document_example_matches_the_header_table() -> None:
    example = doc_example()
    assert len(example) == 48
    header = struct.pack(HEADER, b"SS", 1, 1, 2, 0, 0, 7, 0, 1_000_000, 2, 2, 0, 12)
    assert example == header + bytes([255, 0, 0] * 4)


def test_conversation_byte_by_byte(server: LiveServer) -> None:
    ws = RawWebSocket(server.port)
    try:
        ws.send_json({"type": "hello", "version": 1, "client": "raw-socket-test"})
        hello = ws.recv_json()
        assert hello["type"] == "hello" and hello["version"] == 1
        caps = hello["capabilities"]
        assert isinstance(caps, dict)
        assert caps["max_message_bytes"] == 8 * 1024 * 1024 and caps["flow_control"] == "freshest-wins"

        ws.send_json({"type": "start", "pipeline": "passthrough", "id": "s1",
                      "output": {"video": "rgb24", "kinds": ["video"]}})
        started = ws.recv_json()
        assert started["type"] == "started" and started["id"] == "s1" and started["pipeline"] == "passthrough"
        assert started["params"] == {"mirror": False}

        # The document's own example message first, then frames packed by hand.
        ws.send(0x2, doc_example())
        opcode, out = ws.recv()
        assert opcode == 0x2
        magic, version, kind, fmt, flags, res1, seq, ref, pts_us, a, b, res2, plen = struct.unpack(HEADER, out[:36])
        assert (magic, version, kind, fmt, flags & 1, res1, res2) == (b"SS", 1, 1, 2, 1, 0, 0)
        assert (ref, pts_us, a, b, plen) == (7, 1_000_000, 2, 2, 12)
        assert out[36:] == bytes([255, 0, 0] * 4)

        rng = np.random.default_rng(0)
        for i in range(3):
            w, h = 32 + 8 * i, 24
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8).tobytes()
            header = struct.pack(HEADER, b"SS", 1, 1, 2, 0, 0, 100 + i, 0, -5 + i * 33_333, w, h, 0, len(pixels))
            ws.send(0x2, header + pixels)
            opcode, out = ws.recv()
            assert opcode == 0x2
            fields = struct.unpack(HEADER, out[:36])
            assert fields[6] == i + 1  # the server's own output sequence: 0 was the example
            assert fields[4] & 1 and fields[7] == 100 + i  # ref = our seq
            assert fields[8] == -5 + i * 33_333 and (fields[9], fields[10]) == (w, h)
            assert out[36:] == pixels  # rgb24 through passthrough is lossless

        ws.send_json({"type": "update", "id": 9, "params": {"mirror": True}})
        updated = ws.recv_json()
        assert updated == {"type": "updated", "params": {"mirror": True}, "id": 9}

        ws.send_json({"type": "stats"})
        stats = ws.recv_json()
        assert stats["type"] == "stats"
        session = stats["session"]
        assert isinstance(session, dict) and session["frames_in"] == 4 and session["frames_out"] == 4

        ws.send_json({"type": "end", "id": "bye"})
        ended = ws.recv_json()
        assert ended["type"] == "ended" and ended["id"] == "bye" and ended["reason"] == "ended by client"
        opcode, payload = ws.recv()
        assert opcode == 0x8 and struct.unpack(">H", payload[:2])[0] == 1000
    finally:
        ws.close()
    assert server.manager.list() == []


def test_fragmented_and_large_messages_follow_rfc6455(server: LiveServer) -> None:
    """A 640x480 RGB24 frame (921,636 bytes: 64-bit length) comes back whole."""
    ws = RawWebSocket(server.port)
    try:
        ws.send_json({"type": "hello", "version": 1})
        ws.recv_json()
        ws.send_json({"type": "start", "output": {"video": "rgb24", "kinds": ["video"]}})
        assert ws.recv_json()["type"] == "started"
        w, h = 640, 480
        pixels = np.full((h, w, 3), 77, np.uint8).tobytes()
        ws.send(0x2, struct.pack(HEADER, b"SS", 1, 1, 2, 0, 0, 0, 0, 0, w, h, 0, len(pixels)) + pixels)
        opcode, out = ws.recv()
        assert opcode == 0x2 and len(out) == 36 + w * h * 3 and out[36:] == pixels
    finally:
        ws.close()


def test_media_is_never_deflated() -> None:
    """Section 1: the server, run with `streamserve serve`'s uvicorn options, declines
    permessage-deflate (which browsers and most libraries offer): deflating a 256x256 RGB24 frame
    costs ~5 ms of CPU per frame and direction for ~18% fewer bytes. (The SDK's side: test_client.py.)"""
    srv = LiveServer(ServerConfig(pipeline="passthrough", port=0), [WebSocketTransport], production=True).start()
    try:
        ws = RawWebSocket(srv.port, extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        try:
            assert "sec-websocket-extensions" not in ws.headers  # declined: frames go uncompressed
            ws.send_json({"type": "hello", "version": 1})
            b0, _ = ws._read(2)  # the reply's first frame header: a final text frame, RSV1 (compressed) clear
            assert b0 == 0x81
        finally:
            ws.close()
    finally:
        srv.stop()
