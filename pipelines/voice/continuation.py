"""A turn the agent answered too soon: the user was only hesitating and goes on speaking.

When a hesitation ends the user's turn (Smart Turn and the silence agreed), the agent starts its
answer and the user, not done, goes on: "What is the capital ... of France?". Speech that begins
before the user can have reacted to the agent's voice (within `window_s` of its first audio, or
before it) is taken as the rest of that turn, not as an interruption of the answer: the barge-in
cancels the answer as always, and the turn's audio, recorded on from its first word through the
hesitation, becomes the utterance again, so its words are decoded whole ("What is the capital of
France?", not "What is the cap?" and then "of France" answered on its own).

`Continuation` keeps that recording for the agent (engine thread): from the turn's end until the
window has passed with no new speech in it, at most `max_s`.
"""

from __future__ import annotations

import numpy as np

from streamserve.pipelines.voice.asr import Utterance


class Continuation:
    def __init__(self, window_s: float, max_s: float = 10.0) -> None:
        self.window_s, self.max_s = window_s, max_s
        self.utt: Utterance | None = None
        self._ended_t = 0.0
        self._audio_t: float | None = None  # stream time of the answer's first audio, once out

    def ended(self, utt: Utterance, t: float) -> None:
        """The turn `utt` ended at stream time `t` and is being answered: record on."""
        self.utt = utt if self.window_s > 0 else None
        self._ended_t, self._audio_t = t, None

    def audio_started(self, t: float) -> None:
        if self.utt is not None and self._audio_t is None:
            self._audio_t = t

    def eligible(self, onset: float) -> bool:
        """Speech with this onset continues the recorded turn (the user had not heard the answer yet)."""
        return self.utt is not None and (self._audio_t is None or onset <= self._audio_t + self.window_s)

    def append(self, audio: np.ndarray, t: float, onset: float | None) -> None:
        """The next input (ending at stream time `t`); `onset`: that of the utterance in progress, if any."""
        if self.utt is None:
            return
        late = self._audio_t is not None and t > self._audio_t + self.window_s
        if t - self._ended_t > self.max_s or (late and (onset is None or not self.eligible(onset))):
            self.utt = None
            return
        self.utt.append(audio)

    def take(self) -> Utterance | None:
        """The recorded turn, its text forgotten (its last words were cut at the hesitation)."""
        utt, self.utt = self.utt, None
        if utt is not None:
            utt.forget_text()
        return utt
