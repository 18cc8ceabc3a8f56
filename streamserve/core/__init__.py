"""Core contracts every subsystem shares: media units, clocks, config, errors, step plans, ports."""

from streamserve.core.clock import Clock, FakeClock, MonotonicClock
from streamserve.core.errors import (
    BadRequest,
    InvalidParams,
    OverCapacity,
    SessionClosed,
    SessionLimitReached,
    SessionNotFound,
    StreamBusy,
    StreamserveError,
    UnknownPipeline,
)
from streamserve.core.frames import AudioChunk, MediaKind, VideoFrame
from streamserve.core.plan import Batch, StepOutput, StepPlan, WorkItem

__all__ = [
    "AudioChunk",
    "BadRequest",
    "Batch",
    "Clock",
    "FakeClock",
    "InvalidParams",
    "MediaKind",
    "MonotonicClock",
    "OverCapacity",
    "SessionClosed",
    "SessionLimitReached",
    "SessionNotFound",
    "StreamBusy",
    "StepOutput",
    "StepPlan",
    "StreamserveError",
    "UnknownPipeline",
    "VideoFrame",
    "WorkItem",
]
