"""The voice agent's configuration and the parts it is built from (kept apart from the state machine)."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from streamserve.pipelines.voice.asr import Transcriber
from streamserve.pipelines.voice.brain import Generation, Message
from streamserve.pipelines.voice.tts import Synthesizer
from streamserve.pipelines.voice.turn import TurnConfig
from streamserve.pipelines.voice.vad import SpeechProbability

DEFAULT_SYSTEM_PROMPT = ("You are a helpful voice assistant. Answer in one or two short spoken sentences, "
                         "without lists or markdown.")


class AgentBrain(Protocol):
    def start(self, messages: list[Message], max_tokens: int, key: str | None = None) -> Generation: ...


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    turn: TurnConfig = dataclasses.field(default_factory=TurnConfig)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_reply_tokens: int = 48
    history_turns: int = 6  # user+agent pairs kept in the prompt (older ones roll out)
    partial_every_s: float = 0.5  # a partial transcript per this much speech (skipped when ASR lags; 0: none)
    commit_after_s: float = 4.0  # at a pause, audio before it is committed once this much is uncommitted
    partial_cover_s: float = 0.15  # a partial this close to the end of speech starts a reply at the pause
    backchannel_s: float = 0.4  # user speech shorter than this during agent speech is not a barge-in
    continuation_s: float = 0.25  # speech this soon after the answer's first audio continues the turn (0: never)
    lead_s: float = 0.06  # agent audio released this far ahead of the input clock
    tentative_hold_s: float = 0.15  # a speech window while the agent talks holds it this long at least
    preroll_s: float = 0.3  # audio before the detected onset kept for ASR
    echo_tail_s: float = 0.3  # without client AEC: input ignored until this long after agent audio
    client_aec: bool = True
    semantic_turn: bool = True
    # duplex: partials warm the brain, each pause is transcribed and starts a speculative reply.
    # False is the sequential cascade (turn end -> ASR -> LLM -> TTS), the benchmark's baseline.
    think: bool = True
    out_rate: int = 24_000
    frame_s: float = 0.02
    fallback_text: str = "Sorry, I cannot reach my language model right now."

    def __post_init__(self) -> None:
        if not 1 <= self.max_reply_tokens <= 1024:
            raise ValueError(f"max_reply_tokens must be in [1, 1024], got {self.max_reply_tokens}")
        if not 0 <= self.history_turns <= 64:
            raise ValueError(f"history_turns must be in [0, 64], got {self.history_turns}")
        for name in ("partial_every_s", "commit_after_s", "partial_cover_s", "backchannel_s", "continuation_s", "lead_s", "preroll_s", "echo_tail_s", "tentative_hold_s"):
            v = getattr(self, name)
            if not 0.0 <= v <= 10.0:
                raise ValueError(f"{name} must be in [0, 10] s, got {v}")
        if self.out_rate not in (8_000, 16_000, 24_000, 48_000):
            raise ValueError(f"out_rate must be 8000, 16000, 24000 or 48000, got {self.out_rate}")


@dataclasses.dataclass
class VoiceModels:
    """The parts one pipeline shares between its sessions."""

    vad: type[SpeechProbability] | Any  # a factory: one stateful VAD per session
    asr: Transcriber
    tts: Synthesizer
    brain: AgentBrain
    smart_turn: Any | None = None  # callable audio -> P(turn complete), or None


@dataclasses.dataclass
class AgentOutput:
    frames: list[tuple[np.ndarray, int]] = dataclasses.field(default_factory=list)  # ([samples] f32, pts)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    flush: bool = False  # drop agent audio queued in the transport before these frames
