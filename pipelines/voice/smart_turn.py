"""Semantic end of turn: Smart Turn v3 (pipecat-ai's wheel ships the ONNX file, BSD-2-Clause).

Only the `.onnx` file of the `pipecat-ai` wheel is used, through onnxruntime; the features are
Whisper log-mels of the last 8 s (computed with faster-whisper's extractor: the values of
transformers' `WhisperFeatureExtractor`, which Smart Turn was trained with, twenty times faster).
`SmartTurn(audio16k)` returns the probability that the speech so far ends a turn.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from streamserve.pipelines.voice.audio import MODEL_RATE

WINDOW_S = 8


def default_model_path() -> Path:
    """The Smart Turn ONNX file inside the installed `pipecat-ai` wheel."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Smart Turn needs the `pipecat-ai` package (pip install '.[voice]')")
    folder = Path(next(iter(spec.submodule_search_locations))) / "audio" / "turn" / "smart_turn" / "data"
    found = sorted(folder.glob("smart-turn-*-cpu.onnx"))
    if not found:
        raise FileNotFoundError(f"no smart-turn-*-cpu.onnx in {folder}")
    return found[-1]


class SmartTurn:
    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        opts.log_severity_level = 3
        self.path = Path(model_path) if model_path else default_model_path()
        self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._features = FeatureExtractor(feature_size=80, sampling_rate=MODEL_RATE, chunk_length=WINDOW_S)

    def __call__(self, audio: np.ndarray) -> float:
        """P(turn complete) for the utterance `audio` ([samples] float32, 16 kHz; last 8 s used)."""
        n = WINDOW_S * MODEL_RATE
        audio = audio[-n:]
        if len(audio) < n:
            audio = np.pad(audio, (n - len(audio), 0))
        feats = self.features(audio)
        out = self._session.run(None, {"input_features": feats})
        return float(np.asarray(out[0]).reshape(-1)[0])

    def features(self, audio: np.ndarray) -> np.ndarray:
        """[1, 80, 800] Whisper log-mels of 8 s of audio, zero-mean unit-variance first, as Smart Turn was
        trained (transformers' `WhisperFeatureExtractor(do_normalize=True)`; faster-whisper's numpy
        extractor gives the same values within 1e-5 in ≈ 5 ms instead of ≈ 100 ms)."""
        audio = audio.astype(np.float32)
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        frames = WINDOW_S * MODEL_RATE // 160
        return np.ascontiguousarray(self._features(audio, padding=0)[None, :, :frames], dtype=np.float32)
