"""The `voice` pipeline over the WebSocket API: PCM in, paced PCM out, JSON events; barge-in;
a client that vanishes mid-reply; a format the models cannot take. A real server, real models,
a real local LLM endpoint (tests/pipelines/voice/fake_llm.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamserve.client import OutputFrame, StreamClient
from streamserve.pipelines.voice.asr import normalize
from streamserve.pipelines.voice.audio import MODEL_RATE, resample
from tests.conftest import LiveServer
from tests.pipelines.voice.conftest import espeak_wav, read_wav
from tests.pipelines.voice.fake_llm import FakeLLM

pytestmark = pytest.mark.slow


class Call:
    """One voice session: sends audio at the pace of a microphone, records what comes back."""

    def __init__(self, client: StreamClient) -> None:
        self.client = client
        self.audio: list[OutputFrame] = []
        self.events: list[dict[str, Any]] = []
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._read_events())]

    async def _read(self) -> None:
        async for out in self.client:
            self.audio.append(out)

    async def _read_events(self) -> None:
        while True:
            self.events.append(await self.client.events.get())

    def of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name and all(e.get(k) == v for k, v in match.items())]

    async def send(self, pcm: np.ndarray, rate: int, until: Any = None) -> float:
        """Send [C, N] int16 in 20 ms messages, paced; returns the wall time the last one left."""
        step = rate // 50
        start = time.monotonic()
        for n, i in enumerate(range(0, pcm.shape[1], step)):
            await self.client.send_audio(pcm[:, i:i + step], rate)
            if until is not None and until(self):
                break
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
        return time.monotonic()

    def heard(self, asr: Any) -> str:
        pcm = np.concatenate([f.data[0] for f in self.audio]).astype(np.float32) / 32768.0
        return normalize(asr(resample(pcm, 24000, MODEL_RATE)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def pcm16(audio: np.ndarray, channels: int = 1) -> np.ndarray:
    return np.tile((np.clip(audio, -1, 1) * 32767).astype(np.int16), (channels, 1))


def silence(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    return np.zeros((channels, int(seconds * rate)), np.int16)


def connect(server: LiveServer, **params: Any) -> StreamClient:
    return StreamClient(f"ws://127.0.0.1:{server.port}/v1/ws", pipeline="voice", params=params,
                        kinds=("audio",), open_timeout=120.0)


async def test_spoken_question_over_websocket(server: LiveServer, parts: Any, tmp_path: Path) -> None:
    wav, rate = read_wav(espeak_wav("What is the capital of France?", tmp_path / "q.wav"))
    stereo = pcm16(resample(wav[0].astype(np.float32) / 32768, rate, 44100), channels=2)  # 44.1 kHz stereo
    async with connect(server) as client:
        call = Call(client)
        await call.send(silence(0.3, 44100, 2), 44100)
        await call.send(stereo, 44100)
        await call.send(silence(8.0, 44100, 2), 44100,
                        until=lambda c: bool(c.of("transcript", role="agent", final=True)))
        await asyncio.sleep(0.3)
        await call.stop()
        user = call.of("transcript", role="user", final=True)
        assert user and {"capital", "france"} <= set(normalize(user[0]["text"]).split())
        assert call.of("turn") and call.of("thinking")
        assert call.audio and all(f.sample_rate == 24000 and f.data.shape == (1, 480) for f in call.audio)
        assert "paris" in call.heard(parts.asr)
        # Paced in real time: frames arrive spread over about their own duration, not in a burst.
        span = call.audio[-1].received - call.audio[0].received
        assert span >= 0.7 * len(call.audio) * 0.02
        stats = await client.stats()
        assert stats["session"]["dropped_overload"] == 0 and stats["session"]["dropped_inbox"] == 0


async def test_barge_in_over_websocket_stops_agent_audio(server: LiveServer, say: Any, llm: FakeLLM) -> None:
    async with connect(server) as client:
        call = Call(client)
        await call.send(pcm16(np.concatenate([np.zeros(4800, np.float32), say("Tell me everything about France.")])),
                        MODEL_RATE)
        await call.send(silence(10.0, MODEL_RATE), MODEL_RATE, until=lambda c: len(c.audio) >= 50)
        assert len(call.audio) >= 50, call.events
        disconnects = llm.disconnects
        speech = say("Stop talking and tell me about spiders instead.")
        speech = speech[np.flatnonzero(np.abs(speech) > 0.02)[0]:]
        onset = time.monotonic()
        n_before = len(call.audio)
        await call.send(pcm16(speech), MODEL_RATE)
        await call.send(silence(1.0, MODEL_RATE), MODEL_RATE)
        await call.stop()
        assert call.of("barge_in")
        # The old reply's audio stops within 300 ms of wall time after the onset was sent (VAD
        # windows, the engine step and loopback delivery included); the new reply only starts after
        # the interruption has ended, more than a second later.
        late = [f for f in call.audio[n_before:] if onset + 0.3 < f.received < onset + 1.2]
        assert late == []
        assert llm.wait_for(lambda: llm.disconnects > disconnects, timeout=5.0)


async def test_client_vanishing_mid_reply_leaves_nothing_running(server: LiveServer, say: Any,
                                                                 llm: FakeLLM) -> None:
    client = connect(server)
    await client.connect()
    call = Call(client)
    await call.send(pcm16(np.concatenate([np.zeros(4800, np.float32), say("Tell me everything about France.")])),
                    MODEL_RATE)
    await call.send(silence(10.0, MODEL_RATE), MODEL_RATE, until=lambda c: len(c.audio) >= 10)
    assert len(call.audio) >= 10
    sid = client.session_id
    disconnects = llm.disconnects
    assert client._ws is not None
    client._ws.transport.abort()  # the network goes away: no close frame, no `end`
    await call.stop()
    def gone() -> bool:
        deadline = time.monotonic() + 5.0
        while any(s.id == sid for s in server.manager.list()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    assert await asyncio.to_thread(gone)  # the session ended within 5 s
    assert llm.wait_for(lambda: llm.disconnects > disconnects and llm.active == 0, timeout=5.0)


async def test_unsupported_sample_rate_ends_the_session_with_a_clear_error(server: LiveServer) -> None:
    async with connect(server) as client:
        await client.send_audio(np.zeros((1, 1920), np.int16), 96000)
        async with asyncio.timeout(10):
            async for _ in client:  # no output: the stream ends when the session does
                pass
        assert client.end_reason is not None
        assert "96000" in client.end_reason and "sample rate" in client.end_reason


async def test_recording_a_voice_session_is_refused_with_a_reason(server: LiveServer) -> None:
    """Recordings hold video; a voice session has none, so starting one says so instead of writing an
    empty file (HTTP 409 `no_video_output`, and a non-fatal error over the WebSocket)."""
    import httpx

    from streamserve.client import ServerError

    async with connect(server) as client:
        with pytest.raises(ServerError, match="produces no video"):
            await client.record(True)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            reply = await http.patch(f"/v1/sessions/{client.session_id}/recording", json={"record": True},
                                     headers={"Authorization": f"Bearer {client.session_secret}"})
            assert reply.status_code == 409 and reply.json()["error"] == "no_video_output"
            assert "'voice' pipeline" in reply.json()["message"]
            missing = await http.get(f"/v1/sessions/{client.session_id}/recording",
                                     headers={"Authorization": f"Bearer {client.session_secret}"})
            assert missing.status_code == 404  # nothing was started
        await client.send_audio(np.zeros((1, 320), np.int16), MODEL_RATE)  # the session goes on
        assert client.end_reason is None


async def test_a_reply_ready_between_input_chunks_goes_out_without_waiting_for_the_next(
        server: LiveServer, say: Any) -> None:
    """The agent's results (transcripts, verdicts, speech) come from worker threads; each asks the engine
    for a step at once (a tick) instead of waiting for the next input chunk. Shown with a client that
    goes quiet after its question, in the cascade mode, whose reply (final transcript, then the LLM's
    first clause, 11 words at 40 ms a word, then speech) is ready well after the last chunk (the turn
    ends at least 192 ms of silence after the speech, the 0.45 s of silence sent): it still starts,
    as far ahead of the input clock as the agent's lead allows (60 ms), and the rest follows the input
    clock when audio comes again. Ticks are not input: `audio_in` counts what the client sent."""
    async with connect(server, think=False) as client:
        call = Call(client)
        question = say("What color is the sky?")  # "The sky looks blue because ... the most."
        question = question[:np.flatnonzero(np.abs(question) > 0.02)[-1] + 1]
        sent = pcm16(np.concatenate([np.zeros(4800, np.float32), question, np.zeros(7200, np.float32)]))
        last_sent = await call.send(sent, MODEL_RATE)  # the question, then 0.45 s of silence: its turn ends
        await asyncio.sleep(2.0)  # nothing sent (the server's idle timeout is 3 s)
        early = [f for f in call.audio if f.received > last_sent + 0.05]
        assert 1 <= len(early) <= 4, call.events  # released with no input after the question: the lead only
        await call.send(silence(1.0, MODEL_RATE), MODEL_RATE)
        await asyncio.sleep(0.2)
        await call.stop()
        assert len(call.audio) >= len(early) + 40  # then paced by the input clock again
        stats = (await client.stats())["session"]
        assert stats["audio_in"] == -(-sent.shape[1] // 320) + 50 and stats["dropped_expired"] == 0
