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
import socket
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from streamserve.core.config import ServerConfig

from .migration import Adoption, InputHistory, replay

log = logging.getLogger(__name__)

T = TypeVar("T")

DRAIN_REASON = "node draining: reconnect through the front to continue on another node"


class NodeServer:
    """A streamserve server on this Ray node (see the module doc). ``config.port`` 0 picks a free port."""

    def __init__(self, node_id: str, config: ServerConfig, advertise_host: str | None = None, *,
                 history_sinks: int = 3, history_recent: int = 6) -> None:
        import uvicorn

        from streamserve.server import create_app

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
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
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
        session = await self._open(pipeline, params, source=source, stream=stream)
        history = InputHistory(*self._history_args)
        adoption = self.adoptions.pop(stream, None) if stream is not None else None
        if adoption is not None and adoption.pipeline == session.pipeline:
            engine = manager.devices.engine_of(session.id)
            count = await asyncio.wrap_future(
                engine.call(functools.partial(replay, engine, session.pipeline, session.id, adoption.frames)))
            self.replayed[adoption.stream] = count
            for media in adoption.frames:  # a second drain carries the history on
                history.record(media)
            log.info("stream %s continues from node %s: %d frames replayed", stream, adoption.from_node, count)
        self.history[session.id] = history
        session.recorder = history.record
        return session

    def adopt(self, adoption: Adoption) -> None:
        """Expect ``adoption.stream`` to reconnect here; its history is replayed when it does."""
        self.adoptions[adoption.stream] = adoption

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
            return {
                "node_id": self.node_id, "url": self.url,
                "sessions": len(manager.list()), "max_sessions": manager.config.max_sessions,
                "draining": bool(loads) and all(ld.draining for ld in loads),
                "streams": sorted(s.stream for s in manager.list() if s.stream),
                "devices": [dataclasses.asdict(ld) for ld in loads],
                "adopting": sorted(self.adoptions), "replayed": dict(self.replayed),
                # the node's goodput headroom: more default sessions over its devices, the best free share
                "more_sessions": sum(ld.more_sessions or 0 for ld in open_) if warm else None,
                "free_utilization": max(ld.free_utilization or 0.0 for ld in open_) if warm else None,
            }

        return self._run(read())

    def drain(self) -> tuple[list[str], list[Adoption]]:
        """Take no new sessions and end the live ones (their clients reconnect through the front).
        Returns the ended session ids and, for named streams, what another node needs to continue them."""

        async def drain() -> tuple[list[str], list[Adoption]]:
            manager = self.app.state.manager
            manager.devices.draining.update(range(len(manager.devices)))
            ended, moving = [], []
            for s in manager.list():
                ended.append(s.id)
                history = self.history.pop(s.id, None)
                if s.stream is not None and history is not None:
                    moving.append(Adoption(s.stream, s.pipeline, s.params_dict(), history.frames(), self.node_id))
                await manager.close(s.id, DRAIN_REASON)
            self.history.clear()
            return ended, moving

        return self._run(drain())

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
