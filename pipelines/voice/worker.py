"""The voice worker: one thread running the slow model calls (ASR, Smart Turn, TTS) of every session.

The engine thread only does per-chunk work (resampling, VAD, the turn machine, releasing output);
anything that takes tens of milliseconds or more is a `Job` here, so audio input keeps flowing in
order while a transcript is decoded. Jobs run by priority (the first clause of a reply first, then
end-of-turn work and the later clauses, then partial transcripts), earliest deadline first within a
priority (a job's deadline is its submit time plus the slack its caller gives it, so equal slacks
run FIFO): with many sessions, one session's first clause runs before another's second clause,
which is needed only when the first has been spoken, and so does a pause transcript where one
worker serves both (the pipeline gives TTS a thread of its own). A job whose `stale()` says its
result is no longer wanted (barge-in, a newer partial, a closed session) is skipped unrun. Results
come back through each job's `done` callback on this thread; the agent picks them up at its next step.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

PRIORITY_TTS = 0
PRIORITY_TURN = 1
PRIORITY_PARTIAL = 2


@dataclasses.dataclass(order=True)
class Job:
    priority: int
    deadline: float  # time.monotonic() by which the result is wanted
    seq: int
    run: Callable[[], Any] = dataclasses.field(compare=False)
    done: Callable[[Any, BaseException | None], None] = dataclasses.field(compare=False)
    stale: Callable[[], bool] = dataclasses.field(compare=False, default=lambda: False)


class VoiceWorker:
    def __init__(self, name: str = "voice-worker", nice: int = 0) -> None:
        self.nice = nice  # > 0: this thread yields the CPU to the others (speculative work)
        self._heap: list[Job] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._stopping = False
        self.ran = 0
        self.skipped = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, run: Callable[[], Any], done: Callable[[Any, BaseException | None], None],
               stale: Callable[[], bool] = lambda: False, slack_s: float = 0.0) -> None:
        """Queue `run`; `done(result, error)` is called on this worker's thread. `slack_s`: how long
        after now the result is still in time (orders jobs of one priority, earliest deadline first)."""
        if not 0.0 <= slack_s <= 3600.0:
            raise ValueError(f"slack_s must be in [0, 3600] s, got {slack_s}")
        with self._cv:
            if self._stopping:
                done(None, RuntimeError("the voice worker has stopped"))
                return
            job = Job(priority, time.monotonic() + slack_s, next(self._seq), run, done, stale)
            heapq.heappush(self._heap, job)
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        if self.nice > 0:  # Linux: a thread is a task with its own nice value
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            except (AttributeError, OSError):
                log.debug("could not lower the priority of %s", self._thread.name)
        while True:
            with self._cv:
                while not self._heap and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = heapq.heappop(self._heap)
            if job.stale():
                self.skipped += 1
                continue
            try:
                result, error = job.run(), None
            except Exception as exc:  # handed to the job's owner, who reports it for its session
                log.exception("voice job failed")
                result, error = None, exc
            self.ran += 1
            try:
                job.done(result, error)
            except Exception:
                log.exception("voice job callback failed")
