"""A small aiortc client for the transport tests: stamped video (and a tone) out, everything back in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamserve.transport import jitter
from streamserve.transport.probe import StampedVideoTrack, StampReader
from tests.transport.lossy_relay import LossyRelay, relay_answer, relay_offer


class ToneTrack(MediaStreamTrack):
    """20 ms chunks of a 440 Hz tone, 48 kHz mono s16, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._index * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(960) + self._index * 960) / 48_000
        samples = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)[None, :]  # [1, 960]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = self._index * 960
        frame.time_base = Fraction(1, 48_000)
        self._index += 1
        return frame


class AudioMeter:
    """Counts received audio frames and their peak level."""

    def __init__(self) -> None:
        self.frames = 0
        self.peak = 0

    async def consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames += 1
                self.peak = max(self.peak, int(np.abs(frame.to_ndarray()).max()))  # type: ignore[union-attr]


class Client:
    """One WebRTC client session against `base_url`: offer, answer, stamped media, control channel."""

    def __init__(self, base_url: str, *, width: int = 128, height: int = 128, fps: float = 30.0,
                 audio: bool = False, token: str | None = None, relay: LossyRelay | None = None,
                 http_transport: httpx.AsyncBaseTransport | None = None, recovering_receiver: bool = False) -> None:
        self.base_url = base_url
        self.relay = relay  # media goes through this relay when given
        self._http_transport = http_transport  # e.g. httpx.ASGITransport for an in-process app
        # A receiver that recovers from loss like a browser's (NACK retries, PLI, gives up on a lost
        # packet: transport.jitter) instead of aiortc's, which can wait on a lost packet for seconds.
        self._recovering_receiver = recovering_receiver
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = StampedVideoTrack(width, height, fps)
        self.updated = asyncio.Event()  # set on every frame or message received
        self.reader = StampReader(on_frame=self.updated.set)
        self.audio = AudioMeter()
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stats: list[dict[str, Any]] = []
        self.session_id: str | None = None
        self.session_secret = ""
        self.token = token
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.addTrack(self.video)
        if audio:
            self.pc.addTrack(ToneTrack())
        self.control = self.pc.createDataChannel("control")
        self._open = asyncio.Event()
        self.control.on("open", self._open.set)
        self.control.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking whenever something arrives (bound it with a timeout)."""
        while not predicate():
            self.updated.clear()
            await self.updated.wait()

    def _on_message(self, message: str | bytes) -> None:
        self.updated.set()
        msg = json.loads(message)
        if msg.get("type") == "stats":
            self.stats.append(msg)
        else:
            self.messages.put_nowait(msg)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self._recovering_receiver and track.kind == "video":
            receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
            jitter.install(receiver)
        consumer = self.reader.consume(track) if track.kind == "video" else self.audio.consume(track)
        self._tasks.append(asyncio.create_task(consumer))

    async def connect(self, pipeline: str | None = "passthrough", params: dict[str, Any] | None = None) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        if self.relay is not None:
            offer = relay_offer(self.relay, offer)
        body = {"sdp": offer, "type": "offer", "pipeline": pipeline, "params": params}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=20, transport=self._http_transport) as http:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            reply = await http.post("/v1/webrtc/offer", json=body, headers=headers)
        reply.raise_for_status()
        answer = reply.json()
        sdp = answer["sdp"] if self.relay is None else relay_answer(self.relay, answer["sdp"])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, answer["type"]))
        self.session_id = answer["session_id"]
        self.session_secret = answer["session_secret"]
        return str(answer["session_id"])

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a control message once the channel is open; the next non-stats message is the reply."""
        async with asyncio.timeout(5.0):
            await self._open.wait()
            self.control.send(json.dumps(message))
            return await self.messages.get()

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
