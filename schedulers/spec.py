"""What a session asks of the server (`SessionSpec`) and the quality tiers it can be lowered to.

A tier is a frame rate and a work shape. The ladder of a session starts at what it asked for and
steps down, in the order the session's `degrade` policy names (default: frame rate, then resolution,
then denoising steps): frame rate to 0.95, 0.9, 0.8, 2/3, 1/2 and 1/3 of the requested rate (never
below `min_fps`), resolution to 3/4 and 1/2 (multiples of `size_multiple`, never below `min_size`),
steps down to 1. Each rung keeps the earlier rungs' reductions, so rungs only ever cost less.

The frame-rate rungs are fine at the top on purpose: a device that cannot quite hold the camera's
rate at the admission limit (a 30 fps camera on a 31-FPS pipeline: 30 fps would load it 97%) serves
28.5 or 27 fps, not 15. Adjacent rungs are 5-25% apart; quality does not flap between them because a
restore must bring the load under `restore_utilization` (0.7), well below the 0.9 that lowers it.
A fraction like 0.95 is served by even decimation (the scheduler's rate credit: 19 frames of every
20, evenly spread), not by taking every k-th frame.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from streamserve.schedulers.cost import WorkShape

Lane = Literal["video", "voice"]
DEGRADE_KNOBS = ("fps", "resolution", "steps")
FPS_FRACTIONS = (0.95, 0.9, 0.8, 2 / 3, 1 / 2, 1 / 3)
RESOLUTION_SCALES = (0.75, 0.5)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSpec:
    """A session as admission and the policy see it.

    pipeline, shape: the work per step at the requested quality; fps: units per second the client
    sends (camera frame rate, audio chunks per second); budget_s: deadline after arrival;
    priority: higher is served and kept at quality first (0-9); lane: "voice" work jumps ahead of video
    batches (see `SloScheduler`); degrade: the order of knobs the policy may lower ("none": never).
    """

    pipeline: str
    shape: WorkShape = WorkShape()
    fps: float = 30.0
    budget_s: float = 0.25
    priority: int = 0
    lane: Lane = "video"
    degrade: tuple[str, ...] = DEGRADE_KNOBS
    min_fps: float = 10.0
    min_size: int = 64
    size_multiple: int = 16

    def __post_init__(self) -> None:
        if not 0.1 <= self.fps <= 1000:
            raise ValueError(f"fps must be in [0.1, 1000], got {self.fps}")
        if not 0.001 <= self.budget_s <= 60:
            raise ValueError(f"budget_s must be in [0.001, 60], got {self.budget_s}")
        if not 0 <= self.priority <= 9:
            raise ValueError(f"priority must be in [0, 9], got {self.priority}")
        if self.lane not in ("video", "voice"):
            raise ValueError(f"lane must be video or voice, got {self.lane!r}")
        bad = [k for k in self.degrade if k not in DEGRADE_KNOBS]
        if bad or len(set(self.degrade)) != len(self.degrade):
            raise ValueError(f"degrade must list distinct knobs of {list(DEGRADE_KNOBS)}, got {list(self.degrade)}")
        if not 0.1 <= self.min_fps <= 1000:
            raise ValueError(f"min_fps must be in [0.1, 1000], got {self.min_fps}")
        if self.size_multiple < 1 or self.min_size < 1:
            raise ValueError(f"size_multiple and min_size must be >= 1, got {self.size_multiple}, {self.min_size}")


@dataclasses.dataclass(frozen=True, slots=True)
class Tier:
    """One rung: `level` 0 is what the session asked for; `knob` names what this rung lowered."""

    level: int
    fps: float
    shape: WorkShape
    knob: str = "requested"

    def describe(self) -> str:
        s = self.shape
        size = f" {s.width}x{s.height}" if s.width and s.height else ""
        steps = f" {s.steps} step{'s' if s.steps > 1 else ''}" if s.width else ""
        return f"tier {self.level}: {self.fps:g} fps{size}{steps}"

    def to_dict(self) -> dict[str, object]:
        return {"level": self.level, "fps": round(self.fps, 3), "width": self.shape.width,
                "height": self.shape.height, "steps": self.shape.steps, "knob": self.knob}


def _scaled(size: int, scale: float, multiple: int, floor: int) -> int:
    return max(floor, int(size * scale) // multiple * multiple)


def ladder(spec: SessionSpec) -> list[Tier]:
    """Every tier of `spec`, best first. A voice session (and `degrade=()`) has only its own."""
    tiers = [Tier(0, spec.fps, spec.shape)]
    if spec.lane == "voice":
        return tiers
    fps, shape = spec.fps, spec.shape
    for knob in spec.degrade:
        if knob == "fps":
            for fraction in FPS_FRACTIONS:
                lower = spec.fps * fraction
                if lower + 1e-9 >= spec.min_fps and lower < fps:
                    fps = lower
                    tiers.append(Tier(len(tiers), fps, shape, "fps"))
        elif knob == "resolution" and shape.width and shape.height:
            for scale in RESOLUTION_SCALES:
                w = _scaled(spec.shape.width, scale, spec.size_multiple, spec.min_size)
                h = _scaled(spec.shape.height, scale, spec.size_multiple, spec.min_size)
                if (w, h) != (shape.width, shape.height) and w * h < shape.width * shape.height:
                    shape = dataclasses.replace(shape, width=w, height=h)
                    tiers.append(Tier(len(tiers), fps, shape, "resolution"))
        elif knob == "steps":
            while shape.steps > 1:
                shape = dataclasses.replace(shape, steps=shape.steps - 1)
                tiers.append(Tier(len(tiers), fps, shape, "steps"))
    return tiers
