"""`NodeServer`: one machine's streamserve server, run inside a Ray actor.

The actor binds the full server (``create_app``: engines, transports, session API) to the node's
address on a port of its own and runs uvicorn on a thread, so clients redirected by the front talk
to it directly. The director calls :meth:`load` to place sessions and :meth:`drain` to empty it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import socket
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from streamserve.core.config import ServerConfig
from streamserve.core.params import parse_params
from streamserve.pipelines import registry

from .migration import Adoption, InputHistory, replay

log = logging.getLogger(__name__)

T = TypeVar("T")

DRAIN_REASON = "node draining: reconnect through the front to continue on another node"
MIGRATE_REASON = "node draining: the session moves to another node (see the migrate event)"
RESUME_TTL_S = 120.0  # how long an unused resume credential stays valid on its target node


class NodeServer:
    """A streamserve server on this Ray node (see the module doc). ``config.port`` 0 picks a free port."""

    def __init__(self, node_id: str, config: ServerConfig, advertise_host: str | None = None, *,
                 history_sinks: int = 3, history_recent: int = 6) -> None:
        import uvicorn

        from streamserve.server import create_app
        from streamserve.serving import uvicorn_config

        self.node_id = node_id
        self.app = create_app(config)
        self._history_args = (history_sinks, history_recent)
        self.history: dict[str, InputHistory] = {}  # session id -> recent input (for a drain)
        self.adoptions: dict[str, Adoption] = {}  # stream -> history to replay when it reconnects here
        self.replayed: dict[str, int] = {}  # stream -> frames replayed (stats)
        manager = self.app.state.manager
        # Every transport opens sessions through manager.open: this node wraps it (record input,
        # replay an adopted stream's history) without the single-machine server knowing.
        self._open = manager.open
        manager.open = self._open_with_migration
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((config.host, config.port))
        port = self._sock.getsockname()[1]
        self.url = f"http://{advertise_host or config.host}:{port}"
        # `streamserve serve`'s options (header timeout, connection cap, keep-alive, WS queue, no
        # deflate, bounded graceful stop): a node faces the same clients as a single server.
        self._server = uvicorn.Server(uvicorn_config(self.app, config, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"node-{node_id}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:  # uvicorn exposes no start event; bounded start-up wait
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"node {node_id}: the server did not start")
            time.sleep(0.05)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        loop = self.app.state.manager._loop  # the server's event loop (set by manager.start)
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def _open_with_migration(self, pipeline: str | None, params: Mapping[str, Any] | None, *, source: str,
                                   stream: str | None = None) -> Any:
        manager = self.app.state.manager
        adoption = self.adoptions.pop(stream, None) if stream is not None else None
        if params is not None and "resume" in params:  # a WS / offer client following a migrate event
            adoption = self._resume(str(params["resume"]))
            pipeline, params = adoption.pipeline, adoption.params  # the session as it was, live updates included
        session = await self._open(pipeline, params, source=source, stream=stream)
        history = InputHistory(*self._history_args)
        if adoption is not None and adoption.pipeline == session.pipeline:
            engine = manager.devices.engine_of(session.id)
            count = await asyncio.wrap_future(
                engine.call(functools.partial(replay, engine, session.pipeline, session.id, adoption.frames)))
            self.replayed[adoption.stream or f"session {adoption.session_id}"] = count
            for media in adoption.frames:  # a second drain carries the history on
                history.record(media)
            log.info("%s continues from node %s: %d frames replayed", adoption.stream or adoption.session_id,
                     adoption.from_node, count)
        self.history[session.id] = history
        session.recorder = history.record
        return session

    def _resume(self, credential: str) -> Adoption:
        from streamserve.core.errors import InvalidParams

        now = time.monotonic()
        for key in [k for k, a in self.adoptions.items() if a.resume and now - a.created > RESUME_TTL_S]:
            del self.adoptions[key]  # expired credentials
        adoption = self.adoptions.pop(f"resume:{credential}", None)
        if adoption is None:
            raise InvalidParams("resume", "unknown or expired resume credential (it is valid once, on the node "
                                f"named by the migrate event, for {RESUME_TTL_S:.0f} s)")
        return adoption

    def adopt(self, adoption: Adoption) -> None:
        """Expect ``adoption``'s stream (or resume credential) here; its history is replayed when it comes."""
        self.adoptions[adoption.key] = adoption

    def info(self) -> dict[str, Any]:
        import ray

        return {"node_id": self.node_id, "url": self.url, "ray_node": ray.get_runtime_context().get_node_id(),
                "gpus": ray.get_gpu_ids()}

    def load(self) -> dict[str, Any]:
        """Sessions, limits, streams and whether the node is draining (read on the server's loop)."""

        async def read() -> dict[str, Any]:
            manager = self.app.state.manager
            loads = manager.devices.loads(manager.config.pipeline)  # with goodput headroom once warm
            open_ = [ld for ld in loads if not ld.draining]
            warm = bool(open_) and all(ld.more_sessions is not None for ld in open_)
            kv_free = [ld.kv_free_bytes for ld in loads]  # draining or not: what memory is free
            try:  # the KV cache of a default session of the node's pipeline
                name = manager.config.pipeline
                params: Any = parse_params(registry.get_class(name).Params, None)
                kv_need = await asyncio.to_thread(manager.devices.kv_need, name, params)  # a model process: one step
            except ValueError:
                kv_need = None
            return {
                "node_id": self.node_id, "url": self.url,
                "sessions": len(manager.list()), "max_sessions": manager.config.max_sessions,
                "draining": bool(loads) and all(ld.draining for ld in loads),
                "streams": sorted(s.stream for s in manager.list() if s.stream),
                "devices": [dataclasses.asdict(ld) for ld in loads],
                "adopting": sorted(k for k in self.adoptions if not k.startswith("resume:")),  # no credentials
                "adopting_sessions": sum(1 for k in self.adoptions if k.startswith("resume:")),
                "replayed": dict(self.replayed),
                # the node's goodput headroom: more default sessions over its devices, the best free share
                "more_sessions": sum(ld.more_sessions or 0 for ld in open_) if warm else None,
                "free_utilization": max(ld.free_utilization or 0.0 for ld in open_) if warm else None,
                # the most free KV memory of one device (a session's cache lives on one), and the bytes
                # a default session's cache needs; None: not reported (pipeline not loaded, no KV cache)
                "kv_free_bytes": max(kv_free) if kv_free and None not in kv_free else None,  # type: ignore[type-var]
                "kv_session_bytes": kv_need,
            }

        return self._run(read())

    def prepare_drain(self) -> list[Adoption]:
        """Take no new sessions; export every live session's history (what another node needs to
        continue it): named streams by name, WebSocket / offer sessions with a new resume credential."""

        async def prepare() -> list[Adoption]:
            manager = self.app.state.manager
            manager.devices.draining.update(range(len(manager.devices)))
            moving = []
            for s in manager.list():
                history = self.history.get(s.id)
                if history is None:
                    continue
                resume = None if s.stream is not None else secrets.token_urlsafe(24)
                moving.append(Adoption(s.stream, s.pipeline, s.params_dict(), history.frames(), self.node_id,
                                       resume=resume, session_id=s.id))
            return moving

        return self._run(prepare())

    def drain(self, targets: Mapping[str, str] | None = None) -> list[str]:
        """End the live sessions. ``targets``: session id -> URL of the node that adopted it with a resume
        credential; that session's client gets a ``migrate`` event first (WebSocket ``event`` message,
        WebRTC data-channel message) with the URLs to reconnect to and the credential. Returns the
        ended session ids."""
        targets = dict(targets or {})

        async def drain() -> list[str]:
            manager = self.app.state.manager
            manager.devices.draining.update(range(len(manager.devices)))
            ended = []
            for s in manager.list():
                ended.append(s.id)
                move = targets.get(s.id)
                if move is not None:
                    url, resume = move.split("#", 1)
                    s.publish({"event": "migrate", "url": url, "ws": url.replace("http", "ws", 1) + "/v1/ws",
                               "offer": url + "/v1/webrtc/offer", "resume": resume, "reason": MIGRATE_REASON})
                await manager.close(s.id, MIGRATE_REASON if move is not None else DRAIN_REASON)
            self.history.clear()
            return ended

        return self._run(drain())

    def undrain(self) -> None:
        """Take new sessions again."""

        async def undrain() -> None:
            self.app.state.manager.devices.draining.clear()

        self._run(undrain())

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
