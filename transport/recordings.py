"""Per-session recording, started and stopped live, and its download.

Routes (a transport like the others, built by the server):

- `PATCH /v1/sessions/{id}/recording` with `{"record": true, "format": "mp4"|"webm", "audio": false}`
  starts recording the session's output (`{"record": false}` stops and finalises it); the answer is
  the recording's state (`recording`, `frames`, `bytes`, `reason`, ...).
- `GET /v1/sessions/{id}/recording`: the finished file (`video/mp4` or `video/webm`); `409` while it
  is still recording, `404` when the session never recorded. The file stays downloadable after the
  session ended (every recording is finalised when its session ends or the server stops).

Guarded like the other session routes: the session's own secret or an admin token, as a bearer
header or `?token=` (so a plain download link works); `authorize` is the one place that checks.

Each recording is fed by its own output subscriptions of the session (bounded, freshest wins, like
any viewer), and written by the `Recorder`'s thread: the engine and the event loop only enqueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from streamserve.core.config import ServerConfig
from streamserve.core.errors import BadRequest, StreamserveError
from streamserve.core.frames import MediaKind
from streamserve.core.ports import SessionFactory, SessionHandle
from streamserve.transport import auth
from streamserve.transport.recorder import CODECS, Recorder, RecordingOptions

log = logging.getLogger(__name__)

MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
KEEP_FINISHED = 1000  # finished recordings remembered for download (their files stay on disk)
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
PATCH_OPENAPI: dict[str, Any] = {
    "security": [{"bearer": []}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["record"], "additionalProperties": False,
        "properties": {"record": {"type": "boolean"}, "format": {"enum": sorted(CODECS), "default": "mp4"},
                       "audio": {"type": "boolean", "default": False}}}}}},
    "responses": {"200": {"description": "the recording's state: recording, frames, bytes, reason, file"},
                  "400": {"description": "a malformed body", **_ERROR},
                  "401": {"description": "tokens are configured and none valid was given", **_ERROR},
                  "404": {"description": "no such session, or stopping one that is not recording", **_ERROR},
                  "409": {"description": "the session's pipeline produces no video (no_video_output)", **_ERROR}},
}
GET_OPENAPI: dict[str, Any] = {
    "security": [{"bearer": []}],
    "responses": {"200": {"description": "the finished file",
                          "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                      for t in MEDIA_TYPES.values()}},
                  "401": {"description": "tokens are configured and none valid was given", **_ERROR},
                  "404": {"description": "no such session or no recording", **_ERROR},
                  "409": {"description": "still recording", **_ERROR}},
}


class RecordingNotFound(StreamserveError):
    status = 404
    code = "not_found"


class StillRecording(StreamserveError):
    status = 409
    code = "still_recording"


class NothingToRecord(StreamserveError):
    """The session's pipeline produces no video (the voice agent): a recording would stay empty."""

    status = 409
    code = "no_video_output"


def record_dir(config: ServerConfig) -> Path:
    """`ServerConfig.record_dir`, or `$TMPDIR/streamserve-recordings`; created when missing."""
    path = Path(config.record_dir) if config.record_dir else Path(tempfile.gettempdir()) / "streamserve-recordings"
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_request(body: bytes, max_bytes: int) -> tuple[bool, RecordingOptions]:
    """`{"record": bool, "format": "mp4"|"webm", "audio": bool}` -> (record, options). 400 when malformed."""
    try:
        obj = json.loads(body or b"{}")
    except ValueError as exc:
        raise BadRequest(f"the body must be a JSON object: {exc}") from None
    return parse_fields(obj, max_bytes)


def parse_fields(obj: Any, max_bytes: int, ignore: frozenset[str] = frozenset()) -> tuple[bool, RecordingOptions]:
    """The same for an already parsed object (the WebSocket `record` message ignores `type`/`id`)."""
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in ignore}
    if not isinstance(obj, dict) or not isinstance(obj.get("record"), bool):
        raise BadRequest('the body must be a JSON object with a boolean "record", e.g. {"record": true}')
    unknown = set(obj) - {"record", "format", "audio"}
    if unknown:
        raise BadRequest(f"unknown recording fields {sorted(unknown)}; known: record, format, audio")
    fmt, audio = obj.get("format", "mp4"), obj.get("audio", False)
    if fmt not in CODECS:
        raise BadRequest(f'"format" must be one of {sorted(CODECS)}, got {fmt!r}')
    if not isinstance(audio, bool):
        raise BadRequest(f'"audio" must be true or false, got {audio!r}')
    return obj["record"], RecordingOptions(format=fmt, audio=audio, max_bytes=max_bytes)


@dataclasses.dataclass
class Recording:
    handle: SessionHandle
    recorder: Recorder
    tasks: list[asyncio.Task[None]]


class RecordingTransport:
    """Starts, stops and serves recordings. Built by the server like a transport."""

    def __init__(self, sessions: SessionFactory, config: ServerConfig) -> None:
        self.sessions = sessions
        self.config = config
        self.directory = record_dir(config)
        self.recordings: dict[str, Recording] = {}  # session id -> its latest recording
        r = self.router = APIRouter(tags=["sessions"])
        r.add_api_route("/v1/sessions/{session_id}/recording", self.patch, methods=["PATCH"],
                        summary="Start or stop recording the session's output", openapi_extra=PATCH_OPENAPI)
        r.add_api_route("/v1/sessions/{session_id}/recording", self.download, methods=["GET"],
                        summary="Download the session's finished recording", response_class=FileResponse,
                        openapi_extra=GET_OPENAPI)

    def authorize(self, request: Request, handle: SessionHandle) -> None:
        """Raise Unauthorized unless `request` may control `handle`: its session secret or an admin token,
        as `Authorization: Bearer` or `?token=` (a download link cannot set a header; query tokens are
        redacted from logs, docs/security.md)."""
        auth.require_owner(auth.request_token(request.headers, request.query_params), handle, self.config)

    # --- control --------------------------------------------------------------------------------
    async def start(self, handle: SessionHandle, options: RecordingOptions) -> Recorder:
        """Start a recording of `handle` (a running one is returned as is). Raises NothingToRecord for a
        pipeline without video output."""
        if MediaKind.VIDEO not in handle.outputs:
            raise NothingToRecord(f"session {handle.id} runs the {handle.pipeline!r} pipeline, which produces "
                                  f"no video; recordings hold the session's video output")
        current = self.recordings.get(handle.id)
        if current is not None and current.recorder.recording:
            return current.recorder
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = self.directory / f"{handle.id}-{stamp}.{options.format}"
        recorder = Recorder(path, options)
        kinds = [MediaKind.VIDEO] + ([MediaKind.AUDIO] if options.audio else [])
        recording = Recording(handle, recorder, [])
        for kind in kinds:
            recording.tasks.append(asyncio.create_task(self._feed(handle, kind, recorder),
                                                       name=f"record-{handle.id}-{kind}"))
        recording.tasks.append(asyncio.create_task(self._follow(recording), name=f"record-{handle.id}-end"))
        self.recordings[handle.id] = recording
        finished = [sid for sid, rec in self.recordings.items() if not rec.recorder.recording]
        for sid in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.recordings[sid]
        log.info("session %s: recording to %s", handle.id, path)
        return recorder

    async def stop(self, session_id: str, reason: str) -> Recorder | None:
        """Stop and finalise the session's recording (idempotent); None if it never recorded."""
        recording = self.recordings.get(session_id)
        if recording is None:
            return None
        current = asyncio.current_task()
        for task in recording.tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in recording.tasks if t is not current), return_exceptions=True)
        await asyncio.to_thread(recording.recorder.close, reason)  # flush + index on the writer thread
        return recording.recorder

    async def _feed(self, handle: SessionHandle, kind: MediaKind, recorder: Recorder) -> None:
        subscription = handle.subscribe(kind)
        try:
            while (media := await subscription.get()) is not None:
                recorder.offer(media)
        finally:
            subscription.close()

    async def _follow(self, recording: Recording) -> None:
        reason = await recording.handle.wait_closed()
        await self.stop(recording.handle.id, f"session ended: {reason}")

    async def aclose(self) -> None:
        for session_id in list(self.recordings):
            await self.stop(session_id, "server shutting down")

    # --- HTTP -----------------------------------------------------------------------------------
    async def patch(self, session_id: str, request: Request) -> Response:
        try:
            handle = self.sessions.get(session_id)
            self.authorize(request, handle)
            record, options = parse_request(await request.body(), self.config.record_max_bytes)
            recorder = await self.start(handle, options) if record else None
        except StreamserveError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        if recorder is None:
            stopped = await self.stop(session_id, "stopped by request")
            if stopped is None:
                return JSONResponse(RecordingNotFound(f"session {session_id} is not recording").to_dict(),
                                    status_code=404)
            recorder = stopped
        return JSONResponse({"session_id": session_id, **recorder.stats()})

    async def download(self, session_id: str, request: Request) -> Response:
        recording = self.recordings.get(session_id)
        try:
            if recording is None:
                self.sessions.get(session_id)  # 404 session_not_found for an unknown session
                raise RecordingNotFound(f"session {session_id} has no recording; start one with PATCH "
                                        f'/v1/sessions/{session_id}/recording {{"record": true}}')
            self.authorize(request, recording.handle)
            recorder = recording.recorder
            if recorder.recording:
                raise StillRecording(f'session {session_id} is still recording; stop it with {{"record": false}} '
                                     "or end the session first")
            if not recorder.path.exists():
                raise RecordingNotFound(f"the recording of session {session_id} holds no video frame "
                                        f"({recorder.reason}{'; ' + recorder.error if recorder.error else ''})")
        except StreamserveError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        with contextlib.suppress(OSError):
            recorder.bytes = recorder.path.stat().st_size
        return FileResponse(recorder.path, media_type=MEDIA_TYPES[recorder.options.format],
                            filename=recorder.path.name)
