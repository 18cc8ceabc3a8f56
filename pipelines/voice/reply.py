"""One agent reply: brain text -> clauses -> TTS audio -> 20 ms output frames, cancellable as a whole.

The reply pulls text from its `Generation`, cuts clauses (`ClauseSplitter`), sends each to TTS as a
worker job in order, and keeps the synthesized audio, resampled to the session's output rate, as a
queue of frames to release. `pump` (text -> clauses -> TTS jobs) runs on the engine thread and, as
soon as the brain produces text, on the brain's thread (under the reply's lock): a clause goes to
TTS the moment it is complete, not at the next input chunk. Everything else is engine thread only
(the worker calls back through `Mailbox`).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from streamserve.pipelines.voice.audio import resample
from streamserve.pipelines.voice.brain import Generation
from streamserve.pipelines.voice.tts import ClauseSplitter, Synthesizer
from streamserve.pipelines.voice.worker import PRIORITY_TTS, PRIORITY_TURN, VoiceWorker

SPEECH_S_PER_CHAR = 0.05  # the least audio a character of text becomes (Hibari ~0.06-0.07, espeak-ng ~0.05)
URGENT_AHEAD_S = 0.3  # a clause with less audio than this queued before it is synthesized first


class Mailbox:
    """Results from the worker thread, picked up by the engine thread at its next step.

    `ask` (called on the poster's thread) requests that step at once rather than with the next input
    chunk (the session's tick: up to 20 ms per hop of a turn, such as pause transcript -> reply or
    first clause's speech -> release); once per `run`, however many results come in between."""

    def __init__(self, ask: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._ask = ask
        self._asked = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._items.append((fn, args))
            ask = None if self._asked else self._ask  # the first result since the last run asks
            self._asked = True
        if ask is not None:
            ask()

    def run(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._asked = False
        for fn, args in items:
            fn(*args)


@dataclasses.dataclass
class ReplyConfig:
    frame_s: float = 0.02
    out_rate: int = 24_000
    first_min_chars: int = 8


class Reply:
    def __init__(self, epoch: int, user_text: str, gen: Generation, *, tts: Synthesizer, worker: VoiceWorker,
                 mailbox: Mailbox, config: ReplyConfig, speculative: bool) -> None:
        self.epoch = epoch
        self.user_text = user_text
        self.gen = gen
        self.speculative = speculative  # started at a pause, before the turn was known to be over
        self.released = False  # its audio may go out
        self.cancelled = False
        self._tts = tts
        self._worker = worker
        self._mailbox = mailbox
        self._cfg = config
        self._splitter = ClauseSplitter(first_min_chars=config.first_min_chars)
        self._frame = int(round(config.frame_s * config.out_rate))
        self._clauses: list[str] = []
        self._audio: dict[int, np.ndarray] = {}  # clause index -> audio, until its turn comes
        self._next_clause = 0  # next clause index to append to the frame queue
        self._pending = np.zeros(0, np.float32)
        self.frames: collections.deque[np.ndarray] = collections.deque()  # [frame] float32 each
        self.spoken_text: list[str] = []  # clauses whose audio is queued
        self.frames_out = 0
        self.text_done = False
        self.started_t = 0.0  # the agent's stream time when the reply started (set by the agent)
        self.first_audio_t: float | None = None  # ... when its first audio was synthesized
        self.clock: Callable[[], float] | None = None
        self._text_lock = threading.RLock()  # pump and say: the engine thread and the brain's thread
        gen.listen(self.pump)

    def pump(self) -> None:
        """Pull new text from the brain and send complete clauses to TTS (any thread)."""
        with self._text_lock:
            if self.cancelled:
                return
            delta = self.gen.drain()
            clauses = self._splitter.feed(delta) if delta else []
            finished = self.gen.finished and not self.text_done
            if finished:
                clauses += self._splitter.flush()
            for clause in clauses:
                self.say(clause)
            if finished:  # only now: `done` (engine thread) must never see the end before the clauses
                self.text_done = True

    def say(self, clause: str) -> None:
        with self._text_lock:
            index = len(self._clauses)
            self._clauses.append(clause)
            self._submit(index, clause)

    def _submit(self, index: int, clause: str) -> None:
        tts, rate, out_rate = self._tts, self._tts.sample_rate, self._cfg.out_rate

        def run() -> np.ndarray:
            return resample(tts(clause), rate, out_rate)

        def done(audio: Any, error: BaseException | None) -> None:
            self._mailbox.post(self._on_audio, index, audio if error is None else np.zeros(0, np.float32))

        # The first clause is what the user waits for; a later one is needed only once the audio
        # before it has played, so it waits behind work due sooner: other sessions' first clauses
        # and, on a shared worker, their pause transcripts (half the estimated audio ahead of it is
        # its slack: a margin for the guess).
        ahead = self.queued_s() + SPEECH_S_PER_CHAR * sum(len(c) for i, c in enumerate(self._clauses[:index])
                                                          if i >= self._next_clause)
        if ahead < URGENT_AHEAD_S:
            self._worker.submit(PRIORITY_TTS, run, done, stale=lambda: self.cancelled)
        else:
            self._worker.submit(PRIORITY_TURN, run, done, stale=lambda: self.cancelled, slack_s=min(ahead / 2, 60.0))

    def queued_s(self) -> float:
        """Seconds of synthesized audio not yet released."""
        return (len(self.frames) * self._frame + self._pending.size) / self._cfg.out_rate

    # --- engine thread ------------------------------------------------------------------------
    def _on_audio(self, index: int, audio: np.ndarray) -> None:
        if self.cancelled:
            return
        self._audio[index] = audio
        if self.first_audio_t is None and self.clock is not None:
            self.first_audio_t = self.clock()
        while self._next_clause in self._audio:
            chunk = self._audio.pop(self._next_clause)
            self.spoken_text.append(self._clauses[self._next_clause])
            self._next_clause += 1
            buf = np.concatenate([self._pending, chunk])
            n = len(buf) // self._frame
            for i in range(n):
                self.frames.append(buf[i * self._frame:(i + 1) * self._frame])
            self._pending = buf[n * self._frame:]
        self._pad_tail()

    def _pad_tail(self) -> None:
        """Once the text is complete and every clause's audio is in, the last part-frame goes out
        padded. The text may complete after the last audio (its last clause ended with the text so
        far, the end of the stream came later), so `pop_frame` checks again."""
        if self.complete_text and self._next_clause == len(self._clauses) and self._pending.size:
            pad = np.zeros(self._frame - len(self._pending), np.float32)
            self.frames.append(np.concatenate([self._pending, pad]))
            self._pending = np.zeros(0, np.float32)

    @property
    def complete_text(self) -> bool:
        return self.text_done

    @property
    def done(self) -> bool:
        """Everything generated, synthesized and released."""
        return self.text_done and self._next_clause == len(self._clauses) and not self.frames \
            and not self._pending.size

    @property
    def has_audio(self) -> bool:
        return bool(self.frames)

    def pop_frame(self) -> np.ndarray | None:
        if not self.frames:
            self._pad_tail()
        if not self.frames:
            return None
        self.frames_out += 1
        return self.frames.popleft()

    def rewind(self, frames: list[np.ndarray]) -> None:
        """Put back frames that were flushed from the transport (a backchannel resumes them)."""
        for f in reversed(frames):
            self.frames.appendleft(f)
        self.frames_out -= len(frames)

    def cancel(self) -> None:
        """Stop everything: the brain's stream is closed, queued TTS is skipped, frames dropped."""
        self.cancelled = True
        self.gen.cancel()
        self.frames.clear()
        self._audio.clear()
