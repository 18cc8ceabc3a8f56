"""WHIP ingest (RFC 9725), WHEP egress and the OBS viewer page, on top of `streamserve.transport.peer`.

Routes (see docs/obs.md for the OBS side):

- `POST /whip/{stream}` (`application/sdp`): a new ingest session named `stream`, its pipeline and
  parameters from the query string; `201` + `Location: /whip/{stream}/{resource}` + SDP answer.
  `PATCH` on the resource takes trickled candidates (`application/trickle-ice-sdpfrag`, `204`);
  `DELETE` ends the session (`200`).
- `POST /whep/{stream}` (recvonly offer): one more viewer of the stream's processed output. Each
  viewer has its own bounded subscription of the session's output (the fan-out relay); `DELETE` on
  its resource ends that viewer only.
- `GET /view/{stream}`: `web_demo/view.html`, a bare WHEP player for OBS's Browser Source.
- `GET|PATCH /v1/streams/{stream}`: the live stream's stats; live parameter changes by stream name
  (what the OBS script sends, since OBS knows the stream name, not the session id); `GET
  /v1/streams` lists the live streams (the demo page links to it and to `/view?stream=NAME`).

Who may do what (transport.auth, docs/security.md): WHIP POST needs an admin (ingest) token when
tokens are configured; the 201 carries the session's secret (`Streamserve-Session-Secret`), and the
resource's PATCH/DELETE take that secret or an admin token (with no tokens configured, the
unguessable Location URL itself is the credential). The stream PATCH takes the stream session's
secret or an admin token. Egress (WHEP, the view page, the stream stats) is open unless viewer tokens
are configured; OBS's Browser Source cannot send a header, so `/view/NAME?token=...` carries one.
Stream names are `[A-Za-z0-9._-]{1,64}` (400 otherwise), so no name can forge a log line.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from streamserve.core.config import ServerConfig
from streamserve.core.errors import BadRequest, InvalidParams, StreamserveError
from streamserve.core.paths import web_demo_dir
from streamserve.core.ports import SessionFactory, SessionHandle
from streamserve.transport import auth, jsonlimits
from streamserve.transport.peer import Peer, PeerOptions
from streamserve.transport.sdp import read_offer
from streamserve.transport.whep import WhepEndpoint
from streamserve.transport.whip_http import (
    CORS_HEADERS,
    ENDED_GRACE_S,
    ENDPOINT_METHODS,
    RESOURCE_METHODS,
    SDP,
    TRICKLE,
    IceRestartUnsupported,
    NotFound,
    PreconditionFailed,
    RecentlyEnded,
    Resource,
    UnsupportedMediaType,
    check_token,
    error_response,
    ice_link_headers,
    parse_sdpfrag,
    read_sdp,
)

log = logging.getLogger(__name__)

RESERVED_QUERY = frozenset({"pipeline", "token"})
STREAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SECRET_HEADER = "Streamserve-Session-Secret"


def check_stream_name(stream: str) -> None:
    """Raise BadRequest for a stream name outside `[A-Za-z0-9._-]{1,64}`."""
    if not STREAM_NAME.fullmatch(stream):
        raise BadRequest(f"stream name {stream[:80]!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")


def params_from_query(query: Mapping[str, str], max_depth: int = 16) -> tuple[str | None, dict[str, Any]]:
    """`?pipeline=video&style=sketch&steps=2` -> ("video", {"style": "sketch", "steps": 2}).

    Values are JSON when they parse as JSON (numbers, true/false, lists), strings otherwise; `open`
    retries a field as the raw string when the pipeline wanted a string (`prompt=1984`).
    """
    pipeline = query.get("pipeline") or None
    params: dict[str, Any] = {}
    for name, raw in query.items():
        if name in RESERVED_QUERY:
            continue
        if jsonlimits.nesting_depth(raw) > max_depth:
            raise BadRequest(f"query parameter {name!r} is nested more than {max_depth} levels deep")
        try:
            params[name] = json.loads(raw)
        except (ValueError, RecursionError):
            params[name] = raw
    return pipeline, params


class WhipTransport:
    """WHIP + WHEP + the viewer page + stream control. Built by the server like every transport."""

    def __init__(self, sessions: SessionFactory, config: ServerConfig) -> None:
        self.sessions = sessions
        self.config = config
        self.resources: dict[str, Resource] = {}
        self.ended = RecentlyEnded(ENDED_GRACE_S)  # resources whose peer closed before their DELETE
        self.whep = WhepEndpoint(sessions, config, self.resources)
        r = self.router = APIRouter(tags=["whip/whep"])
        r.add_api_route("/whip/{stream}", self.whip_post, methods=["POST"], status_code=201,
                        summary="WHIP ingest: SDP offer in, SDP answer out (RFC 9725)")
        r.add_api_route("/whip/{stream}", self.options, methods=["OPTIONS"], include_in_schema=False)
        r.add_api_route("/whip/{stream}/{resource}", self.resource_delete, methods=["DELETE"],
                        summary="End a WHIP session")
        r.add_api_route("/whip/{stream}/{resource}", self.resource_patch, methods=["PATCH"],
                        summary="Trickle ICE candidates (application/trickle-ice-sdpfrag)")
        r.add_api_route("/whip/{stream}/{resource}", self.options, methods=["OPTIONS"], include_in_schema=False)
        r.add_api_route("/whip/{stream}/{resource}", self.not_allowed, methods=["GET", "POST", "PUT"],
                        include_in_schema=False)
        r.add_api_route("/whep/{stream}", self.whep_post, methods=["POST"], status_code=201,
                        summary="WHEP egress: one more viewer of the stream's processed output")
        r.add_api_route("/whep/{stream}", self.options, methods=["OPTIONS"], include_in_schema=False)
        r.add_api_route("/whep/{stream}/{resource}", self.resource_delete, methods=["DELETE"],
                        summary="End one WHEP viewer")
        r.add_api_route("/whep/{stream}/{resource}", self.resource_patch, methods=["PATCH"],
                        summary="Trickle ICE candidates for a viewer")
        r.add_api_route("/whep/{stream}/{resource}", self.options, methods=["OPTIONS"], include_in_schema=False)
        r.add_api_route("/view/{stream}", self.view, methods=["GET"], summary="Bare player page for OBS")
        r.add_api_route("/view", self.view_form, methods=["GET"], include_in_schema=False)
        r.add_api_route("/v1/streams", self.stream_list, methods=["GET"], tags=["sessions"],
                        summary="The live WHIP streams, with their viewer page and viewer count")
        r.add_api_route("/v1/streams/{stream}", self.stream_get, methods=["GET"], tags=["sessions"],
                        summary="Stats of a live stream (WHIP session) by name")
        r.add_api_route("/v1/streams/{stream}", self.stream_patch, methods=["PATCH"], tags=["sessions"],
                        summary="Change a live stream's parameters by name")

    async def aclose(self) -> None:
        for resource in list(self.resources.values()):
            await resource.peer.close("server shutting down")
        self.resources.clear()

    # --- WHIP -----------------------------------------------------------------------------------
    async def whip_post(self, stream: str, request: Request) -> Response:
        try:
            check_stream_name(stream)
            check_token(request, self.config.tokens)
            sdp = await read_sdp(request)
            offer = await read_offer(sdp)
            if not any(m.client_sends for m in offer.media if m.kind in ("audio", "video")):
                raise BadRequest("unsupported SDP offer: a WHIP offer must send audio or video (sendonly)")
            pipeline, params = params_from_query(request.query_params, self.config.limits.max_json_depth)
            handle = await self._open(pipeline, params, request.query_params, stream)
        except StreamserveError as exc:
            return error_response(exc)
        peer = Peer(handle, self.sessions, PeerOptions.from_config(self.config, send=False))
        try:
            answer = await peer.accept(offer)
        except StreamserveError as exc:
            await peer.close(f"offer rejected: {exc}")
            return error_response(exc)
        except Exception as exc:
            log.exception("WHIP %s: answering the offer failed", stream)
            await peer.close(f"offer failed: {exc}")
            return error_response(StreamserveError(f"could not answer the offer: {type(exc).__name__}"))
        resource = self._register("whip", stream, peer)
        log.info("WHIP %s: session %s (%s) from %s", stream, handle.id, handle.pipeline,
                 request.client.host if request.client else "?")
        response = self.created(resource, answer.sdp)
        response.headers[SECRET_HEADER] = handle.secret
        return response

    # --- WHEP -----------------------------------------------------------------------------------
    async def whep_post(self, stream: str, request: Request) -> Response:
        try:
            self._check_viewer(request, stream)
            offer = await read_offer(await read_sdp(request))
            peer, answer = await self.whep.accept(stream, offer)
        except StreamserveError as exc:
            return error_response(exc)
        return self.created(self._register("whep", stream, peer), answer.sdp)

    async def _open(self, pipeline: str | None, params: dict[str, Any], query: Mapping[str, str],
                    stream: str) -> Any:
        """Open the stream's session; a field the pipeline wants as a string is retried as one."""
        retry = {name for name, value in params.items() if not isinstance(value, str)}
        while True:
            try:
                return await self.sessions.open(pipeline, params, source="whip", stream=stream)
            except InvalidParams as exc:
                name = exc.field.split(".")[0].split("[")[0]
                if name not in retry:
                    raise
                retry.discard(name)
                params = {**params, name: query[name]}

    def _register(self, kind: str, stream: str, peer: Peer) -> Resource:
        rid = secrets.token_urlsafe(12)
        resource = Resource(rid, kind, stream, peer, etag=f'"{secrets.token_hex(8)}"')
        self.resources[rid] = resource

        def closed(_peer: Peer) -> None:
            if self.resources.pop(rid, None) is not None:
                self.ended.add(resource)

        peer.on_closed(closed)
        return resource

    def created(self, resource: Resource, sdp: str) -> Response:
        location = f"/{resource.kind}/{urllib.parse.quote(resource.stream, safe='')}/{resource.id}"
        headers = {**CORS_HEADERS, "Location": location, "ETag": resource.etag, "Accept-Patch": TRICKLE}
        response = Response(sdp, status_code=201, media_type=SDP, headers=headers)
        self._add_links(response)
        return response

    def _add_links(self, response: Response) -> None:
        for link in ice_link_headers(self.config.ice_servers, self.config.turn_username,
                                     self.config.turn_credential):
            response.headers.append("Link", link)

    # --- resources (WHIP sessions and WHEP viewers) ---------------------------------------------
    def _find(self, kind: str, stream: str, rid: str) -> Resource:
        resource = self.resources.get(rid)
        if resource is None or resource.kind != kind or resource.stream != stream:
            raise NotFound(f"no {kind.upper()} resource {rid!r} for stream {stream!r}")
        return resource

    def _check_resource_owner(self, found: Resource, request: Request) -> None:
        """A WHIP resource on a server with tokens takes its session's secret or an admin token; with
        none configured (and for WHEP viewers) the unguessable resource URL is the credential."""
        if found.kind == "whip" and self.config.tokens:
            auth.require_owner(auth.request_token(request.headers), found.peer.handle, self.config)

    async def resource_delete(self, stream: str, resource: str, request: Request) -> Response:
        kind = request.url.path.split("/")[1]
        try:
            if resource not in self.resources and self.ended.recent(kind, stream, resource):
                return Response(status_code=200, headers=CORS_HEADERS)  # the client closed first
            found = self._find(kind, stream, resource)
            self._check_resource_owner(found, request)
        except StreamserveError as exc:
            return error_response(exc)
        self.resources.pop(found.id, None)
        await found.peer.close("ended by DELETE")
        return Response(status_code=200, headers=CORS_HEADERS)

    async def resource_patch(self, stream: str, resource: str, request: Request) -> Response:
        """Trickle ICE (RFC 8840 fragments): 204. ICE restarts are not supported: 422 (RFC 9725 4.3.1)."""
        kind = request.url.path.split("/")[1]
        try:
            found = self._find(kind, stream, resource)
            self._check_resource_owner(found, request)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != TRICKLE:
                return error_response(UnsupportedMediaType(f"PATCH takes {TRICKLE}, got {ctype or 'no content type'}"),
                                      extra={"Accept-Patch": TRICKLE})
            if_match = request.headers.get("if-match")
            if if_match is not None and if_match.strip() not in ("*", found.etag):
                return error_response(PreconditionFailed(f"If-Match {if_match} does not match the ETag "
                                                    f"{found.etag} of this ICE session"))
            body = (await request.body()).decode("utf-8", "replace")
            frag = parse_sdpfrag(body)
            remote = found.peer.pc.remoteDescription
            if frag.ufrag is not None and remote is not None and f"a=ice-ufrag:{frag.ufrag}" not in remote.sdp:
                return error_response(IceRestartUnsupported("ICE restarts are not supported; start a new session"))
            for candidate in frag.candidates:
                await found.peer.add_remote_candidate(candidate)  # capped and rate-limited
            if frag.end:
                await found.peer.pc.addIceCandidate(None)
        except StreamserveError as exc:
            return error_response(exc)
        return Response(status_code=204, headers={**CORS_HEADERS, "ETag": found.etag})

    async def options(self, request: Request) -> Response:
        """CORS preflight and discovery: `Allow`, and `Accept-Post` + the ICE servers' `Link` headers
        on the endpoints (RFC 9725 4.6), `Accept-Patch` on resources."""
        if request.url.path.count("/") == 2:
            response = Response(status_code=204, headers={**CORS_HEADERS, "Allow": ENDPOINT_METHODS,
                                                          "Accept-Post": SDP})
            self._add_links(response)
            return response
        return Response(status_code=204, headers={**CORS_HEADERS, "Allow": RESOURCE_METHODS, "Accept-Patch": TRICKLE})

    def _check_viewer(self, request: Request, stream: str | None = None) -> None:
        """A valid stream name (400) and, with viewer tokens configured, one of them (401)."""
        if stream is not None:
            check_stream_name(stream)
        auth.require_view(auth.request_token(request.headers, request.query_params), self.config)

    async def not_allowed(self) -> Response:
        return Response(status_code=405, headers={**CORS_HEADERS, "Allow": RESOURCE_METHODS})

    # --- viewer page and stream control ---------------------------------------------------------
    async def view(self, stream: str, request: Request) -> Response:
        try:
            self._check_viewer(request, stream)
        except StreamserveError as exc:
            return error_response(exc)
        return FileResponse(web_demo_dir() / "view.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    async def view_form(self, stream: str = "") -> Response:
        """`/view?stream=NAME` (a plain HTML form's target) -> `/view/NAME`."""
        if not stream.strip():
            return error_response(BadRequest("name the stream: /view/{stream} or /view?stream=NAME"))
        return RedirectResponse(f"/view/{urllib.parse.quote(stream.strip(), safe='')}", status_code=303)

    async def stream_list(self, request: Request) -> Response:
        try:
            self._check_viewer(request)
        except StreamserveError as exc:
            return error_response(exc)
        streams = []
        for resource in list(self.resources.values()):
            if resource.kind != "whip" or resource.peer.handle.closed:
                continue
            name = resource.stream
            streams.append({"stream": name, "session_id": resource.peer.handle.id,
                            "pipeline": resource.peer.handle.pipeline, "viewers": self.whep.viewers(name),
                            "view": f"/view/{urllib.parse.quote(name, safe='')}"})
        return JSONResponse(sorted(streams, key=lambda s: s["stream"]), headers=CORS_HEADERS)

    async def stream_get(self, stream: str, request: Request) -> Response:
        try:
            self._check_viewer(request, stream)
        except StreamserveError as exc:
            return error_response(exc)
        handle = self.sessions.by_stream(stream)
        if handle is None:
            return error_response(NotFound(f"stream {stream!r} is not live"))
        return JSONResponse({**handle.stats(), "viewers": self.whep.viewers(stream)}, headers=CORS_HEADERS)

    async def stream_patch(self, stream: str, request: Request) -> Response:
        """Body: a JSON object of parameters to change, e.g. `{"prompt": "a watercolor fox"}`."""
        try:
            check_stream_name(stream)
            handle: SessionHandle | None = self.sessions.by_stream(stream)
            if handle is None:
                raise NotFound(f"stream {stream!r} is not live")
            auth.require_owner(auth.request_token(request.headers), handle, self.config)
            body = jsonlimits.loads_object(await request.body(), self.config.limits.max_json_depth)
            params = await handle.update(body)
        except StreamserveError as exc:
            return error_response(exc)
        return JSONResponse({"stream": stream, "session_id": handle.id, "params": params}, headers=CORS_HEADERS)
