"""End of turn: a state machine over VAD probabilities, with an optional semantic verdict.

    SILENT --speech >= min_speech_s--> SPEAKING --silence >= pause_s--> PAUSED
    PAUSED --speech--> SPEAKING (same utterance)      PAUSED --see below--> SILENT (turn end)

The turn ends after `end_silence_s` of silence (the fallback), or already after `semantic_silence_s`
when the semantic model (Smart Turn) said the words so far finish a turn (P >= `semantic_threshold`),
or after only `confident_silence_s` when it is sure (P >= `confident_threshold`: SHANKS-style early
release). With `read_text` (the default) the pause's transcript has a say too, once it is in
(`set_text`): the early tier needs it to read as a finished sentence (`reads_finished`), and one
left open (`reads_open`: a comma, a dash, "of", "the") needs a sure verdict for the semantic end as
well; the two signals fail on different pauses (measured false ends on mid-sentence pauses are in
docs/voice.md). Speech ends on the signal's level as well as on the VAD (`quiet_db`): a window far
below the utterance's loudest is silence, whatever the VAD says (Silero's probability stays up for
60-130 ms after a voice has faded; over a noise floor within `quiet_db` of the speech, the VAD
alone decides, as before). Times are stream seconds (samples / 16 kHz), so the machine is
deterministic and testable on generated audio. Every knob is per session (`TurnConfig`, from the
session's params).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import cast


@dataclasses.dataclass(frozen=True, slots=True)
class TurnConfig:
    speech_threshold: float = 0.5  # VAD probability that counts as speech
    release_threshold: float = 0.35  # below this it is silence again (hysteresis)
    min_speech_s: float = 0.064  # onset needs this much speech in a row (two 32 ms windows)
    pause_s: float = 0.064  # silence that makes a pause (the agent starts preparing its reply)
    semantic_silence_s: float = 0.192  # silence that ends a turn the semantic model calls complete
    confident_silence_s: float | None = None  # ... that it is sure of (None: semantic_silence_s, no early tier)
    semantic_threshold: float = 0.5  # P(complete) that counts as complete
    confident_threshold: float = 0.95  # P(complete) that ends the turn after confident_silence_s
    read_text: bool = True  # the pause's transcript has a say (module doc): the early tier needs it finished
    end_silence_s: float = 0.64  # silence that ends any turn (the fallback)
    quiet_db: float | None = 30.0  # a window this far below the utterance's loudest is silence (None: VAD only)
    min_utterance_s: float = 0.2  # shorter speech bursts (clicks, coughs) never make a turn

    def __post_init__(self) -> None:
        if self.confident_silence_s is None:
            object.__setattr__(self, "confident_silence_s", self.semantic_silence_s)
        for name in ("speech_threshold", "release_threshold", "semantic_threshold", "confident_threshold"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {v}")
        if self.release_threshold > self.speech_threshold:
            raise ValueError(f"release_threshold ({self.release_threshold}) must not exceed "
                             f"speech_threshold ({self.speech_threshold})")
        for name in ("min_speech_s", "pause_s", "semantic_silence_s", "confident_silence_s", "end_silence_s",
                     "min_utterance_s"):
            v = getattr(self, name)
            if not 0.0 <= v <= 10.0:
                raise ValueError(f"{name} must be in [0, 10] s, got {v}")
        if not self.pause_s <= self.semantic_silence_s <= self.end_silence_s:
            raise ValueError(f"need pause_s <= semantic_silence_s <= end_silence_s, got {self.pause_s}, "
                             f"{self.semantic_silence_s}, {self.end_silence_s}")
        if not 0.0 <= self.confident_silence_s <= self.semantic_silence_s:  # type: ignore[operator]
            raise ValueError(f"need confident_silence_s <= semantic_silence_s, got {self.confident_silence_s}, "
                             f"{self.semantic_silence_s}")
        if self.quiet_db is not None and not 0.0 < self.quiet_db <= 120.0:
            raise ValueError(f"quiet_db must be in (0, 120] dB or None, got {self.quiet_db}")
        if self.confident_threshold < self.semantic_threshold:
            raise ValueError(f"confident_threshold ({self.confident_threshold}) must not be below "
                             f"semantic_threshold ({self.semantic_threshold})")


class TurnState(enum.StrEnum):
    SILENT = "silent"
    SPEAKING = "speaking"
    PAUSED = "paused"


class EventKind(enum.StrEnum):
    SPEECH_START = "speech_start"  # onset of an utterance (t = first speech window)
    PAUSE = "pause"  # speech stopped for pause_s (t = end of the last speech window)
    RESUME = "resume"  # speech again after a pause, same utterance
    TURN_END = "turn_end"  # the user's turn is over (t = end of speech)
    NOISE = "noise"  # a burst too short to be an utterance ended


@dataclasses.dataclass(frozen=True, slots=True)
class TurnEvent:
    kind: EventKind
    t: float  # stream seconds
    reason: str = ""
    speech_s: float = 0.0  # speech in the utterance so far


class TurnDetector:
    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config or TurnConfig()
        self.state = TurnState.SILENT
        self._run = 0.0  # consecutive speech (SILENT) or silence (SPEAKING/PAUSED), seconds
        self._run_start = 0.0
        self.onset = 0.0  # stream time the current utterance began
        self.speech_end = 0.0  # end of the last speech window of the utterance
        self.speech_s = 0.0  # speech accumulated in the current utterance
        self.peak_db = -120.0  # the utterance's loudest speech, over two windows in a row (not a click)
        self._last_db = -120.0
        self._faded = 0  # windows in a row the VAD called speech and the level called silence
        self.semantic_p: float | None = None  # P(complete) for the current pause, once known
        self.text_finished: bool | None = None  # the current pause's transcript reads as finished, once known
        self.text_open = False  # ... or as left open mid-sentence

    def push(self, t_end: float, prob: float, window_s: float, level_db: float | None = None) -> list[TurnEvent]:
        """Feed one VAD window ending at stream time `t_end` (its level in dBFS, if known); returns the
        events it causes."""
        c = self.config
        events: list[TurnEvent] = []
        if self.state is TurnState.SILENT:
            if prob >= c.speech_threshold:
                if self._run == 0.0:
                    self._run_start = t_end - window_s
                    self.peak_db = self._last_db = -120.0
                self._run += window_s
                self._note_level(level_db, True)
                if self._run >= c.min_speech_s - 1e-9:
                    self.state = TurnState.SPEAKING
                    self.onset, self.speech_end, self.speech_s = self._run_start, t_end, self._run
                    self._run = 0.0
                    events.append(TurnEvent(EventKind.SPEECH_START, self.onset, speech_s=self.speech_s))
            else:
                self._run = 0.0
            return events
        speech = prob >= (c.release_threshold if self.state is TurnState.SPEAKING else c.speech_threshold)
        faded = speech and level_db is not None and c.quiet_db is not None and level_db < self.peak_db - c.quiet_db
        if faded:  # the voice has faded; the VAD's probability lags behind it
            speech = False
        self._faded = self._faded + 1 if faded else 0
        self._note_level(level_db, speech)
        if speech:
            self.speech_s += window_s
            self.speech_end = t_end
            self._run = 0.0
            if self.state is TurnState.PAUSED:
                self.state = TurnState.SPEAKING
                self._forget_pause()
                events.append(TurnEvent(EventKind.RESUME, t_end - window_s, speech_s=self.speech_s))
            return events
        self._run += window_s
        # One faded window is often a stop's closure inside a word ("cats"); two are a pause.
        pause_s = max(c.pause_s, 2 * window_s) if self._faded == 1 else c.pause_s
        if self.state is TurnState.SPEAKING and self._run >= pause_s - 1e-9:
            if self.speech_s < c.min_utterance_s:
                self._reset()
                return [TurnEvent(EventKind.NOISE, self.speech_end, "too short", self.speech_s)]
            self.state = TurnState.PAUSED
            self._forget_pause()
            events.append(TurnEvent(EventKind.PAUSE, self.speech_end, speech_s=self.speech_s))
        if self.state is TurnState.PAUSED:
            end = self._turn_end_reason()
            if end:
                events.append(TurnEvent(EventKind.TURN_END, self.speech_end, end, self.speech_s))
                self._reset()
        return events

    def _note_level(self, level_db: float | None, speech: bool) -> None:
        """A speech window raises the utterance's peak to what it and the window before it share (a
        click is one window)."""
        if level_db is not None:
            if speech:
                self.peak_db = max(self.peak_db, min(level_db, self._last_db))
            self._last_db = level_db

    def set_semantic(self, prob: float | bool) -> list[TurnEvent]:
        """The semantic model's verdict on the current pause, P(turn complete) (a bool: 1 or 0); may
        end the turn at once."""
        if self.state is not TurnState.PAUSED:
            return []
        self.semantic_p = float(prob)
        return self._end_now()

    def set_text(self, text: str) -> list[TurnEvent]:
        """The current pause's transcript (the words so far); may end the turn at once (the early tier)."""
        if self.state is not TurnState.PAUSED:
            return []
        self.text_finished, self.text_open = reads_finished(text), reads_open(text)
        return self._end_now()

    def _end_now(self) -> list[TurnEvent]:
        end = self._turn_end_reason()
        if not end:
            return []
        event = TurnEvent(EventKind.TURN_END, self.speech_end, end, self.speech_s)
        self._reset()
        return [event]

    def _turn_end_reason(self) -> str:
        c = self.config
        if self._run >= c.end_silence_s - 1e-9:
            return "silence"
        p = self.semantic_p
        # Words left open ("What is the boiling point of") need Smart Turn to be sure.
        likely = c.confident_threshold if c.read_text and self.text_open else c.semantic_threshold
        if p is not None and p >= likely and self._run >= c.semantic_silence_s - 1e-9:
            return "semantic"
        confident = cast(float, c.confident_silence_s)  # __post_init__ fills None in
        if (p is not None and p >= c.confident_threshold and self._run >= confident - 1e-9
                and (self.text_finished or not c.read_text)):
            return "confident"
        return ""

    def _reset(self) -> None:
        self.state = TurnState.SILENT
        self._run = 0.0
        self.speech_s = 0.0
        self._forget_pause()

    def _forget_pause(self) -> None:
        self.semantic_p = self.text_finished = None
        self.text_open = False

    @property
    def silence_s(self) -> float:
        """Silence since the last speech (0 while speaking)."""
        return self._run if self.state is not TurnState.SILENT else 0.0


# Words an English sentence hardly ends on: a transcript ending on one was cut mid-sentence ("What is
# the boiling point of", "What is two plus"). Particles that often end a sentence ("What is this
# for?", "Come in.") are not listed; a finished sentence read as open only needs a surer verdict
# (or the fallback silence).
_OPEN_WORDS = frozenset("""a an the my your his her its our their whose of to with into onto and or but nor
because if while than plus minus very""".split())
_WORD = re.compile(r"[a-z0-9']+")


def reads_finished(text: str) -> bool:
    """Whether a transcript reads as a finished sentence: it ends with . ? or ! (not an ellipsis) and
    not on a word that leaves the sentence open."""
    text, last = _ending(text)
    return text.endswith((".", "?", "!")) and not text.endswith(("..", "…")) and bool(last) and last not in _OPEN_WORDS


def reads_open(text: str) -> bool:
    """Whether a transcript reads as cut off mid-sentence: it ends with a comma, a dash or an ellipsis,
    or on a word that leaves the sentence open (no final punctuation alone is not enough: short
    answers often come without)."""
    text, last = _ending(text)
    return text.endswith((",", "-", "..", "…", ";", ":")) or last in _OPEN_WORDS


def _ending(text: str) -> tuple[str, str]:
    """The transcript without closing quotes or brackets, and its last word, lower case ("" if none)."""
    text = text.strip().strip("\"')]")
    words = _WORD.findall(text.lower())
    return text, words[-1] if words else ""
