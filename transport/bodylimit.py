"""ASGI middleware: request bodies are limited while they stream in, never buffered first.

A declared `Content-Length` over the limit is answered 413 before a byte of the body is read; a
chunked body is counted as it arrives and cut off with a 413 the moment it passes the limit, whatever
the route was doing with it. Trickle-ICE PATCHes (`/whip|whep/{stream}/{resource}`) get the smaller
`max_patch_bytes`.
"""

from __future__ import annotations

import json
from typing import Any

from streamserve.core.limits import LimitsConfig

Scope = dict[str, Any]
Message = dict[str, Any]


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: Any, limits: LimitsConfig) -> None:
        self.app = app
        self.limits = limits

    def limit_for(self, scope: Scope) -> int:
        path: str = scope.get("path", "")
        if scope.get("method") == "PATCH" and path.startswith(("/whip/", "/whep/")):
            return self.limits.max_patch_bytes
        return self.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reply(send, 413, f"request body of {declared} bytes exceeds the limit of {limit}")
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive() -> Message:
            message: Message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"]:  # whatever the route answered, the answer is 413
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if state["exceeded"] and not state["started"]:
            await _reply(send, 413, f"request body exceeds the limit of {limit} bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser has already refused a malformed one
    return None


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": "too_large", "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), (b"access-control-allow-origin", b"*")]})
    await send({"type": "http.response.body", "body": body})
