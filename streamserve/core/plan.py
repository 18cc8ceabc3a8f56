"""The scheduler's typed output (`StepPlan`) and the pipeline's typed result (`StepOutput`).

The engine's heartbeat is three calls: `plan = scheduler.schedule(now)`, `outputs = pipeline.step(batch)`
for each batch of the plan, `scheduler.update(plan, outputs)`. The pipeline never reaches into
scheduler state; it sees only the batch it is handed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from streamserve.core.frames import Media, MediaKind


@dataclasses.dataclass(frozen=True, slots=True)
class WorkItem:
    """One media unit of one session, due by `deadline`."""

    session_id: str
    media: Media

    @property
    def deadline(self) -> float:
        return self.media.deadline


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """Work for one pipeline in one forward: at most one item per session, in deadline order."""

    pipeline: str
    items: tuple[WorkItem, ...]

    def __post_init__(self) -> None:
        ids = [item.session_id for item in self.items]
        if len(ids) != len(set(ids)):
            raise ValueError(f"a batch holds at most one item per session, got {ids}")

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def session_ids(self) -> tuple[str, ...]:
        return tuple(item.session_id for item in self.items)


@dataclasses.dataclass(eq=False, slots=True)
class Chore:
    """A piece of non-batch work on the engine thread (a slice of opening a session, a tier change),
    planned by the scheduler between batches under a time budget. `run` does the piece; the engine
    then calls `done(None)`, or `done(exc)` if it raised. The engine reports its seconds under `key`."""

    session_id: str
    key: str  # cost-model name, e.g. "video#join"
    run: Callable[[], None]
    done: Callable[[BaseException | None], None] = lambda exc: None


@dataclasses.dataclass(frozen=True, slots=True)
class StepPlan:
    """What the engine runs now. `expired` items missed their deadline before running: drop, count.
    `skipped` items were left out on purpose (a session's tier runs at a lower frame rate). `chores`
    run after the batches. With nothing to run, `wake_at` says when the scheduler wants to be asked
    again (it is holding a batch open for frames about to arrive); new input wakes it sooner."""

    now: float
    batches: tuple[Batch, ...] = ()
    expired: tuple[WorkItem, ...] = ()
    skipped: tuple[WorkItem, ...] = ()
    chores: tuple[Chore, ...] = ()
    wake_at: float | None = None

    @property
    def empty(self) -> bool:
        return not self.batches

    @property
    def size(self) -> int:
        return sum(b.size for b in self.batches)


@dataclasses.dataclass(frozen=True, slots=True)
class StepOutput:
    """What a pipeline produced for one session in one step.

    `media` may be empty (a pipeline with lag, e.g. stream batch, is still filling) or hold several
    units. Each output unit carries the pts/arrival/deadline of the input it answers.
    `error` ends that session alone with a clear message; the others keep streaming.
    `events` are JSON-able control events for the client (voice: transcripts, barge-in...); `flush`
    names output kinds whose queued units the transport drops before `media` (barge-in). Both are
    control: they are applied before the media of the same output and jump every media queue.
    """

    session_id: str
    media: tuple[Media, ...] = ()
    error: str | None = None
    events: tuple[dict[str, Any], ...] = ()
    flush: tuple[MediaKind, ...] = ()
