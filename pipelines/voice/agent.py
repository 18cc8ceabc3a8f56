"""The duplex voice agent of one session: listens, thinks while you speak, answers, stops when interrupted.

Runs on the engine thread, one `feed` per input chunk, and one with no audio (a tick) as soon as a
worker thread posts a result (transcripts, Smart Turn verdicts, TTS audio), so none waits for the
next chunk; the input's stream clock drives turn timing and output release. Per chunk:

1. the workers' results are applied;
2. VAD windows drive the turn machine (`TurnDetector`): speech onset, pause, resume, end of turn;
3. thinking while listening: a partial transcript every `partial_every_s` of speech warms the brain
   (LocalBrain pre-fills its KV); at each pause the transcript so far is decoded and a speculative
   reply starts at once (text, then TTS of its first clause), held back until the turn really ends
   (the pause's transcript also tells the turn machine whether the words read as finished).
   At the end of the turn, if the final words are those of the speculative reply, its audio goes out
   immediately; otherwise it is cancelled and a reply to the final words starts;
4. output: reply audio is released in 20 ms frames up to `lead_s` ahead of the input clock, so the
   transport buffers little and a barge-in silences the client fast;
5. barge-in: speech onset while the agent speaks holds the agent and flushes the transport (a
   control action that jumps every queue); if the speech outlasts `backchannel_s` the reply is
   cancelled (LLM stream closed, queued TTS skipped); a shorter burst ("mhm") resumes the agent.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import numpy as np

from streamserve.pipelines.voice.agent_config import (
    DEFAULT_SYSTEM_PROMPT,
    AgentBrain,
    AgentConfig,
    AgentOutput,
    VoiceModels,
)
from streamserve.pipelines.voice.asr import Utterance, normalize
from streamserve.pipelines.voice.audio import MODEL_RATE
from streamserve.pipelines.voice.brain import Generation, Message
from streamserve.pipelines.voice.continuation import Continuation
from streamserve.pipelines.voice.partials import PartialTranscripts
from streamserve.pipelines.voice.reply import Mailbox, Reply, ReplyConfig
from streamserve.pipelines.voice.turn import EventKind, TurnDetector, TurnEvent, TurnState
from streamserve.pipelines.voice.vad import FrameVad
from streamserve.pipelines.voice.worker import PRIORITY_TURN, VoiceWorker

__all__ = ["DEFAULT_SYSTEM_PROMPT", "AgentBrain", "AgentConfig", "AgentOutput", "VoiceAgent", "VoiceModels"]

class VoiceAgent(PartialTranscripts):
    def __init__(self, key: str, config: AgentConfig, models: VoiceModels, worker: VoiceWorker,
                 background: VoiceWorker | None = None, turn_worker: VoiceWorker | None = None,
                 tts_worker: VoiceWorker | None = None, tick: Callable[[], None] | None = None) -> None:
        self.key = key
        self.cfg = config
        self.m = models
        self.worker = worker  # turn-critical jobs: pause transcripts (and TTS without a `tts_worker`)
        self.background = background or worker  # speculative work (partials) never delays those
        self.turn_worker = turn_worker or worker  # Smart Turn, beside the pause transcript (2 cores)
        self.tts_worker = tts_worker or worker  # a first clause never waits for a transcript to finish
        self.mailbox = Mailbox(ask=tick)  # a worker's result asks for a step (`tick`: no input) at once
        self.vad = FrameVad(models.vad())
        self.turn = TurnDetector(config.turn)
        self.t_in = 0.0  # input consumed, stream seconds
        self.t_out = 0.0  # end of the last released output frame, same clock
        # The next output frame's pts in samples at out_rate, counted in whole frames: t_in moves in
        # the input resampler's uneven steps (an odd count of 16 kHz samples is half a 24 kHz one), so
        # pts derived from the float clock would wobble by a sample (RTP timestamps 958/962 apart).
        self._pts = 0
        self._preroll: collections.deque[np.ndarray] = collections.deque()
        self._preroll_n = 0
        self.utt: Utterance | None = None
        self._onset = 0.0  # stream time the current utterance began
        self._answered = Continuation(config.continuation_s)  # the last turn, recorded on (continuation.py)
        self._utt_seq = self._pause_seq = 0
        self._awaiting_final: tuple[int, int, float] | None = None  # (utterance, pause, speech end)
        self._utt_during_agent = False
        self.reply: Reply | None = None
        self._epoch, self._held = 0, False
        self._recent: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self._prefill: Generation | None = None
        self._turn_end_t, self._turn_reason = 0.0, ""
        self._first_frame_sent = False
        self._resuming = False  # a held reply goes on: the silence before it is the hold's, not a gap
        self._gaps: list[int] = []  # silences inside the reply being released (its audio was late), ms
        self._agent_partial, self._error_reported = "", False
        self.history: list[Message] = []
        self.closed = False
        self._trace: dict[str, float] = {}
        self.stats = collections.Counter[str]()
        self._out = AgentOutput()

    # --- the step -------------------------------------------------------------------------------
    def feed(self, audio: np.ndarray) -> AgentOutput:
        """Consume [samples] float32 16 kHz audio (the next piece of the input, in order)."""
        self._out = out = AgentOutput()
        if self.closed:
            return out
        self.mailbox.run()
        self._pump_reply()
        if audio.size:  # a tick has none
            self._remember(audio)  # the pre-roll before an onset, the current utterance
        for end_sample, prob, level in self.vad.push(audio):
            t = end_sample / MODEL_RATE
            if not self.cfg.client_aec and self._agent_audible(t):
                prob = 0.0  # no echo cancellation on the client: our own voice is not the user's
            self._tentative_hold(prob)
            for ev in self.turn.push(t, prob, self.vad.window_s, level):
                self._on_turn(ev)
        self.t_in += len(audio) / MODEL_RATE
        self._maybe_partial()
        self._check_barge_in()
        self._release()
        return out

    def _emit(self, event: str, **body: Any) -> None:
        self._out.events.append({"event": event, "t": round(self.t_in, 3), **body})

    def _remember(self, audio: np.ndarray) -> None:
        self._preroll.append(audio)
        self._preroll_n += len(audio)
        limit = int(self.cfg.preroll_s * MODEL_RATE) + len(audio)
        while self._preroll and self._preroll_n - len(self._preroll[0]) >= limit:
            self._preroll_n -= len(self._preroll.popleft())
        if self.utt is not None:
            self.utt.append(audio)
        self._answered.append(audio, self.t_in + len(audio) / MODEL_RATE, self._onset if self.utt else None)

    def _agent_audible(self, t: float) -> bool:
        return self.reply is not None and self.reply.released and t < self.t_out + self.cfg.echo_tail_s

    @property
    def speaking(self) -> bool:
        """The agent has released audio of a reply that is not finished."""
        return self.reply is not None and self.reply.released and self._first_frame_sent

    # --- turn events ----------------------------------------------------------------------------
    def _on_turn(self, ev: TurnEvent) -> None:
        if ev.kind is EventKind.SPEECH_START:
            self._tentative_since = None
            self._utt_seq += 1
            self._onset = ev.t
            self._trace = {}
            self._pauses = 0
            self.utt = Utterance(0)
            self.utt.append(np.concatenate(list(self._preroll)) if self._preroll else np.zeros(0, np.float32))
            self._partial_from = 0
            self._utt_during_agent = self._held or self.speaking or (self.reply is not None and self.reply.released)
            self._emit("speech_start", onset=round(ev.t, 3))
            if self._utt_during_agent:
                self._hold()
        elif ev.kind is EventKind.RESUME:
            if self.reply is not None and not self.reply.released:  # the user went on: not their last words
                self._cancel_reply("resumed")
        elif ev.kind is EventKind.PAUSE:
            self._on_pause()
        elif ev.kind is EventKind.NOISE:
            self.utt = None
            self.stats["noise"] += 1
            if self._held:
                self._resume()
        elif ev.kind is EventKind.TURN_END:
            self._on_turn_end(ev)

    def _mark(self, what: str) -> None:
        """Stream time of a milestone of the current turn (reported, relative to the end of speech,
        in the `turn` event's `trace_ms`)."""
        self._trace[what] = self.t_in

    def _on_pause(self) -> None:
        utt = self.utt
        if utt is None:
            return
        self._mark("pause")
        self._pause_seq += 1
        self._pauses += 1
        uid, pid = self._utt_seq, self._pause_seq
        if self.cfg.think:  # the words so far, decoded now: the final then needs only what follows
            self._transcribe_tail(utt, uid, pid)
            # The last partial already covers (almost) all the speech: answer it right away; the
            # pause transcript confirms it or replaces the reply when it arrives.
            speech_end = utt.samples - int(self.turn.silence_s * MODEL_RATE)
            if (utt.partial and utt.partial_samples >= speech_end - int(self.cfg.partial_cover_s * MODEL_RATE)
                    and not self._utt_during_agent):
                self._start_reply(utt.partial, speculative=True)
        if self.cfg.semantic_turn and self.m.smart_turn is not None:
            smart, audio = self.m.smart_turn, utt.audio()

            def verdict(prob: Any, error: BaseException | None) -> None:
                if error is None:
                    self.mailbox.post(self._on_semantic, uid, pid, float(prob))

            self.turn_worker.submit(PRIORITY_TURN, lambda: smart(audio), verdict,
                               stale=lambda: self.closed or uid != self._utt_seq or pid != self._pause_seq)

    def _transcribe_tail(self, utt: Utterance, uid: int, pid: int) -> None:
        end, asr, prompt, draft = utt.samples, self.m.asr, utt.committed_text, utt.draft()
        tail = utt.tail(end)

        def done(text: Any, error: BaseException | None) -> None:
            self.mailbox.post(self._on_pause_text, uid, pid, end, "" if error else str(text))

        def stale() -> bool:  # a newer pause of the same utterance re-decodes this audio anyway
            if self.closed:
                return True
            if uid != self._utt_seq:
                return self._awaiting_final is None or self._awaiting_final[1] != pid
            return pid != self._pause_seq

        self.worker.submit(PRIORITY_TURN, lambda: self._timed_asr(asr, tail, prompt, draft), done, stale=stale)

    def _on_semantic(self, uid: int, pid: int, prob: float) -> None:
        if uid != self._utt_seq or pid != self._pause_seq or self.utt is None:
            return
        self._mark("verdict")
        for ev in self.turn.set_semantic(prob):
            self._on_turn(ev)

    def _on_pause_text(self, uid: int, pid: int, end: int, text: str) -> None:
        if self.closed:
            return
        waiting = self._awaiting_final
        if waiting is not None and waiting[0] == uid and waiting[1] == pid and self._final_utt is not None:
            full = self._final_utt.apply_partial(text, end, commit=True)
            self._awaiting_final, self._final_utt = None, None
            self._respond(full, waiting[2])
            return
        if uid != self._utt_seq or self.utt is None:
            return
        self._mark("pause_text")
        # Commit (decode only what follows from now on) once the uncommitted audio is long: a short
        # utterance is decoded whole at every pause, which reads better than pieces with a prompt.
        commit = end - self.utt.committed_samples >= int(self.cfg.commit_after_s * MODEL_RATE)
        full = self.utt.apply_partial(text, end, commit=commit)
        self.utt.pause_text = full
        self._pause_text_pid = pid
        self._emit("transcript", role="user", final=False, text=full)
        if (self.cfg.think and pid == self._pause_seq and self.turn.state is TurnState.PAUSED and full
                and not self._utt_during_agent):
            reply = self.reply
            if reply is None or reply.released or normalize(reply.user_text) != normalize(full):
                self._start_reply(full, speculative=True)
        if pid == self._pause_seq:  # the turn machine reads the words too (turn.py): they may end it now
            for ev in self.turn.set_text(full):
                self._on_turn(ev)

    def _on_turn_end(self, ev: TurnEvent) -> None:
        utt, self.utt = self.utt, None
        if utt is None:
            return
        if self._utt_during_agent and ev.speech_s < self.cfg.backchannel_s and self._held:
            self.stats["backchannels"] += 1
            self._emit("backchannel", speech_s=round(ev.speech_s, 3))
            self._resume()
            return
        self._turn_end_t, self._turn_reason = ev.t, ev.reason
        self._mark("turn_end")
        self._answered.ended(utt, ev.t)
        if self._pause_text_pid == self._pause_seq:  # the transcript of this last pause is in
            self._respond(utt.pause_text, ev.t)
            return
        self._final_utt = utt  # wait for it: it covers every word before the silence
        self._awaiting_final = (self._utt_seq, self._pause_seq, ev.t)
        if not self.cfg.think:  # the sequential cascade: transcribe only now that the turn is over
            self._transcribe_tail(utt, self._utt_seq, self._pause_seq)

    _final_utt: Utterance | None = None
    _pause_text_pid = -1
    _pauses = 0  # pauses in the current utterance (each costs a transcript and a Smart Turn verdict)

    # --- replies --------------------------------------------------------------------------------
    def _messages(self, user_text: str) -> list[Message]:
        keep = self.history[-2 * self.cfg.history_turns:] if self.cfg.history_turns else []
        return [{"role": "system", "content": self.cfg.system_prompt}, *keep,
                {"role": "user", "content": user_text}]

    def _start_reply(self, text: str, speculative: bool) -> None:
        if self.reply is not None:
            self._cancel_reply("replaced")
        if self._prefill is not None:
            self._prefill.cancel()
            self._prefill = None
        gen = self.m.brain.start(self._messages(text), self.cfg.max_reply_tokens, key=self.key)
        self.reply = Reply(self._epoch, text, gen, tts=self.m.tts, worker=self.tts_worker, mailbox=self.mailbox,
                           config=ReplyConfig(self.cfg.frame_s, self.cfg.out_rate), speculative=speculative)
        self.reply.started_t = self.t_in
        self.reply.clock = lambda: self.t_in
        self._first_frame_sent = False
        self._gaps = []
        self._agent_partial, self._error_reported = "", False
        self._emit("thinking", text=text, stage="speculative" if speculative else "reply")

    def _respond(self, text: str, speech_end: float) -> None:
        """The user's turn is over and `text` is what they said."""
        self._turn_end_t = speech_end
        if not normalize(text):
            self.stats["empty_turns"] += 1
            if self.reply is not None and not self.reply.released:
                self._cancel_reply("empty turn")
            return
        self.stats["turns"] += 1
        self._emit("transcript", role="user", final=True, text=text)
        reply = self.reply
        hit = reply is not None and not reply.released and normalize(reply.user_text) == normalize(text)
        if not hit:
            self._start_reply(text, speculative=False)
        assert self.reply is not None
        self.reply.released = True
        self._speculative_hit = hit
        self.history.append({"role": "user", "content": text})
        self._pump_reply()

    _speculative_hit = False

    def _pump_reply(self) -> None:
        reply = self.reply
        if reply is None:
            return
        reply.pump()
        err = reply.gen.error
        if err is not None and reply.released and not self._error_reported:
            self._error_reported = True
            self.stats["brain_errors"] += 1
            self._emit("error", code=err.code, message=str(err))
            reply.say(self.cfg.fallback_text)
        spoken = " ".join(reply.spoken_text)
        if reply.released and spoken != self._agent_partial and spoken:
            self._agent_partial = spoken
            self._emit("transcript", role="agent", final=False, text=spoken)

    def _cancel_reply(self, why: str) -> None:
        if self.reply is None:
            return
        self.reply.cancel()
        self.stats[f"cancel_{why}"] += 1
        self.reply = None
        self._held = False
        self._recent.clear()

    # --- output and barge-in --------------------------------------------------------------------
    def _release(self) -> None:
        reply = self.reply
        if reply is None or not reply.released or self._held:
            return
        frame_s = self.cfg.frame_s
        while self.t_out < self.t_in + self.cfg.lead_s:
            frame = reply.pop_frame()
            if frame is None:
                break
            if self.t_out < self.t_in:
                if self._first_frame_sent and not self._resuming:  # inside a reply: its audio came late
                    self._gaps.append(round((self.t_in - self.t_out) * 1000))
                self._resuming = False
                self.t_out = self.t_in  # the agent was silent: its next word starts now
                self._pts = max(self._pts, int(round(self.t_in * self.cfg.out_rate)))
            if not self._first_frame_sent:
                self._first_frame_sent = True
                self._answered.audio_started(self.t_out)
                latency = self.t_out - self._turn_end_t
                ready = reply.first_audio_t
                trace = {k: round((v - self._turn_end_t) * 1000) for k, v in self._trace.items()}
                if ready is not None:
                    trace["audio_ready"] = round((ready - self._turn_end_t) * 1000)
                trace["reply_started"] = round((reply.started_t - self._turn_end_t) * 1000)
                self.stats["replies"] += 1
                self._emit("turn", latency_ms=round(latency * 1000, 1), end_reason=self._turn_reason,
                           speculative_hit=self._speculative_hit, user=reply.user_text, pauses=self._pauses,
                           partials=self.stats["partials"], partials_skipped=self.stats["partials_skipped"],
                           chunks=self.stats["chunks"], late_chunks=self.stats["late_chunks"], trace_ms=trace)
            self._out.frames.append((frame, self._pts))
            self._pts += len(frame)
            self._recent.append((self.t_out, frame))
            while self._recent and self._recent[0][0] < self.t_in - self.cfg.lead_s:
                self._recent.popleft()
            self.t_out += frame_s
        if reply.done and self._first_frame_sent:
            text = " ".join(reply.spoken_text)
            self._emit("transcript", role="agent", final=True, text=text, gaps_ms=self._gaps,
                       late_chunks=self.stats["late_chunks"])
            self.stats["reply_gaps"] += len(self._gaps)
            self._gaps = []
            self.history.append({"role": "assistant", "content": text})
            self.reply = None
            self._recent.clear()
        elif reply.done and reply.gen.finished and not reply.spoken_text and reply.text_done:
            self.reply = None  # nothing to say (empty generation)

    def _hold(self) -> None:
        """User speech while the agent talks: stop releasing and flush what the transport still holds."""
        if self._held or self.reply is None:
            return
        self._held = True
        self._out.flush = True
        unplayed = [f for t, f in self._recent if t + self.cfg.frame_s > self.t_in]
        self.reply.rewind(unplayed)
        self.t_out = min(self.t_out, self.t_in)
        self._pts = int(round(self.t_out * self.cfg.out_rate))  # the flushed frames go out again from here
        self._resuming = True
        self._recent.clear()
        self._emit("agent_hold")

    def _tentative_hold(self, prob: float) -> None:
        """Hold on the first speech window while the agent talks (a barge-in is silent fast); resume
        if no utterance follows within `tentative_hold_s` (a click, a breath)."""
        if not self.speaking:
            return
        if not self._held and prob >= self.cfg.turn.speech_threshold and self.turn.state is TurnState.SILENT:
            self._hold()
            self._tentative_since = self.t_in
        elif self._held and self._tentative_since is not None:
            if self.turn.state is not TurnState.SILENT:
                self._tentative_since = None  # an utterance started: the barge-in logic takes over
            elif self.t_in - self._tentative_since > self.cfg.tentative_hold_s:
                self._tentative_since = None
                self._resume()

    _tentative_since: float | None = None

    def _resume(self) -> None:
        self._held = False
        self._emit("agent_resume")

    def _check_barge_in(self) -> None:
        if not self._held or self.utt is None or self.reply is None:
            return
        goes_on = self._answered.eligible(self._onset)  # the user was not done: no "mhm" this soon
        if self.turn.speech_s >= (self.cfg.turn.min_utterance_s if goes_on else self.cfg.backchannel_s):
            spoken = " ".join(self.reply.spoken_text[:max(1, len(self.reply.spoken_text))])
            self._epoch += 1
            self._cancel_reply("barge_in")
            self.stats["barge_ins"] += 1
            self._utt_during_agent = False  # from now on this is the user's new turn
            self._emit("barge_in", speech_s=round(self.turn.speech_s, 3), continues=goes_on)
            if goes_on:
                self._go_on()
            elif spoken:
                self.history.append({"role": "assistant", "content": spoken + " ..."})

    def _go_on(self) -> None:
        """The answered turn takes this speech in (continuation.py): its audio, from its first word,
        is the utterance again, and its words leave the history (they come back whole)."""
        utt = self._answered.take()
        if utt is None:
            return
        self.stats["continuations"] += 1
        self._utt_seq += 1  # jobs on the new piece alone are stale now
        self.utt, self._partial_from = utt, 0
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()

    # --- end ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel everything in flight (LLM stream closed, queued TTS and ASR skipped)."""
        self.closed = True
        if self.reply is not None:
            self.reply.cancel()
            self.reply = None
        if self._prefill is not None:
            self._prefill.cancel()
        forget = getattr(self.m.brain, "forget", None)
        if forget is not None:
            forget(self.key)
