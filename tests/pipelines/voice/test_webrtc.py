"""The `voice` pipeline over WebRTC with an aiortc client: Opus in and out in 20 ms frames, events on
the control data channel, a spoken question answered with related speech and no gaps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from fractions import Fraction
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamserve.pipelines.voice.asr import normalize
from streamserve.pipelines.voice.audio import MODEL_RATE, resample
from tests.conftest import LiveServer

pytestmark = pytest.mark.slow
RATE = 48_000


class MicTrack(MediaStreamTrack):
    """A microphone playing `audio` (48 kHz mono float32), then silence, in real-time 20 ms frames."""

    kind = "audio"

    def __init__(self, audio: np.ndarray) -> None:
        super().__init__()
        self._pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        self._index = 0
        self._start: float | None = None
        self.speech_end_wall: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._index * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self._pcm[self._index * 960:(self._index + 1) * 960]
        if len(chunk) < 960:
            if self.speech_end_wall is None:
                self.speech_end_wall = time.monotonic()
            chunk = np.pad(chunk, (0, 960 - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._index * 960
        frame.time_base = Fraction(1, RATE)
        self._index += 1
        return frame


async def test_spoken_question_over_webrtc(server: LiveServer, say: Any, parts: Any) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = MicTrack(resample(np.concatenate([np.zeros(4800, np.float32), say("What is the capital of France?")]),
                            MODEL_RATE, RATE))
    pc.addTrack(mic)  # sendrecv: the agent answers on the same audio m-line
    control = pc.createDataChannel("control")
    events: list[dict[str, Any]] = []
    agent_said = asyncio.Event()

    def on_message(message: str) -> None:
        events.append(json.loads(message))
        ev = events[-1]
        if ev.get("event") == "transcript" and ev.get("role") == "agent" and ev.get("final"):
            agent_said.set()

    control.on("message", on_message)
    received: list[tuple[float, av.AudioFrame]] = []
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                received.append((time.monotonic(), frame))  # type: ignore[arg-type]

    pc.on("track", lambda track: tasks.append(asyncio.create_task(consume(track))))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer", "pipeline": "voice", "params": {}}
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            reply = await http.post("/v1/webrtc/offer", json=body)
        reply.raise_for_status()
        answer = reply.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

        async with asyncio.timeout(30):
            await agent_said.wait()
        await asyncio.sleep(0.5)  # the last frames of the reply arrive
    finally:
        await pc.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    voice_events = [e for e in events if e.get("type") == "event"]
    user = [e for e in voice_events if e["event"] == "transcript" and e["role"] == "user" and e["final"]]
    assert user and "france" in normalize(user[0]["text"])
    assert any(e["event"] == "turn" for e in voice_events)
    # Opus frames of 20 ms; the reply is the loud stretch of what came back.
    assert received and all(f.samples == 960 and f.sample_rate == RATE for _, f in received)
    pcm = [f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0].astype(np.float32) / 32768 for _, f in received]
    loud = [i for i, p in enumerate(pcm) if np.sqrt(np.mean(p**2)) > 0.01]
    assert len(loud) >= 40  # at least 0.8 s of speech came back
    reply_frames = received[loud[0]:loud[-1] + 1]
    steps = np.diff([f.pts for _, f in reply_frames])
    # Consecutive 20 ms frames: no gaps inside the reply. The agent reports each silence it had to
    # leave (its audio came late), which only an overloaded server may do (it then misses input
    # deadlines too); the transport adds none and never sends a frame twice.
    final = next(e for e in voice_events if e["event"] == "transcript" and e["role"] == "agent" and e["final"])
    irregular = [(i, int(step)) for i, step in enumerate(steps) if step != 960]
    assert final["gaps_ms"] == [] or final["late_chunks"] > 0, final
    assert len(irregular) <= len(final["gaps_ms"]) and all(step > 960 for _, step in irregular), (irregular, final)
    audio = np.concatenate(pcm[loud[0]:loud[-1] + 1])
    assert "paris" in normalize(parts.asr(resample(audio, RATE, MODEL_RATE)))
