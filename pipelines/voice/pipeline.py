"""`voice`: the duplex voice agent as a streamserve pipeline (audio in, speech out, JSON events).

Each session gets a `VoiceAgent`; the pipeline shares the models and one `VoiceWorker` thread
between sessions. `step` runs on the engine thread and only does per-chunk work (resampling, VAD,
the turn machine, releasing output frames); transcripts, Smart Turn and TTS run on the worker, the
local LM on its own thread (continuous batching across sessions), an endpoint LLM on its own event
loop. Each StepOutput carries the session's agent audio (20 ms frames, paced by the input clock),
its events (transcripts, thinking, per-turn latency, barge-in, errors) and, on barge-in, a flush of
the agent audio still queued in the transport.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.core.cpu import limit_blas_threads, usable_cores
from streamserve.core.frames import AudioChunk, MediaKind
from streamserve.core.plan import Batch, StepOutput
from streamserve.pipelines.base import Pipeline
from streamserve.pipelines.voice.agent import DEFAULT_SYSTEM_PROMPT, AgentConfig, VoiceAgent, VoiceModels
from streamserve.pipelines.voice.audio import InputResampler
from streamserve.pipelines.voice.turn import TurnConfig
from streamserve.pipelines.voice.worker import VoiceWorker

log = logging.getLogger(__name__)
_NO_AUDIO = np.zeros(0, np.float32)  # what a tick feeds the agent


@dataclasses.dataclass(frozen=True)
class VoiceParams:
    """Per-session knobs (live-changeable with PATCH / `update`)."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_reply_tokens: int = 48
    end_silence_ms: float = 640.0  # silence that ends a turn without a semantic verdict
    semantic_silence_ms: float = 192.0  # silence that ends a turn Smart Turn calls complete
    # ... that Smart Turn is sure of (P >= confident_threshold) and whose transcript reads finished
    # (read_text): the early release of the speculative reply; off by default (= semantic_silence_ms;
    # 96 turns it on: faster, with rare late answers to a hesitation, docs/voice.md)
    confident_silence_ms: float = 192.0
    confident_threshold: float = 0.95
    read_text: bool = True  # the pause's transcript has a say in the end of turn (docs/voice.md)
    quiet_db: float = 30.0  # speech ends where the level falls this far below the utterance's loudest (0: VAD only)
    semantic_turn: bool = True
    backchannel_ms: float = 400.0  # shorter user speech during agent speech does not interrupt it
    continuation_ms: float = 250.0  # speech this soon after the answer's first audio continues the turn (0: never)
    client_aec: bool = True  # false: the client has no echo cancellation; agent audio is not barge-in
    think: bool = True  # think while listening (false: the sequential cascade, for comparison)
    partial_every_ms: float = 500.0  # a partial transcript per this much speech while thinking (0: none)
    output_sample_rate: int = 24_000

    def __post_init__(self) -> None:
        if len(self.system_prompt) > 4000:
            raise ValueError(f"system_prompt must be at most 4000 characters, got {len(self.system_prompt)}")
        self.agent_config()  # every range check lives in the config dataclasses

    def agent_config(self) -> AgentConfig:
        sem = min(self.semantic_silence_ms, self.end_silence_ms) / 1000
        turn = TurnConfig(pause_s=min(0.032, sem), semantic_silence_s=sem, end_silence_s=self.end_silence_ms / 1000,
                          confident_silence_s=min(self.confident_silence_ms / 1000, sem),
                          confident_threshold=self.confident_threshold, read_text=self.read_text,
                          quiet_db=self.quiet_db or None)
        return AgentConfig(turn=turn, system_prompt=self.system_prompt, max_reply_tokens=self.max_reply_tokens,
                           backchannel_s=self.backchannel_ms / 1000, continuation_s=self.continuation_ms / 1000,
                           client_aec=self.client_aec,
                           semantic_turn=self.semantic_turn, think=self.think, out_rate=self.output_sample_rate,
                           partial_every_s=self.partial_every_ms / 1000)


def load_models(*, llm_url: str | None = None, llm_model: str | None = None, llm_api_key: str | None = None,
                llm_name: str = "default", asr_model: str | None = None, asr_engine: str = "torch",
                tts: str = "hibari", smart_turn: bool = True) -> VoiceModels:
    """The embedded defaults, or what the options name (`--llm-url`, `--llm-model`, `--asr-model`,
    `--asr-engine`, `--tts`)."""
    from streamserve.pipelines.voice.asr import make_asr
    from streamserve.pipelines.voice.brain import EndpointBrain
    from streamserve.pipelines.voice.smart_turn import SmartTurn
    from streamserve.pipelines.voice.tts import EspeakTts, HibariTts
    from streamserve.pipelines.voice.vad import SileroVad

    if tts not in ("hibari", "espeak"):
        raise ValueError(f"--tts must be hibari or espeak, got {tts!r}")
    brain: Any
    if llm_url:
        brain = EndpointBrain(llm_url, model=llm_name, api_key=llm_api_key)
    else:
        from streamserve.pipelines.voice.lm import LocalBrain

        brain = LocalBrain.from_path(Path(llm_model) if llm_model else None)
    turn_model = None
    if smart_turn:
        try:
            turn_model = SmartTurn()
        except (FileNotFoundError, ImportError) as exc:
            log.warning("Smart Turn unavailable (%s): ends of turn use silence only", exc)
    _cpu_threads()
    return VoiceModels(vad=SileroVad, asr=make_asr(asr_model, asr_engine), tts=HibariTts() if tts == "hibari" else EspeakTts(),
                       brain=brain, smart_turn=turn_model)


def _cpu_threads() -> None:
    """torch on all cores but one (at least one), the video pipeline's policy: the voice worker
    threads, ONNX models and the event loop need the rest, and an oversubscribed OpenMP pool
    busy-waits (Whisper's decode took 3x longer with 2 torch threads on a loaded 2-core machine).
    numpy's BLAS gets one thread: its busy-waiting pool doubled the time of concurrent transcripts
    and Smart Turn verdicts (`limit_blas_threads`)."""
    import torch

    limit_blas_threads(1)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores() - 1)))


class VoicePipeline(Pipeline):
    name = "voice"
    description = "Duplex voice agent: listens, thinks while you speak, answers aloud, stops when interrupted."
    Params = VoiceParams
    inputs = frozenset({MediaKind.AUDIO})
    outputs = frozenset({MediaKind.AUDIO})

    def __init__(self, device: str = "cpu", *, llm_url: str | None = None, llm_model: str | None = None,
                 llm_api_key: str | None = None, asr_model: str | None = None, asr_engine: str = "torch",
                 tts: str = "hibari", models: VoiceModels | None = None) -> None:
        super().__init__(device)
        self._options = {"llm_url": llm_url, "llm_model": llm_model, "llm_api_key": llm_api_key,
                         "asr_model": asr_model, "asr_engine": asr_engine, "tts": tts}
        self.models = models
        self._owns_models = models is None
        self._load_lock = threading.Lock()
        self.worker = VoiceWorker()  # turn-critical model calls
        # Partial transcripts: on a busy CPU they yield to the pause transcript and Smart Turn.
        self.background = VoiceWorker("voice-background", nice=10)
        self.turn_worker = VoiceWorker("voice-turn")  # Smart Turn verdicts, in parallel with the pause ASR
        # TTS on its own thread: a reply's first clause (~25 ms) does not wait for another session's
        # pause transcript (~100-150 ms) to finish; the OS shares the cores between them instead.
        self.tts_worker = VoiceWorker("voice-tts")
        self._agents: dict[str, VoiceAgent] = {}
        self._resamplers: dict[str, InputResampler] = {}

    def _ensure_models(self) -> VoiceModels:
        with self._load_lock:
            if self.models is None:
                self.models = load_models(**self._options)  # type: ignore[arg-type]
            return self.models

    def warmup(self) -> None:
        m = self._ensure_models()
        m.asr(np.zeros(8000, np.float32))
        m.tts("Ready.")
        if m.smart_turn is not None:
            m.smart_turn(np.zeros(16000, np.float32))
        if hasattr(m.brain, "prefill"):  # the local LM: its first forward pays one-off costs
            m.brain.start([{"role": "user", "content": "Hi"}], 2).wait(timeout=120)

    def agent(self, session_id: str) -> VoiceAgent:
        return self._agents[session_id]

    def open_session(self, session_id: str, params: Any) -> None:
        models = self._ensure_models()
        # A worker's result asks the server for a step of the session at once (outside a server, no
        # ticker: the next input chunk picks it up).
        tick = functools.partial(self.ticker, session_id) if self.ticker is not None else None
        self._agents[session_id] = VoiceAgent(session_id, params.agent_config(), models, self.worker,
                                              self.background, self.turn_worker, self.tts_worker, tick=tick)
        self._resamplers[session_id] = InputResampler()

    def update_params(self, session_id: str, params: Any) -> None:
        agent = self._agents.get(session_id)
        if agent is not None:
            agent.cfg = params.agent_config()
            agent.turn.config = agent.cfg.turn

    def close_session(self, session_id: str) -> None:
        agent = self._agents.pop(session_id, None)
        self._resamplers.pop(session_id, None)
        if agent is not None:
            agent.close()

    def step(self, batch: Batch) -> list[StepOutput]:
        outputs = []
        for item in batch.items:
            chunk = item.media
            if not isinstance(chunk, AudioChunk):
                outputs.append(StepOutput(item.session_id, error="the voice pipeline takes audio only"))
                continue
            agent = self._agents[item.session_id]
            tick = bool(chunk.meta.get("tick"))  # no input: the agent applies its results and releases audio
            # ValueError names a bad rate/channel count
            audio = _NO_AUDIO if tick else self._resamplers[item.session_id](chunk)
            out = agent.feed(audio)
            if not tick:
                agent.stats["chunks"] += 1  # the chunk's deadline: met when its step is over by then
                agent.stats["late_chunks"] += time.monotonic() > chunk.deadline
            media = tuple(
                AudioChunk((np.clip(frame, -1.0, 1.0) * 32767.0).round().astype(np.int16)[None, :],
                           agent.cfg.out_rate, pts, chunk.arrival, max(chunk.deadline, chunk.arrival),
                           meta={"source": "voice-agent"})
                for frame, pts in out.frames)
            outputs.append(StepOutput(item.session_id, media, events=tuple(out.events),
                                      flush=(MediaKind.AUDIO,) if out.flush else ()))
        return outputs

    def close(self) -> None:
        for sid in list(self._agents):
            self.close_session(sid)
        self.worker.stop()
        self.background.stop()
        self.turn_worker.stop()
        self.tts_worker.stop()
        if self.models is not None and self._owns_models:
            close = getattr(self.models.brain, "close", None)
            if close is not None:
                close()
