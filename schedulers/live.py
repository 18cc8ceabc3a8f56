"""What the SLO scheduler keeps per live session and per join (see `SloScheduler`).

`RateCredit` serves a lower frame-rate tier by even decimation.

Each arriving unit adds ``tier fps x time since the previous unit`` (capped at `CREDIT_CAP`) and is
taken when the credit reaches one unit (less `CREDIT_SLACK`, for arrival jitter), which spends it.
A 9/10 tier on a 30 fps camera takes 9 frames of every 10, evenly spread; 1/2 every other one.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable

from streamserve.core.frames import Media
from streamserve.schedulers.base import InboxView
from streamserve.schedulers.spec import SessionSpec, Tier

CREDIT_SLACK = 0.125  # a unit is taken once the rate credit is within this of a whole unit (jitter)
CREDIT_CAP = 2.0  # at most this much credit is saved up (a pause never buys a burst of more than 2)
BURST_AGE = 0.75  # frame periods: a unit with one newer behind it that arrived less long ago is a jitter burst
OnTier = Callable[[Tier], None]


@dataclasses.dataclass
class RateCredit:
    credit: float = 0.0  # units the tier rate has earned
    at: float | None = None  # arrival time of the last unit the credit decided on
    granted: float | None = None  # arrival time of a unit granted but not yet run

    def grant(self, arrival: float, fps: float) -> bool:
        """Whether the unit that arrived at `arrival` runs at `fps` (decided once per unit: asking
        again about the same unit adds nothing; a granted unit stays granted until it runs)."""
        if arrival == self.granted:
            return True
        credit = 1.0 if self.at is None else self.credit + fps * max(0.0, arrival - self.at)
        self.credit, self.at = min(CREDIT_CAP, credit), arrival
        if self.credit < 1.0 - CREDIT_SLACK:
            return False
        self.credit -= 1.0
        self.granted = arrival
        return True

    def give_back(self, arrival: float) -> None:
        """The unit that arrived at `arrival` will not run: its grant, if it had one, goes to the next."""
        if self.granted == arrival:
            self.granted = None
            self.credit += 1.0

    def next_due(self, last_seen: float, camera_fps: float, fps: float) -> float:
        """When the next unit that will run is expected, on a camera at `camera_fps` whose newest unit
        arrived at `last_seen`, served at the tier's `fps`."""
        period = 1.0 / camera_fps
        due = last_seen + period
        if fps < camera_fps and self.at is not None:  # the first arrival the credit grants
            need = self.at + max(0.0, 1.0 - CREDIT_SLACK - self.credit) / fps
            if need > due:
                due += math.ceil((need - due) * camera_fps - 1e-9) * period
        return due


@dataclasses.dataclass
class Join:
    """A session being opened in pieces; `done(None)` once every piece ran, `done(exc)` on failure."""

    session_id: str
    pipeline: str
    pieces: collections.deque[tuple[str, Callable[[], None]]]
    done: Callable[[BaseException | None], None]
    submitted: float = 0.0
    failed: bool = False
    running: int = 0  # pieces handed out and not yet done


@dataclasses.dataclass
class LiveSession:
    """A session the scheduler runs: what it asked for, its inbox, its applied tier and rate credit."""

    session_id: str
    spec: SessionSpec
    inbox: InboxView
    on_tier: OnTier | None
    applied: int = 0  # tier level whose shape the pipeline runs now
    last_taken: float | None = None  # arrival time of the last unit run
    last_seen: float | None = None  # arrival time of the newest unit seen
    rate: RateCredit = dataclasses.field(default_factory=RateCredit)  # frame-rate decimation
    reason: str = "requested quality"
    changed_at: float = 0.0

    def time_for_both(self, head: Media, now: float, round_s: float) -> bool:
        """Whether running `head` first, with rounds of batches `round_s` long, still lets the unit
        queued behind it (due a period after it, at the earliest) make its deadline."""
        return now + 2 * round_s <= head.deadline + 1.0 / self.spec.fps

    def burst(self, head: Media, now: float, round_s: Callable[[], float]) -> bool:
        """Whether `head` and the one unit behind it are a jitter burst (`head` arrived less than
        `BURST_AGE` of a period ago; in a backlog it arrived a period or more ago) with time for both."""
        return len(self.inbox) == 2 and now - head.arrival < BURST_AGE / self.spec.fps and \
            self.time_for_both(head, now, round_s())
