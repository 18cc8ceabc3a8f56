"""Async Python client for the WebSocket streaming API (`/v1/ws`, docs/protocol.md).

    async with StreamClient("ws://127.0.0.1:8000/v1/ws", pipeline="passthrough") as client:
        await client.send_frame(rgb)               # [H, W, 3] uint8
        async for out in client:                   # OutputFrame, video and audio
            ...
        await client.update({"mirror": True})      # live parameter change; returns the full params

`streamserve client` (file conversion) lives in :mod:`.convert`; both are importable from `streamserve.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamserve.core.frames import AudioChunk, MediaKind, VideoFrame
from streamserve.transport import wsproto as wp

DEFAULT_URL = "ws://127.0.0.1:8000/v1/ws"


class ServerError(Exception):
    """An `error` message from the server: `code`, `message`, `fatal`, plus any extra fields."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, details: Mapping[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.details = dict(details or {})


class SessionEnded(Exception):
    """The session ended (by the server or the client) while a request was waiting."""


@dataclasses.dataclass(slots=True)
class OutputFrame:
    """One output unit. Video `data` is RGB24 [H, W, 3] uint8; audio is int16 [channels, samples]."""

    kind: MediaKind
    seq: int
    ref: int | None  # sequence number of the input unit it answers, when the server knows it
    pts_us: int
    data: np.ndarray
    sample_rate: int | None
    received: float  # time.monotonic() on arrival

    @property
    def width(self) -> int:
        return int(self.data.shape[1]) if self.kind is MediaKind.VIDEO else 0

    @property
    def height(self) -> int:
        return int(self.data.shape[0]) if self.kind is MediaKind.VIDEO else 0


class StreamClient:
    """One WebSocket connection running one session. Use it as an async context manager."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        pipeline: str | None = None,
        params: Mapping[str, Any] | None = None,
        token: str | None = None,
        send_format: str = "jpeg",
        output_format: str = "jpeg",
        jpeg_quality: int = 85,
        kinds: tuple[str, ...] = ("video", "audio"),
        max_buffered: int = 256,
        open_timeout: float = 10.0,
        follow_migrations: bool = True,
    ) -> None:
        if send_format not in wp.VIDEO_FORMATS or output_format not in wp.VIDEO_FORMATS:
            raise ValueError(f"video formats are {sorted(wp.VIDEO_FORMATS)}, got {send_format!r}/{output_format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.url = url
        self.pipeline = pipeline
        self.params = dict(params or {})
        self.token = token
        self.send_format = wp.VIDEO_FORMATS[send_format]
        self.jpeg_quality = jpeg_quality
        self.output = {"video": output_format, "jpeg_quality": jpeg_quality, "kinds": list(kinds)}
        self.open_timeout = open_timeout
        self.session_id: str | None = None
        self.session_secret: str | None = None  # the session's credential for /v1/sessions/{id}
        self.server_hello: dict[str, Any] = {}
        self.started: dict[str, Any] = {}
        self.end_reason: str | None = None
        self.dropped = 0  # outputs dropped because the caller read slower than they came
        self._max_buffered = max_buffered
        self._ws: ClientConnection | None = None
        self._codec = wp.MediaCodec()
        self._seq = {MediaKind.VIDEO: 0, MediaKind.AUDIO: 0}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._outputs: asyncio.Queue[OutputFrame | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # `event` messages (voice: transcripts, thinking, per-turn latency, barge-in), in order
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # A draining cluster node moves the session: a `migrate` event names the new node and a resume
        # credential; the client reconnects there (outputs and sends continue; sends wait meanwhile).
        self.follow_migrations = follow_migrations
        self.migrations: list[dict[str, Any]] = []  # the migrate events followed
        self._migrate: dict[str, Any] | None = None
        self._moved: asyncio.Event = asyncio.Event()
        self._moved.set()
        self._follower: asyncio.Task[None] | None = None

    # --- life -----------------------------------------------------------------------------------
    async def __aenter__(self) -> StreamClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket, exchange `hello`, `start` the session. Raises ServerError if refused."""
        try:
            await self._open(self.url, self.params)
        except BaseException:
            await self.close()
            raise

    async def _open(self, url: str, params: Mapping[str, Any]) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._ws = await connect(url, subprotocols=[wp.SUBPROTOCOL],  # type: ignore[list-item]
                                 additional_headers=headers, max_size=wp.MAX_MESSAGE_BYTES,
                                 open_timeout=self.open_timeout,
                                 compression=None)  # no permessage-deflate: docs/protocol.md, section 1
        self._reader = asyncio.create_task(self._read_loop(), name="streamclient-reader")
        hello: dict[str, Any] = {"type": "hello", "version": wp.PROTOCOL_VERSION, "client": "streamserve.client"}
        self.server_hello = await self._request(hello, timeout_s=self.open_timeout)
        start = {"type": "start", "pipeline": self.pipeline, "params": dict(params), "output": self.output}
        self.started = await self._request(start, timeout_s=self.open_timeout)
        self.session_id = self.started["session_id"]
        self.session_secret = self.started.get("session_secret")

    async def _follow(self, move: dict[str, Any]) -> None:
        """Reconnect to the node a `migrate` event named, resuming the session there."""
        try:
            self._failure = None
            self.url = str(move["ws"])
            await self._open(self.url, {**self.params, "resume": move["resume"]})
            self.migrations.append(move)
        except BaseException as exc:
            self._failure = exc if isinstance(exc, Exception) else SessionEnded("migration cancelled")
            self._outputs.put_nowait(None)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._migrate = None
            self._moved.set()

    async def close(self) -> None:
        """Ask the server to end the session (if it still runs) and close the socket."""
        if self._follower is not None and not self._follower.done():
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
        ws = self._ws
        if ws is None:
            return
        if self.session_id is not None and self.end_reason is None and self._failure is None:
            with contextlib.suppress(ServerError, SessionEnded, ConnectionClosed, TimeoutError):
                await self._request({"type": "end"}, timeout_s=5.0)
        await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._ws = None

    async def end(self) -> str:
        """End the session; returns the server's reason."""
        reply = await self._request({"type": "end"})
        return str(reply.get("reason", ""))

    # --- requests -------------------------------------------------------------------------------
    async def update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Change parameters live; returns the session's full parameters. Raises ServerError."""
        reply = await self._request({"type": "update", "params": dict(params)})
        return dict(reply["params"])

    async def stats(self) -> dict[str, Any]:
        """`{"session": {...}, "connection": {...}}` as the server reports them."""
        reply = await self._request({"type": "stats"})
        return {"session": reply.get("session", {}), "connection": reply.get("connection", {})}

    async def record(self, record: bool = True, *, format: str = "mp4", audio: bool = False) -> dict[str, Any]:
        """Start (or stop) recording the output on the server; its state, `download` names the file's URL."""
        return await self._request({"type": "record", "record": record, "format": format, "audio": audio}, 30.0)

    async def _request(self, body: dict[str, Any], timeout_s: float | None = 10.0) -> dict[str, Any]:
        if self._failure is not None:
            raise self._failure
        if self._ws is None:
            raise RuntimeError("not connected")
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        try:
            await self._ws.send(wp.encode_control({**body, "id": msg_id}))
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._pending.pop(msg_id, None)

    # --- media ----------------------------------------------------------------------------------
    async def send_frame(self, frame: np.ndarray | VideoFrame, pts_us: int | None = None) -> int:
        """Send one RGB24 [H, W, 3] uint8 frame; returns its sequence number (outputs' `ref`)."""
        if isinstance(frame, VideoFrame):
            pts_us = pts_us if pts_us is not None else round(frame.seconds * 1_000_000)
            frame = frame.data
        if pts_us is None:
            pts_us = round(time.monotonic() * 1_000_000)
        seq = self._next_seq(MediaKind.VIDEO)
        unit = VideoFrame(np.ascontiguousarray(frame), 0, 0.0, 0.0, meta={"pts_us": pts_us})
        if self.send_format is wp.Format.RGB24:
            data = self._codec.encode(unit, seq=seq, video_format=self.send_format)
        else:
            data = await asyncio.to_thread(self._codec.encode, unit, seq=seq, video_format=self.send_format,
                                           jpeg_quality=self.jpeg_quality)
        await self._send_media(data)
        return seq

    async def send_audio(self, pcm: np.ndarray, sample_rate: int, pts_us: int | None = None) -> int:
        """Send PCM as int16 [channels, samples] (float32 in [-1, 1] is converted)."""
        if pts_us is None:
            pts_us = round(time.monotonic() * 1_000_000)
        seq = self._next_seq(MediaKind.AUDIO)
        unit = AudioChunk(np.ascontiguousarray(pcm), sample_rate, 0, 0.0, 0.0, meta={"pts_us": pts_us})
        await self._send_media(self._codec.encode(unit, seq=seq))
        return seq

    def _next_seq(self, kind: MediaKind) -> int:
        seq = self._seq[kind]
        self._seq[kind] = (seq + 1) % wp.U32
        return seq

    async def _send_media(self, data: bytes) -> None:
        if not self._moved.is_set():  # moving to another node: wait until the session runs there
            async with asyncio.timeout(self.open_timeout * 2):
                await self._moved.wait()
        if self._failure is not None:
            raise self._failure
        if self._ws is None or self.session_id is None:
            raise RuntimeError("not connected")
        if self.end_reason is not None:
            raise SessionEnded(self.end_reason)
        await self._ws.send(data)

    def __aiter__(self) -> AsyncIterator[OutputFrame]:
        return self.frames()

    async def frames(self) -> AsyncIterator[OutputFrame]:
        """Output units as they arrive, until the session ends."""
        while True:
            item = await self._outputs.get()
            if item is None:
                self._outputs.put_nowait(None)  # keep the end visible to other readers
                if self._failure is not None and not isinstance(self._failure, SessionEnded):
                    raise self._failure
                return
            yield item

    async def receive(self, timeout_s: float | None = None) -> OutputFrame | None:
        """The next output unit, or None once the session has ended. TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            item = await self._outputs.get()
        if item is None:
            self._outputs.put_nowait(None)
        return item

    # --- reading --------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        assert self._ws is not None
        ws = self._ws
        decoder = wp.MediaCodec()
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    header, payload = wp.parse_media(message)
                    media = await asyncio.to_thread(decoder.decode, header, payload, arrival=0.0, deadline=0.0)
                    out = OutputFrame(MediaKind.VIDEO if header.kind is wp.Kind.VIDEO else MediaKind.AUDIO,
                                      header.seq, header.ref, header.pts_us, media.data,
                                      header.sample_rate or None, time.monotonic())
                    if self._outputs.qsize() >= self._max_buffered:
                        self._outputs.get_nowait()
                        self.dropped += 1
                    self._outputs.put_nowait(out)
                else:
                    self._on_control(wp.parse_control(message, types=wp.SERVER_TYPES).body)
        except ConnectionClosed:
            pass
        except wp.ProtocolError as exc:  # the server sent something we cannot read
            self._failure = exc
        finally:
            self._connection_over()

    def _connection_over(self) -> None:
        """The socket closed: follow a migrate event (outputs stay open: the session continues on the
        new node), or end the outputs and fail whoever waits."""
        move = self._migrate
        if move is not None and self._failure is None and self.follow_migrations:
            moving = SessionEnded("the session is moving to another node")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(moving)
            self._follower = asyncio.create_task(self._follow(move), name="streamclient-follow")
            return
        if self._failure is None:
            self._failure = SessionEnded(self.end_reason or "connection closed")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._failure)
        self._outputs.put_nowait(None)

    def _on_control(self, body: dict[str, Any]) -> None:
        msg_id = body.get("id")
        kind = body["type"]
        if kind == "event":
            body["received"] = time.monotonic()
            if body.get("event") == "migrate" and self.follow_migrations and "ws" in body and "resume" in body:
                self._migrate = body  # followed when this connection closes
                self._moved.clear()
            self.events.put_nowait(body)
            return
        if kind == "ended" and self._migrate is not None:
            return  # not the end: the session continues on the node the migrate event named
        if kind == "ended":
            self.end_reason = str(body.get("reason", ""))
        if kind == "error":
            err = ServerError(str(body.get("code")), str(body.get("message")), fatal=bool(body.get("fatal")),
                              details={k: v for k, v in body.items()
                                       if k not in ("type", "code", "message", "fatal", "id")})
            if err.fatal:
                self._failure = err
            fut = self._pending.get(msg_id) if isinstance(msg_id, int) else None
            if fut is not None and not fut.done():
                fut.set_exception(err)
            elif err.fatal:
                for pending in self._pending.values():
                    if not pending.done():
                        pending.set_exception(err)
            return
        fut = self._pending.get(msg_id) if isinstance(msg_id, int) else None
        if fut is not None and not fut.done():
            fut.set_result(body)
        elif kind == "ended":  # the server ended the session on its own: fail whoever waits
            ended = SessionEnded(self.end_reason or "")
            for pending in self._pending.values():
                if not pending.done():
                    pending.set_exception(ended)
