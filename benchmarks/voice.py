"""Voice benchmark: streamserve's duplex agent against a sequential cascade, same models, same run.

A real server (uvicorn, `create_app`, the `voice` pipeline) runs in this process's background
thread; clients speak generated questions (hibari TTS, the end of speech known from the WAV) over
the WebSocket API in real-time 20 ms PCM messages and measure, at the client:

- response latency: end of the user's speech (the question's last sample above 0.02) -> first agent
  audio frame received, p50 / p95. The question's quiet tail after that sample is sent too, and a
  -60 dBFS noise floor lies under everything sent (`--noise-dbfs`), as from a microphone: over
  digital silence after a cut, Silero VAD calls the end ≈ 60 ms sooner than it does live;
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
import collections
import json
import os
import time
from typing import Any

import numpy as np
from voice_servers import ServerProcess, start_instant_llm, start_server, video_process

from streamserve.core.cpu import cpu_model, usable_cores

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


# mode -> (think, session params)
MODES: dict[str, tuple[bool, dict[str, Any]]] = {
    "duplex": (True, {}),
    "duplex-notext": (True, {"read_text": False}),  # the transcript has no say (the default until 2026-12-07)
    "duplex-early": (True, {"confident_silence_ms": 96}),  # the early tier, read with the transcript
    "duplex-early-notext": (True, {"confident_silence_ms": 96, "read_text": False}),  # ... on Smart Turn alone
    "duplex-nopartials": (True, {"partial_every_ms": 0}),
    "duplex-vadonly": (True, {"quiet_db": 0}),  # speech ends on the VAD alone (the default until 2026-12-07)
    "duplex-nocont": (True, {"continuation_ms": 0}),  # speech after an answer started never continues the turn
    "cascade": (False, {}),
    "cascade-vadonly": (False, {"quiet_db": 0}),
    "cascade-early": (False, {"read_text": False}),  # the cascade has no pause transcript
}


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def speech_span(audio: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return int(loud[0]), int(loud[-1]) + 1


def with_mid_pause(audio: np.ndarray, pause_s: float) -> tuple[np.ndarray, int]:
    """The question with `pause_s` of silence inserted mid-sentence (at the quietest 40 ms between
    30% and 75% of its speech: between two words, with the sentence's own non-final prosody), and
    the sample where that pause starts."""
    first, last = speech_span(audio)
    n, w = last - first, 640
    cuts = range(first + int(0.3 * n), first + int(0.75 * n), 160)
    cut = min(cuts, key=lambda c: float(np.mean(audio[c - w // 2:c + w // 2] ** 2)))
    return np.concatenate([audio[:cut], np.zeros(int(pause_s * RATE), np.float32), audio[cut:]]), cut


class Caller:
    """One session speaking its questions back to back, measuring at the client."""

    def __init__(self, port: int, params: dict[str, Any], questions: list[tuple[np.ndarray, int | None]],
                 delay_s: float = 0.0, noise_rms: float = 0.0, seed: int = 0) -> None:
        self.port, self.params, self.questions, self.delay_s = port, params, questions, delay_s
        self.noise_rms = noise_rms  # a microphone's noise floor under everything sent (0: digital silence)
        self._rng = np.random.default_rng(seed)
        self.cut_ins = 0  # questions with a mid-sentence pause that the agent answered during the pause
        self.mid_pauses = 0
        self.frames: list[float] = []  # arrival times of agent audio frames
        self.latencies: list[float] = []
        self.barge_ins: list[float] = []
        self.turn_events: list[dict[str, Any]] = []
        self.turn_times: list[tuple[float, float]] = []  # (end of speech since the call began, latency), s
        self.errors: list[str] = []
        self.session_stats: dict[str, int] = {}

    async def run(self) -> None:
        from streamserve.client import StreamClient

        async with StreamClient(f"ws://127.0.0.1:{self.port}/v1/ws", pipeline="voice",
                                params=self.params, kinds=("audio",), open_timeout=300) as client:
            reader = asyncio.create_task(self._read(client))
            events = asyncio.create_task(self._events(client))
            self._t0 = time.monotonic()
            self._sent = 0
            try:
                await self._send(client, np.zeros(RATE // 2 + int(self.delay_s * RATE), np.float32))
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
            chunk = audio[i:i + FRAME]
            if self.noise_rms:
                chunk = chunk + self._rng.standard_normal(len(chunk)).astype(np.float32) * self.noise_rms
            await client.send_audio((np.clip(chunk, -1, 1) * 32767).astype(np.int16)[None, :], RATE)
            self._sent += 1
            ahead = self._t0 + self._sent * FRAME / RATE - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            if until is not None and until():
                return

    async def _turn(self, client: Any, question: tuple[np.ndarray, int | None], interrupt: bool) -> None:
        q, pause_at = question
        first, last = speech_span(q)
        await self._send(client, q[:first])
        onset = time.monotonic()  # the first speech sample leaves now
        n = len(self.frames)
        if pause_at is None:
            await self._send(client, q[first:last])
        else:  # a mid-sentence pause: agent audio from its start until the end of speech is a cut-in
            await self._send(client, q[first:pause_at])
            paused = time.monotonic()
            await self._send(client, q[pause_at:last])
            self.mid_pauses += 1
            cut_in = any(t > paused for t in self.frames[n:])
        end_of_speech = time.monotonic()
        if self._interrupting:  # this question cut the previous answer: when did its audio stop?
            end = onset
            for t in self.frames[n:]:
                if t - end > 0.15:  # the first gap: the old answer is over
                    break
                end = t
            self.barge_ins.append(end + 0.02 - onset if end > onset else 0.0)
        n = len(self.frames)
        # The question's own quiet tail (its last phoneme decaying below 0.02) goes out after the end
        # of speech, as a microphone would send it: the VAD hears the end as it would live.
        after = np.concatenate([q[last:], np.zeros(15 * RATE, np.float32)])
        await self._send(client, after, until=lambda: len(self.frames) > n)
        answer = [t for t in self.frames[n:] if t > end_of_speech]
        if not answer:
            self.errors.append("no answer within 15 s")
            self._interrupting = False
            return
        if pause_at is not None and cut_in:  # not a response time: the agent answered half a question
            self.cut_ins += 1
            await self._send(client, np.zeros(20 * RATE, np.float32), until=lambda: self._quiet(0.6))
            self._interrupting = False
            return
        self.latencies.append(answer[0] - end_of_speech)
        self.turn_times.append((end_of_speech - self._t0, answer[0] - end_of_speech))
        if interrupt:  # 0.5 s of the answer plays, then the next question talks over it
            await self._send(client, np.zeros(RATE // 2, np.float32))
        else:  # let the answer finish
            await self._send(client, np.zeros(20 * RATE, np.float32), until=lambda: self._quiet(0.6))
        self._interrupting = interrupt

    _interrupting = False

    def _quiet(self, seconds: float) -> bool:
        return bool(self.frames) and time.monotonic() - self.frames[-1] > seconds


async def measure(port: int, think: bool, per: list[list[tuple[np.ndarray, int | None]]], video: int = 0,
                  params: dict[str, Any] | None = None, stagger_s: float = 0.0,
                  noise_rms: float = 0.0) -> dict[str, Any]:
    """One run: session k speaks the questions `per[k]` (audio, sample where a mid-sentence pause starts)."""
    sessions = len(per)
    callers = [Caller(port, {"think": think, **(params or {})}, qs, delay_s=k * stagger_s / sessions,
                      noise_rms=noise_rms, seed=k) for k, qs in enumerate(per)]
    proc, box, stop = None, None, None
    if video:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        box, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=video_process, args=(port, video, 1800.0, stop, box), daemon=True)
        proc.start()
        await asyncio.sleep(8.0)  # the video sessions are open and streaming before the first question
    t0, cpu0 = time.monotonic(), time.process_time()
    vstats: list[Any] = []
    try:
        results = await asyncio.gather(*(c.run() for c in callers), return_exceptions=True)
        for c, res in zip(callers, results, strict=True):
            if isinstance(res, BaseException):
                c.errors.append(f"session failed: {res!r}")
    finally:
        if proc is not None and box is not None and stop is not None:
            stop.set()
            try:
                vstats = await asyncio.to_thread(box.get, True, 600)
            except Exception as exc:  # the video process died: say so in the row
                vstats = [repr(exc)]
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    lat = [x for c in callers for x in c.latencies]
    barge = [x for c in callers for x in c.barge_ins]
    hits = [e.get("speculative_hit") for c in callers for e in c.turn_events]
    return {
        "mode": "duplex" if think else "cascade", "sessions": sessions, "turns": len(lat),
        "latency_p50_ms": _ms(percentile(lat, 50)), "latency_p95_ms": _ms(percentile(lat, 95)),
        "barge_in_p50_ms": _ms(percentile(barge, 50)), "barge_in_p95_ms": _ms(percentile(barge, 95)),
        "barge_ins": len(barge), "mid_pauses": sum(c.mid_pauses for c in callers),
        "cut_ins": sum(c.cut_ins for c in callers), "speculative_hits": sum(1 for h in hits if h),
        "server_latency_p50_ms": _ms(percentile([e["latency_ms"] / 1000 for c in callers for e in c.turn_events], 50)),
        "errors": [e for c in callers for e in c.errors][:5], "wall_s": round(time.monotonic() - t0, 1),
        # CPU time of this process (server, clients and stand-in LLM when the server is in it) per turn
        "cpu_s": round(time.process_time() - cpu0, 2),
        "trace_p50_ms": _trace_p50([e.get("trace_ms") or {} for c in callers for e in c.turn_events]),
        "end_reasons": dict(collections.Counter(e.get("end_reason") for c in callers for e in c.turn_events)),
        "input": {k: sum(c.session_stats.get(k, 0) for c in callers)
                  for k in ("audio_in", "dropped_overload", "dropped_expired", "dropped_inbox", "deadline_misses")},
        "video": _video_row(vstats) if video else None,
        "chunks": sum(max((e.get("chunks", 0) for e in c.turn_events), default=0) for c in callers),
        "per_turn": [{"session": i, "end_of_speech_s": round(t0c + end - t0, 3), "latency_ms": round(1000 * lat),
                      **{k: e.get(k) for k in ("trace_ms", "pauses", "speculative_hit", "end_reason")}}
                     for i, c in enumerate(callers) for t0c in [getattr(c, "_t0", t0)]
                     for (end, lat), e in zip(c.turn_times, c.turn_events, strict=False)],
        "late_chunks": sum(max((e.get("late_chunks", 0) for e in c.turn_events), default=0) for c in callers),
        "partials": sum(max((e.get("partials", 0) for e in c.turn_events), default=0) for c in callers),
        "partials_skipped": sum(max((e.get("partials_skipped", 0) for e in c.turn_events), default=0) for c in callers),
        "raw": {"latency": lat, "barge_in": barge, "server": [e["latency_ms"] / 1000 for c in callers for e in c.turn_events],
                "traces": [e.get("trace_ms") or {} for c in callers for e in c.turn_events]},
    }


def merge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of one (mode, ASR, sessions): percentiles over every turn, counts summed."""
    if len(rows) == 1:
        return rows[0]
    raw = {k: [x for r in rows for x in r["raw"][k]] for k in rows[0]["raw"]}
    out = dict(rows[0])
    out.update({
        "turns": len(raw["latency"]), "raw": raw,
        "latency_p50_ms": _ms(percentile(raw["latency"], 50)), "latency_p95_ms": _ms(percentile(raw["latency"], 95)),
        "barge_in_p50_ms": _ms(percentile(raw["barge_in"], 50)), "barge_in_p95_ms": _ms(percentile(raw["barge_in"], 95)),
        "server_latency_p50_ms": _ms(percentile(raw["server"], 50)), "trace_p50_ms": _trace_p50(raw["traces"]),
        "errors": [e for r in rows for e in r["errors"]][:5], "wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "cpu_s": round(sum(r.get("cpu_s", 0.0) for r in rows), 2),
        "end_reasons": dict(sum((collections.Counter(r["end_reasons"]) for r in rows), collections.Counter())),
        "input": {k: sum(r["input"][k] for r in rows) for k in rows[0]["input"]},
        "per_turn": [t for r in rows for t in r["per_turn"]], "rounds": len(rows),
    })
    for k in ("barge_ins", "mid_pauses", "cut_ins", "speculative_hits", "chunks", "late_chunks", "partials",
              "partials_skipped"):
        out[k] = sum(r[k] for r in rows)
    return out


def _trace_p50(traces: list[dict[str, float]]) -> dict[str, float | None]:
    """Median stream time of each milestone of a turn, relative to the server's end-of-turn decision."""
    keys = sorted({k for t in traces for k in t})
    return {k: percentile([t[k] for t in traces if k in t], 50) for k in keys}


def _video_row(stats: list[Any]) -> dict[str, Any]:
    ok = [s for s in stats if isinstance(s, dict)]
    errors = [repr(s) for s in stats if not isinstance(s, dict)]
    return {"sessions": len(stats), "frames_in": sum(s["frames_in"] for s in ok),
            "frames_out": sum(s["frames_out"] for s in ok),
            "fps": sum(s["frames_out"] / max(1e-9, s["seconds"]) for s in ok) / max(1, len(ok)), "errors": errors[:3]}


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
    ap.add_argument("--asr-engine", default="torch", choices=["torch", "faster-whisper"],
                    help="the duplex agent's ASR engine (default torch: Whisper tiny.en, encoder cut to the audio)")
    ap.add_argument("--cascade-asr-engine", default=None, choices=["torch", "faster-whisper"],
                    help="the cascade's ASR engine (default: both baselines, faster-whisper as Pipecat's "
                         "default Whisper service runs it, and the duplex agent's own engine)")
    ap.add_argument("--video", type=int, default=0, metavar="N",
                    help="run N video sessions (demo model, 256x256 RGB at 30 fps) on the same server meanwhile")
    ap.add_argument("--scheduler", default="slo", choices=["slo", "edf", "fifo"],
                    help="the server's scheduler (default slo, the server's own default; with --video its "
                         "voice lane is the point)")
    ap.add_argument("--modes", nargs="+", default=["duplex", "cascade"], choices=list(MODES),
                    help="duplex: think while listening, the server's defaults (Smart Turn P >= 0.5 ends the "
                         "turn after 192 ms of silence, P >= 0.95 if the pause transcript reads cut off); "
                         "duplex-notext: the transcript has no say; duplex-early: the early tier (P >= 0.95 and a "
                         "transcript that reads finished end the turn after 96 ms); duplex-early-notext: the "
                         "early tier on Smart Turn alone; cascade: Pipecat's default turn taking (Smart Turn "
                         "P >= 0.5 after 192 ms ~ VADParams.stop_secs 0.2), then ASR -> LLM -> TTS; "
                         "cascade-early: the cascade with the early tier on Smart Turn alone; *-vadonly: speech "
                         "ends on the VAD alone, not also on the level (quiet_db 0); duplex-nocont: no continuation of a "
                         "turn answered too soon (continuation_ms 0)")
    ap.add_argument("--mid-pause-ms", type=float, default=0.0,
                    help="insert a mid-sentence pause of this length into every other question of each "
                         "session and count the agent's cut-ins (answers that start during it)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="split each session's questions into this many blocks and let the modes take turns "
                         "block by block (an A/B on a machine whose load drifts); rows merge the rounds")
    ap.add_argument("--server-process", action="store_true",
                    help="run the server in its own process (default: a thread of this one, beside the clients)")
    ap.add_argument("--stagger-s", type=float, default=0.0,
                    help="start session k of N this much * k / N later (0: all at once, turn ends coincide)")
    ap.add_argument("--noise-dbfs", default="-60",
                    help="white noise at this level (dBFS RMS) under all the clients send, a quiet room's "
                         "microphone; 'off': digital silence between questions (the VAD then ends a turn "
                         "tens of ms sooner than it would live)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    noise_rms = 0.0 if args.noise_dbfs == "off" else 10 ** (float(args.noise_dbfs) / 20)

    from hibari import Hibari

    from streamserve.pipelines.voice.audio import resample

    tts = Hibari()
    spoken = [resample(tts(q, seed=0), 24000, RATE) for q in (QUESTIONS * 4)[:args.utterances]]
    questions: list[tuple[np.ndarray, int | None]] = [(q, None) for q in spoken]
    if args.instant_llm is not None:
        args.llm_url = start_instant_llm(args.instant_llm)
    cascade_engines = [args.cascade_asr_engine] if args.cascade_asr_engine else \
        list(dict.fromkeys(["faster-whisper", args.asr_engine]))
    servers: dict[str, tuple[Any, int]] = {}
    rows = []
    try:
        for engine in dict.fromkeys([args.asr_engine, *cascade_engines]):
            if args.server_process:
                proc = ServerProcess(args.llm_url, args.llm_model, engine, args.scheduler)
                servers[engine] = (proc, proc.port)
            else:
                servers[engine] = start_server(args.llm_url, args.llm_model, engine, args.scheduler)
        for sessions in args.sessions:
            per = [questions[i::sessions] for i in range(sessions)]
            runs = [(m, args.asr_engine) for m in args.modes if m.startswith("duplex")]
            runs += [(m, e) for m in args.modes if m.startswith("cascade") for e in cascade_engines]
            parts: dict[tuple[str, str], list[dict[str, Any]]] = {run: [] for run in runs}
            for rnd in range(args.rounds):  # modes take turns, a block of questions each: same load for all
                block = [qs[rnd * len(qs) // args.rounds:(rnd + 1) * len(qs) // args.rounds] for qs in per]
                if args.mid_pause_ms:  # every other question (one that starts in silence, after a full answer)
                    block = [[with_mid_pause(q, args.mid_pause_ms / 1000) if i % 2 == 0 else (q, p)
                              for i, (q, p) in enumerate(qs)] for qs in block]
                for mode, engine in runs:
                    think, params = MODES[mode]
                    row = asyncio.run(measure(servers[engine][1], think, block, args.video, params, args.stagger_s,
                                              noise_rms))
                    row.update(mode=mode, asr=engine, round=rnd)
                    parts[(mode, engine)].append(row)
                    print(json.dumps({k: v for k, v in row.items() if k not in ("raw", "per_turn")}), flush=True)
            rows += [merge(parts[run]) for run in runs]
    finally:
        for server, _ in servers.values():
            if isinstance(server, ServerProcess):
                server.close()
            else:
                server.should_exit = True
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\n{cpu_model()}, {usable_cores()} CPUs, load average at the end "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min), brain: {brain_name(args)}"
          + (f", beside {args.video} video session(s) (demo model)" if args.video else "")
          + f", scheduler {args.scheduler}"
          + (", digital silence between questions" if not noise_rms else f", input noise floor {args.noise_dbfs} dBFS")
          + (f", a {args.mid_pause_ms:g} ms mid-sentence pause in every other question" if args.mid_pause_ms else "")
          + (f", sessions started {args.stagger_s:g} s / N apart" if args.stagger_s else "")
          + (", server in its own process" if args.server_process else ", server in the clients' process") + "\n")
    print("| mode | ASR | sessions | turns | response p50 / p95 ms | barge-in p50 / p95 ms | speculative hits "
          "| cut-ins on mid-sentence pauses | voice chunks late or lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        late = r["late_chunks"] + r["input"]["dropped_expired"] + r["input"]["dropped_overload"]
        print(f"| {r['mode']} | {r['asr']} | {r['sessions']} | {r['turns']} | {r['latency_p50_ms']} / "
              f"{r['latency_p95_ms']} | {r['barge_in_p50_ms']} / {r['barge_in_p95_ms']} | "
              f"{r['speculative_hits'] if r['mode'].startswith('duplex') else '-'} | {r['cut_ins']} of {r['mid_pauses']} | {late} of {r['input']['audio_in']} "
              f"({100 * late / max(1, r['input']['audio_in']):.2f}%; {r['input']['deadline_misses']} output "
              f"frames late) |")
        if r.get("video"):
            vid = r["video"]
            print(f"|  | video beside it | {vid['sessions']} | | {vid['frames_out']} frames out of {vid['frames_in']} "
                  f"in | | | | {vid['fps']:.1f} fps per session |")
    print("\n| goal | figure | met |\n|---|---|---|")
    for sessions in args.sessions:
        d = next((r for r in rows if r["sessions"] == sessions and r["mode"].startswith("duplex")), None)
        if d is None or d["latency_p50_ms"] is None:
            continue
        print(f"| response p50 <= 300 ms, {sessions} session(s) | {d['latency_p50_ms']} ms | "
              f"{'yes' if d['latency_p50_ms'] <= 300 else 'no'} |")
        if d["barge_in_p50_ms"] is not None:
            print(f"| barge-in p50 <= 100 ms, {sessions} session(s) | {d['barge_in_p50_ms']} ms | "
                  f"{'yes' if d['barge_in_p50_ms'] <= 100 else 'no'} |")
        for c in (r for r in rows if r["sessions"] == sessions and r["mode"].startswith("cascade")):
            if c["latency_p50_ms"]:
                ratio = d["latency_p50_ms"] / c["latency_p50_ms"]
                print(f"| {d['mode']} / {c['mode']} ({c['asr']}) p50 <= 0.5, {sessions} session(s) | {ratio:.2f} "
                      f"({d['latency_p50_ms']} / {c['latency_p50_ms']} ms) | {'yes' if ratio <= 0.5 else 'no'} |")
        if args.video:
            late = d["late_chunks"] + d["input"]["dropped_expired"] + d["input"]["dropped_overload"]
            share = 100 * late / max(1, d["input"]["audio_in"])
            print(f"| voice chunks late <= 1% beside {args.video} video, {sessions} session(s) | {share:.2f}% | "
                  f"{'yes' if share <= 1 else 'no'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
