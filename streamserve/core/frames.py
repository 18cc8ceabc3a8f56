"""Typed media units. Every unit carries `pts`, `arrival` and `deadline`; deadlines drive scheduling.

Video is RGB24 in a numpy array shaped [H, W, 3] (uint8). Audio is PCM in a numpy array shaped
[channels, samples] (int16 or float32). `pts` counts `time_base` units, as in PyAV and aiortc.
`arrival` and `deadline` are monotonic seconds (see :mod:`streamserve.core.clock`).
"""

from __future__ import annotations

import dataclasses
import enum
from fractions import Fraction
from typing import Any

import numpy as np

VIDEO_TIME_BASE = Fraction(1, 90_000)


class MediaKind(enum.StrEnum):
    VIDEO = "video"
    AUDIO = "audio"


def _check_times(pts: int, arrival: float, deadline: float) -> None:
    if not isinstance(pts, int | np.integer):
        raise ValueError(f"pts must be an integer, got {pts!r}")
    if deadline < arrival:
        raise ValueError(f"deadline {deadline} is before arrival {arrival}")


@dataclasses.dataclass(slots=True)
class VideoFrame:
    data: np.ndarray  # [H, W, 3] uint8 RGB
    pts: int
    arrival: float
    deadline: float
    time_base: Fraction = VIDEO_TIME_BASE
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind = MediaKind.VIDEO

    def __post_init__(self) -> None:
        if not isinstance(self.data, np.ndarray) or self.data.ndim != 3 or self.data.shape[2] != 3:
            shape = getattr(self.data, "shape", type(self.data).__name__)
            raise ValueError(f"video frame data must be an [H, W, 3] array, got {shape}")
        if self.data.dtype != np.uint8:
            raise ValueError(f"video frame data must be uint8, got {self.data.dtype}")
        _check_times(self.pts, self.arrival, self.deadline)

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def height(self) -> int:
        return int(self.data.shape[0])

    @property
    def seconds(self) -> float:
        """pts in seconds."""
        return float(self.pts * self.time_base)

    def with_data(self, data: np.ndarray) -> VideoFrame:
        """The same timing (pts, arrival, deadline) carrying new pixels: what a pipeline returns."""
        return VideoFrame(data, self.pts, self.arrival, self.deadline, self.time_base, dict(self.meta))


@dataclasses.dataclass(slots=True)
class AudioChunk:
    data: np.ndarray  # [channels, samples], int16 or float32
    sample_rate: int
    pts: int
    arrival: float
    deadline: float
    time_base: Fraction | None = None  # defaults to 1/sample_rate
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind = MediaKind.AUDIO

    def __post_init__(self) -> None:
        if not isinstance(self.data, np.ndarray) or self.data.ndim != 2:
            shape = getattr(self.data, "shape", type(self.data).__name__)
            raise ValueError(f"audio chunk data must be a [channels, samples] array, got {shape}")
        if self.data.dtype not in (np.int16, np.float32):
            raise ValueError(f"audio chunk data must be int16 or float32, got {self.data.dtype}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.time_base is None:
            self.time_base = Fraction(1, self.sample_rate)
        _check_times(self.pts, self.arrival, self.deadline)

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def samples(self) -> int:
        return int(self.data.shape[1])

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate

    @property
    def seconds(self) -> float:
        """pts in seconds."""
        return float(self.pts * (self.time_base or Fraction(1, self.sample_rate)))

    def with_data(self, data: np.ndarray) -> AudioChunk:
        return AudioChunk(data, self.sample_rate, self.pts, self.arrival, self.deadline, self.time_base,
                          dict(self.meta))


Media = VideoFrame | AudioChunk
