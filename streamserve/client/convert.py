"""`streamserve client --input IN --output OUT`: convert a video file through a pipeline (`convert`).

Frames go up over the WebSocket API with :class:`~.sdk.StreamClient`; outputs are written to a file whose
codec follows its extension, at the input's size and aspect ratio (:mod:`streamserve.client_aspect`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from streamserve.client_aspect import restore_aspect
from streamserve.core.frames import MediaKind
from streamserve.transport import wsproto as wp

from .sdk import DEFAULT_URL, OutputFrame, ServerError, SessionEnded, StreamClient

_OUTPUT_CODECS = {".y4m": ("rawvideo", "yuv420p"), ".avi": ("mjpeg", "yuvj420p"), ".webm": ("libvpx", "yuv420p"),
                  ".mp4": ("libx264", "yuv420p"), ".mkv": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p")}


@dataclasses.dataclass(slots=True)
class ConvertResult:
    frames_in: int
    frames_out: int
    lost: int  # sent but never answered (dropped by the server as stale, or timed out)
    seconds: float
    latency_ms_p50: float | None


def _open_input(path: str) -> Any:
    if path == "-":  # a y4m stream on stdin, e.g. `ffmpeg ... -f yuv4mpegpipe - | streamserve client -i -`
        return av.open(sys.stdin.buffer, format="yuv4mpegpipe")
    return av.open(path)


class _Writer:
    """Encodes output frames into a file whose codec follows the extension (.mp4, .y4m, .avi, ...)."""

    def __init__(self, path: str, fps: float, size: tuple[int, int] | None = None, resize: str = "letterbox") -> None:
        ext = os.path.splitext(path)[1].lower()
        self.size, self.resize = size, resize  # the input's (width, height): outputs get it back
        if ext not in _OUTPUT_CODECS:
            raise ValueError(f"output extension {ext!r} is not one of {sorted(_OUTPUT_CODECS)}")
        self.codec, self.pix_fmt = _OUTPUT_CODECS[ext]
        self.path, self.fps = path, fps
        self._container: Any = None
        self._stream: Any = None
        self._last_pts = -1
        self._first_us: int | None = None

    def write(self, frame: OutputFrame) -> bool:
        rgb = frame.data if self.size is None else restore_aspect(frame.data, *self.size, self.resize)
        if self._container is None:
            self._container = av.open(self.path, "w")
            self._stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = rgb.shape[1] // 2 * 2, rgb.shape[0] // 2 * 2
            self._stream.pix_fmt = self.pix_fmt
            self._first_us = frame.pts_us
        rgb = rgb[: self._stream.height, : self._stream.width]
        pts = round((frame.pts_us - (self._first_us or 0)) / 1_000_000 * self.fps)
        if pts <= self._last_pts:  # keep timestamps strictly increasing for the muxer
            pts = self._last_pts + 1
        self._last_pts = pts
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=self.pix_fmt)
        out.pts = pts
        for packet in self._stream.encode(out):
            self._container.mux(packet)
        return True

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()


async def convert(input: str, output: str, *, url: str = DEFAULT_URL, pipeline: str | None = None,
                  params: Mapping[str, Any] | None = None, token: str | None = None, window: int = 2,
                  max_frames: int | None = None, send_format: str = "jpeg", progress: bool = True,
                  stall_timeout: float = 5.0) -> ConvertResult:
    """Send every frame of `input` through `pipeline` and write the outputs to `output`.

    At most `window` frames are in flight: the server's inbox is freshest-wins, so sending faster than
    the pipeline runs would only drop frames. An answer for input `ref` settles every earlier one.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    container = await asyncio.to_thread(_open_input, input)
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 30)
    total = stream.frames or (round(float(stream.duration * stream.time_base) * fps)
                              if stream.duration and stream.time_base else None)
    if max_frames is not None:
        total = min(total or max_frames, max_frames)
    resize = str((params or {}).get("resize", "letterbox"))
    writer = _Writer(output, fps, (stream.codec_context.width, stream.codec_context.height), resize)
    inflight: dict[int, float] = {}
    latencies: list[float] = []
    counts = {"in": 0, "out": 0, "lost": 0}
    started = time.monotonic()
    bar = tqdm(total=total, unit="frame", desc="streamserve", disable=not progress, leave=False)

    async def settle_one(client: StreamClient) -> bool:
        """Wait for one video output (or the stall timeout); False once the session has ended."""
        try:
            out = await client.receive(timeout_s=stall_timeout)
        except TimeoutError:
            inflight.pop(min(inflight))
            counts["lost"] += 1
            return True
        if out is None:
            return False
        if out.kind is not MediaKind.VIDEO:
            return True
        ref = out.ref if out.ref is not None and out.ref in inflight else (min(inflight) if inflight else None)
        if ref is not None:
            latencies.append(time.monotonic() - inflight[ref])
            for seq in [s for s in inflight if s <= ref]:
                counts["lost"] += seq != ref
                del inflight[seq]
        await asyncio.to_thread(writer.write, out)
        counts["out"] += 1
        bar.update(1)
        bar.set_postfix(latency_ms=round(latencies[-1] * 1000, 1) if latencies else None)
        return True

    try:
        async with StreamClient(url, pipeline=pipeline, params=params, token=token, send_format=send_format,
                                kinds=("video",)) as client:
            frames = container.decode(video=0)
            alive = True
            while alive and (max_frames is None or counts["in"] < max_frames):
                frame = await asyncio.to_thread(next, frames, None)
                if frame is None:
                    break
                while alive and len(inflight) >= window:
                    alive = await settle_one(client)
                pts_us = round(float(frame.time or counts["in"] / fps) * 1_000_000)
                seq = await client.send_frame(frame.to_ndarray(format="rgb24"), pts_us=pts_us)
                inflight[seq] = time.monotonic()
                counts["in"] += 1
            while alive and inflight:
                alive = await settle_one(client)
    finally:
        bar.close()
        container.close()
        await asyncio.to_thread(writer.close)
    latencies.sort()
    p50 = round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None
    return ConvertResult(counts["in"], counts["out"], counts["lost"], time.monotonic() - started, p50)


def add_client_arguments(parser: Any) -> None:
    """The `streamserve client` options, added to an argparse (sub)parser."""
    parser.add_argument("--input", "-i", required=True, help="video file (any PyAV input; .y4m; - for y4m on stdin)")
    parser.add_argument("--output", "-o", required=True, help="output file: .mp4 .mkv .mov .webm .avi or .y4m")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server WebSocket URL (default {DEFAULT_URL})")
    parser.add_argument("--pipeline", default=None, help="pipeline name (default: the server's)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter; VALUE is JSON if it parses, else a string (repeatable)")
    parser.add_argument("--token", default=None, help="bearer token (or STREAMSERVE_TOKEN)")
    parser.add_argument("--window", type=int, default=2, help="frames in flight (default 2)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many input frames")
    parser.add_argument("--format", default="jpeg", choices=sorted(wp.VIDEO_FORMATS), help="upload format")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_param_args(items: list[str]) -> dict[str, Any]:
    """`["prompt=a cat", "steps=2"]` -> `{"prompt": "a cat", "steps": 2}`."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def main_client(args: Any) -> int:
    """Run `streamserve client` from parsed arguments; prints a one-line summary."""
    try:
        params = parse_param_args(args.param)
        result = asyncio.run(convert(
            args.input, args.output, url=args.url, pipeline=args.pipeline, params=params,
            token=args.token or os.environ.get("STREAMSERVE_TOKEN"), window=args.window,
            max_frames=args.max_frames, send_format=args.format, progress=not args.no_progress))
    except (ServerError, SessionEnded, ValueError, OSError) as exc:
        print(f"streamserve client: {exc}", file=sys.stderr)
        return 1
    print(f"{result.frames_out}/{result.frames_in} frames -> {args.output} in {result.seconds:.1f} s "
          f"(lost {result.lost}, p50 latency {result.latency_ms_p50} ms)")
    return 0 if result.frames_out > 0 else 1
