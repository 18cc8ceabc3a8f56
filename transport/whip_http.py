"""HTTP pieces WHIP and WHEP share: headers, bearer-token checks, typed error responses, SDP bodies
and trickle-ICE fragments (RFC 8840)."""

from __future__ import annotations

import dataclasses
import json
import time

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp
from fastapi import Request, Response

from streamserve.core.errors import BadRequest, StreamserveError
from streamserve.transport.auth import Unauthorized, bearer_token, token_ok
from streamserve.transport.peer import Peer
from streamserve.transport.sdp import MAX_SDP_BYTES

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
ACCEPT_PATCH = TRICKLE
ENDPOINT_METHODS = "POST, OPTIONS"  # /whip/{stream}, /whep/{stream}
RESOURCE_METHODS = "PATCH, DELETE, OPTIONS"  # what their Location names
ENDED_GRACE_S = 60.0  # DELETE on a resource that ended this recently (the client closed first): 200
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match, ETag",
    # Browsers hide every response header but a few from scripts unless listed here; WHIP/WHEP
    # clients read the resource URL, the ICE servers, the ICE session tag and whether trickle works.
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch, Accept-Post, Allow, "
                                     "Content-Type, WWW-Authenticate, Retry-After, Streamserve-Session-Secret",
    "Access-Control-Max-Age": "86400",
}


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


class RecentlyEnded:
    """Resources that ended without a DELETE (the client closed its peer first), kept `grace_s` so a
    late DELETE still answers 200. Bounded: entries past their grace, or beyond `limit`, are dropped."""

    def __init__(self, grace_s: float, limit: int = 10_000) -> None:
        self.grace_s, self.limit = grace_s, limit
        self._ended: dict[str, tuple[str, str, float]] = {}  # id -> (kind, stream, monotonic end)

    def add(self, resource: Resource) -> None:
        self._prune()
        self._ended[resource.id] = (resource.kind, resource.stream, time.monotonic())
        while len(self._ended) > self.limit:
            self._ended.pop(next(iter(self._ended)))

    def recent(self, kind: str, stream: str, rid: str) -> bool:
        self._prune()
        entry = self._ended.get(rid)
        return entry is not None and entry[:2] == (kind, stream)

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.grace_s
        while self._ended:
            rid, (_, _, ended) = next(iter(self._ended.items()))
            if ended >= cutoff:
                break
            del self._ended[rid]


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


def ice_link_headers(urls: tuple[str, ...], username: str | None = None,
                     credential: str | None = None) -> list[str]:
    """`Link: <stun:host:port>; rel="ice-server"` values (RFC 9725 section 4.6), one per server; a
    turn:/turns: server carries the `username` and `credential` attributes when they are configured."""
    links = []
    for url in urls:
        link = f'<{url}>; rel="ice-server"'
        if url.startswith(("turn:", "turns:")) and username is not None and credential is not None:
            link += f'; username="{username}"; credential="{credential}"; credential-type="password"'
        links.append(link)
    return links


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
