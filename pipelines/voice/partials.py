"""Thinking while listening: a partial transcript every `partial_every_s` of speech, which warms the
brain (LocalBrain pre-fills its KV) and is the draft the pause's transcript checks in one forward.

Part of `VoiceAgent` (agent.py), which inherits it; it runs on the engine thread like the rest of
the agent, the transcripts on the `background` worker (niced: they never delay a pause transcript).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from streamserve.pipelines.voice.asr import Transcriber
from streamserve.pipelines.voice.audio import MODEL_RATE
from streamserve.pipelines.voice.turn import TurnState
from streamserve.pipelines.voice.worker import PRIORITY_PARTIAL

if TYPE_CHECKING:
    import collections

    from streamserve.pipelines.voice.agent_config import AgentConfig, VoiceModels
    from streamserve.pipelines.voice.asr import Utterance
    from streamserve.pipelines.voice.brain import Generation, Message
    from streamserve.pipelines.voice.reply import Mailbox
    from streamserve.pipelines.voice.turn import TurnDetector
    from streamserve.pipelines.voice.worker import VoiceWorker


class PartialTranscripts:
    # This part's own state (instance attributes once set; these are the starting values).
    asr_cost_s = 0.0  # moving average of a transcript's wall time
    _partial_inflight = False  # one partial of this session at a time
    _partial_from = 0  # utterance sample the last partial was taken at

    if TYPE_CHECKING:  # the agent's state and methods these use (agent.py)
        key: str
        cfg: AgentConfig
        m: VoiceModels
        worker: VoiceWorker
        background: VoiceWorker
        mailbox: Mailbox
        turn: TurnDetector
        utt: Utterance | None
        stats: collections.Counter[str]
        closed: bool
        _utt_seq: int
        _utt_during_agent: bool
        _prefill: Generation | None

        def _emit(self, event: str, **body: Any) -> None: ...
        def _messages(self, user_text: str) -> list[Message]: ...

    def _maybe_partial(self) -> None:
        utt = self.utt
        if (utt is None or self._partial_inflight or self.turn.state is not TurnState.SPEAKING or not self.cfg.think
                or not self.cfg.partial_every_s):
            return
        if utt.samples - self._partial_from < int(self.cfg.partial_every_s * MODEL_RATE):
            return
        if self.asr_cost_s > self.cfg.partial_every_s or self.worker.pending() or self.background.pending():
            # Whisper cannot keep up (a busy CPU), or another session's partial is already waiting:
            # partials are best effort and would only slow the transcripts that matter, the ones at
            # the pauses (measured: partials are ~40% of a duplex turn's CPU). Skip this one
            # (counted); with many sessions they share one partial at a time.
            self._partial_from = utt.samples
            self.stats["partials_skipped"] += 1
            return
        self._partial_inflight = True
        self.stats["partials"] += 1
        self._partial_from = end = utt.samples
        uid, asr, prompt, tail = self._utt_seq, self.m.asr, utt.committed_text, utt.tail(utt.samples)
        draft = utt.draft()

        def done(text: Any, error: BaseException | None) -> None:
            self.mailbox.post(self._on_partial, uid, end, "" if error else str(text))

        def stale() -> bool:
            if self.closed or uid != self._utt_seq:
                self.mailbox.post(self._partial_skipped)
                return True
            return False

        self.background.submit(PRIORITY_PARTIAL, lambda: self._timed_asr(asr, tail, prompt, draft), done, stale=stale)

    def _timed_asr(self, asr: Transcriber, audio: np.ndarray, prompt: str, draft: str = "") -> str:
        """Run ASR (worker thread) and keep a moving average of its wall time."""
        t0 = time.perf_counter()
        text = asr(audio, prompt, draft) if draft else asr(audio, prompt)
        self.asr_cost_s = 0.7 * self.asr_cost_s + 0.3 * (time.perf_counter() - t0)
        return text

    def _partial_skipped(self) -> None:
        self._partial_inflight = False

    def _on_partial(self, uid: int, end: int, text: str) -> None:
        self._partial_inflight = False
        if uid != self._utt_seq or self.utt is None or self.closed:
            return
        full = self.utt.apply_partial(text, end, commit=False)
        if not full:
            return
        self._emit("transcript", role="user", final=False, text=full)
        prefill = getattr(self.m.brain, "prefill", None)
        if self.cfg.think and prefill is not None and not self._utt_during_agent:
            if self._prefill is not None:
                self._prefill.cancel()
            self._prefill = prefill(self._messages(full), self.key)
            self._emit("thinking", text=full, stage="prefill")
