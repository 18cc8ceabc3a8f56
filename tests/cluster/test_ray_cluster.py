"""Scale-out on a local Ray cluster: two node servers (actors), a director, and the HTTP front.

One Ray instance for the whole module (start-up costs seconds). Media goes client <-> node directly:
the front only answers 307 (WHIP/WHEP) or a route (WebSocket).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from streamserve.core.config import ServerConfig

ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")

from streamserve.client import StreamClient  # noqa: E402
from streamserve.cluster.front import create_front_app  # noqa: E402
from streamserve.cluster.launch import Cluster, start_cluster  # noqa: E402
from tests.transport.whip_clients import ObsLikePublisher, WhepViewer  # noqa: E402

pytestmark = pytest.mark.slow


class Front:
    """The front app on uvicorn in a thread (like tests.conftest.LiveServer, for another app)."""

    def __init__(self, director: Any) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_front_app(director), log_level="warning"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # uvicorn has no start event
            assert time.monotonic() < deadline and self._thread.is_alive(), "front did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)
        self._sock.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Front]]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        c = start_cluster(ServerConfig(pipeline="passthrough", port=0, max_sessions=4, idle_timeout_s=30),
                          nodes=2, local=True)
        front = Front(c.director)
        try:
            yield c, front
        finally:
            front.stop()
            c.stop()
    finally:
        ray.shutdown()


async def nodes(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in (await http.get("/v1/cluster/nodes")).json()}


async def publish(http: httpx.AsyncClient, front: Front, stream: str) -> tuple[ObsLikePublisher, httpx.Response]:
    pub = ObsLikePublisher(front.url, width=128, height=96, fps=15)
    reply = await pub.publish(http, f"/whip/{stream}?pipeline=passthrough")
    assert reply.status_code == 201, reply.text
    assert [r.status_code for r in reply.history] == [307]  # the front redirected, the node answered
    await asyncio.wait_for(pub.connected.wait(), 30)
    return pub, reply


async def test_whip_307_placement_by_headroom_and_drain(cluster: tuple[Cluster, Front]) -> None:
    c, front = cluster
    async with httpx.AsyncClient(base_url=front.url, follow_redirects=True, timeout=30) as http:
        pub_a, reply_a = await publish(http, front, "cam-a")
        node_a = reply_a.history[0].headers["x-streamserve-node"]
        assert str(reply_a.url).startswith(c.urls[node_a])  # media terminates on the node
        pub_b, reply_b = await publish(http, front, "cam-b")
        node_b = reply_b.history[0].headers["x-streamserve-node"]
        assert node_b != node_a  # the other node had more headroom (fewer sessions)
        loads = await nodes(http)
        assert loads[node_a]["streams"] == ["cam-a"] and loads[node_b]["streams"] == ["cam-b"]

        viewer = WhepViewer()
        watched = await viewer.watch(http, "/whep/cam-a")
        assert watched.status_code == 201 and str(watched.url).startswith(c.urls[node_a])
        first = await viewer.frames(10, within=30)
        assert first == sorted(first) and len(first) == 10
        assert (await http.post("/whep/nope")).status_code == 404

        # Drain node A: no more placements there, its session ends, the publisher reconnects
        # through the front and lands on node B; frames flow again.
        drained = (await http.post(f"/v1/cluster/drain/{node_a}")).json()
        assert drained["draining"] is True and len(drained["ended_sessions"]) == 1
        await asyncio.wait_for(viewer.ended.wait(), 30)
        await pub_a.close()
        await viewer.close()
        loads = await nodes(http)
        assert loads[node_a]["draining"] is True and loads[node_a]["sessions"] == 0
        assert (await nodes(http))[node_b]["adopting"] == ["cam-a"]  # B holds cam-a's input history
        pub_a2, reply_a2 = await publish(http, front, "cam-a")
        assert reply_a2.history[0].headers["x-streamserve-node"] == node_b
        # Recompute migration: B replayed cam-a's sink + recent frames before its first live frame.
        replayed = (await nodes(http))[node_b]["replayed"]
        assert replayed["cam-a"] == 3 + 6  # 10+ frames went through A: its history is full
        viewer2 = WhepViewer()
        assert (await viewer2.watch(http, "/whep/cam-a")).status_code == 201
        again = await viewer2.frames(10, within=30)
        assert len(again) == 10
        assert (await http.post("/v1/cluster/drain/node-x")).status_code == 404
        for closer in (viewer2.close(), pub_a2.close(), pub_b.close()):
            await closer


async def test_route_for_websocket_clients_runs_the_demo_pipeline(cluster: tuple[Cluster, Front]) -> None:
    c, front = cluster
    async with httpx.AsyncClient(base_url=front.url, timeout=30) as http:
        route = (await http.get("/v1/cluster/route")).json()
    assert route["url"] in c.urls.values() and route["ws"].endswith("/v1/ws")
    params = {"width": 64, "height": 64, "style": "noir"}
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    async with StreamClient(route["ws"], pipeline="video", params=params, open_timeout=120) as client:
        for _ in range(3):
            await client.send_frame(frame)
            out = await client.receive(timeout_s=120)
            assert out is not None and out.data.shape == (64, 64, 3)
            assert np.abs(out.data.astype(int) - frame.astype(int)).mean() > 1.0  # stylized, not echoed


def test_drain_command_reports_an_unknown_node(cluster: tuple[Cluster, Front], capsys: pytest.CaptureFixture[str]) -> None:
    from streamserve.cli import main

    _, front = cluster
    assert main(["drain", "node-x", "--front", front.url]) == 1
    assert "node_not_found" in capsys.readouterr().err
