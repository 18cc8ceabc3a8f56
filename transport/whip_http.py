"""HTTP pieces WHIP and WHEP share: headers, bearer-token checks, typed error responses, SDP bodies
and trickle-ICE fragments (RFC 8840)."""

from __future__ import annotations

import dataclasses
import json

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp
from fastapi import Request, Response

from streamserve.core.errors import BadRequest, StreamserveError
from streamserve.transport.peer import Peer
from streamserve.transport.sdp import MAX_SDP_BYTES
from streamserve.transport.ws import bearer_token, token_ok

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
ACCEPT_PATCH = TRICKLE
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch, Accept-Post, WWW-Authenticate",
}


class Unauthorized(StreamserveError):
    status = 401
    code = "unauthorized"


class NotFound(StreamserveError):
    status = 404
    code = "not_found"


class UnsupportedMediaType(StreamserveError):
    status = 415
    code = "unsupported_media_type"


class PreconditionFailed(StreamserveError):
    status = 412
    code = "precondition_failed"


class IceRestartUnsupported(StreamserveError):
    status = 422
    code = "ice_restart_unsupported"


class PayloadTooLarge(StreamserveError):
    status = 413
    code = "too_large"


class TooManyViewers(StreamserveError):
    status = 503
    code = "viewer_limit"


@dataclasses.dataclass
class Resource:
    """A WHIP session or a WHEP viewer: what its Location URL names."""

    id: str
    kind: str  # "whip" | "whep"
    stream: str
    peer: Peer
    etag: str


def check_token(request: Request, tokens: tuple[str, ...]) -> None:
    """Raise Unauthorized unless `Authorization: Bearer <one of tokens>` (no tokens: open server)."""
    if tokens and not token_ok(bearer_token(request.headers.get("authorization")), tokens):
        given = "a wrong" if request.headers.get("authorization") else "no"
        raise Unauthorized(f"{given} bearer token: send `Authorization: Bearer <token>`")


def error_response(exc: StreamserveError, extra: dict[str, str] | None = None) -> Response:
    """The error as JSON (`{"error": code, "message": ...}`) with the right status and headers."""
    headers = {**CORS_HEADERS, **exc.headers(), **(extra or {})}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="streamserve"'
    return Response(json.dumps(exc.to_dict()), status_code=exc.status, media_type="application/json",
                    headers=headers)


async def read_sdp(request: Request) -> str:
    """The request's `application/sdp` body. 415 for another type, 413 if huge, 400 if not UTF-8."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != SDP:
        raise UnsupportedMediaType(f"the offer must be sent as {SDP}, got {ctype or 'no content type'}")
    body = await request.body()
    if len(body) > MAX_SDP_BYTES:
        raise PayloadTooLarge(f"SDP offer of {len(body)} bytes exceeds {MAX_SDP_BYTES}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"malformed SDP: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def ice_link_headers(urls: tuple[str, ...]) -> list[str]:
    """`Link: <stun:host:port>; rel="ice-server"` values (RFC 9725 section 4.6), one per server."""
    return [f'<{url}>; rel="ice-server"' for url in urls]


@dataclasses.dataclass
class SdpFrag:
    """A parsed trickle-ICE SDP fragment."""

    ufrag: str | None
    pwd: str | None
    candidates: list[RTCIceCandidate]
    end: bool


def parse_sdpfrag(body: str) -> SdpFrag:
    """Parse an `application/trickle-ice-sdpfrag` body. Raises BadRequest for a bad candidate line."""
    ufrag = pwd = None
    mid: str | None = None
    index = -1
    candidates: list[RTCIceCandidate] = []
    end = False
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line[12:]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[10:]
        elif line == "a=end-of-candidates":
            end = True
        elif line.startswith("a=candidate:"):
            try:
                candidate = candidate_from_sdp(line[12:])
            except (AssertionError, ValueError, IndexError) as exc:
                raise BadRequest(f"malformed candidate line {line[:80]!r}: {exc or type(exc).__name__}") from None
            candidate.sdpMid = mid if mid is not None else ("0" if index <= 0 else None)
            candidate.sdpMLineIndex = max(index, 0)
            candidates.append(candidate)
    return SdpFrag(ufrag, pwd, candidates, end)
