"""Validating SDP offers before any session or peer connection exists.

aiortc's parser accepts almost anything (`"hello"` parses as an offer with no media) and rejects the
rest with a bare AssertionError, so the checks aiortc would make later (ICE credentials, RTCP mux,
a codec in common) run here first, each with a reason a client can act on. Everything raises
`BadRequest` (HTTP 400), or `OfferTooLarge` (413) past the size limit.

Before any of that, `offer_limits.check_offer_text` bounds the offer's size and complexity on the raw
text, and a media section without a direction gets RFC 4566's default written in. `read_offer` is
the entry point for request handlers: the limits are checked at once and the parse runs in a worker
thread, so the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

from aiortc.codecs import CODECS
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.sdp import SessionDescription

from streamserve.core.errors import BadRequest
from streamserve.transport.offer_limits import DEFAULT_LIMITS, OfferLimits, check_offer_text, with_directions

_LINE = re.compile(r"^[a-z]=")
MAX_SDP_BYTES = DEFAULT_LIMITS.max_bytes


@dataclasses.dataclass(frozen=True)
class MediaSection:
    """One m= section of an offer, as the client describes it."""

    index: int
    kind: str  # audio | video | application
    direction: str  # the client's: sendrecv | sendonly | recvonly | inactive
    codecs: tuple[str, ...]  # mime types we have in common with the client, in its order

    @property
    def client_sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def client_receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")


@dataclasses.dataclass(frozen=True)
class Offer:
    """A validated SDP offer: the text and a summary of its media sections."""

    sdp: str
    media: tuple[MediaSection, ...]

    def first(self, kind: str) -> MediaSection | None:
        return next((m for m in self.media if m.kind == kind), None)


async def read_offer(sdp: object, limits: OfferLimits = DEFAULT_LIMITS) -> Offer:
    """`parse_offer` for request handlers: limits checked here, the parse in a worker thread."""
    if isinstance(sdp, str):
        check_offer_text(sdp, limits)
    return await asyncio.to_thread(parse_offer, sdp, limits)


def parse_offer(sdp: object, limits: OfferLimits = DEFAULT_LIMITS) -> Offer:
    """Parse and check an SDP offer. Raises BadRequest (or OfferTooLarge) naming what is wrong."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("malformed SDP: empty")
    check_offer_text(sdp, limits)
    sdp = with_directions(sdp)
    lines = [line for line in sdp.splitlines() if line.strip()]
    if not lines[0].startswith("v="):
        raise BadRequest(f"malformed SDP: must start with a v= line, got {lines[0][:40]!r}")
    for number, line in enumerate(lines, 1):
        if not _LINE.match(line):
            raise BadRequest(f"malformed SDP: line {number} is not <letter>=<value>: {line[:60]!r}")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser asserts, indexes and int()s its way through
        raise BadRequest(f"malformed SDP: {exc or 'cannot parse'} ({type(exc).__name__})") from exc
    if not description.media:
        raise BadRequest("malformed SDP: no media sections (m= lines)")

    sections = []
    mids: set[str] = set()
    for index, media in enumerate(description.media):
        where = f"m-line {index} ({media.kind})"
        mid = media.rtp.muxId
        if not mid:
            raise BadRequest(f"malformed SDP: {where}: no a=mid (every m-line needs one, RFC 8843)")
        if mid in mids:
            raise BadRequest(f"malformed SDP: {where}: a=mid:{mid} is used by another m-line")
        mids.add(mid)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise BadRequest(f"malformed SDP: {where}: ICE username fragment or password is missing")
        if not media.dtls or not media.dtls.fingerprints:
            raise BadRequest(f"malformed SDP: {where}: no DTLS fingerprint (a=fingerprint)")
        codecs: tuple[str, ...] = ()
        if media.kind in ("audio", "video"):
            if not media.rtcp_mux:
                raise BadRequest(f"malformed SDP: {where}: RTCP mux is not enabled (a=rtcp-mux)")
            common = find_common_codecs(CODECS[media.kind], media.rtp.codecs)
            codecs = tuple(c.mimeType for c in common if not c.mimeType.lower().endswith("/rtx"))
            if not codecs:
                offered = sorted({c.mimeType for c in media.rtp.codecs}) or ["none"]
                ours = sorted({c.mimeType for c in CODECS[media.kind] if not c.mimeType.endswith("/rtx")})
                raise BadRequest(f"unsupported SDP offer: {where}: no codec in common; offered "
                                 f"{', '.join(offered)}, supported {', '.join(ours)}")
        elif media.kind != "application":
            raise BadRequest(f"unsupported SDP offer: {where}: unknown media kind")
        sections.append(MediaSection(index, media.kind, media.direction or "sendrecv", codecs))
    for group in description.group:
        unknown = [item for item in group.items if item not in mids]
        if unknown:
            raise BadRequest(f"malformed SDP: a=group:{group.semantic} names mid {unknown[0]!r}, "
                             f"which no m-line has (mids: {', '.join(sorted(mids))})")
    return Offer(sdp=sdp, media=tuple(sections))
