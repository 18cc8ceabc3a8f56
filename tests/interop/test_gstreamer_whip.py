"""GStreamer's `webrtcbin` (RSA DTLS certificate) publishes over WHIP; an aiortc WHEP viewer watches.

The publisher is `tests/interop/gst_whip_publish.py`, run with the system Python (Debian's
`python3-gi`). Without `streamserve.transport.dtls` the DTLS handshake fails ("no shared cipher").
Skipped when GStreamer's webrtcbin is not installed, unless STREAMSERVE_REQUIRE_GSTREAMER=1 (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.conftest import LiveServer

SYSTEM_PYTHON = "/usr/bin/python3"
PUBLISHER = Path(__file__).with_name("gst_whip_publish.py")
CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
         "from gi.repository import Gst; Gst.init(None); import sys; "
         "sys.exit(0 if all(Gst.ElementFactory.find(e) for e in sys.argv[1:]) else 3)")
ELEMENTS = ("webrtcbin", "nicesrc", "dtlssrtpenc", "vp8enc", "x264enc", "opusenc", "videotestsrc")


def gstreamer_available() -> bool:
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", CHECK, *ELEMENTS], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


pytestmark = [pytest.mark.slow]
if not gstreamer_available():
    if os.environ.get("STREAMSERVE_REQUIRE_GSTREAMER") == "1":
        raise RuntimeError(f"GStreamer webrtcbin and {ELEMENTS} are required (Debian gstreamer1.0-* packages)")
    pytestmark.append(pytest.mark.skip(reason="GStreamer webrtcbin / python3-gi not installed"))


class Viewer:
    """A WHEP viewer (aiortc) that keeps the video frames and counts audio frames it receives."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback only
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.frames: list[np.ndarray] = []  # [H, W, 3] uint8
        self.audio_frames = 0
        self.audio_peak = 0
        self.enough = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._consume(track))))

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame: Any = await track.recv()
                if track.kind == "video":
                    self.frames.append(frame.to_ndarray(format="rgb24"))
                    if len(self.frames) >= 30:
                        self.enough.set()
                else:
                    self.audio_frames += 1
                    self.audio_peak = max(self.audio_peak, int(np.abs(frame.to_ndarray()).max()))
        except MediaStreamError:
            pass

    async def watch(self, http: httpx.AsyncClient, path: str) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        reply = await http.post(path, content=self.pc.localDescription.sdp,
                                headers={"Content-Type": "application/sdp"})
        if reply.status_code == 201:
            await self.pc.setRemoteDescription(RTCSessionDescription(reply.text, "answer"))
        return reply

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def read_event(proc: asyncio.subprocess.Process, wanted: str) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"publisher exited before {wanted!r}: {err.decode(errors='replace')[-2000:]}")
        event = json.loads(line)
        if event["event"] == wanted:
            return dict(event)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_webrtcbin_publishes_over_whip(server_factory: Callable[..., LiveServer], codec: str) -> None:
    server = server_factory()
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(PUBLISHER), f"{server.url}/whip/gst-{codec}", "--codec", codec, "--seconds", "40",
        "--until-stdin-closes", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    viewer = Viewer()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http, asyncio.timeout(90):
            posted = await read_event(proc, "posted")
            assert posted["status"] == 201
            await read_event(proc, "connected")  # DTLS completed with an RSA-certificate peer
            reply = await viewer.watch(http, f"/whep/gst-{codec}")
            assert reply.status_code == 201, reply.text
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(viewer.enough.wait(), 30)
            stats = (await http.get(f"/v1/streams/gst-{codec}")).json()
            assert viewer.enough.is_set(), f"{len(viewer.frames)} frames reached the viewer; stream: {stats}"
            assert proc.stdin is not None
            proc.stdin.close()  # the publisher DELETEs its resource and exits
            deleted = await read_event(proc, "deleted")
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await viewer.close()
    assert deleted["status"] == 200
    assert stats["frames_in"] >= 30 and stats["audio_in"] > 0, stats
    frames = viewer.frames
    assert frames[0].shape == (240, 320, 3)
    # videotestsrc's ball moves: later frames differ from the first, and are not blank.
    moved = [float(np.abs(f.astype(np.int16) - frames[0].astype(np.int16)).mean()) for f in frames[10:]]
    assert max(moved) > 1.0, moved
    assert all(float(f.std()) > 10 for f in frames), "a blank frame arrived"
    assert viewer.audio_frames > 0 and viewer.audio_peak > 1000, "the Opus sine tone did not come back"

