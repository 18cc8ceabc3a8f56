"""Conversions between PyAV frames (what aiortc decodes and encodes) and the core media units.

Core video is RGB24 `[H, W, 3]` uint8 with `pts` in 1/90000; core audio is PCM `[channels, samples]`.
PyAV packs interleaved audio as `[1, samples * channels]` and planar audio as `[channels, samples]`;
both become `[channels, samples]` here.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from streamserve.core.frames import VIDEO_TIME_BASE, AudioChunk, VideoFrame

_AUDIO_FORMATS = {  # numpy dtype name -> (packed, planar) PyAV sample formats
    "int16": ("s16", "s16p"),
    "float32": ("flt", "fltp"),
}
_AUDIO_LAYOUTS = {1: "mono", 2: "stereo"}
# swscale's default (0 = one thread per core) gives every kept reformatter its own FFmpeg worker
# threads, two per peer direction on a 2-core machine, for conversions that take ~1 ms at 512x512.
SCALE_THREADS = 1


def rescale_pts(pts: int | None, time_base: Fraction | None, target: Fraction) -> int:
    """`pts` counted in `time_base` expressed in `target` units (rounded). None counts as 0."""
    if pts is None:
        return 0
    if time_base is None or time_base == target:
        return int(pts)
    return round(pts * time_base / target)


def video_to_core(frame: av.VideoFrame, *, arrival: float, deadline: float,
                  reformatter: VideoReformatter | None = None) -> VideoFrame:
    """A decoded frame (any pixel format) as an RGB24 core frame with pts in 1/90000.

    Pass a `reformatter` kept per stream: it keeps its swscale context from frame to frame, where
    `frame.to_ndarray(format=...)` builds one for every frame (several ms at 512x512).
    """
    if reformatter is not None and frame.format.name != "rgb24":
        frame = reformatter.reformat(frame, format="rgb24", threads=SCALE_THREADS)
    data = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
    pts = rescale_pts(frame.pts, frame.time_base, VIDEO_TIME_BASE)
    return VideoFrame(data=data, pts=pts, arrival=arrival, deadline=deadline)


def video_from_core(frame: VideoFrame, pts: int | None = None,
                    reformatter: VideoReformatter | None = None) -> av.VideoFrame:
    """A core frame as a PyAV frame with `pts` (default: the frame's own) in 1/90000.

    RGB24, or YUV 4:2:0 (what the VP8 and H.264 encoders take) when a per-stream `reformatter` is
    given: converting here with a kept swscale context is 3x cheaper than the encoder's own
    per-frame `reformat`.
    """
    data = frame.data if frame.data.flags.c_contiguous else np.ascontiguousarray(frame.data)
    out = av.VideoFrame.from_ndarray(data, format="rgb24")
    if reformatter is not None:
        out = reformatter.reformat(out, format="yuv420p", threads=SCALE_THREADS)
    out.pts = rescale_pts(frame.pts, frame.time_base, VIDEO_TIME_BASE) if pts is None else pts
    out.time_base = VIDEO_TIME_BASE
    return out


def audio_to_core(frame: av.AudioFrame, *, arrival: float, deadline: float) -> AudioChunk:
    """A decoded audio frame as `[channels, samples]` PCM; pts in 1/sample_rate."""
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved: [1, samples * channels]
        data = data.reshape(-1, channels).T
    if data.dtype not in (np.int16, np.float32):
        data = data.astype(np.float32)
    rate = int(frame.sample_rate)
    pts = rescale_pts(frame.pts, frame.time_base, Fraction(1, rate))
    return AudioChunk(data=np.ascontiguousarray(data), sample_rate=rate, pts=pts, arrival=arrival,
                      deadline=deadline)


def audio_from_core(chunk: AudioChunk) -> av.AudioFrame:
    """A core audio chunk as an interleaved PyAV frame (what aiortc's Opus encoder expects)."""
    packed, _ = _AUDIO_FORMATS[chunk.data.dtype.name]
    layout = _AUDIO_LAYOUTS.get(chunk.channels)
    if layout is None:
        raise ValueError(f"audio chunks with {chunk.channels} channels are not supported (1 or 2)")
    interleaved = np.ascontiguousarray(chunk.data.T).reshape(1, -1)  # [1, samples * channels]
    out = av.AudioFrame.from_ndarray(interleaved, format=packed, layout=layout)
    out.sample_rate = chunk.sample_rate
    out.time_base = Fraction(1, chunk.sample_rate)
    out.pts = rescale_pts(chunk.pts, chunk.time_base, out.time_base)
    return out
