"""The baseline that never drops: every unit runs, in arrival order, however late (what a demo
server with a plain FIFO queue does, e.g. StreamDiffusionV2's). For benchmarks only: under overload
its latency grows until the inbox bound is reached."""

from __future__ import annotations

from collections.abc import Sequence

from streamserve.core.plan import Batch, StepOutput, StepPlan, WorkItem
from streamserve.schedulers.base import InboxView


class FifoScheduler:
    def __init__(self, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self._inboxes: dict[str, tuple[str, InboxView]] = {}

    def add(self, session_id: str, pipeline: str, inbox: InboxView, *_: object, **__: object) -> None:
        if session_id in self._inboxes:
            raise ValueError(f"session {session_id!r} is already scheduled")
        self._inboxes[session_id] = (pipeline, inbox)

    def remove(self, session_id: str) -> None:
        self._inboxes.pop(session_id, None)

    def schedule(self, now: float) -> StepPlan:
        heads = []
        for sid, (pipeline, inbox) in self._inboxes.items():
            head = inbox.peek()
            if head is not None:
                heads.append((head.arrival, sid, pipeline, inbox))
        heads.sort(key=lambda h: h[0])
        groups: dict[str, list[WorkItem]] = {}
        for _, sid, pipeline, inbox in heads:
            group = groups.setdefault(pipeline, [])
            if len(group) < self.max_batch:
                media = inbox.pop()
                if media is not None:
                    group.append(WorkItem(sid, media))
        return StepPlan(now=now, batches=tuple(Batch(p, tuple(items)) for p, items in groups.items() if items))

    def update(self, plan: StepPlan, outputs: Sequence[StepOutput], elapsed: dict[str, float]) -> None:
        """FIFO learns nothing."""
