"""PyAV <-> core conversions, and the stamped frames the end-to-end tests measure with."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from streamserve.core.frames import AudioChunk, VideoFrame
from streamserve.transport.media import audio_from_core, audio_to_core, video_from_core, video_to_core
from streamserve.transport.probe import INDEX_MODULO, picture, read_stamp, stamp, unwrap


def test_video_round_trip_is_exact_in_rgb() -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    core = VideoFrame(data=data, pts=4500, arrival=1.0, deadline=1.25)
    frame = video_from_core(core)
    assert (frame.width, frame.height, frame.pts, frame.time_base) == (40, 24, 4500, Fraction(1, 90_000))
    back = video_to_core(frame, arrival=2.0, deadline=2.5)
    assert np.array_equal(back.data, data) and back.pts == 4500
    assert (back.arrival, back.deadline) == (2.0, 2.5)


def test_video_to_core_converts_yuv_and_rescales_pts() -> None:
    frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), format="rgb24").reformat(
        format="yuv420p")
    frame.pts, frame.time_base = 3, Fraction(1, 30)
    core = video_to_core(frame, arrival=0.0, deadline=0.1)
    assert core.data.shape == (16, 16, 3) and core.data.dtype == np.uint8
    assert abs(int(core.data.mean()) - 200) <= 3
    assert core.pts == 9000


def test_video_conversions_with_kept_reformatters() -> None:
    to_yuv, to_rgb = VideoReformatter(), VideoReformatter()
    data = np.zeros((32, 48, 3), np.uint8)
    data[:, :24] = (200, 40, 90)
    for pts in (0, 3000):
        frame = video_from_core(VideoFrame(data=data, pts=pts, arrival=0.0, deadline=0.1), reformatter=to_yuv)
        assert frame.format.name == "yuv420p" and frame.pts == pts and frame.time_base == Fraction(1, 90_000)
        back = video_to_core(frame, arrival=0.0, deadline=0.1, reformatter=to_rgb)
        assert back.data.shape == (32, 48, 3) and back.pts == pts
        assert np.abs(back.data.astype(int) - data.astype(int)).max() <= 8  # 4:2:0 and rounding only


def test_video_from_core_accepts_a_non_contiguous_view() -> None:
    data = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)[:, ::-1]
    frame = video_from_core(VideoFrame(data=data, pts=0, arrival=0.0, deadline=0.0), pts=77)
    assert frame.pts == 77 and np.array_equal(frame.to_ndarray(format="rgb24"), data)


@pytest.mark.parametrize("fmt", ["s16", "s16p", "fltp"])
def test_audio_to_core_gives_channels_by_samples(fmt: str) -> None:
    dtype = np.float32 if fmt.startswith("flt") else np.int16
    planar = np.stack([np.arange(480), -np.arange(480)]).astype(dtype)  # [2, 480]
    raw = planar if fmt.endswith("p") else planar.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(raw), format=fmt, layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = 48_000, 960, Fraction(1, 48_000)
    chunk = audio_to_core(frame, arrival=0.0, deadline=0.1)
    assert chunk.data.shape == (2, 480) and chunk.sample_rate == 48_000 and chunk.pts == 960
    assert np.array_equal(chunk.data, planar)


def test_audio_from_core_interleaves() -> None:
    data = np.stack([np.arange(960), np.arange(960) * 2]).astype(np.int16)
    frame = audio_from_core(AudioChunk(data, 48_000, 1920, 0.0, 0.1))
    assert frame.format.name == "s16" and len(frame.layout.channels) == 2
    assert frame.samples == 960 and frame.pts == 1920 and frame.sample_rate == 48_000
    assert np.array_equal(frame.to_ndarray().reshape(-1, 2).T, data)


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (240, 320), (512, 512)])
def test_stamp_reads_back(size: tuple[int, int]) -> None:
    h, w = size
    for index in (0, 1, 7, 255, 1000, INDEX_MODULO - 1):
        assert read_stamp(stamp(index, h, w)) == index


def test_stamp_survives_noise_and_rescaling() -> None:
    rng = np.random.default_rng(1)
    img = stamp(1234, 256, 256).astype(np.int16) + rng.normal(0, 25, (256, 256, 3)).astype(np.int16)
    noisy = np.clip(img, 0, 255).astype(np.uint8)
    assert read_stamp(noisy) == 1234
    small = av.VideoFrame.from_ndarray(noisy, format="rgb24").reformat(width=96, height=72)
    assert read_stamp(small.to_ndarray(format="rgb24")) == 1234


def test_stamp_check_rejects_other_pictures() -> None:
    assert read_stamp(picture(3, 128, 128)) is None
    assert read_stamp(np.zeros((128, 128, 3), np.uint8)) is None
    assert read_stamp(stamp(5, 128, 128)[:, ::-1]) is None  # mirrored: the check fails


def test_unwrap_extends_the_index() -> None:
    full = None
    out = []
    for raw in (4094, 4095, 0, 1, 3):
        full = unwrap(raw, full)
        out.append(full)
    assert out == [4094, 4095, 4096, 4097, 4099]
