"""Semantic end of turn: Smart Turn v3 (pipecat-ai's wheel ships the ONNX file, BSD-2-Clause).

Only the `.onnx` file of the `pipecat-ai` wheel is used, through onnxruntime; the features are
Whisper log-mels of the last 8 s (transformers' `WhisperFeatureExtractor`, as Smart Turn was trained).
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
        from transformers import WhisperFeatureExtractor

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        opts.log_severity_level = 3
        self.path = Path(model_path) if model_path else default_model_path()
        self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._features = WhisperFeatureExtractor(feature_size=80, sampling_rate=MODEL_RATE, chunk_length=WINDOW_S)

    def __call__(self, audio: np.ndarray) -> float:
        """P(turn complete) for the utterance `audio` ([samples] float32, 16 kHz; last 8 s used)."""
        n = WINDOW_S * MODEL_RATE
        audio = audio[-n:]
        if len(audio) < n:
            audio = np.pad(audio, (n - len(audio), 0))
        feats = self._features(audio, sampling_rate=MODEL_RATE, return_tensors="np", padding="max_length",
                               max_length=n, truncation=True, do_normalize=True).input_features  # [1, 80, 800]
        out = self._session.run(None, {"input_features": feats.astype(np.float32)})
        return float(np.asarray(out[0]).reshape(-1)[0])
