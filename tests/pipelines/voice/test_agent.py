"""The duplex agent on generated speech: answers, ignores silence and noise, barge-in, backchannels,
echo without AEC, endpoint down, cancellation on close. Real models, a real local LLM endpoint."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from streamserve.pipelines.voice.agent import AgentConfig, VoiceAgent, VoiceModels
from streamserve.pipelines.voice.asr import normalize
from streamserve.pipelines.voice.audio import MODEL_RATE, pink_noise, resample
from streamserve.pipelines.voice.brain import EndpointBrain
from streamserve.pipelines.voice.worker import VoiceWorker
from tests.pipelines.voice.fake_llm import FakeLLM
from tests.pipelines.voice.harness import CHUNK, Run, drive, silence


@pytest.fixture(scope="module")
def worker() -> Iterator[VoiceWorker]:
    w = VoiceWorker()
    yield w
    w.stop()


def make_agent(parts: VoiceModels, worker: VoiceWorker, url: str, tts_worker: VoiceWorker | None = None,
               **cfg: Any) -> VoiceAgent:
    models = dataclasses.replace(parts, brain=EndpointBrain(url))
    return VoiceAgent("s1", AgentConfig(**cfg), models, worker, tts_worker=tts_worker)


def heard(parts: VoiceModels, run: Run) -> str:
    return normalize(parts.asr(resample(run.audio(), 24000, MODEL_RATE)))


def test_a_spoken_question_gets_a_spoken_related_answer(parts: VoiceModels, worker: VoiceWorker, say: Any,
                                                         fake_llm: FakeLLM) -> None:
    tts = VoiceWorker("test-tts")  # as the pipeline runs it: TTS beside the transcripts, not behind them
    agent = make_agent(parts, worker, fake_llm.url, tts_worker=tts)
    try:
        question = say("What is the capital of France?")
        run = drive(agent, np.concatenate([silence(0.3), question]))
        run = drive(agent, silence(6.0), run, until=lambda r: bool(r.of("transcript", role="agent", final=True)))
        user = run.of("transcript", role="user", final=True)
        assert len(user) == 1 and {"capital", "france"} <= set(normalize(user[0]["text"]).split())
        assert run.of("transcript", role="user", final=False)  # partials came before the final
        turns = run.of("turn")
        assert len(turns) == 1 and turns[0]["latency_ms"] > 0
        # The turn's trace (stream clock, ms after the end of speech): in causal order.
        trace = turns[0]["trace_ms"]
        assert {"pause", "pause_text", "turn_end", "reply_started", "audio_ready"} <= set(trace)
        assert 0 < trace["pause"] <= trace["pause_text"] and trace["reply_started"] <= trace["audio_ready"]
        assert trace["pause"] <= trace["turn_end"] <= turns[0]["latency_ms"] + 1
        # pts count whole frames: contiguous inside the reply but where the agent reports a gap.
        final = run.of("transcript", role="agent", final=True)[0]
        steps = np.diff(run.pts)
        assert (steps >= 480).all() and np.sum(steps != 480) <= len(final["gaps_ms"]), (steps, final)
        answer = heard(parts, run)
        assert "paris" in answer  # the agent's audio, transcribed, answers the question
        assert fake_llm.requests[-1]["messages"][-1]["content"] == user[0]["text"]
        # Frames are 20 ms, released no faster than the input clock (+ the lead).
        assert all(len(f) == 480 for _, f in run.frames)
        first_t = run.frames[0][0]
        for k, (t, _) in enumerate(run.frames):
            assert (k + 1) * 0.02 <= t - first_t + 0.02 + agent.cfg.lead_s + 0.021
        assert tts.ran >= 1  # every clause was synthesized on the TTS worker (the only one given it)
    finally:
        agent.close()
        tts.stop()


def test_silence_and_noise_never_trigger_a_reply(parts: VoiceModels, worker: VoiceWorker,
                                                 fake_llm: FakeLLM) -> None:
    agent = make_agent(parts, worker, fake_llm.url)
    try:
        rng = np.random.default_rng(3)
        run = drive(agent, np.concatenate([silence(1.5), pink_noise(3 * MODEL_RATE, rng, level=0.05)]),
                    realtime=False)
        assert run.frames == [] and run.of("turn") == [] and fake_llm.requests == []
    finally:
        agent.close()


def speak_until_agent_talks(agent: VoiceAgent, say: Any, text: str, seconds: float = 1.0) -> Run:
    run = drive(agent, np.concatenate([silence(0.3), say(text)]))
    run = drive(agent, silence(8.0), run, until=lambda r: len(r.frames) >= int(seconds / 0.02))
    assert len(run.frames) >= int(seconds / 0.02), run.events
    return run


def test_barge_in_flushes_the_agent_and_closes_the_llm_stream(parts: VoiceModels, worker: VoiceWorker,
                                                               say: Any, slow_llm: FakeLLM) -> None:
    agent = make_agent(parts, worker, slow_llm.url)
    try:
        run = speak_until_agent_talks(agent, say, "Tell me about France.")
        onset = agent.t_in + 0.3  # the interruption starts 0.3 s into this piece of input
        speech = say("Stop talking and tell me about spiders instead.")
        lead = np.flatnonzero(np.abs(speech) > 0.02)[0]
        before = len(run.frames)
        interruption = np.concatenate([silence(0.3), speech[lead:], silence(3.0)])
        run = drive(agent, interruption, run, until=lambda r: bool(r.of("barge_in")) and agent.t_in > onset + 0.6)
        assert run.flushes, "the transport was not flushed"
        hold = run.flushes[0]
        # Silent within 200 ms of input, VAD windows included (typically 50-100 ms; the benchmark
        # measures it at the client).
        assert hold - onset <= 0.2, [e for e in run.events if e["t"] > onset - 0.5][:8]
        late = [t for t, _ in run.frames[before:] if t > hold]
        assert late == []  # nothing of the old reply after the hold
        assert run.of("barge_in", continues=False) and run.of("agent_hold")  # heard, then interrupted
        assert slow_llm.wait_for(lambda: slow_llm.disconnects >= 1 and slow_llm.active == 0, timeout=5.0)
        assert agent.stats["barge_ins"] == 1
    finally:
        agent.close()


def test_speech_before_the_user_can_have_heard_the_answer_continues_the_turn(
        parts: VoiceModels, worker: VoiceWorker, say: Any, fake_llm: FakeLLM) -> None:
    """A hesitation ended the turn (here: silence alone, 300 ms) and the agent began to answer "What
    is the capital"; the user goes on ("of France?") as its first audio comes out. That is the rest
    of the turn, not an interruption: the answer is cancelled and the whole question, decoded from
    its first word again, is answered once, with no trace of the half question in the history."""
    from streamserve.pipelines.voice.turn import TurnConfig

    turn = TurnConfig(pause_s=0.032, semantic_silence_s=0.3, end_silence_s=0.3)
    agent = make_agent(parts, worker, fake_llm.url, turn=turn, semantic_turn=False)
    try:
        run = drive(agent, np.concatenate([silence(0.3), say("What is the capital")]))
        run = drive(agent, silence(3.0), run, until=lambda r: bool(r.frames))  # its first audio
        assert run.frames and len(run.of("turn")) == 1
        rest = say("of France?")
        rest = rest[np.flatnonzero(np.abs(rest) > 0.02)[0]:]
        run = drive(agent, np.concatenate([rest, silence(6.0)]), run,
                    until=lambda r: bool(r.of("transcript", role="agent", final=True)))
        assert run.of("barge_in", continues=True) and agent.stats["continuations"] == 1
        user = run.of("transcript", role="user", final=True)
        assert {"capital", "france"} <= set(normalize(user[-1]["text"]).split()), user
        asked = fake_llm.requests[-1]["messages"]
        assert [m["role"] for m in asked] == ["system", "user"] and asked[-1]["content"] == user[-1]["text"]
        assert "paris" in normalize(run.of("transcript", role="agent", final=True)[-1]["text"])
    finally:
        agent.close()


def test_a_backchannel_does_not_stop_the_agent(parts: VoiceModels, worker: VoiceWorker, say: Any,
                                               slow_llm: FakeLLM) -> None:
    agent = make_agent(parts, worker, slow_llm.url, backchannel_s=0.7)
    try:
        run = speak_until_agent_talks(agent, say, "Tell me about France.")
        mhm = say("Yeah.")
        before = len(run.frames)
        run = drive(agent, np.concatenate([mhm, silence(2.0)]), run)
        assert run.of("backchannel") and not run.of("barge_in")
        assert len(run.frames) - before >= int(1.5 / 0.02)  # it went on talking
        assert slow_llm.disconnects == 0
    finally:
        agent.close()


def test_without_client_aec_the_agent_ignores_its_own_voice(parts: VoiceModels, worker: VoiceWorker, say: Any,
                                                            slow_llm: FakeLLM) -> None:
    agent = make_agent(parts, worker, slow_llm.url, client_aec=False)
    try:
        run = speak_until_agent_talks(agent, say, "Tell me about France.", seconds=0.2)
        # Loop the agent's voice back into its microphone, as a speakerphone without AEC does.
        for _ in range(150):
            frames = [f for _, f in run.frames[-3:]]
            echo = resample(np.concatenate(frames), 24000, MODEL_RATE)[:CHUNK] if frames else silence(0.02)
            echo = np.pad(echo, (0, CHUNK - len(echo)))
            drive(agent, 0.8 * echo, run)
        assert not run.of("barge_in") and not run.of("agent_hold")
        assert len(run.of("speech_start")) == 1  # the question; the echo never counts as speech
        assert len(run.of("transcript", role="user", final=True)) == 1
    finally:
        agent.close()


def test_endpoint_down_reports_a_typed_error_and_speaks_a_fallback(parts: VoiceModels, worker: VoiceWorker,
                                                                    say: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    agent = make_agent(parts, worker, f"http://127.0.0.1:{port}/v1")
    try:
        run = drive(agent, np.concatenate([silence(0.3), say("What is the capital of France?")]))
        run = drive(agent, silence(6.0), run, until=lambda r: bool(r.of("transcript", role="agent", final=True)))
        errors = run.of("error")
        assert errors and errors[0]["code"] == "llm_unavailable"
        assert "language model" in heard(parts, run)
    finally:
        agent.close()


def test_closing_mid_reply_closes_the_llm_stream(parts: VoiceModels, worker: VoiceWorker, say: Any,
                                                 slow_llm: FakeLLM) -> None:
    agent = make_agent(parts, worker, slow_llm.url)
    speak_until_agent_talks(agent, say, "Tell me about France.", seconds=0.2)
    agent.close()
    assert slow_llm.wait_for(lambda: slow_llm.disconnects == 1 and slow_llm.active == 0, timeout=5.0)
    assert agent.reply is None and agent.feed(silence(0.02)).frames == []


def test_partials_never_queue_behind_another_sessions_partial(parts: VoiceModels, worker: VoiceWorker, say: Any,
                                                              fake_llm: FakeLLM) -> None:
    """Partial transcripts are best effort (≈ 40% of a duplex turn's CPU, measured): while another
    session's partial waits on the shared background worker, this session skips its own (counted)
    instead of queueing; with the worker free it runs them; the turn is answered either way."""
    import threading

    background = VoiceWorker("test-background")
    gate = threading.Event()
    models = dataclasses.replace(parts, brain=EndpointBrain(fake_llm.url))
    agent = VoiceAgent("s1", AgentConfig(), models, worker, background=background)
    try:
        background.submit(2, gate.wait, lambda *_: None)  # another session's partial, running
        background.submit(2, lambda: None, lambda *_: None)  # ... and one waiting behind it
        question = say("How many legs does a spider have?")
        run = drive(agent, np.concatenate([silence(0.3), question]), realtime=False)
        assert agent.stats["partials"] == 0 and agent.stats["partials_skipped"] >= 2
        gate.set()
        run = drive(agent, silence(6.0), run, until=lambda r: bool(r.of("turn")))
        assert run.of("turn") and run.of("transcript", role="user", final=True)
        agent2 = VoiceAgent("s2", AgentConfig(), models, worker, background=background)
        try:  # the background worker is free now: partials run
            drive(agent2, np.concatenate([silence(0.3), question, silence(0.5)]))
            assert agent2.stats["partials"] >= 1
        finally:
            agent2.close()
    finally:
        gate.set()
        agent.close()
        background.stop()


def test_a_clause_synthesized_late_is_reported_as_a_gap(parts: VoiceModels, worker: VoiceWorker, say: Any,
                                                        fake_llm: FakeLLM) -> None:
    """When a clause's audio is not ready by the time the one before it has played, the agent leaves
    a silence and says so in its final transcript event (`gaps_ms`); a reply that kept up has none."""
    import time

    class SlowSecondClause:
        def __init__(self, tts: Any) -> None:
            self._tts, self.sample_rate = tts, tts.sample_rate

        def __call__(self, text: str) -> np.ndarray:
            if not text.startswith("The capital"):
                time.sleep(3.0)  # longer than the first clause's ≈ 1.8 s of speech
            return self._tts(text)

    models = dataclasses.replace(parts, brain=EndpointBrain(fake_llm.url), tts=SlowSecondClause(parts.tts))
    agent = VoiceAgent("s1", AgentConfig(), models, worker)
    try:
        run = drive(agent, np.concatenate([silence(0.3), say("What is the capital of France?")]))
        run = drive(agent, silence(8.0), run, until=lambda r: bool(r.of("transcript", role="agent", final=True)))
        final = run.of("transcript", role="agent", final=True)[0]
        assert "Seine" in final["text"] and len(final["gaps_ms"]) == 1 and final["gaps_ms"][0] >= 500, final
        steps = np.diff(run.pts)  # one jump in pts, the length of the gap; whole frames elsewhere
        jumps = steps[steps != 480]
        assert len(jumps) == 1 and abs(jumps[0] - 480 - final["gaps_ms"][0] * 24) <= 24, (jumps, final)
        assert agent.stats["reply_gaps"] == 1
    finally:
        agent.close()
