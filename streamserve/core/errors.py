"""Errors that cross subsystem boundaries. Each maps to one HTTP status and one WebSocket error code."""

from __future__ import annotations

import math


class StreamserveError(Exception):
    """Base class. `status` is the HTTP status, `code` the WebSocket/JSON error code."""

    status = 500
    code = "internal"

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": str(self)}

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for the error response (e.g. Retry-After)."""
        return {}


class UnknownPipeline(StreamserveError, ValueError):
    status = 400
    code = "unknown_pipeline"

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(f"unknown pipeline {name!r}; available: {', '.join(self.available)}")

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "available": self.available}


class InvalidParams(StreamserveError, ValueError):
    """A parameter failed validation. `field` names it (dotted for nested values)."""

    status = 422
    code = "invalid_params"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "field": self.field}


class BadRequest(StreamserveError, ValueError):
    """Malformed input at the protocol level (SDP, headers, message framing)."""

    status = 400
    code = "bad_request"


class SessionNotFound(StreamserveError, KeyError):
    status = 404
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"no session {session_id!r}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return f"no session {self.session_id!r}"


class SessionLimitReached(StreamserveError):
    status = 503
    code = "session_limit"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the server is at its limit of {limit} concurrent sessions")


class OverCapacity(StreamserveError):
    """Admission refused a session: serving it would make sessions miss their deadlines.
    `limit` names the bound (utilization, latency, voice_slack); `utilization` is the prediction."""

    status = 503
    code = "over_capacity"

    def __init__(self, reason: str, limit: str, retry_after_s: float, utilization: float) -> None:
        self.reason = reason
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.utilization = utilization
        super().__init__(f"over capacity: {reason}")

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "limit": self.limit, "reason": self.reason,
                "retry_after_s": self.retry_after_s, "predicted_utilization": round(self.utilization, 4)}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class SessionClosed(StreamserveError):
    status = 410
    code = "session_closed"


class StreamBusy(StreamserveError):
    """A named stream (WHIP ingest) is already live."""

    status = 409
    code = "stream_busy"

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} is already live")
