"""The scheduler interface the engine drives, and the inbox view it reads sessions through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from streamserve.core.frames import Media
from streamserve.core.plan import StepOutput, StepPlan


class InboxView(Protocol):
    """A session's pending input, oldest first. Implemented by `streamserve.session.FreshestQueue`."""

    def peek(self) -> Media | None: ...
    def pop(self) -> Media | None: ...
    def __len__(self) -> int: ...


class Scheduler(Protocol):
    def add(self, session_id: str, pipeline: str, inbox: InboxView) -> None:
        """Start scheduling a session's inbox."""
        ...

    def remove(self, session_id: str) -> None: ...

    def schedule(self, now: float) -> StepPlan:
        """Pop the work to run now. Never blocks; an empty plan means nothing is due."""
        ...

    def update(self, plan: StepPlan, outputs: Sequence[StepOutput], elapsed: dict[str, float]) -> None:
        """Learn from a finished step: `elapsed` maps pipeline name to the seconds its batch took."""
        ...
