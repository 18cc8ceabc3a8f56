"""Record a session's output to a file (MP4 with H.264 + AAC, or WebM with VP8 + Opus) via PyAV.

`Recorder` owns one file and one writer thread: `offer(media)` (any thread; never blocks) puts a unit
on a bounded queue, the thread encodes and muxes it, and `close()` flushes the encoders and writes
the container's index. Nothing runs on the engine thread or the event loop but the enqueue. When the
queue is full the unit is dropped and counted (a recording must never slow the stream down). When
the file reaches `max_bytes` the recorder finalises it early and says so in `reason`.

Timestamps come from the media (`pts` × `time_base`), relative to the first unit, so the file's
duration is the stream's, and a unit whose time does not advance is nudged forward (muxers need
strictly increasing video timestamps).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from streamserve.core.frames import AudioChunk, Media, VideoFrame

log = logging.getLogger(__name__)

Format = Literal["mp4", "webm"]
CODECS: dict[str, tuple[str, str]] = {"mp4": ("libx264", "aac"), "webm": ("libvpx", "libopus")}
VIDEO_TIME_BASE = Fraction(1, 90_000)
QUEUE_SIZE = 64  # units waiting for the writer thread; beyond that, units are dropped (counted)


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingOptions:
    """What to record. `audio`: also the session's audio output (an audio track is added up front)."""

    format: Format = "mp4"
    audio: bool = False
    max_bytes: int = 512 * 1024 * 1024
    fps_hint: int = 30  # encoder rate control only; timestamps come from the media

    def __post_init__(self) -> None:
        if self.format not in CODECS:
            raise ValueError(f"format must be one of {sorted(CODECS)}, got {self.format!r}")
        if not 64 * 1024 <= self.max_bytes <= 1 << 40:
            raise ValueError(f"max_bytes must be in [65536, 2**40], got {self.max_bytes}")
        if not 1 <= self.fps_hint <= 240:
            raise ValueError(f"fps_hint must be in [1, 240], got {self.fps_hint}")


class Recorder:
    """One recording file, written by its own thread. `offer()` units, then `close()` (idempotent)."""

    def __init__(self, path: Path, options: RecordingOptions) -> None:
        self.path = path
        self.options = options
        self.frames = 0  # video frames written
        self.audio_samples = 0
        self.dropped = 0  # units the queue had no room for
        self.bytes = 0
        self.reason: str | None = None  # why it stopped (None while recording)
        self.error: str | None = None
        self.started_at = time.time()
        self._queue: queue.Queue[Media | None] = queue.Queue(QUEUE_SIZE)
        self._stopping = threading.Event()
        self._finalised = threading.Event()  # the file is complete (or was never started)
        self._close_lock = threading.Lock()
        self._close_requested = False
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._fifo: Any = None
        self._resampler: Any = None
        self._t0: float | None = None
        self._last_video_pts = -1
        self._audio_pts = 0
        self._thread = threading.Thread(target=self._run, name=f"recorder-{path.name}", daemon=True)
        self._thread.start()

    @property
    def recording(self) -> bool:
        """True until the file is finalised (stopped, capped, failed, or its session ended)."""
        return not self._finalised.is_set()

    def offer(self, media: Media) -> bool:
        """Queue one unit (never blocks). False when it was dropped or the recording has stopped."""
        if self._stopping.is_set() or (isinstance(media, AudioChunk) and not self.options.audio):
            return False
        try:
            self._queue.put_nowait(media)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def close(self, reason: str = "stopped", timeout: float = 30.0) -> None:
        """Finish: write what is queued, flush the encoders, close the file. Blocks until done."""
        with self._close_lock:
            first, self._close_requested = not self._close_requested, True
        if first:
            self._stopping.set()
            self.reason = self.reason or reason
            self._queue.put(None)  # the thread drains everything before it (it never blocks long)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("recording %s did not finish within %.0f s", self.path, timeout)

    def stats(self) -> dict[str, Any]:
        return {"recording": self.recording, "format": self.options.format, "frames": self.frames,
                "audio_samples": self.audio_samples, "dropped": self.dropped, "bytes": self.bytes,
                "max_bytes": self.options.max_bytes, "reason": self.reason, "error": self.error,
                "file": self.path.name}

    # --- writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                media = self._queue.get()
                if media is None:
                    break
                if self.bytes >= self.options.max_bytes:
                    continue  # capped: drain the queue until close()
                self._write(media)
                if self.bytes >= self.options.max_bytes:
                    self._stopping.set()
                    self.reason = self.reason or f"size cap of {self.options.max_bytes} bytes reached"
                    self._finish()
        except Exception as exc:  # a broken file must not take the session down
            log.exception("recording %s failed", self.path)
            self.error = f"{type(exc).__name__}: {exc}"
            self.reason = self.reason or "failed"
            self._stopping.set()
        finally:
            self._finish()
            self._finalised.set()

    def _open(self, first: VideoFrame) -> None:
        video_codec, audio_codec = CODECS[self.options.format]
        self._container = av.open(str(self.path), "w", format=self.options.format)
        stream = self._container.add_stream(video_codec, rate=self.options.fps_hint)
        stream.width, stream.height = first.width // 2 * 2, first.height // 2 * 2  # 4:2:0 needs even sizes
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = VIDEO_TIME_BASE
        if self.options.format == "mp4":
            stream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0"}
        else:
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
            stream.bit_rate = 2_000_000
        self._video = stream
        if self.options.audio:
            rate = 48_000
            self._audio = self._container.add_stream(audio_codec, rate=rate)
            self._audio.layout = "stereo"
            self._resampler = av.AudioResampler(format=self._audio.codec_context.format, layout="stereo",
                                                rate=rate)
            self._fifo = av.AudioFifo()

    def _seconds(self, media: Media) -> float:
        seconds = float(media.pts * (media.time_base or 0))
        if self._t0 is None:
            self._t0 = seconds
        return seconds - self._t0

    def _write(self, media: Media) -> None:
        if isinstance(media, VideoFrame):
            if self._container is None:
                self._open(media)
            stream = self._video
            rgb = media.data[: stream.height, : stream.width]  # [H, W, 3] uint8, cropped to even
            if rgb.shape[:2] != (stream.height, stream.width):
                rgb = _fit(rgb, stream.width, stream.height)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            pts = max(round(self._seconds(media) / VIDEO_TIME_BASE), self._last_video_pts + 1)
            self._last_video_pts = pts
            frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
            self._mux(stream.encode(frame.reformat(format="yuv420p")))
            self.frames += 1
        elif self._container is not None and self._audio is not None:  # audio before video: skipped
            pcm = media.data  # [channels, samples]
            if pcm.dtype != np.int16:
                pcm = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
            layout = "mono" if media.channels == 1 else "stereo"
            interleaved = np.ascontiguousarray(pcm[:2].T).reshape(1, -1)  # [1, samples * channels]
            chunk = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
            chunk.sample_rate = media.sample_rate
            for converted in self._resampler.resample(chunk):
                self._fifo.write(converted)
            self.audio_samples += media.samples
            self._drain_audio(final=False)

    def _drain_audio(self, *, final: bool) -> None:
        size = self._audio.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples):
            frame = self._fifo.read(min(size, self._fifo.samples) if final else size)
            frame.pts, frame.time_base = self._audio_pts, Fraction(1, self._audio.codec_context.sample_rate)
            self._audio_pts += frame.samples
            self._mux(self._audio.encode(frame))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)
            self.bytes += packet.size

    def _finish(self) -> None:
        container = self._container
        if container is None:
            return
        try:
            if self._audio is not None:
                self._drain_audio(final=True)
                self._mux(self._audio.encode(None))
            self._mux(self._video.encode(None))
        finally:
            self._container = None
            container.close()
            self.bytes = os.path.getsize(self.path) if self.path.exists() else self.bytes
            self._finalised.set()


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """`rgb` [h, w, 3] placed on a black [height, width, 3] canvas (the output size changed mid-file)."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
    out[:h, :w] = rgb[:h, :w]
    return out
