"""The engine loop with fake pipelines: batching, isolation of a failing session, calls, stop."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from streamserve.core import Batch, MediaKind, StepOutput, VideoFrame, WorkItem
from streamserve.core.clock import SYSTEM_CLOCK
from streamserve.engine import Engine
from streamserve.pipelines.base import Pipeline
from streamserve.schedulers import EDFScheduler
from streamserve.session import FreshestQueue


@dataclasses.dataclass(frozen=True)
class NoParams:
    pass


class Recorder(Pipeline):
    """Adds 1 to every pixel; raises for frames whose pts is in `poison`; records batches."""

    name = "recorder"
    Params = NoParams

    def __init__(self, device: str = "cpu", poison: frozenset[int] = frozenset()) -> None:
        super().__init__(device)
        self.poison = poison
        self.batches: list[tuple[str, ...]] = []
        self.threads: set[str] = set()

    def open_session(self, session_id: str, params: Any) -> None: ...
    def update_params(self, session_id: str, params: Any) -> None: ...
    def close_session(self, session_id: str) -> None: ...

    def step(self, batch: Batch) -> list[StepOutput]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch.session_ids)
        if any(item.media.pts in self.poison for item in batch.items):
            raise RuntimeError("poisoned frame")
        return [StepOutput(i.session_id, (i.media.with_data(i.media.data + 1),)) for i in batch.items]  # type: ignore[arg-type]


class Collector:
    def __init__(self) -> None:
        self.outputs: list[StepOutput] = []
        self.expired: list[WorkItem] = []
        self.event = threading.Event()

    def __call__(self, outputs: Sequence[StepOutput], expired: Sequence[WorkItem]) -> None:
        self.outputs.extend(outputs)
        self.expired.extend(expired)
        self.event.set()

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        end = SYSTEM_CLOCK.now() + timeout
        while len(self.outputs) < n:
            left = end - SYSTEM_CLOCK.now()
            assert left > 0, f"only {len(self.outputs)} of {n} outputs arrived"
            self.event.wait(left)
            self.event.clear()


def frame(pts: int, budget: float = 10.0) -> VideoFrame:
    now = SYSTEM_CLOCK.now()
    return VideoFrame(np.full((2, 2, 3), 7, np.uint8), pts, now, now + budget)


@pytest.fixture
def engine_parts():
    pipe = Recorder(poison=frozenset({666}))
    sink = Collector()
    engine = Engine(EDFScheduler(max_batch=4), lambda name: pipe, sink, idle_wait_s=0.05)
    engine.start()
    yield engine, pipe, sink
    engine.stop()
    assert not engine.running


def test_batches_sessions_of_one_pipeline(engine_parts) -> None:
    engine, pipe, sink = engine_parts
    queues = {sid: FreshestQueue(4) for sid in "abc"}
    for q in queues.values():
        q.put(frame(1))
    # Register all three at once on the engine thread so they land in one step.
    engine.call(lambda: [engine.scheduler.add(s, "recorder", q) for s, q in queues.items()]).result(5)
    engine.wake()
    sink.wait_for(3)
    assert sorted(pipe.batches[0]) == ["a", "b", "c"]
    assert all(out.media[0].data[0, 0, 0] == 8 for out in sink.outputs)  # type: ignore[union-attr]
    assert pipe.threads == {"engine-cpu"}


def test_failing_session_is_isolated(engine_parts) -> None:
    engine, pipe, sink = engine_parts
    good, bad = FreshestQueue(4), FreshestQueue(4)
    good.put(frame(1))
    bad.put(frame(666))

    def register() -> None:
        engine.scheduler.add("good", "recorder", good)
        engine.scheduler.add("bad", "recorder", bad)

    engine.call(register).result(5)
    engine.wake()
    sink.wait_for(2)
    by_id = {o.session_id: o for o in sink.outputs}
    assert by_id["good"].error is None and len(by_id["good"].media) == 1
    assert by_id["bad"].error == "RuntimeError: poisoned frame" and by_id["bad"].media == ()
    # the batch was retried one by one after the failure
    assert sorted(pipe.batches[0]) == ["bad", "good"] and len(pipe.batches) == 3


def test_expired_frames_are_reported(engine_parts) -> None:
    engine, _, sink = engine_parts
    q = FreshestQueue(4)
    stale = frame(1)
    stale = VideoFrame(stale.data, 1, stale.arrival - 1.0, stale.arrival - 0.5)
    q.put(stale)
    engine.call(lambda: engine.scheduler.add("s", "recorder", q)).result(5)
    engine.wake()
    end = SYSTEM_CLOCK.now() + 5
    while not sink.expired and SYSTEM_CLOCK.now() < end:
        sink.event.wait(0.1)
    assert [i.media.pts for i in sink.expired] == [1] and sink.outputs == []


def test_call_propagates_errors_and_stopped_engine_refuses() -> None:
    engine = Engine(EDFScheduler(), lambda name: Recorder(), Collector(), idle_wait_s=0.05)
    engine.start()
    assert engine.call(lambda: 41 + 1).result(5) == 42
    with pytest.raises(ZeroDivisionError):
        engine.call(lambda: 1 / 0).result(5)
    engine.stop()
    with pytest.raises(RuntimeError, match="the engine has stopped"):
        engine.call(lambda: 1).result(1)


def test_passthrough_kind_sets() -> None:
    from streamserve.pipelines.passthrough import PassthroughPipeline

    assert MediaKind.AUDIO in PassthroughPipeline.inputs
