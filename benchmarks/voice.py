"""Voice benchmark: streamserve's duplex agent against a sequential cascade, same models, same run.

A real server (uvicorn, `create_app`, the `voice` pipeline) runs in this process's background
thread; clients speak generated questions (hibari TTS, the end of speech known from the WAV) over
the WebSocket API in real-time 20 ms PCM messages and measure, at the client:

- response latency: end of the user's speech -> first agent audio frame received, p50 / p95;
- barge-in: every other answer is interrupted 0.5 s into its audio by the next question;
  interruption onset sent -> last frame of the old answer received (+ its 20 ms), p50 / p95.

Both modes are the same session type with one parameter changed: `think=true` (duplex: partial
transcripts warm the LM, every pause is transcribed and starts a speculative answer whose first
clause is synthesized before the turn is known to be over) and `think=false` (the cascade that
Pipecat-style pipelines run by default: turn end -> ASR of the turn -> LLM -> TTS by clause). Same
VAD, Smart Turn, Whisper tiny.en, LM and hibari. 1 and 4 concurrent sessions.

Run: `python benchmarks/voice.py` (`--llm-url` for an endpoint, `--utterances`, `--sessions 1 4`).
Prints a markdown table and writes JSON with `--json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import threading
import time
from typing import Any

import numpy as np

QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "What color is the sky?",
    "Who wrote Romeo and Juliet?", "What is two plus two?", "Tell me a fun fact about cats.",
    "What is the largest ocean on Earth?", "How many days are in a week?", "What do bees make?",
    "Can you name a fruit that is yellow?", "What is the opposite of hot?", "Where do penguins live?",
    "What is the boiling point of water?", "How many hours are in a day?", "What language is spoken in Spain?",
    "What is the tallest animal?", "Which planet is closest to the sun?", "What do cows drink?",
    "How many wheels does a bicycle have?", "What season comes after winter?", "Why is the sea salty?",
    "What is the capital of Japan?", "What sound does a dog make?", "How many continents are there?",
]
RATE = 16_000
FRAME = 320  # 20 ms


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return int(loud[0]), int(loud[-1]) + 1


ANSWER = "Sure. Here is a short answer to your question, in a few words."


def start_instant_llm(token_s: float) -> str:
    """A local OpenAI-compatible streaming endpoint that answers every question with ANSWER, one
    word per `token_s` (a stand-in for a GPU LLM server: it isolates the voice pipeline's own cost)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for i, word in enumerate(ANSWER.split(" ")):
                    time.sleep(token_s)
                    chunk = {"choices": [{"delta": {"content": (" " if i else "") + word}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def start_server(llm_url: str | None, llm_model: str | None) -> tuple[Any, int]:
    import uvicorn

    from streamserve.core.config import ServerConfig
    from streamserve.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = tuple((k, v) for k, v in (("llm_url", llm_url), ("llm_model", llm_model)) if v)
    config = ServerConfig(pipeline="voice", port=port, log_level="warning", idle_timeout_s=30.0,
                          max_sessions=8, pipeline_options=options)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


class Caller:
    """One session speaking its questions back to back, measuring at the client."""

    def __init__(self, port: int, think: bool, questions: list[np.ndarray]) -> None:
        self.port, self.think, self.questions = port, think, questions
        self.frames: list[float] = []  # arrival times of agent audio frames
        self.latencies: list[float] = []
        self.barge_ins: list[float] = []
        self.turn_events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.session_stats: dict[str, int] = {}

    async def run(self) -> None:
        from streamserve.client import StreamClient

        async with StreamClient(f"ws://127.0.0.1:{self.port}/v1/ws", pipeline="voice",
                                params={"think": self.think}, kinds=("audio",), open_timeout=300) as client:
            reader = asyncio.create_task(self._read(client))
            events = asyncio.create_task(self._events(client))
            self._t0 = time.monotonic()
            self._sent = 0
            try:
                await self._send(client, np.zeros(RATE // 2, np.float32))
                for i, q in enumerate(self.questions):
                    interrupt_next = i % 2 == 0 and i + 1 < len(self.questions)
                    await self._turn(client, q, interrupt_next)
                s = (await client.stats())["session"]
                self.session_stats = {k: s[k] for k in ("audio_in", "dropped_overload", "dropped_expired",
                                                        "dropped_inbox", "deadline_misses", "audio_out")}
            finally:
                reader.cancel()
                events.cancel()

    async def _read(self, client: Any) -> None:
        async for _ in client:
            self.frames.append(time.monotonic())

    async def _events(self, client: Any) -> None:
        while True:
            ev = await client.events.get()
            if ev["event"] == "turn":
                self.turn_events.append(ev)
            elif ev["event"] == "error":
                self.errors.append(f"{ev['code']}: {ev['message']}")

    async def _send(self, client: Any, audio: np.ndarray, until: Any = None) -> None:
        """Real-time pacing against one clock for the whole call (no drift)."""
        for i in range(0, len(audio), FRAME):
            await client.send_audio((np.clip(audio[i:i + FRAME], -1, 1) * 32767).astype(np.int16)[None, :], RATE)
            self._sent += 1
            ahead = self._t0 + self._sent * FRAME / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            if until is not None and until():
                return

    async def _turn(self, client: Any, q: np.ndarray, interrupt: bool) -> None:
        first, last = speech_span(q)
        await self._send(client, q[:first])
        onset = time.monotonic()  # the first speech sample leaves now
        n = len(self.frames)
        await self._send(client, q[first:last])
        end_of_speech = time.monotonic()
        if self._interrupting:  # this question cut the previous answer: when did its audio stop?
            end = onset
            for t in self.frames[n:]:
                if t - end > 0.15:  # the first gap: the old answer is over
                    break
                end = t
            self.barge_ins.append(end + 0.02 - onset if end > onset else 0.0)
        n = len(self.frames)
        await self._send(client, np.zeros(15 * RATE, np.float32), until=lambda: len(self.frames) > n)
        answer = [t for t in self.frames[n:] if t > end_of_speech]
        if not answer:
            self.errors.append("no answer within 15 s")
            self._interrupting = False
            return
        self.latencies.append(answer[0] - end_of_speech)
        if interrupt:  # 0.5 s of the answer plays, then the next question talks over it
            await self._send(client, np.zeros(RATE // 2, np.float32))
        else:  # let the answer finish
            await self._send(client, np.zeros(20 * RATE, np.float32), until=lambda: self._quiet(0.6))
        self._interrupting = interrupt

    _interrupting = False

    def _quiet(self, seconds: float) -> bool:
        return bool(self.frames) and time.monotonic() - self.frames[-1] > seconds


async def measure(port: int, think: bool, sessions: int, questions: list[np.ndarray]) -> dict[str, Any]:
    per = [questions[i::sessions] for i in range(sessions)]
    callers = [Caller(port, think, qs) for qs in per]
    t0 = time.monotonic()
    await asyncio.gather(*(c.run() for c in callers))
    lat = [x for c in callers for x in c.latencies]
    barge = [x for c in callers for x in c.barge_ins]
    hits = [e.get("speculative_hit") for c in callers for e in c.turn_events]
    return {
        "mode": "duplex" if think else "cascade", "sessions": sessions, "turns": len(lat),
        "latency_p50_ms": _ms(percentile(lat, 50)), "latency_p95_ms": _ms(percentile(lat, 95)),
        "barge_in_p50_ms": _ms(percentile(barge, 50)), "barge_in_p95_ms": _ms(percentile(barge, 95)),
        "barge_ins": len(barge), "speculative_hits": sum(1 for h in hits if h),
        "server_latency_p50_ms": _ms(percentile([e["latency_ms"] / 1000 for c in callers for e in c.turn_events], 50)),
        "errors": [e for c in callers for e in c.errors][:5], "wall_s": round(time.monotonic() - t0, 1),
        "input": {k: sum(c.session_stats.get(k, 0) for c in callers)
                  for k in ("audio_in", "dropped_overload", "dropped_expired", "dropped_inbox", "deadline_misses")},
    }


def brain_name(args: argparse.Namespace) -> str:
    if args.instant_llm is not None:
        return f"instant local endpoint, {args.instant_llm * 1000:g} ms/word"
    return str(args.llm_url or args.llm_model or "local SmolLM2-135M-Instruct")


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utterances", type=int, default=20)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--llm-url", default=None, help="an OpenAI-compatible endpoint instead of the local LM")
    ap.add_argument("--llm-model", default=None, help="a local HF folder or .gguf instead of the default")
    ap.add_argument("--instant-llm", type=float, default=None, metavar="TOKEN_S",
                    help="use a built-in local endpoint streaming a fixed answer, one word per TOKEN_S "
                         "(stands in for a GPU LLM server)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from hibari import Hibari

    from streamserve.pipelines.voice.audio import resample

    tts = Hibari()
    questions = [resample(tts(q, seed=0), 24000, RATE) for q in (QUESTIONS * 4)[:args.utterances]]
    if args.instant_llm is not None:
        args.llm_url = start_instant_llm(args.instant_llm)
    server, port = start_server(args.llm_url, args.llm_model)
    rows = []
    try:
        for sessions in args.sessions:
            for think in (True, False):
                row = asyncio.run(measure(port, think, sessions, questions))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.should_exit = True
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, "
          f"brain: {brain_name(args)}\n")
    print("| mode | sessions | turns | response p50 / p95 ms | barge-in p50 / p95 ms | speculative hits |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['sessions']} | {r['turns']} | {r['latency_p50_ms']} / {r['latency_p95_ms']} | "
              f"{r['barge_in_p50_ms']} / {r['barge_in_p95_ms']} | {r['speculative_hits']} |")
    for sessions in args.sessions:
        d = next(r for r in rows if r["sessions"] == sessions and r["mode"] == "duplex")
        c = next(r for r in rows if r["sessions"] == sessions and r["mode"] == "cascade")
        if d["latency_p50_ms"] and c["latency_p50_ms"]:
            print(f"\n{sessions} session(s): duplex / cascade p50 = {d['latency_p50_ms'] / c['latency_p50_ms']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
