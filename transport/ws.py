"""`GET /v1/ws`: the WebSocket streaming API (protocol v1, specified in docs/protocol.md).

One connection carries at most one session. The connection reads without pause (the session's inbox
is bounded and the freshest input wins, so a fast sender costs dropped frames, never memory) and
sends each output kind from its own pump; a slow reader makes the session's bounded subscription drop
its oldest outputs. Any malformed message gets a typed `error` and a clean close; nothing a client
sends can take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

import streamserve
from streamserve.core.clock import SYSTEM_CLOCK, Clock
from streamserve.core.config import ServerConfig
from streamserve.core.errors import StreamserveError
from streamserve.core.frames import MediaKind
from streamserve.core.ports import OutputSubscription, SessionFactory, SessionHandle
from streamserve.transport import wsproto as wp
from streamserve.transport.auth import bearer_token, token_ok
from streamserve.transport.inputguard import DecodeBudget, check_video

if TYPE_CHECKING:
    from streamserve.transport.recordings import RecordingTransport

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0  # from accept to the client's hello
START_TIMEOUT_S = 60.0  # from hello to start, and between messages while no session runs


class _Closed(Exception):
    """The socket is gone or closing: stop reading."""


class WebSocketTransport:
    """Serves `/v1/ws`. Built by the server with the session factory and the server config."""

    def __init__(self, sessions: SessionFactory, config: ServerConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.sessions = sessions
        self.config = config
        self.clock = clock
        self.router = APIRouter(tags=["websocket"])
        self.router.add_api_websocket_route("/v1/ws", self._endpoint)
        self._connections: set[_Connection] = set()
        self.recordings: RecordingTransport | None = None  # set by the server: the `record` message

    async def _endpoint(self, websocket: WebSocket) -> None:
        conn = _Connection(self, websocket)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    async def aclose(self) -> None:
        """End every connection: an `ended` message, then close code 1001 (going away)."""
        conns = list(self._connections)
        await asyncio.gather(*(c.shutdown("server shutting down") for c in conns), return_exceptions=True)


class _Connection:
    def __init__(self, transport: WebSocketTransport, websocket: WebSocket) -> None:
        self.t = transport
        self.ws = websocket
        self.codec_in = wp.MediaCodec()
        self.handle: SessionHandle | None = None
        self.output = wp.OutputOptions()
        self.greeted = False
        self.closing = False
        self._send_lock = asyncio.Lock()
        self._pumps: list[asyncio.Task[None]] = []
        self._subs: list[OutputSubscription] = []
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.counts = {"messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0,
                       "video_refused": 0, "video_dropped_undecoded": 0, "video_dropped_budget": 0}
        # Video input waiting to be decoded: only the freshest frame (see transport.inputguard).
        self._undecoded: tuple[wp.MediaHeader, bytes, float, float] | None = None
        self._undecoded_ready = asyncio.Event()
        self._decoder: asyncio.Task[None] | None = None
        self._budget = DecodeBudget(transport.config.limits.decode_pixels_per_s, transport.clock.now())
        self._seq_out = {MediaKind.VIDEO: 0, MediaKind.AUDIO: 0}

    # --- life -----------------------------------------------------------------------------------
    async def run(self) -> None:
        offered = self.ws.scope.get("subprotocols") or []
        await self.ws.accept(subprotocol=wp.SUBPROTOCOL if wp.SUBPROTOCOL in offered else None)
        self._reader = asyncio.create_task(self._read_loop(), name="ws-reader")
        try:
            await asyncio.wait({self._reader})
        finally:
            await self._cleanup("websocket closed")

    async def shutdown(self, reason: str) -> None:
        await self._finish({"type": "ended", "reason": reason}, wp.CLOSE_GOING_AWAY)
        if self._reader is not None:
            self._reader.cancel()

    async def _cleanup(self, reason: str) -> None:
        self.closing = True
        for task in [*self._pumps, *(t for t in (self._watcher, self._decoder) if t is not None)]:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)  # _pump logs its own failures
        for sub in self._subs:
            sub.close()
        if self.handle is not None and not self.handle.closed:
            await self.t.sessions.close(self.handle.id, reason)
        if self.ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(wp.CLOSE_NORMAL)

    async def _finish(self, message: dict[str, Any], code: int) -> None:
        """Send a last message and close with `code`; later sends are ignored."""
        if self.closing:
            return
        await self._send_text(message)
        self.closing = True
        reason = str(message.get("code") or message.get("reason") or "")
        reason = reason.encode()[:120].decode("utf-8", "ignore")  # a close reason is at most 123 bytes
        async with self._send_lock:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)

    # --- sending --------------------------------------------------------------------------------
    async def _send_text(self, message: dict[str, Any]) -> bool:
        return await self._send(wp.encode_control(message))

    async def _send(self, data: str | bytes) -> bool:
        if self.closing:
            return False
        async with self._send_lock:
            if self.closing or self.ws.application_state is not WebSocketState.CONNECTED:
                return False
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_text(data)
            except Exception:  # the peer went away mid-send (disconnect, reset, closed transport)
                self.closing = True
                return False
        self.counts["messages_out"] += 1
        self.counts["bytes_out"] += len(data)
        return True

    # --- reading --------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while not self.closing:
                timeout = None if self.handle is not None else (
                    HELLO_TIMEOUT_S if not self.greeted else START_TIMEOUT_S)
                try:
                    async with asyncio.timeout(timeout):
                        message = await self.ws.receive()
                except TimeoutError:
                    what = "hello" if not self.greeted else "start"
                    raise wp.ProtocolError("timeout", f"no {what} within {timeout:g} s",
                                           close_code=wp.CLOSE_POLICY) from None
                await self._dispatch(message)
        except _Closed:
            return
        except wp.ProtocolError as exc:
            await self._finish(wp.error_message(exc, fatal=True), exc.close_code)
        except Exception as exc:  # a bug of ours: report it as `internal`, close, keep serving others
            log.exception("websocket connection failed")
            err = StreamserveError(f"internal error: {type(exc).__name__}")
            await self._finish(wp.error_message(err, fatal=True), wp.CLOSE_INTERNAL)

    async def _dispatch(self, message: Any) -> None:
        if message["type"] == "websocket.disconnect":
            raise _Closed
        data: bytes | None = message.get("bytes")
        text: str | None = message.get("text")
        size = len(data) if data is not None else len(text.encode()) if text is not None else 0
        self.counts["messages_in"] += 1
        self.counts["bytes_in"] += size
        if self.handle is not None:
            self.handle.touch()
        if data is not None:
            await self._on_media(data)
        elif text is not None:
            await self._on_control(wp.parse_control(text))

    async def _on_media(self, data: bytes) -> None:
        if not self.greeted:
            raise wp.ProtocolError("hello_required", "the first message must be a `hello`, got a binary message")
        header, payload = wp.parse_media(data)
        if header.ref is not None:
            raise wp.ProtocolError("bad_header", "flag bit 0 (`ref` valid) is for server outputs; a client "
                                   f"sets flags to 0 (got ref={header.ref})")
        if self.handle is None:
            raise wp.ProtocolError("not_started", "media before `start`: send `start` first")
        arrival = self.t.clock.now()
        deadline = arrival + self.t.config.session.latency_budget_s
        if header.kind is wp.Kind.VIDEO:
            try:
                check_video(header, payload, self.t.config.limits)  # before any decoding
            except wp.ProtocolError as exc:
                if exc.fatal:
                    raise
                self.counts["video_refused"] += 1
                await self._send_text(wp.error_message(exc, fatal=False))
                return
            if header.format is not wp.Format.RGB24:  # decoded off the read path, freshest first
                if self._undecoded is not None:
                    self.counts["video_dropped_undecoded"] += 1
                self._undecoded = (header, bytes(payload), arrival, deadline)
                self._undecoded_ready.set()
                return
        self.handle.push(self.codec_in.decode(header, payload, arrival=arrival, deadline=deadline))

    async def _decode_loop(self) -> None:
        """Decode the freshest waiting video frame, within the session's decode budget."""
        while True:
            await self._undecoded_ready.wait()
            self._undecoded_ready.clear()
            item, self._undecoded = self._undecoded, None
            if item is None or self.handle is None:
                continue
            header, payload, arrival, deadline = item
            if not self._budget.take(header.width * header.height, self.t.clock.now()):
                self.counts["video_dropped_budget"] += 1
                continue
            try:
                media = await asyncio.to_thread(self.codec_in.decode, header, memoryview(payload),
                                                arrival=arrival, deadline=deadline)
            except Exception as exc:  # a JPEG that does not decode (bad_media), or a bug of ours (internal)
                if not isinstance(exc, wp.ProtocolError):
                    log.exception("websocket video decode failed")
                    exc = wp.ProtocolError("internal", f"internal error: {type(exc).__name__}",
                                           close_code=wp.CLOSE_INTERNAL)
                await self._finish(wp.error_message(exc, fatal=True), exc.close_code)
                if self._reader is not None:
                    self._reader.cancel()
                return
            if not self.closing:
                self.handle.push(media)

    async def _on_control(self, msg: wp.Control) -> None:
        if not self.greeted:
            if msg.type != "hello":
                raise wp.ProtocolError("hello_required", f"the first message must be a `hello`, got "
                                       f"`{msg.type}`")
            await self._hello(msg)
            return
        if msg.type == "hello":
            raise wp.ProtocolError("bad_message", "`hello` was already received")
        if msg.type == "start":
            await self._start(msg)
            return
        if self.handle is None:
            if msg.type == "end":
                await self._finish(self._reply(msg, {"type": "ended", "reason": "ended by client"}),
                                   wp.CLOSE_NORMAL)
                raise _Closed
            await self._refuse(msg, wp.ProtocolError("not_started", f"`{msg.type}` before `start`", fatal=False))
            return
        if msg.type == "update":
            try:
                params = await self.handle.update(msg.body["params"])
            except StreamserveError as exc:
                await self._refuse(msg, exc)
                return
            await self._send_text(self._reply(msg, {"type": "updated", "params": params}))
        elif msg.type == "stats":
            await self._send_text(self._reply(msg, {"type": "stats", "session": self.handle.stats(),
                                                    "connection": self._connection_stats()}))
        elif msg.type == "record":
            await self._record(msg)
        elif msg.type == "end":
            sid = self.handle.id
            if self._watcher is not None:  # this reply, not the watcher's, reports the end
                self._watcher.cancel()
            await self.t.sessions.close(sid, "ended by client")  # units still in flight are discarded
            await self._finish(self._reply(msg, {"type": "ended", "reason": "ended by client", "session_id": sid,
                                                 "stats": self.handle.stats()}), wp.CLOSE_NORMAL)
            raise _Closed

    async def _record(self, msg: wp.Control) -> None:
        """`{"type": "record", "record": true|false, "format", "audio"}` -> `recording` (its state)."""
        from streamserve.transport.recordings import parse_fields  # recordings imports this module

        recordings, handle = self.t.recordings, self.handle
        if handle is None:  # the caller answered `not_started` already
            return
        if recordings is None:
            await self._refuse(msg, wp.ProtocolError("bad_message", "recording is not served here", fatal=False))
            return
        try:  # a malformed message, or a pipeline without video output
            record, options = parse_fields(msg.body, self.t.config.record_max_bytes, frozenset({"type", "id"}))
            recorder = await recordings.start(handle, options) if record else None
        except StreamserveError as exc:
            await self._refuse(msg, wp.ProtocolError("bad_message", str(exc), fatal=False))
            return
        if recorder is None:
            stopped = await recordings.stop(handle.id, "stopped by request")
            if stopped is None:
                await self._refuse(msg, wp.ProtocolError("bad_message", "this session is not recording",
                                                         fatal=False))
                return
            recorder = stopped
        await self._send_text(self._reply(msg, {"type": "recording", **recorder.stats(),
                                                "download": f"/v1/sessions/{handle.id}/recording"}))

    async def _refuse(self, msg: wp.Control, exc: StreamserveError) -> None:
        """A non-fatal error answering `msg`: the connection goes on."""
        await self._send_text(wp.error_message(exc, fatal=False, msg_id=msg.id))

    @staticmethod
    def _reply(msg: wp.Control, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "id": msg.id} if msg.id is not None else body

    def _connection_stats(self) -> dict[str, Any]:
        dropped = {"video_dropped_out": 0, "audio_dropped_out": 0}  # both always present (0: not sent)
        dropped.update({f"{sub_kind}_dropped_out": sub.dropped
                        for sub_kind, sub in zip(self.output.kinds, self._subs, strict=False)})
        return {**self.counts, **dropped}

    async def _hello(self, msg: wp.Control) -> None:
        tokens = self.t.config.tokens
        if tokens:
            token = (bearer_token(self.ws.headers.get("authorization"))
                     or self.ws.query_params.get("token") or msg.body.get("token"))
            if not token_ok(token, tokens):
                raise wp.ProtocolError("unauthorized", "a valid bearer token is required (Authorization "
                                       "header, ?token= or hello.token)", close_code=wp.CLOSE_POLICY)
        self.greeted = True
        await self._send_text(self._reply(msg, {
            "type": "hello",
            "version": wp.PROTOCOL_VERSION,
            "server": f"streamserve/{streamserve.__version__}",
            "capabilities": {
                "video_formats": list(wp.VIDEO_FORMATS),
                "audio_formats": list(wp.AUDIO_FORMATS),
                "max_message_bytes": wp.MAX_MESSAGE_BYTES,
                "max_control_bytes": wp.MAX_CONTROL_BYTES,
                "max_dimension": wp.MAX_DIMENSION,
                "max_input": {"width": self.t.config.limits.max_input_width,
                              "height": self.t.config.limits.max_input_height,
                              "pixels": self.t.config.limits.max_input_pixels},
                "flow_control": "freshest-wins",
                "latency_budget_ms": round(self.t.config.session.latency_budget_s * 1000, 3),
                "idle_timeout_s": self.t.config.idle_timeout_s,
                "default_pipeline": self.t.config.pipeline,
                "pipelines_url": "/v1/pipelines",  # names, descriptions and parameter schemas
            },
        }))

    async def _start(self, msg: wp.Control) -> None:
        if self.handle is not None:
            await self._refuse(msg, wp.ProtocolError("already_started", "this connection already runs a session",
                                                     fatal=False))
            return
        output = wp.OutputOptions.from_start(msg.body)
        try:
            handle = await self.t.sessions.open(msg.body.get("pipeline"), msg.body.get("params"),
                                                source="websocket")
        except StreamserveError as exc:
            await self._refuse(msg, exc)
            return
        self.handle, self.output = handle, output
        for kind in output.kinds:
            sub = handle.subscribe(kind)
            self._subs.append(sub)
            self._pumps.append(asyncio.create_task(self._pump(sub, kind), name=f"ws-pump-{kind}"))
        subscribe_events = getattr(handle, "subscribe_events", None)
        if subscribe_events is not None:  # control events (voice transcripts, barge-in...) as `event` messages
            events = subscribe_events()
            self._subs.append(events)
            self._pumps.append(asyncio.create_task(self._pump_events(events), name="ws-pump-events"))
        self._watcher = asyncio.create_task(self._watch(handle), name="ws-session-watch")
        self._decoder = asyncio.create_task(self._decode_loop(), name="ws-decoder")
        stats = handle.stats()
        await self._send_text(self._reply(msg, {"type": "started", "session_id": handle.id,
                                                "session_secret": handle.secret,
                                                "pipeline": handle.pipeline, "params": stats.get("params", {}),
                                                "output": output.to_dict()}))

    # --- output ---------------------------------------------------------------------------------
    async def _pump(self, sub: OutputSubscription, kind: MediaKind) -> None:
        codec = wp.MediaCodec()  # its own JPEG encoder: pumps run concurrently
        while True:
            media = await sub.get()
            if media is None:
                return
            seq = self._seq_out[kind]
            self._seq_out[kind] = (seq + 1) % wp.U32
            try:
                if kind is MediaKind.VIDEO and self.output.video is not wp.Format.RGB24:
                    data = await asyncio.to_thread(codec.encode, media, seq=seq, video_format=self.output.video,
                                                   jpeg_quality=self.output.jpeg_quality)
                else:
                    data = codec.encode(media, seq=seq, video_format=self.output.video)
            except wp.ProtocolError as exc:  # an output too large for one message: say so, skip it
                await self._send_text(wp.error_message(exc, fatal=False))
                continue
            except Exception:  # a unit we cannot encode (a pipeline bug): log it, skip it, keep streaming
                log.exception("session %s: encoding a %s output failed", self.handle.id if self.handle else "?",
                              kind)
                continue
            if not await self._send(data):
                return

    async def _pump_events(self, sub: Any) -> None:
        while True:
            event = await sub.get()
            if event is None:
                return
            if not await self._send_text({"type": "event", **event}):
                return

    async def _watch(self, handle: SessionHandle) -> None:
        """When the session ends on its own (idle, pipeline error, API), tell the client and close."""
        reason = await handle.wait_closed()
        await asyncio.gather(*self._pumps, return_exceptions=True)  # let them send what was produced
        await self._finish({"type": "ended", "reason": reason, "session_id": handle.id, "stats": handle.stats()},
                           wp.CLOSE_NORMAL)
        if self._reader is not None:
            self._reader.cancel()
