"""VAD and the end-of-turn state machine, on generated speech, silence and pink noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamserve.pipelines.voice.audio import MODEL_RATE, pink_noise
from streamserve.pipelines.voice.turn import (
    EventKind,
    TurnConfig,
    TurnDetector,
    TurnEvent,
    reads_finished,
    reads_open,
)
from streamserve.pipelines.voice.vad import FrameVad, SileroVad


def run_turns(audio: np.ndarray, config: TurnConfig | None = None) -> list[TurnEvent]:
    vad, turn = FrameVad(SileroVad()), TurnDetector(config)
    events = []
    for i in range(0, len(audio), 320):  # 20 ms chunks, as a microphone sends them
        for end, prob, level in vad.push(audio[i:i + 320]):
            events += turn.push(end / MODEL_RATE, prob, vad.window_s, level)
    return events


def speech_bounds(audio: np.ndarray, level: float = 0.02) -> tuple[float, float]:
    """Seconds of the first and last sample louder than `level` (the WAV's known speech span)."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return loud[0] / MODEL_RATE, loud[-1] / MODEL_RATE


def pad(speech: np.ndarray, before: float = 0.5, after: float = 1.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(before * MODEL_RATE), np.float32), speech,
                           np.zeros(int(after * MODEL_RATE), np.float32)])


def test_question_is_one_turn_ending_after_the_silence(say: Any) -> None:
    speech = say("What is the capital of France?")
    events = run_turns(pad(speech))
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.SPEECH_START and kinds[-1] is EventKind.TURN_END
    assert kinds.count(EventKind.TURN_END) == 1
    start, end = events[0], events[-1]
    first, last = speech_bounds(speech)
    assert abs(start.t - (0.5 + first)) < 0.1  # onset: where the generated speech begins
    assert abs(end.t - (0.5 + last)) < 0.15  # t is the end of speech, not of the silence after it
    assert end.reason == "silence" and end.speech_s > 1.0


def test_silence_and_pink_noise_never_start_a_turn() -> None:
    rng = np.random.default_rng(0)
    assert run_turns(np.zeros(3 * MODEL_RATE, np.float32)) == []
    noise = pink_noise(4 * MODEL_RATE, rng, level=0.05)
    assert [e for e in run_turns(noise) if e.kind is EventKind.TURN_END] == []


def test_speech_over_pink_noise_is_still_one_turn(say: Any) -> None:
    rng = np.random.default_rng(1)
    audio = pad(say("How many legs does a spider have?"))
    audio = audio + pink_noise(len(audio), rng, level=0.01)
    kinds = [e.kind for e in run_turns(audio)]
    assert kinds.count(EventKind.SPEECH_START) >= 1 and kinds.count(EventKind.TURN_END) >= 1


def test_end_silence_is_a_per_session_tunable(say: Any) -> None:
    audio = pad(say("Tell me a joke."), after=1.5)
    fast = run_turns(audio, TurnConfig(end_silence_s=0.3, semantic_silence_s=0.2))
    slow = run_turns(audio, TurnConfig(end_silence_s=1.2))
    t_fast = next(e for e in fast if e.kind is EventKind.TURN_END)
    t_slow = next(e for e in slow if e.kind is EventKind.TURN_END)
    # Same end of speech; the turn is *declared* later with the longer silence, so its event comes
    # from a later VAD window. Compare the number of windows processed before it.
    assert abs(t_fast.t - t_slow.t) < 0.1
    assert fast.index(t_fast) <= slow.index(t_slow)


def probs(seq: str, window: float = 0.032) -> list[tuple[float, float]]:
    """'.' silence, 'S' speech: one VAD window each."""
    return [((i + 1) * window, 0.95 if c == "S" else 0.02) for i, c in enumerate(seq)]


def feed(turn: TurnDetector, seq: str) -> list[TurnEvent]:
    out = []
    for t, p in probs(seq):
        out += turn.push(t, p, 0.032)
    return out


def test_state_machine_pause_resume_and_fallback() -> None:
    turn = TurnDetector(TurnConfig(pause_s=0.096, semantic_silence_s=0.192, end_silence_s=0.64))
    events = feed(turn, "..SSSSSSSSSS....SSSSSS" + "." * 25)
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.SPEECH_START, EventKind.PAUSE, EventKind.RESUME, EventKind.PAUSE,
                     EventKind.TURN_END]
    assert events[0].t == pytest.approx(2 * 0.032)  # onset: the first speech window's start
    assert events[-1].t == pytest.approx(22 * 0.032)  # the end of the last speech window


def test_semantic_verdict_ends_the_turn_early_and_silence_is_the_fallback() -> None:
    turn = TurnDetector(TurnConfig(pause_s=0.096, semantic_silence_s=0.192, end_silence_s=0.64))
    events = feed(turn, "SSSSSSSSSS...")
    assert [e.kind for e in events] == [EventKind.SPEECH_START, EventKind.PAUSE]
    assert turn.set_semantic(True) == []  # complete, but only 96 ms of silence so far
    events = feed(turn, "...")  # 192 ms: the semantic turn end fires
    assert [(e.kind, e.reason) for e in events] == [(EventKind.TURN_END, "semantic")]
    # An incomplete verdict waits for the full silence.
    turn = TurnDetector(TurnConfig(pause_s=0.096, semantic_silence_s=0.192, end_silence_s=0.64))
    feed(turn, "SSSSSSSSSS...")
    turn.set_semantic(False)
    assert feed(turn, "." * 10) == []
    assert [e.reason for e in feed(turn, "." * 10)] == ["silence"]


def test_short_bursts_are_noise_not_turns() -> None:
    turn = TurnDetector(TurnConfig(min_utterance_s=0.2))
    events = feed(turn, "..SSS" + "." * 30)
    assert [e.kind for e in events] == [EventKind.SPEECH_START, EventKind.NOISE]


@pytest.mark.parametrize("kw", [{"speech_threshold": 1.5}, {"end_silence_s": 0.1, "pause_s": 0.2},
                                {"release_threshold": 0.9}, {"min_speech_s": -1.0}])
def test_bad_turn_config_names_the_value(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        TurnConfig(**kw)


def test_a_confident_verdict_ends_the_turn_after_a_shorter_silence() -> None:
    """SHANKS-style early release: P >= confident_threshold ends the turn after confident_silence_s;
    a merely likely verdict (semantic_threshold <= P < confident_threshold) still waits for
    semantic_silence_s; a verdict for a pause the user resumed from is forgotten."""
    cfg = TurnConfig(pause_s=0.032, confident_silence_s=0.096, semantic_silence_s=0.192, end_silence_s=0.64,
                     read_text=False)  # Smart Turn alone (the transcript's part: the next test)
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS..")  # 64 ms of silence
    assert turn.set_semantic(0.97) == []  # sure, but the confident silence is not over yet
    assert [(e.kind, e.reason) for e in feed(turn, ".")] == [(EventKind.TURN_END, "confident")]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")  # 96 ms: a confident verdict now ends the turn at once
    assert [e.reason for e in turn.set_semantic(0.99)] == ["confident"]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")
    assert turn.set_semantic(0.8) == []  # complete, not sure: the 192 ms rule
    assert feed(turn, "..") == []
    assert [e.reason for e in feed(turn, "....")] == ["semantic"]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS..")
    turn.set_semantic(0.99)
    assert [e.kind for e in feed(turn, "SSS")] == [EventKind.RESUME]  # the user went on
    assert [e.kind for e in feed(turn, "." * 4)] == [EventKind.PAUSE]  # no verdict for the new pause yet
    # Without an early tier (the default) a sure verdict waits like any other.
    turn = TurnDetector(TurnConfig(pause_s=0.032, semantic_silence_s=0.192))
    feed(turn, "SSSSSSSSSS...")
    assert turn.set_semantic(0.99) == []


def test_the_early_tier_also_needs_a_transcript_that_reads_finished() -> None:
    """By default a sure verdict ends the turn early only once the pause's transcript reads as a
    finished sentence, whichever comes first; an open transcript leaves the 192 ms rule."""
    cfg = TurnConfig(pause_s=0.032, confident_silence_s=0.096, semantic_silence_s=0.192, end_silence_s=0.64)
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")  # 96 ms of silence
    assert turn.set_semantic(0.99) == []  # sure, but the words are not in yet
    assert [(e.kind, e.reason) for e in turn.set_text("What is the capital of France?")] == \
        [(EventKind.TURN_END, "confident")]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS..")
    assert turn.set_text("What do cows drink?") == []  # finished, the verdict not in yet
    assert turn.set_semantic(0.99) == []  # both in, 64 ms of silence: not yet
    assert [e.reason for e in feed(turn, ".")] == ["confident"]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")
    assert turn.set_text("What is the boiling point of") == []  # cut mid-sentence
    assert turn.set_semantic(0.99) == []
    assert feed(turn, "..") == []
    assert [e.reason for e in feed(turn, "....")] == ["semantic"]  # the 192 ms rule still holds
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS..")
    turn.set_text("Where do penguins live?")
    feed(turn, "SSS")  # the user went on: that transcript was of the old pause
    feed(turn, "....")
    assert turn.text_finished is None
    assert turn.set_semantic(0.99) == [] and feed(turn, ".") == []  # 160 ms, sure, no text for this pause


def test_words_that_read_unfinished_need_a_sure_verdict_for_the_semantic_end() -> None:
    """A likely verdict (0.5 <= P < 0.95) ends a turn after the semantic silence unless the pause's
    transcript reads unfinished: then only the fallback silence or a sure verdict ends it."""
    cfg = TurnConfig(pause_s=0.032, confident_silence_s=0.096, semantic_silence_s=0.192, end_silence_s=0.64)
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")
    turn.set_text("What is two plus")
    turn.set_semantic(0.9)
    assert feed(turn, "." * 10) == []  # 416 ms: still a hesitation
    assert [e.reason for e in feed(turn, "." * 10)] == ["silence"]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")
    turn.set_text("What is two plus two?")
    turn.set_semantic(0.9)  # finished words, a likely verdict: the 192 ms rule
    assert feed(turn, "..") == [] and [e.reason for e in feed(turn, "....")] == ["semantic"]
    turn = TurnDetector(cfg)
    feed(turn, "SSSSSSSSSS...")
    turn.set_text("yes")  # no final punctuation is no sign of an open sentence
    turn.set_semantic(0.9)
    assert [e.reason for e in feed(turn, "......")] == ["semantic"]
    turn = TurnDetector(TurnConfig(pause_s=0.032, semantic_silence_s=0.192, read_text=False))
    feed(turn, "SSSSSSSSSS...")
    turn.set_text("What is two plus")  # read_text off: the words have no say
    turn.set_semantic(0.9)
    assert [e.reason for e in feed(turn, "......")] == ["semantic"]


@pytest.mark.parametrize(("text", "finished"), [
    ("What is the capital of France?", True), ("What is 2 plus 2?", True), ("Tell me a fun fact.", True),
    ("Stop!", True), ('He said "go."', True), ("What is this for?", True),
    ("What is the boiling point of", False), ("who wrote Romeo,", False), ("How many legs does a sp-", False),
    ("What is 2 plus?", False), ("And the...", False), ("I went to the…", False), ("What is the?", False),
    ("", False), ("?", False), ("Can you tell me about your", False)])
def test_reads_finished(text: str, finished: bool) -> None:
    assert reads_finished(text) is finished


@pytest.mark.parametrize(("text", "left_open"), [
    ("who wrote Romeo,", True), ("What is the boiling point of", True), ("What is 2 plus?", True),
    ("How many legs does a sp-", True), ("And the...", True), ("yes", False), ("What is the capital of France?", False),
    ("How many", False), ("", False)])
def test_reads_open(text: str, left_open: bool) -> None:
    assert reads_open(text) is left_open


def test_confident_tier_config_is_checked() -> None:
    with pytest.raises(ValueError, match="confident_silence_s"):
        TurnConfig(confident_silence_s=0.3, semantic_silence_s=0.192)
    with pytest.raises(ValueError, match="confident_threshold"):
        TurnConfig(confident_threshold=0.4)


def test_session_params_carry_the_confident_tier() -> None:
    from streamserve.pipelines.voice.pipeline import VoiceParams

    off = VoiceParams().agent_config().turn  # the default: no early tier
    assert (off.confident_silence_s, off.confident_threshold, off.semantic_silence_s) == (0.192, 0.95, 0.192)
    turn = VoiceParams(confident_silence_ms=96.0).agent_config().turn  # the benchmark's duplex-early
    assert (turn.confident_silence_s, turn.confident_threshold, turn.semantic_silence_s) == (0.096, 0.95, 0.192)
    assert VoiceParams(semantic_silence_ms=64.0).agent_config().turn.confident_silence_s == 0.064
    assert turn.read_text and not VoiceParams(read_text=False).agent_config().turn.read_text
    with pytest.raises(ValueError, match="confident_threshold"):
        VoiceParams(confident_threshold=0.3)


_LEVELS = {"S": (0.95, -25.0), "L": (0.95, -40.0), "s": (0.95, -65.0), "c": (0.95, -5.0), "n": (0.95, -50.0),
           ".": (0.02, -65.0)}


def feed_levels(turn: TurnDetector, seq: str) -> list[tuple[int, TurnEvent]]:
    """One window per character (`_LEVELS`: 'S' loud speech, 'L' quieter speech, 's' a faded voice the
    VAD still calls speech, 'c' a click, 'n' speech-like noise 25 dB under 'S', '.' silence); returns
    (window index, event)."""
    out = []
    for i, ch in enumerate(seq):
        prob, level = _LEVELS[ch]
        out += [(i, e) for e in turn.push((i + 1) * 0.032, prob, 0.032, level)]
    return out


def test_a_faded_voice_ends_speech_before_the_vad_lets_go() -> None:
    """Silero's probability stays up for 60-130 ms after a voice fades: two windows 30 dB under the
    utterance's loudest end its speech (the pause comes at the second, the end of speech is the last
    loud window) and do not resume a pause; with quiet_db None the VAD alone decides."""
    seq = "..SSSSSSSSSSsssss" + "." * 16
    events = feed_levels(TurnDetector(TurnConfig(pause_s=0.032)), seq)
    assert [e.kind for _, e in events] == [EventKind.SPEECH_START, EventKind.PAUSE, EventKind.TURN_END]
    (at, pause), (end_at, end) = events[1], events[2]
    assert at == 13 and pause.t == pytest.approx(12 * 0.032)  # the second faded window; the last loud one
    assert end.reason == "silence" and end.t == pytest.approx(12 * 0.032) and end_at == 11 + 20  # 640 ms after
    vad_only = feed_levels(TurnDetector(TurnConfig(pause_s=0.032, quiet_db=None)), seq)
    assert [(i, e.t) for i, e in vad_only if e.kind is EventKind.PAUSE] == [(17, pytest.approx(17 * 0.032))]


def test_a_closure_a_click_or_a_noise_floor_do_not_end_speech() -> None:
    """One faded window inside a word (a stop's closure) is no pause; a one-window click at the onset
    does not set the utterance's level (its quieter speech is not 'faded'); a noise floor within
    quiet_db of the speech leaves the VAD to decide."""
    def kinds(seq: str) -> list[EventKind]:
        return [e.kind for _, e in feed_levels(TurnDetector(TurnConfig(pause_s=0.032)), seq)]

    assert kinds("SSSSSsSSSSSsSSSS") == [EventKind.SPEECH_START]
    assert kinds("cLLLLLLLLLLL") == [EventKind.SPEECH_START]
    assert kinds("SSSSSSSSnnnnnnnnnnnnnnnnnnnnnnnn") == [EventKind.SPEECH_START]


def test_generated_speech_ends_where_the_voice_fades(say: Any) -> None:
    """On a question over a -60 dBFS noise floor the end of speech comes at most 80 ms after its last
    loud sample, and at least 40 ms before the VAD alone lets go; one turn either way."""
    speech = say("Which planet is closest to the sun?")
    audio = pad(speech)
    audio = audio + np.random.default_rng(2).standard_normal(len(audio)).astype(np.float32) * 1e-3
    _, last = speech_bounds(speech)
    ends = {}
    for quiet_db in (30.0, None):
        events = run_turns(audio, TurnConfig(pause_s=0.032, quiet_db=quiet_db))
        assert [e.kind for e in events].count(EventKind.TURN_END) == 1
        ends[quiet_db] = next(e.t for e in events if e.kind is EventKind.TURN_END) - (0.5 + last)
    assert -0.02 < ends[30.0] <= 0.08
    assert ends[None] - ends[30.0] >= 0.04


def test_quiet_db_is_checked_and_carried_by_the_session_params() -> None:
    from streamserve.pipelines.voice.pipeline import VoiceParams

    for bad in (0.0, -3.0, 200.0):
        with pytest.raises(ValueError, match="quiet_db"):
            TurnConfig(quiet_db=bad)
    assert VoiceParams().agent_config().turn.quiet_db == 30.0
    assert VoiceParams(quiet_db=0).agent_config().turn.quiet_db is None  # 0: the VAD alone
    with pytest.raises(ValueError, match="quiet_db"):
        VoiceParams(quiet_db=-10)


def test_the_continuation_window_is_a_session_param() -> None:
    from streamserve.pipelines.voice.pipeline import VoiceParams

    assert VoiceParams().agent_config().continuation_s == 0.25
    assert VoiceParams(continuation_ms=0).agent_config().continuation_s == 0.0  # never
    with pytest.raises(ValueError, match="continuation_s"):
        VoiceParams(continuation_ms=-5)
