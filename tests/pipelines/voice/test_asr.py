"""Whisper tiny.en in torch with the encoder cut to the audio (the default ASR) against faster-whisper."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamserve.pipelines.voice.asr import make_asr, normalize
from streamserve.pipelines.voice.audio import MODEL_RATE
from streamserve.pipelines.voice.whisper_torch import TorchWhisperAsr, _repeat_start, load_ct2

QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?", "Who wrote Romeo and Juliet?",
             "What is the largest ocean on Earth?", "Where do penguins live?", "What do cows drink?",
             "Which planet is closest to the sun?", "What season comes after winter?"]


def word_errors(ref: str, hyp: str) -> int:
    r, h = normalize(ref).split(), normalize(hyp).split()
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
    return d[len(h)]


def test_ct2_model_bin_is_read_whole() -> None:
    from streamserve.pipelines.voice.asr import default_asr_path

    w = load_ct2(default_asr_path() / "model.bin")
    assert w["encoder/conv1/weight"].shape == (384, 80, 3)  # tiny: d=384, 80 mels
    assert w["encoder/position_encodings/encodings"].shape == (1500, 384)
    assert w["decoder/embeddings/weight"].shape == (51864, 384)  # English-only vocabulary
    assert w["decoder/projection/weight"] is w["decoder/embeddings/weight"]  # the alias, resolved
    assert sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight")) == 4
    assert np.isfinite(w["decoder/layer_3/ffn/linear_1/weight"].astype(np.float32)).all()


def test_encoder_context_follows_the_audio_length(parts: Any, say: Any) -> None:
    asr = parts.asr
    assert isinstance(asr, TorchWhisperAsr)
    audio = say("What is the capital of France?")
    mel = asr.mel(audio)
    expected = 2 * int(np.ceil((len(audio) + asr.pad_s * MODEL_RATE) / 160 / 2))
    assert mel.shape == (1, 80, expected) and expected < 3000  # not a 30 s window
    assert mel.shape[2] == 2 * int(np.ceil((len(audio) / MODEL_RATE + 0.5) * 50))
    long = asr.mel(np.zeros(40 * MODEL_RATE, np.float32))
    assert long.shape == (1, 80, 3000)  # past 30 s: the last 30 s


def test_word_errors_match_faster_whisper(parts: Any, say: Any) -> None:
    """Same weights, same greedy decode: the cut context costs no accuracy on these questions."""
    fw = make_asr(engine="faster-whisper")
    ours = sum(word_errors(q, parts.asr(say(q))) for q in QUESTIONS)
    theirs = sum(word_errors(q, fw(say(q))) for q in QUESTIONS)
    words = sum(len(normalize(q).split()) for q in QUESTIONS)
    assert ours <= max(2, theirs + 1) and ours / words <= 0.05
    assert parts.asr(np.zeros(MODEL_RATE, np.float32)) == ""  # silence: nothing
    rng = np.random.default_rng(0)
    assert len(parts.asr((0.05 * rng.standard_normal(2 * MODEL_RATE)).astype(np.float32)).split()) <= 3


def test_the_prompt_conditions_the_decode(parts: Any, say: Any) -> None:
    text = parts.asr(say("of France?"), "What is the capital")
    assert "france" in normalize(text) and "capital" not in normalize(text)


def test_a_repeating_decode_is_cut_where_it_starts_over() -> None:
    assert _repeat_start([1, 2, 3, 4, 5, 1, 2, 3]) == 5
    assert _repeat_start([1, 2, 3, 4, 5, 6]) is None
    assert _repeat_start([7, 7]) is None


def test_bad_asr_choices_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model.bin"):
        TorchWhisperAsr(tmp_path)
    with pytest.raises(ValueError, match="asr-engine"):
        make_asr(engine="vosk")
    (tmp_path / "model.bin").write_bytes(struct.pack("<IH", 6, 16) + b"TransformerSpec\x00" + struct.pack("<II", 1, 0))
    with pytest.raises(ValueError, match="TransformerSpec, not a Whisper model"):
        load_ct2(tmp_path / "model.bin")


def test_a_draft_changes_the_cost_never_the_transcript(parts: Any, say: Any) -> None:
    asr = parts.asr
    audio = say("How many legs does a spider have?")
    plain = asr.tokens(audio)
    before = asr.drafted
    for draft in ("How many legs does a spider have?",  # right: checked in one forward
                  "How many legs does a spider",  # a prefix (a partial from before the last word)
                  "How many eggs do a spider lay today?",  # wrong from the third word
                  "Completely different words."):  # wrong from the first
        assert asr.tokens(audio, draft=draft) == plain
    assert asr.drafted - before == 3  # the drafts that started right were checked at once
    prompt = "Tell me"
    assert asr.tokens(say("about cats."), prompt, draft="about cats.") == asr.tokens(say("about cats."), prompt)
