"""Limits on what a client can make the server hold: session slots, request bodies, connections."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from streamserve.core.config import ServerConfig
from streamserve.core.limits import LimitsConfig
from tests.conftest import LiveServer
from tests.security.conftest import GuardedServer
from tests.transport.whip_clients import OBS_OFFER


async def _start_ws(url: str) -> dict[str, Any]:
    async with connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1}))
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"type": "start", "pipeline": "passthrough"}))
        reply: dict[str, Any] = json.loads(await ws.recv())
        await asyncio.sleep(0.5)  # hold the session while the others start
        return reply


async def test_concurrent_starts_never_exceed_max_sessions(server_factory: Any) -> None:
    server: LiveServer = server_factory(max_sessions=3)
    url = server.url.replace("http://", "ws://") + "/v1/ws"
    replies = await asyncio.gather(*(_start_ws(url) for _ in range(5)))
    kinds = sorted(r["type"] if r["type"] == "started" else r["code"] for r in replies)
    assert kinds == ["session_limit", "session_limit", "started", "started", "started"]


def test_declared_oversized_bodies_get_413_before_the_body_is_read(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        big = http.post("/whip/cam", content=b"v" * (LimitsConfig().max_body_bytes + 1),
                        headers={"Content-Type": "application/sdp"})
        assert big.status_code == 413 and big.json()["error"] == "too_large"
        frag = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n" * (5_000_000 // 52)
        patch = http.patch("/whip/cam/abc", content=frag, headers={"Content-Type": "application/trickle-ice-sdpfrag"})
        assert patch.status_code == 413 and "16384" in patch.json()["message"]
    # 48 MiB announced: the answer comes at once, with nothing of the body sent.
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        sock.sendall(b"POST /whip/cam HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                     b"Content-Length: 50331648\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")


def test_chunked_bodies_are_cut_off_while_streaming(live_server: LiveServer) -> None:
    """A chunked 48 MiB trickle-ICE PATCH and a chunked 48 MiB offer get 413 long before the end."""
    created = httpx.post(live_server.url + "/whip/cam", content=OBS_OFFER, headers={"Content-Type": "application/sdp"},
                         timeout=20)
    assert created.status_code == 201
    resource = created.headers["location"]
    for path, ctype in ((resource, "application/trickle-ice-sdpfrag"), ("/v1/webrtc/offer", "application/json")):
        sock = socket.create_connection(("127.0.0.1", live_server.port), timeout=10)
        sock.sendall(f"PATCH {path} HTTP/1.1\r\n".replace("PATCH", "POST" if "offer" in path else "PATCH").encode()
                     + f"Host: x\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        answer = b""

        def read(conn: socket.socket = sock) -> None:
            nonlocal answer
            answer = conn.recv(4096)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            while reader.is_alive() and sent < 48 << 20:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server closed the connection after answering
            pass
        reader.join(10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
        assert sent < 24 << 20, f"{path}: {sent} bytes went in before the 413"


def _serves_within(url: str, seconds: float) -> bool:
    """Whether `url`/healthz answers 200 within `seconds` (e.g. once a connection cap frees)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading and discarding what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_half_sent_request_heads_are_closed(guarded_factory: Any) -> None:
    limits = LimitsConfig(header_timeout_s=1.0, keep_alive_s=1.0)
    server: GuardedServer = guarded_factory(ServerConfig(pipeline="passthrough", port=0, limits=limits))
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for _ in range(4):  # a byte every 0.3 s: never a complete head
        time.sleep(0.3)
        try:
            slow.sendall(b"X")
        except OSError:
            break
    assert _closed_within(idle, 10.0)
    assert _closed_within(slow, 10.0)
    # A keep-alive connection: served, then closed once idle; a second half head there is closed too.
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert _closed_within(kept, 10.0)
    # Meanwhile the server serves everyone else.
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    for sock in (idle, slow, kept):
        sock.close()


def test_connections_beyond_the_cap_are_closed(guarded_factory: Any) -> None:
    limits = LimitsConfig(max_connections=4, header_timeout_s=30.0)
    server: GuardedServer = guarded_factory(ServerConfig(pipeline="passthrough", port=0, limits=limits))
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    time.sleep(0.2)  # let the server register them
    extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert _closed_within(extra, 5.0)
    for sock in held:
        sock.close()
    assert _serves_within(server.url, 10.0), "the server did not accept connections after the others closed"
