"""Earliest-deadline-first scheduling with per-pipeline batching.

Each step, every session offers at most its oldest pending unit (units of one session run in order).
Units already past their deadline are expired: dropped and reported, never run late. The remaining
heads are sorted by deadline; the pipeline owning the earliest deadline forms the first batch with
up to `max_batch` sessions sharing it (in deadline order), then the next pipeline, and so on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from streamserve.core.plan import Batch, StepOutput, StepPlan, WorkItem
from streamserve.schedulers.base import InboxView
from streamserve.schedulers.latency import LatencyModel


@dataclasses.dataclass
class _Entry:
    session_id: str
    pipeline: str
    inbox: InboxView


class EDFScheduler:
    def __init__(self, max_batch: int = 8, latency: LatencyModel | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.latency = latency or LatencyModel()
        self._entries: dict[str, _Entry] = {}

    def add(self, session_id: str, pipeline: str, inbox: InboxView) -> None:
        if session_id in self._entries:
            raise ValueError(f"session {session_id!r} is already scheduled")
        self._entries[session_id] = _Entry(session_id, pipeline, inbox)

    def remove(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def schedule(self, now: float) -> StepPlan:
        expired: list[WorkItem] = []
        heads: list[tuple[float, int, _Entry]] = []
        for order, entry in enumerate(list(self._entries.values())):
            head = entry.inbox.peek()
            while head is not None and head.deadline < now:
                entry.inbox.pop()
                expired.append(WorkItem(entry.session_id, head))
                head = entry.inbox.peek()
            if head is not None:
                heads.append((head.deadline, order, entry))
        heads.sort(key=lambda h: (h[0], h[1]))

        by_pipeline: dict[str, list[_Entry]] = {}
        for _, _, entry in heads:  # dicts keep insertion order: pipelines by earliest deadline
            group = by_pipeline.setdefault(entry.pipeline, [])
            if len(group) < self.max_batch:
                group.append(entry)

        batches = []
        for pipeline, group in by_pipeline.items():
            items = []
            for entry in group:
                media = entry.inbox.pop()
                if media is not None:
                    items.append(WorkItem(entry.session_id, media))
            if items:
                batches.append(Batch(pipeline, tuple(items)))
        return StepPlan(now=now, batches=tuple(batches), expired=tuple(expired))

    def update(self, plan: StepPlan, outputs: Sequence[StepOutput], elapsed: dict[str, float]) -> None:
        for batch in plan.batches:
            seconds = elapsed.get(batch.pipeline)
            if seconds is not None:
                self.latency.observe(batch.pipeline, batch.size, seconds)
