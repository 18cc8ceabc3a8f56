"""Audio in and out of the voice models: validation, stateful resampling, output chunking.

The models want mono float32 at 16 kHz (VAD, Smart Turn, Whisper); the TTS speaks at its own rate.
Any input of 8-48 kHz, mono or stereo, int16 or float32, is accepted and resampled with a stateful
soxr stream (no clicks at chunk boundaries); anything else raises ValueError naming the bad value.
"""

from __future__ import annotations

import numpy as np
import soxr

from streamserve.core.frames import AudioChunk

MODEL_RATE = 16_000
MIN_RATE, MAX_RATE = 8_000, 48_000
MAX_CHANNELS = 2


def check_format(sample_rate: int, channels: int) -> None:
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ValueError(f"voice input sample rate must be in [{MIN_RATE}, {MAX_RATE}] Hz, got {sample_rate}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"voice input must be mono or stereo, got {channels} channels")


def to_float_mono(data: np.ndarray) -> np.ndarray:
    """[channels, samples] int16/float32 -> [samples] float32 in [-1, 1] (channels averaged)."""
    pcm = data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32, copy=False)
    return pcm.mean(axis=0) if pcm.shape[0] > 1 else pcm[0]


class InputResampler:
    """One session's input: any accepted format -> mono float32 at 16 kHz, continuous across chunks."""

    def __init__(self, out_rate: int = MODEL_RATE) -> None:
        self.out_rate = out_rate
        self._in_rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def __call__(self, chunk: AudioChunk) -> np.ndarray:
        check_format(chunk.sample_rate, chunk.channels)
        mono = to_float_mono(chunk.data)  # [samples]
        if chunk.sample_rate == self.out_rate:
            return mono
        if chunk.sample_rate != self._in_rate or self._stream is None:
            self._in_rate = chunk.sample_rate
            self._stream = soxr.ResampleStream(chunk.sample_rate, self.out_rate, 1, dtype="float32")
        return np.asarray(self._stream.resample_chunk(mono), dtype=np.float32)


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """One-shot resampling of a whole mono float32 signal."""
    if in_rate == out_rate:
        return audio.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(audio, in_rate, out_rate), dtype=np.float32)


def pink_noise(samples: int, rng: np.random.Generator, level: float = 0.1) -> np.ndarray:
    """Pink (1/f) noise, float32, RMS about `level`: the noise floor the tests and benchmark use."""
    white = rng.standard_normal(samples + 1)
    spectrum = np.fft.rfft(white)
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n=samples + 1)[:samples]
    pink *= level / (np.sqrt(np.mean(pink**2)) + 1e-12)
    return pink.astype(np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
