"""Counters the SLO scheduler keeps for /metrics (read, as copies, from the event loop thread)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass
class SloStats:
    units: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    late: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    expired: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    spare_units: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # above tier
    queue_s: collections.defaultdict[str, float] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(float))
    compute_s: collections.defaultdict[str, float] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(float))
    tier_changes: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    cost_error: dict[str, float] = dataclasses.field(default_factory=dict)
    forced_pieces: int = 0

    def unit_done(self, pipeline: str, late: bool, queued_s: float, compute_s: float, batch: int) -> None:
        """One unit ran: it waited `queued_s` before its batch started; the batch took `compute_s`."""
        self.units[pipeline] += 1
        self.late[pipeline] += int(late)
        self.queue_s[pipeline] += max(0.0, queued_s)
        self.compute_s[pipeline] += compute_s

    def unit_expired(self, pipeline: str) -> None:
        self.expired[pipeline] += 1

    def tier_change(self, pipeline: str, direction: str) -> None:
        self.tier_changes[(pipeline, direction)] += 1

    def snapshot(self) -> dict[str, Any]:
        """Copies of every counter. Called from another thread: a copy that races with the engine
        thread adding a key (a new pipeline) is retried."""
        for _ in range(10):
            try:
                return {"units": dict(self.units), "late": dict(self.late), "expired": dict(self.expired),
                        "spare_units": dict(self.spare_units),
                        "queue_s": dict(self.queue_s), "compute_s": dict(self.compute_s),
                        "tier_changes": dict(self.tier_changes), "cost_error": dict(self.cost_error)}
            except RuntimeError:  # dictionary changed size during iteration
                continue
        return {k: {} for k in ("units", "late", "expired", "spare_units", "queue_s", "compute_s", "tier_changes",
                                "cost_error")}
