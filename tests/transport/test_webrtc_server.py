"""End to end against the real server (`create_app` on a live port): an aiortc client streams stamped
frames through `POST /v1/webrtc/offer` and the passthrough pipeline, and reads them back."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from streamserve.core.config import ServerConfig
from streamserve.core.ports import SessionFactory
from streamserve.transport.probe import BAND_TOP, stamp
from streamserve.transport.webrtc import WebRTCTransport
from tests.conftest import LiveServer
from tests.transport.client import Client

ROOT = Path(__file__).resolve().parents[2]
ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def webrtc(server_factory: ServerFactory) -> tuple[LiveServer, WebRTCTransport]:
    """The real server with the WebRTC transport (kept for inspection), running passthrough."""
    built: list[WebRTCTransport] = []

    def make(sessions: SessionFactory, config: ServerConfig) -> WebRTCTransport:
        built.append(WebRTCTransport(sessions, config))
        return built[-1]

    return server_factory(transports=[make]), built[0]


@pytest.fixture
def server(webrtc: tuple[LiveServer, WebRTCTransport]) -> LiveServer:
    return webrtc[0]


def active_sessions(text: str) -> float:
    """The sum of streamserve_active_sessions over pipelines, from a /metrics body."""
    values = re.findall(r"^streamserve_active_sessions\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(v) for v in values)


async def session_gone(http: httpx.AsyncClient, sid: str, within: float) -> bool:
    """Poll GET /v1/sessions/{sid} until 404, for at most `within` seconds."""
    for _ in range(int(within / 0.05)):
        if (await http.get(f"/v1/sessions/{sid}")).status_code == 404:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_frames_round_trip_in_order(server: LiveServer) -> None:
    client = Client(server.url, width=128, height=128, fps=30, audio=True)
    sid = await client.connect("passthrough")
    try:
        async with asyncio.timeout(10):
            await client.until(lambda: len(client.reader.seen) >= 10)
        start_index, start = client.reader.seen[-1]
        await asyncio.sleep(2.0)
        seen = [(i, t) for i, t in client.reader.seen if i >= start_index]
        indices = [i for i, _ in seen]
        # Order: strictly increasing, nothing duplicated or reordered.
        assert indices == sorted(set(indices)), indices
        # Rate: at least 80% of the 30 fps sent in the same window came back.
        elapsed = seen[-1][1] - start
        assert (len(indices) - 1) / elapsed >= 0.8 * 30, (len(indices), elapsed)
        # Content: the picture above the code band is what was sent (VP8 twice: small error only).
        last = client.reader.last_frame
        assert last is not None and last.shape == (128, 128, 3)
        sent = stamp(client.reader.seen[-1][0], 128, 128, client.video._pictures[client.reader.seen[-1][0] % 30])
        top = int(128 * BAND_TOP)
        error = np.abs(last[:top].astype(np.int16) - sent[:top].astype(np.int16)).mean()
        assert error < 12, error
        latencies = sorted(client.reader.latencies(client.video.sent_at))
        print(f"loopback aiortc->server->aiortc latency p50 {1000 * latencies[len(latencies) // 2]:.1f} ms")

        # Audio went through too (a tone comes back as a tone).
        assert client.audio.frames > 20 and client.audio.peak > 1000

        # The control channel: periodic stats, live params, typed errors.
        async with asyncio.timeout(3):
            await client.until(lambda: bool(client.stats))
        assert client.stats[-1]["session_id"] == sid and client.stats[-1]["frames_in"] > 30
        reply = await client.request({"type": "update", "params": {"mirror": True}})
        assert reply == {"type": "params", "params": {"mirror": True}}
        reply = await client.request({"type": "update", "params": {"mirror": 3}})
        assert reply["type"] == "error" and reply["error"] == "invalid_params" and reply["field"] == "mirror"
        # Mirrored frames no longer read the right way round.
        before = client.reader.unreadable
        async with asyncio.timeout(5):
            await client.until(lambda: client.reader.unreadable > before + 5)
        owner = {"Authorization": f"Bearer {client.session_secret}"}
        async with httpx.AsyncClient(base_url=server.url, headers=owner) as http:
            assert (await http.get(f"/v1/sessions/{sid}")).json()["params"] == {"mirror": True}
    finally:
        await client.close()
    # A clean close ends the session at once.
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        assert await session_gone(http, sid, within=3)
        assert active_sessions((await http.get("/metrics")).text) == 0


async def valid_offer() -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


async def test_bad_offers_are_rejected_with_reasons(server: LiveServer) -> None:
    sdp = await valid_offer()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        async def post(**body: object) -> httpx.Response:
            return await http.post("/v1/webrtc/offer", json={"type": "offer", **body})

        reply = await post(sdp="v=0\r\nthis is not sdp\r\n")
        assert reply.status_code == 400 and reply.json()["error"] == "bad_request"
        assert "line 2 is not <letter>=<value>" in reply.json()["message"]
        reply = await post(sdp=sdp.replace("a=ice-ufrag", "a=x-ufrag"))
        assert reply.status_code == 400 and "ICE username fragment" in reply.json()["message"]
        reply = await post(sdp=sdp, pipeline="nope")
        assert reply.status_code == 400 and reply.json()["error"] == "unknown_pipeline"
        assert "passthrough" in reply.json()["available"] and "passthrough" in reply.json()["message"]
        reply = await post(sdp=sdp, pipeline="passthrough", params={"mirror": "sideways"})
        assert reply.status_code == 422 and reply.json()["field"] == "mirror"
        reply = await post(sdp=sdp, pipeline="passthrough", params={"colour": 1})
        assert reply.status_code == 422 and reply.json()["field"] == "colour"
        audio_only = re.sub(r"m=video", "m=audio", sdp)  # no video section left
        reply = await post(sdp=audio_only)
        assert reply.status_code == 400
        assert (await http.get("/v1/sessions")).json() == []


def test_vanished_client_is_gone_within_5_s(webrtc: tuple[LiveServer, WebRTCTransport]) -> None:
    """SIGKILL the client (no DTLS close, no SCTP abort): session and tracks end within 5 s."""
    server, transport = webrtc
    proc = subprocess.Popen([sys.executable, "-m", "tests.transport.vanishing_client", server.url],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        sid, _, secret = proc.stdout.readline().strip().partition(" ")
        assert sid, "the client did not connect"
        with httpx.Client(base_url=server.url, timeout=5, headers={"Authorization": f"Bearer {secret}"}) as http:
            deadline = time.monotonic() + 10
            while http.get(f"/v1/sessions/{sid}").json()["frames_in"] < 10:
                assert time.monotonic() < deadline, "no frames reached the session"
                time.sleep(0.1)
            peer = transport.peers[sid]
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while http.get(f"/v1/sessions/{sid}").status_code != 404:
                assert time.monotonic() - killed < 5.0, "the session outlived its client by 5 s"
                time.sleep(0.05)
            gone = time.monotonic() - killed
            assert active_sessions(http.get("/metrics").text) == 0
            assert transport.peers == {} and peer.closed and peer.pc.connectionState == "closed"
            assert len(peer.tracks) == 2 and all(track.readyState == "ended" for track in peer.tracks)
        print(f"vanished client reaped after {gone:.2f} s")
    finally:
        proc.kill()
        proc.wait(5)
