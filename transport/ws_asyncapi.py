"""The WebSocket API (`GET /v1/ws`, docs/protocol.md) as an AsyncAPI 2.6 document, built from the
constants `transport/wsproto.py` and `transport/ws.py` use, so the document cannot drift from them.

`asyncapi_document(version)` is served at `/asyncapi.json`; `openapi_operation()` is the OpenAPI
description of the upgrade request itself (an OpenAPI document cannot describe the messages).
"""

from __future__ import annotations

from typing import Any

from streamserve.transport import wsproto as wp
from streamserve.transport.ws import HELLO_TIMEOUT_S, START_TIMEOUT_S

ASYNCAPI_VERSION = "2.6.0"
ERROR_CODES = {  # code -> (fatal, close code or None): docs/protocol.md section 4
    "hello_required": (True, wp.CLOSE_PROTOCOL_ERROR),
    "unsupported_version": (True, wp.CLOSE_PROTOCOL_ERROR),
    "unauthorized": (True, wp.CLOSE_POLICY),
    "timeout": (True, wp.CLOSE_POLICY),
    "bad_json": (True, wp.CLOSE_PROTOCOL_ERROR),
    "bad_message": (True, wp.CLOSE_PROTOCOL_ERROR),
    "too_large": (True, wp.CLOSE_TOO_BIG),
    "truncated": (True, wp.CLOSE_PROTOCOL_ERROR),
    "bad_header": (True, wp.CLOSE_PROTOCOL_ERROR),
    "bad_kind": (True, wp.CLOSE_PROTOCOL_ERROR),
    "bad_format": (True, wp.CLOSE_PROTOCOL_ERROR),
    "bad_media": (True, wp.CLOSE_PROTOCOL_ERROR),
    "not_started": (False, None),  # fatal (1002) for media, not for control messages
    "already_started": (False, None),
    "unknown_pipeline": (False, None),
    "invalid_params": (False, None),
    "session_limit": (False, None),
    "session_closed": (False, None),
    "internal": (True, wp.CLOSE_INTERNAL),
}

_ID = {"oneOf": [{"type": "string", "maxLength": wp.MAX_ID_LENGTH},
                 {"type": "integer", "minimum": -(2**53) + 1, "maximum": 2**53 - 1}],
       "description": "optional request id, echoed in the reply"}
_PARAMS = {"type": "object", "description": "pipeline parameters (`GET /v1/pipelines` lists them)"}
_OUTPUT = {
    "type": ["object", "null"],
    "properties": {
        "video": {"enum": sorted(wp.VIDEO_FORMATS), "default": "jpeg"},
        "audio": {"enum": sorted(wp.AUDIO_FORMATS), "default": "pcm_s16le"},
        "jpeg_quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 85},
        "kinds": {"type": "array", "items": {"enum": ["video", "audio"]}, "default": ["video", "audio"]},
    },
}
_LATENCY = {"type": "object", "properties": {p: {"type": ["number", "null"]} for p in ("p50", "p95", "p99")},
            "description": "server latency percentiles in ms; null until outputs have been produced"}


def _control(type_: str, summary: str, properties: dict[str, Any] | None = None,
             required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "name": type_, "title": type_, "summary": summary, "contentType": "application/json",
        "payload": {"type": "object", "required": ["type", *required],
                    "properties": {"type": {"const": type_}, "id": _ID, **(properties or {})}},
    }


def _check_covers(messages: dict[str, Any], types: frozenset[str]) -> None:
    if set(messages) != types:
        raise RuntimeError(f"wsproto message types {sorted(types)} differ from the described {sorted(messages)}")


def client_messages() -> dict[str, dict[str, Any]]:
    messages = {
        "hello": _control("hello", "first message: protocol version and optional token", {
            "version": {"type": "integer", "enum": list(wp.SUPPORTED_VERSIONS)},
            "client": {"type": "string"}, "token": {"type": "string"}, "capabilities": {"type": "object"},
        }, ("version",)),
        "start": _control("start", "open the session", {
            "pipeline": {"type": ["string", "null"]}, "params": {**_PARAMS, "type": ["object", "null"]},
            "output": _OUTPUT,
        }),
        "update": _control("update", "change parameters live", {"params": _PARAMS}, ("params",)),
        "stats": _control("stats", "ask for a stats message"),
        "record": _control("record", "start or stop recording the output (docs/recording.md)", {
            "record": {"type": "boolean"}, "format": {"enum": ["mp4", "webm"], "default": "mp4"},
            "audio": {"type": "boolean", "default": False},
        }, ("record",)),
        "end": _control("end", "end the session; the server answers `ended` and closes"),
    }
    _check_covers(messages, wp.CLIENT_TYPES)
    return messages


def server_messages() -> dict[str, dict[str, Any]]:
    messages = {
        "hello": _control("hello", "the server's capabilities", {
            "version": {"const": wp.PROTOCOL_VERSION}, "server": {"type": "string"},
            "capabilities": {"type": "object", "properties": {
                "video_formats": {"type": "array", "items": {"enum": sorted(wp.VIDEO_FORMATS)}},
                "audio_formats": {"type": "array", "items": {"enum": sorted(wp.AUDIO_FORMATS)}},
                "max_message_bytes": {"const": wp.MAX_MESSAGE_BYTES},
                "max_control_bytes": {"const": wp.MAX_CONTROL_BYTES},
                "max_dimension": {"const": wp.MAX_DIMENSION},
                "flow_control": {"const": "freshest-wins"},
                "latency_budget_ms": {"type": "number"}, "idle_timeout_s": {"type": "number"},
                "default_pipeline": {"type": "string"},
                "pipelines_url": {"const": "/v1/pipelines"},
            }},
        }, ("version", "server", "capabilities")),
        "started": _control("started", "the session runs", {
            "session_id": {"type": "string"},
            "session_secret": {"type": "string", "description": "this session's own credential for "
                               "GET|PATCH|DELETE /v1/sessions/{id}; sent only here (docs/security.md)"},
            "pipeline": {"type": "string"}, "params": _PARAMS, "output": _OUTPUT,
        }, ("session_id", "session_secret", "pipeline", "params", "output")),
        "updated": _control("updated", "the full parameters after an update", {"params": _PARAMS}, ("params",)),
        "stats": _control("stats", "session and connection counters", {
            "session": {"type": "object", "properties": {
                "frames_in": {"type": "integer"}, "frames_out": {"type": "integer"},
                "frames_dropped": {"type": "integer", "description": "dropped_inbox + dropped_expired"},
                "dropped_inbox": {"type": "integer"}, "dropped_expired": {"type": "integer"},
                "deadline_misses": {"type": "integer"}, "latency_ms": _LATENCY, "params": _PARAMS,
            }, "required": ["frames_in", "frames_out", "frames_dropped", "latency_ms"]},
            "connection": {"type": "object", "properties": {
                name: {"type": "integer"} for name in ("messages_in", "messages_out", "bytes_in", "bytes_out",
                                                      "video_dropped_out", "audio_dropped_out")},
                "required": ["messages_in", "messages_out", "bytes_in", "bytes_out",
                             "video_dropped_out", "audio_dropped_out"]},
        }, ("session", "connection")),
        "recording": _control("recording", "the recording's state, answering `record`", {
            "recording": {"type": "boolean"}, "format": {"enum": ["mp4", "webm"]}, "frames": {"type": "integer"},
            "audio_samples": {"type": "integer"}, "dropped": {"type": "integer"}, "bytes": {"type": "integer"},
            "max_bytes": {"type": "integer"}, "reason": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]}, "file": {"type": "string"},
            "download": {"type": "string", "description": "GET this URL for the finished file"},
        }, ("recording", "frames", "bytes", "download")),
        "ended": _control("ended", "the session ended (units in flight are discarded); the server closes", {
            "reason": {"type": "string"}, "session_id": {"type": "string"},
            "stats": {"type": "object", "description": "the session's final stats (when a session ran)"},
        }, ("reason",)),
        "event": _control("event", "a pipeline's control event, in order (the voice pipeline: transcripts, "
                          "thinking, per-turn latency, barge-in; docs/voice.md); clients ignore unknown ones", {
            "event": {"type": "string"},
        }, ("event",)),
        "error": _control("error", "a typed error; after a fatal one the server closes", {
            "code": {"enum": sorted(ERROR_CODES)}, "message": {"type": "string"}, "fatal": {"type": "boolean"},
            "field": {"type": "string"}, "available": {"type": "array", "items": {"type": "string"}},
            "supported": {"type": "array", "items": {"type": "integer"}},
        }, ("code", "message", "fatal")),
    }
    _check_covers(messages, wp.SERVER_TYPES)
    return messages


def media_message() -> dict[str, Any]:
    kinds = {k.name.lower(): int(k) for k in wp.Kind}
    formats = {f.name.lower(): int(f) for f in wp.Format}
    return {
        "name": "media", "title": "media", "contentType": "application/octet-stream",
        "summary": f"binary: a {wp.HEADER_SIZE}-byte big-endian header (struct `{wp.HEADER.format}`) + payload",
        "payload": {"type": "string", "format": "binary", "maxLength": wp.MAX_MESSAGE_BYTES},
        "x-header": {
            "struct": wp.HEADER.format, "size": wp.HEADER_SIZE, "magic": wp.MAGIC.decode(),
            "version": wp.PROTOCOL_VERSION, "kinds": kinds, "formats": formats,
            "flags": {"ref_valid": wp.FLAG_REF},
            "fields": ["magic", "version", "kind", "format", "flags", "reserved", "seq", "ref", "pts_us",
                       "a (width | sample rate)", "b (height | channels)", "reserved", "payload_len"],
        },
    }


def asyncapi_document(server_version: str) -> dict[str, Any]:
    client = {**client_messages(), "media": media_message()}
    server = {**server_messages(), "media": media_message()}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:streamserve:ws",
        "info": {"title": "streamserve WebSocket API", "version": server_version,
                 "description": "docs/protocol.md in machine-readable form. Control messages are JSON text "
                                "frames; media messages are binary frames."},
        "servers": {"local": {"url": "localhost:8000", "protocol": "ws",
                              "security": [{"bearer": []}, {"tokenQuery": []}]}},
        "defaultContentType": "application/json",
        "channels": {
            "/v1/ws": {
                "bindings": {"ws": {"method": "GET", "query": {
                    "type": "object", "properties": {"token": {"type": "string"}}}, "bindingVersion": "0.1.0"}},
                "x-subprotocol": wp.SUBPROTOCOL,
                "x-timeouts-s": {"hello": HELLO_TIMEOUT_S, "start": START_TIMEOUT_S},
                "x-close-codes": {"normal": wp.CLOSE_NORMAL, "going_away": wp.CLOSE_GOING_AWAY,
                                  "protocol_error": wp.CLOSE_PROTOCOL_ERROR, "policy": wp.CLOSE_POLICY,
                                  "too_big": wp.CLOSE_TOO_BIG, "internal": wp.CLOSE_INTERNAL},
                "x-error-codes": {code: {"fatal": fatal, "close_code": close}
                                  for code, (fatal, close) in ERROR_CODES.items()},
                "publish": {"operationId": "clientSends", "summary": "what the client sends",
                            "message": {"oneOf": [{"$ref": f"#/components/messages/client_{n}"} for n in client]}},
                "subscribe": {"operationId": "serverSends", "summary": "what the server sends",
                              "message": {"oneOf": [{"$ref": f"#/components/messages/server_{n}"} for n in server]}},
            },
        },
        "components": {
            "messages": {**{f"client_{n}": m for n, m in client.items()},
                         **{f"server_{n}": m for n, m in server.items()}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization header"},
                "tokenQuery": {"type": "httpApiKey", "name": "token", "in": "query",
                               "description": "`?token=` (browsers), or `hello.token`"},
            },
        },
    }


def openapi_operation() -> dict[str, Any]:
    """`GET /v1/ws` in OpenAPI: the upgrade request; the messages are in `/asyncapi.json`."""
    return {
        "summary": "WebSocket streaming API (upgrade)", "tags": ["websocket"], "operationId": "websocket",
        "description": "Binary media frames and JSON control messages (docs/protocol.md). The messages "
                       "are described by the AsyncAPI document at `/asyncapi.json`.",
        "externalDocs": {"description": "AsyncAPI document", "url": "/asyncapi.json"},
        "security": [{"bearer": []}, {}],
        "parameters": [
            {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "bearer token for browsers (or the Authorization header, or hello.token)"},
            {"name": "Sec-WebSocket-Protocol", "in": "header", "required": False,
             "schema": {"type": "string", "enum": [wp.SUBPROTOCOL]}},
        ],
        "responses": {"101": {"description": f"switching protocols (subprotocol `{wp.SUBPROTOCOL}` when offered)"}},
        "x-asyncapi": "/asyncapi.json",
    }
