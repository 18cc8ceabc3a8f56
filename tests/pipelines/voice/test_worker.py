"""The voice worker's order: priority first, then the earliest deadline; a reply's later clauses wait
behind end-of-turn work that is due sooner (what keeps four sessions' pause transcripts in time)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from streamserve.pipelines.voice.brain import Generation
from streamserve.pipelines.voice.reply import SPEECH_S_PER_CHAR, Mailbox, Reply, ReplyConfig
from streamserve.pipelines.voice.worker import PRIORITY_PARTIAL, PRIORITY_TTS, PRIORITY_TURN, VoiceWorker


def _gated(worker: VoiceWorker) -> threading.Event:
    """Occupy the worker until the returned event is set, so the jobs queued meanwhile are ordered."""
    gate, running = threading.Event(), threading.Event()

    def hold() -> None:
        running.set()
        gate.wait(10)

    worker.submit(PRIORITY_TTS, hold, lambda *_: None)
    assert running.wait(10)
    return gate


def _drain(ran: list[str], n: int) -> None:
    deadline = time.monotonic() + 20
    while len(ran) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_jobs_run_by_priority_then_earliest_deadline() -> None:
    worker = VoiceWorker("test-order")
    ran: list[str] = []
    try:
        gate = _gated(worker)
        for name, priority, slack in [("partial", PRIORITY_PARTIAL, 0.0), ("turn-late", PRIORITY_TURN, 0.3),
                                      ("turn-a", PRIORITY_TURN, 0.0), ("tts", PRIORITY_TTS, 0.0),
                                      ("turn-b", PRIORITY_TURN, 0.0)]:
            worker.submit(priority, lambda name=name: ran.append(name), lambda *_: None, slack_s=slack)
        gate.set()
        _drain(ran, 5)
        # equal slack: FIFO (turn-a before turn-b); more slack: after both, though queued first
        assert ran == ["tts", "turn-a", "turn-b", "turn-late", "partial"]
        with pytest.raises(ValueError, match=r"slack_s must be in \[0, 3600\] s, got -0.1"):
            worker.submit(PRIORITY_TURN, lambda: None, lambda *_: None, slack_s=-0.1)
    finally:
        worker.stop()


def test_a_later_clause_waits_behind_a_pause_transcript_the_first_does_not(parts: Any) -> None:
    """Session A's reply has two clauses queued; session B's pause transcript arrives after them. The
    first clause (what A's user is waiting for) runs first, then B's transcript (due before B's turn
    can end), then A's second clause (needed only once the first has played)."""
    ran: list[str] = []

    def tts(text: str) -> Any:
        ran.append(text)
        return parts.tts(text)

    tts.sample_rate = parts.tts.sample_rate  # type: ignore[attr-defined]
    worker, mailbox, gen = VoiceWorker("test-clauses"), Mailbox(), Generation()
    try:
        gate = _gated(worker)
        reply = Reply(0, "hi", gen, tts=tts, worker=worker, mailbox=mailbox, config=ReplyConfig(),  # type: ignore[arg-type]
                      speculative=False)
        gen.put("Sure thing, Paris is the capital of France.")
        gen.finish()
        reply.pump()
        first = "Sure thing,"
        assert SPEECH_S_PER_CHAR * len(first) / 2 > 0.05  # the second clause's slack, well above the test's jitter
        worker.submit(PRIORITY_TURN, lambda: ran.append("pause transcript"), lambda *_: None)
        gate.set()
        _drain(ran, 3)
        assert ran == [first, "pause transcript", "Paris is the capital of France."]
    finally:
        worker.stop()


def test_a_reply_whose_last_clause_is_spoken_before_its_stream_ends_still_finishes() -> None:
    """The splitter ends a sentence at its last token, so the last clause's audio can be in before
    the brain's stream ends; the reply's last part-frame must still go out (padded) and the reply
    end, or the agent never reports its final transcript."""

    def tts(text: str) -> np.ndarray:
        return np.full(int(0.0333 * 24000), 0.1, np.float32)  # 1.67 frames of 20 ms: a part-frame left

    tts.sample_rate = 24000  # type: ignore[attr-defined]
    worker, mailbox, gen = VoiceWorker("test-tail"), Mailbox(), Generation()
    try:
        reply = Reply(0, "hi", gen, tts=tts, worker=worker, mailbox=mailbox, config=ReplyConfig(),  # type: ignore[arg-type]
                      speculative=False)
        gen.put("Paris.")  # a whole sentence: out to TTS now, before the stream's end
        reply.pump()
        assert reply.spoken_text == [] and not reply.text_done
        for _ in range(500):  # the clause's audio comes back through the mailbox
            mailbox.run()
            if reply.spoken_text:
                break
            time.sleep(0.01)
        assert reply.spoken_text == ["Paris."]
        frames = [reply.pop_frame()]
        assert frames[0] is not None and reply.pop_frame() is None  # the part-frame waits for the end
        gen.finish()  # the stream ends after the audio came back
        reply.pump()
        last = reply.pop_frame()
        assert last is not None and len(last) == len(frames[0])  # padded to a whole frame
        assert reply.done
    finally:
        worker.stop()


def test_the_mailbox_asks_for_one_step_per_run_however_many_results_arrive() -> None:
    """A worker's result asks the engine for a step of its session at once (the session's tick); more
    results before that step ask nothing more, and the step's `run` applies them all in order."""
    asks: list[int] = []
    box, applied = Mailbox(ask=lambda: asks.append(1)), list[int]()
    workers = [threading.Thread(target=box.post, args=(applied.append, i)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert asks == [1] and applied == []
    box.run()
    assert sorted(applied) == [0, 1, 2]
    box.post(applied.append, 3)
    assert asks == [1, 1]  # after a run, the next result asks again
    box.run()
    assert applied[-1] == 3
    Mailbox().post(applied.append, 4)  # outside a server nothing is asked: the next chunk picks it up
