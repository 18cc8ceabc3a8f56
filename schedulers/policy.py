"""Graceful degradation: lower one session one tier at a time when load rises, restore when it falls.

Overloaded means the cost model predicts utilization above `max_utilization` (or a latency bound
broken) for `overload_hold_s` on end, or more than `miss_ratio` of the recent units late (a slower
machine or a noisy neighbour shows up in the measured step times and in misses before anyone asks).
The hold keeps a burst of slow steps from lowering a session whose frames all stay on time: the
cost model's speed factor follows such a burst within a few steps (one session on an idle 2-core
machine, beside the browser showing it, read 0.70 and then 0.91 for a fraction of a second, and was
lowered and restored every few seconds without it). Misses lower at once. Then, at most once per
`degrade_cooldown_s`, the policy lowers the session that matters least: lowest priority first, among
equals the one at the best tier (spread the loss), then the newest. It restores only when the load
*after* the restore would stay below `restore_utilization`, nothing was late in the window, and
`restore_hold_s` passed since the last lowering (`restore_step_s` since the last restore), highest
priority and deepest tier first: the gap between the two thresholds and the hold time are the
hysteresis that stops quality flapping.
"""

from __future__ import annotations

import collections
import dataclasses

from streamserve.schedulers.admission import Admission


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyConfig:
    miss_ratio: float = 0.01
    min_samples: int = 30  # units in the window before a miss ratio counts
    window_s: float = 2.0
    degrade_cooldown_s: float = 0.5
    overload_hold_s: float = 1.0  # predicted overload (no misses) this long before a lowering
    restore_hold_s: float = 3.0  # after the last lowering
    restore_step_s: float = 1.0  # between two restores

    def __post_init__(self) -> None:
        if not 0.0 <= self.miss_ratio < 1.0:
            raise ValueError(f"miss_ratio must be in [0, 1), got {self.miss_ratio}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if not 0.0 < self.window_s <= 60:
            raise ValueError(f"window_s must be in (0, 60], got {self.window_s}")
        if min(self.degrade_cooldown_s, self.overload_hold_s, self.restore_hold_s, self.restore_step_s) < 0:
            raise ValueError(f"cooldown and hold times must be >= 0, got {self.degrade_cooldown_s}, "
                             f"{self.overload_hold_s}, {self.restore_hold_s}, {self.restore_step_s}")


@dataclasses.dataclass(frozen=True, slots=True)
class TierChange:
    session_id: str
    old_level: int
    new_level: int
    reason: str

    @property
    def direction(self) -> str:
        return "down" if self.new_level > self.old_level else "up"


class MissWindow:
    """The units' outcomes (when, late or not) over the last `window_s`: what `DegradePolicy.tick`
    reads as its miss ratio."""

    def __init__(self) -> None:
        self._outcomes: collections.deque[tuple[float, bool]] = collections.deque()
        self._late = 0  # late outcomes in the deque (read every step: no scan)

    def add(self, t: float, late: bool) -> None:
        self._outcomes.append((t, late))
        self._late += late

    def counts(self, now: float, window_s: float) -> tuple[int, int]:
        """(late, all) among the outcomes since ``now - window_s`` (older ones are forgotten)."""
        while self._outcomes and self._outcomes[0][0] < now - window_s:
            self._late -= self._outcomes.popleft()[1]
        return self._late, len(self._outcomes)

    def clear(self) -> None:
        self._outcomes.clear()
        self._late = 0


class DegradePolicy:
    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self._last_down = float("-inf")
        self._last_up = float("-inf")
        self._over_since: float | None = None  # start of the current run of predicted overload
        self._created: dict[str, int] = {}  # session id -> join order (newest = largest)
        self._order = 0

    def joined(self, session_id: str) -> None:
        self._order += 1
        self._created[session_id] = self._order

    def left(self, session_id: str) -> None:
        self._created.pop(session_id, None)

    def lowered(self, now: float) -> None:
        """A tier was lowered outside `tick` (admission preempting): restores wait from now."""
        self._last_down = max(self._last_down, now)

    def tick(self, now: float, ledger: Admission, late: int, samples: int) -> TierChange | None:
        """One decision: maybe lower or restore one session's tier (applied to the ledger)."""
        cfg, limit = self.config, ledger.config.max_utilization
        levels = ledger.levels()
        if not levels:
            return None
        load = ledger.load()
        ratio = late / samples if samples >= cfg.min_samples else 0.0
        over = not load.fits(limit)
        if not over:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now
        over_for = 0.0 if self._over_since is None else now - self._over_since
        if over or ratio > cfg.miss_ratio:
            if ratio <= cfg.miss_ratio and over_for < cfg.overload_hold_s:
                return None  # predicted only, not yet for long: a burst of slow steps passes
            if now - max(self._last_down, self._last_up) < cfg.degrade_cooldown_s:
                return None
            movable = [(spec.priority, level, -self._created.get(sid, 0), sid)
                       for sid, (spec, level, n) in levels.items() if level < n - 1]
            if not movable:
                return None
            _, level, _, sid = min(movable)
            why = (f"{ratio:.1%} of recent frames late" if ratio > cfg.miss_ratio else
                   f"device over its limit ({load.limit(limit)}: predicted utilization {load.utilization:.2f})")
            return self._apply(now, ledger, sid, level, level + 1, why)
        if late or now - self._last_down < cfg.restore_hold_s or now - self._last_up < cfg.restore_step_s:
            return None
        lowered = [(-spec.priority, -level, self._created.get(sid, 0), sid)
                   for sid, (spec, level, _) in levels.items() if level > 0]
        for _, neg_level, _, sid in sorted(lowered):
            level = -neg_level
            after = ledger.load({sid: level - 1})
            if after.fits(limit) and after.utilization <= ledger.config.restore_utilization:
                why = f"load fell (predicted utilization {after.utilization:.2f} after restoring)"
                return self._apply(now, ledger, sid, level, level - 1, why)
        return None

    def _apply(self, now: float, ledger: Admission, sid: str, old: int, new: int, why: str) -> TierChange:
        ledger.set_level(sid, new)
        if new > old:
            self._last_down = now
        else:
            self._last_up = now
        return TierChange(sid, old, new, why)
