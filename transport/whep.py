"""WHEP egress: viewers of a live stream's processed output.

The relay is the session's own fan-out: every viewer's peer connection subscribes to the stream's
session (`handle.subscribe(kind)`), and each subscription is its own bounded queue where the freshest
output wins, so one slow viewer drops frames for itself and never holds back the stream or the other
viewers. A viewer never owns the session: ending a viewer leaves the stream running, and the stream
ending ends all of its viewers.
"""

from __future__ import annotations

import logging

from aiortc import RTCSessionDescription

from streamserve.core.config import ServerConfig
from streamserve.core.errors import BadRequest
from streamserve.core.ports import SessionFactory
from streamserve.transport.peer import Peer, PeerOptions
from streamserve.transport.sdp import Offer
from streamserve.transport.whip_http import NotFound, Resource, TooManyViewers

log = logging.getLogger(__name__)

MAX_VIEWERS_PER_STREAM = 32


class WhepEndpoint:
    """Answers recvonly offers for a stream with a peer that plays the stream's output."""

    def __init__(self, sessions: SessionFactory, config: ServerConfig, resources: dict[str, Resource],
                 *, max_viewers: int = MAX_VIEWERS_PER_STREAM) -> None:
        self.sessions = sessions
        self.config = config
        self.resources = resources  # shared with WhipTransport: counts this stream's viewers
        self.max_viewers = max_viewers

    def viewers(self, stream: str) -> int:
        return sum(1 for r in self.resources.values() if r.kind == "whep" and r.stream == stream)

    async def accept(self, stream: str, offer: Offer) -> tuple[Peer, RTCSessionDescription]:
        """A viewer peer for `stream` and its SDP answer. Raises NotFound, TooManyViewers, BadRequest."""
        handle = self.sessions.by_stream(stream)
        if handle is None or handle.closed:
            raise NotFound(f"stream {stream!r} is not live (start it with WHIP first)")
        if not any(m.client_receives for m in offer.media if m.kind in ("audio", "video")):
            raise BadRequest("unsupported SDP offer: a WHEP offer must receive audio or video (recvonly)")
        if self.viewers(stream) >= self.max_viewers:
            raise TooManyViewers(f"stream {stream!r} has its limit of {self.max_viewers} viewers")
        options = PeerOptions.from_config(self.config, receive=False, owns_session=False)
        peer = Peer(handle, self.sessions, options)
        try:
            answer = await peer.accept(offer)
        except BaseException:
            await peer.close("offer rejected")
            raise
        log.info("WHEP %s: viewer %d of session %s", stream, self.viewers(stream) + 1, handle.id)
        return peer, answer
