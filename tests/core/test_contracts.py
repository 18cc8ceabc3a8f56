from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pytest

from streamserve.core import AudioChunk, FakeClock, InvalidParams, UnknownPipeline, VideoFrame
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.core.params import params_schema, parse_params


def frame(pts: int = 0, arrival: float = 0.0, budget: float = 0.1) -> VideoFrame:
    return VideoFrame(np.zeros((4, 6, 3), np.uint8), pts, arrival, arrival + budget)


def test_video_frame_carries_timing_and_shape() -> None:
    f = frame(pts=9000, arrival=1.0)
    assert (f.width, f.height) == (6, 4)
    assert f.seconds == pytest.approx(0.1)
    g = f.with_data(np.ones((4, 6, 3), np.uint8))
    assert (g.pts, g.arrival, g.deadline) == (9000, 1.0, 1.1)
    assert g.data.sum() == 4 * 6 * 3


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((4, 6), np.uint8), r"\[H, W, 3\] array, got \(4, 6\)"),
        (np.zeros((4, 6, 4), np.uint8), r"got \(4, 6, 4\)"),
        (np.zeros((4, 6, 3), np.float32), "must be uint8, got float32"),
    ],
)
def test_video_frame_rejects_bad_data(data: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoFrame(data, 0, 0.0, 0.1)


def test_deadline_before_arrival_is_rejected() -> None:
    with pytest.raises(ValueError, match="deadline 0.5 is before arrival 1.0"):
        VideoFrame(np.zeros((2, 2, 3), np.uint8), 0, 1.0, 0.5)


def test_audio_chunk_duration_and_time_base() -> None:
    chunk = AudioChunk(np.zeros((2, 480), np.int16), 48_000, 960, 0.0, 0.2)
    assert chunk.duration == pytest.approx(0.01)
    assert chunk.time_base is not None and chunk.time_base.denominator == 48_000
    with pytest.raises(ValueError, match="int16 or float32, got float64"):
        AudioChunk(np.zeros((1, 10)), 48_000, 0, 0.0, 0.1)
    with pytest.raises(ValueError, match="sample_rate must be positive, got 0"):
        AudioChunk(np.zeros((1, 10), np.int16), 0, 0, 0.0, 0.1)


def test_fake_clock_only_moves_forward() -> None:
    clock = FakeClock(5.0)
    assert clock.advance(0.25) == 5.25
    with pytest.raises(ValueError, match="cannot go backwards"):
        clock.advance(-1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"port": 70000}, r"port must be in \[0, 65535\], got 70000"),
        ({"max_batch": 0}, r"max_batch must be in \[1, 256\], got 0"),
        ({"device": "tpu"}, "device must be cpu, cuda or cuda:N, got 'tpu'"),
        ({"ice_servers": ("http://x",)}, "start with stun:, turn: or turns:, got 'http://x'"),
    ],
)
def test_server_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**kwargs)


def test_session_config_validation() -> None:
    with pytest.raises(ValueError, match=r"inbox_size must be in \[1, 64\], got 0"):
        SessionConfig(inbox_size=0)
    assert SessionConfig().latency_budget_s == 0.25


@dataclasses.dataclass(frozen=True)
class _Params:
    style: Literal["a", "b"] = "a"
    steps: int = 2
    strength: float = 0.5
    tags: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 4:
            raise ValueError(f"steps must be in [1, 4], got {self.steps}")


def test_parse_params_coerces_and_validates() -> None:
    p = parse_params(_Params, {"style": "b", "steps": 3.0, "strength": 1, "tags": ["x"]})
    assert p == _Params(style="b", steps=3, strength=1.0, tags=("x",))
    assert parse_params(_Params, {"strength": 0.9}, base=p).style == "b"  # partial update keeps the rest


@pytest.mark.parametrize(
    "raw, field, message",
    [
        ({"style": "c"}, "style", "'c' is not one of"),
        ({"steps": "2"}, "steps", "expected an integer"),
        ({"steps": 9}, "steps", r"steps must be in \[1, 4\], got 9"),
        ({"strength": True}, "strength", "expected a number"),
        ({"nope": 1}, "nope", "unknown parameter; known: label, steps, strength, style, tags"),
        ({"label": 3}, "label", "does not fit"),
    ],
)
def test_parse_params_names_the_field(raw: dict, field: str, message: str) -> None:
    with pytest.raises(InvalidParams, match=message) as info:
        parse_params(_Params, raw)
    assert info.value.field == field
    assert info.value.status == 422
    assert info.value.to_dict()["field"] == field


def test_params_schema_lists_choices_and_defaults() -> None:
    schema = params_schema(_Params)
    assert schema["style"] == {"type": "enum", "choices": ["a", "b"], "default": "a"}
    assert schema["steps"] == {"type": "int", "default": 2}


def test_unknown_pipeline_lists_available() -> None:
    exc = UnknownPipeline("nope", ["video", "passthrough"])
    assert exc.status == 400
    assert str(exc) == "unknown pipeline 'nope'; available: passthrough, video"
    assert exc.to_dict()["available"] == ["passthrough", "video"]
