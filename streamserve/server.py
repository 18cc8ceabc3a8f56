"""The composition root: builds the FastAPI app from a ServerConfig.

One port serves the demo page, health and metrics, the session API, and every transport
(WebRTC offer/answer, WHIP/WHEP, WebSocket). Transports reach sessions only through the
`SessionFactory` port that `SessionManager` implements.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

import streamserve
from streamserve import api_docs
from streamserve.core.config import ServerConfig
from streamserve.core.errors import StreamserveError
from streamserve.core.paths import web_demo_dir
from streamserve.core.ports import SessionFactory
from streamserve.manager import SessionManager
from streamserve.metrics import CONTENT_TYPE, Metrics
from streamserve.pipelines import registry
from streamserve.transport import auth, jsonlimits
from streamserve.transport.bodylimit import BodyLimit

log = logging.getLogger(__name__)


class Transport(Protocol):
    router: Any  # fastapi.APIRouter

    async def aclose(self) -> None: ...


TransportFactory = Callable[[SessionFactory, ServerConfig], Transport]


def default_transports() -> list[TransportFactory]:
    """Every built-in transport: WebRTC offer/answer, WHIP/WHEP (+ viewer page), WebSocket API, recordings."""
    from streamserve.transport.recordings import RecordingTransport
    from streamserve.transport.webrtc import WebRTCTransport
    from streamserve.transport.whip import WhipTransport
    from streamserve.transport.ws import WebSocketTransport

    return [WebRTCTransport, WhipTransport, WebSocketTransport, RecordingTransport]


def _link_recordings(built: Sequence[Transport]) -> None:
    """Give the WebSocket transport the recordings (its `record` control message), when both are served."""
    from streamserve.transport.recordings import RecordingTransport
    from streamserve.transport.ws import WebSocketTransport

    recordings = next((t for t in built if isinstance(t, RecordingTransport)), None)
    for transport in built:
        if isinstance(transport, WebSocketTransport):
            transport.recordings = recordings


def create_app(config: ServerConfig | None = None,
               transports: Sequence[TransportFactory] | None = None) -> FastAPI:
    config = config or ServerConfig()
    metrics = Metrics()
    metrics.prime(registry.available())  # zero-valued series from the first scrape
    manager = SessionManager(config, metrics=metrics)
    factories = default_transports() if transports is None else list(transports)
    built: list[Transport] = [make(manager, config) for make in factories]
    _link_recordings(built)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            for transport in built:
                try:
                    await transport.aclose()
                except Exception:
                    log.exception("closing transport %s failed", type(transport).__name__)
            await manager.stop()

    app = FastAPI(
        title="streamserve",
        version=streamserve.__version__,
        description="Real-time generation server for live video and voice.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.config = config

    @app.exception_handler(StreamserveError)
    async def _streamserve_error(request: Request, exc: StreamserveError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers())

    app.add_middleware(BodyLimit, limits=config.limits)  # 413 while the body streams in, before buffering
    for transport in built:
        app.include_router(transport.router)

    demo = web_demo_dir()
    app.mount("/static", StaticFiles(directory=demo), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(demo / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        ok = manager.devices.running
        body = {"status": "ok" if ok else "engine stopped", "version": streamserve.__version__,
                "sessions": len(manager.list()), "device": config.device, "pipeline": config.pipeline,
                "devices": manager.devices.names,
                "kv_free_bytes": [ld.kv_free_bytes for ld in manager.devices.loads()]}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/pipelines", tags=["pipelines"])
    async def pipelines() -> list[dict[str, Any]]:
        """Every pipeline that loads, with its parameter schema (one that fails to import is logged
        and left out, so a broken plugin never takes the demo page down). The first call imports the
        pipelines' modules (torch, diffusers: seconds), so it runs off the event loop."""
        def describe() -> list[dict[str, Any]]:
            listed = []
            for name in registry.available():
                try:
                    listed.append(dataclasses.asdict(registry.info(name)))
                except Exception:
                    log.exception("pipeline %r cannot be described; leaving it out of /v1/pipelines", name)
            return listed

        return await asyncio.to_thread(describe)

    @app.get("/v1/capacity", tags=["ops"])
    async def capacity(request: Request) -> dict[str, Any]:
        """What this engine still holds (docs/serving.md): predicted utilization, headroom in sessions
        of the default pipeline at its defaults, each session's tier, and the learned cost profile
        (`streamserve plan --profile` reads it). Session ids only for an admin token."""
        gate = manager.gate
        if gate is None:
            return {"scheduler": config.scheduler, "admission": False}
        report = await asyncio.to_thread(gate.capacity)
        if not auth.is_admin(auth.request_token(request.headers), config):
            report["sessions"] = [{k: v for k, v in s.items() if k != "session_id"} for s in report["sessions"]]
        return report

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(request: Request) -> list[dict[str, Any]]:
        """Every session for an admin token; otherwise only the session whose secret is presented."""
        token = auth.request_token(request.headers)
        return [s.stats() for s in manager.list() if auth.owns(token, s, config)]

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: str, request: Request) -> dict[str, Any]:
        return _owned(session_id, request).stats()

    @app.patch("/v1/sessions/{session_id}", tags=["sessions"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
    async def patch_session(session_id: str, request: Request) -> dict[str, Any]:
        """Change parameters live; the body is a JSON object of the pipeline's params to change. The
        pipeline checks them before the answer: 422 naming the field if it cannot run them."""
        session = _owned(session_id, request)
        params = jsonlimits.loads_object(await request.body(), config.limits.max_json_depth)
        return {"session_id": session_id, "params": await session.update(params)}

    @app.delete("/v1/sessions/{session_id}", tags=["sessions"])
    async def delete_session(session_id: str, request: Request) -> dict[str, Any]:
        session = _owned(session_id, request)
        stats = session.stats()
        await manager.close(session_id, "ended by API request")
        return {"session_id": session_id, "ended": True, "stats": stats}

    def _owned(session_id: str, request: Request) -> Any:
        """The session (404 if unknown), if the request carries its secret or an admin token (else 401)."""
        session = manager.get(session_id)
        auth.require_owner(auth.request_token(request.headers), session, config)
        return session

    api_docs.install(app)  # /openapi.json completed for WHIP/WHEP and /v1/ws; /asyncapi.json
    return app
