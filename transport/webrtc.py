"""`POST /v1/webrtc/offer`: the browser's way in. One JSON offer in, one JSON answer out (no trickle ICE).

Request ``{"sdp": ..., "type": "offer", "pipeline": "video", "params": {...}}`` (pipeline and params
optional); answer ``{"sdp": ..., "type": "answer", "session_id": ..., "session_secret": ...}`` (the secret guards
the session's GET|PATCH|DELETE; docs/security.md). Errors are JSON
``{"error": code, "message": ...}``: a malformed SDP is 400 with the parser's reason, an offer past
a complexity limit 400 (413 past the size limit) naming it (see transport.offer_limits), an unknown
pipeline 400 listing the available ones, invalid params 422 naming the field, a full server 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from streamserve.core.config import ServerConfig
from streamserve.core.errors import BadRequest, StreamserveError
from streamserve.core.ports import SessionFactory
from streamserve.transport.auth import request_token, require_open
from streamserve.transport.peer import Peer, PeerOptions
from streamserve.transport.sdp import read_offer

log = logging.getLogger(__name__)


class OfferRequest(BaseModel):
    sdp: str = Field(description="The SDP offer, with its ICE candidates gathered (no trickle).")
    type: Literal["offer"] = "offer"
    pipeline: str | None = Field(None, description="A name from GET /v1/pipelines; default: the server's.")
    params: dict[str, Any] | None = Field(None, description="Initial pipeline parameters.")


class OfferAnswer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    session_id: str = Field(description="For GET|PATCH|DELETE /v1/sessions/{id}.")
    session_secret: str = Field(description="This session's own credential: send it as `Authorization: "
                                "Bearer <secret>` to GET|PATCH|DELETE /v1/sessions/{id}. Returned only here.")


OFFER_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, OPTIONS",
              "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "86400"}
_ERROR = {"content": {"application/json": {"example": {"error": "bad_request", "message": "..."}}}}


class WebRTCTransport:
    """Answers WebRTC offers with a `Peer` bound to a new session; `aclose()` ends every peer."""

    def __init__(self, sessions: SessionFactory, config: ServerConfig,
                 peer_options: PeerOptions | None = None) -> None:
        self._sessions = sessions
        self._config = config
        self._options = peer_options or PeerOptions.from_config(config)
        self.peers: dict[str, Peer] = {}
        self.router = APIRouter(tags=["webrtc"])
        self.router.add_api_route(
            "/v1/webrtc/offer", self.offer, methods=["POST"], response_model=OfferAnswer,
            summary="Start a session from a WebRTC offer",
            responses={400: _ERROR, 401: _ERROR, 413: _ERROR, 422: _ERROR, 503: _ERROR},
        )
        self.router.add_api_route(
            "/v1/webrtc/offer", self.preflight, methods=["OPTIONS"], status_code=204,
            summary="CORS preflight: a demo page served by another cluster node re-offers here after a drain",
            responses={204: {"description": "allowed", "headers": {
                k: {"schema": {"type": "string"}} for k in OFFER_CORS}}},
        )

    @staticmethod
    async def preflight() -> Response:
        """CORS preflight: a page from another node of a cluster re-negotiates here after a drain
        (the ``migrate`` event); the credential is a bearer token, never a cookie."""
        return Response(status_code=204, headers=OFFER_CORS)

    async def offer(self, body: OfferRequest, request: Request, response: Response) -> OfferAnswer | JSONResponse:
        """Open a session running `pipeline` and answer the offer with its output. With admin tokens
        configured the request needs one (`Authorization: Bearer <token>`)."""
        response.headers["Access-Control-Allow-Origin"] = "*"
        try:
            require_open(request_token(request.headers), self._config)
            return await self._answer(body)
        except StreamserveError as exc:
            log.info("webrtc offer rejected: %s", exc)
            return JSONResponse(exc.to_dict(), status_code=exc.status,
                                headers={**exc.headers(), "Access-Control-Allow-Origin": "*"})

    async def _answer(self, request: OfferRequest) -> OfferAnswer:
        offer = await read_offer(request.sdp)
        video, audio = offer.first("video"), offer.first("audio")
        if not any(s is not None and s.client_sends for s in (video, audio)):  # audio alone: voice
            raise BadRequest("the offer must send a video or audio track (m=video/m=audio, sendrecv or sendonly)")
        handle = await self._sessions.open(request.pipeline, request.params, source="webrtc")
        peer = Peer(handle, self._sessions, self._options)
        self.peers[peer.id] = peer
        peer.on_closed(lambda p: self.peers.pop(p.id, None))
        try:
            answer = await peer.accept(offer)
        except BaseException:
            await peer.close("offer rejected")
            raise
        log.info("session %s: webrtc peer answered (pipeline %s)", handle.id, handle.pipeline)
        return OfferAnswer(sdp=answer.sdp, session_id=handle.id, session_secret=handle.secret)

    async def aclose(self) -> None:
        """Close every peer (and its session); the server calls this on shutdown."""
        peers = list(self.peers.values())
        results = await asyncio.gather(*(p.close("server shutting down") for p in peers),
                                       return_exceptions=True)
        for peer, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("closing peer %s failed: %r", peer.id, result)
