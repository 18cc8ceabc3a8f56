"""The cluster's HTTP front: it places sessions and redirects; media never passes through it.

- ``POST /whip/{stream}`` -> ``307 Temporary Redirect`` to the same path (and query) on the node with
  the most headroom (RFC 9725 lets a WHIP client follow it; method and body are kept);
- ``POST /whep/{stream}`` -> ``307`` to the node where ``stream`` is live (404 when none);
- ``POST /v1/webrtc/offer`` -> ``307`` to the chosen node (``fetch`` follows it with the body);
- ``GET /v1/cluster/route`` -> ``{"node_id", "url", "ws"}`` for WebSocket and SDK clients;
- ``GET /v1/cluster/nodes`` (loads), ``POST /v1/cluster/drain/{node_id}`` (live sessions move: WHIP
  publishers reconnect through the front, WebSocket / offer clients get a ``migrate`` event),
  ``POST /v1/cluster/undrain/{node_id}`` (placements there again), ``GET /healthz``.

Every answer that names no node is a JSON error: 503 when every node is full or draining.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import streamserve


def _redirect(node: dict[str, Any], request: Request) -> Response:
    target = node["url"] + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return Response(status_code=307, headers={"Location": target, "X-Streamserve-Node": node["node_id"],
                                              "Access-Control-Allow-Origin": "*",
                                              "Access-Control-Expose-Headers": "Location"})


def _full() -> JSONResponse:
    return JSONResponse({"error": "no_capacity", "message": "every node is full or draining"}, status_code=503)


def create_front_app(director: Any) -> FastAPI:
    """The front over a `Director` actor handle (its methods are awaited as Ray object refs)."""
    app = FastAPI(title="streamserve cluster front", version=streamserve.__version__)
    app.state.director = director

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        loads = await director.loads.remote()
        return {"status": "ok", "version": streamserve.__version__, "nodes": len(loads),
                "sessions": sum(ld["sessions"] for ld in loads)}

    @app.post("/whip/{stream}", tags=["cluster"])
    async def whip(stream: str, request: Request) -> Response:
        node = await director.place_stream.remote(stream)
        return _full() if node is None else _redirect(node, request)

    @app.post("/v1/webrtc/offer", tags=["cluster"])
    async def offer(request: Request) -> Response:
        node = await director.place.remote()
        return _full() if node is None else _redirect(node, request)

    @app.post("/whep/{stream}", tags=["cluster"])
    async def whep(stream: str, request: Request) -> Response:
        node = await director.find_stream.remote(stream)
        if node is None:
            return JSONResponse({"error": "stream_not_found", "message": f"no node has stream {stream!r} live"},
                                status_code=404)
        return _redirect(node, request)

    @app.get("/v1/cluster/route", tags=["cluster"])
    async def route() -> Response:
        node = await director.place.remote()
        if node is None:
            return _full()
        return JSONResponse({**node, "ws": node["url"].replace("http", "ws", 1) + "/v1/ws"})

    @app.get("/v1/cluster/nodes", tags=["cluster"])
    async def nodes() -> list[dict[str, Any]]:
        return await director.loads.remote()  # type: ignore[no-any-return]

    @app.post("/v1/cluster/drain/{node_id}", tags=["cluster"])
    async def drain(node_id: str) -> Response:
        try:
            ended = await director.drain.remote(node_id)
        except Exception as exc:  # a Ray task error wrapping the KeyError
            if "no node" in str(exc):
                return JSONResponse({"error": "node_not_found", "message": f"no node {node_id!r}"}, status_code=404)
            raise
        return JSONResponse({"node_id": node_id, "draining": True, "ended_sessions": ended})

    @app.post("/v1/cluster/undrain/{node_id}", tags=["cluster"])
    async def undrain(node_id: str) -> Response:
        try:
            await director.undrain.remote(node_id)
        except Exception as exc:  # a Ray task error wrapping the KeyError
            if "no node" in str(exc):
                return JSONResponse({"error": "node_not_found", "message": f"no node {node_id!r}"}, status_code=404)
            raise
        return JSONResponse({"node_id": node_id, "draining": False})

    return app
