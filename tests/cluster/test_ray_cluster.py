"""Scale-out on a local Ray cluster: two node servers (actors), a director, and the HTTP front.

One Ray instance for the whole module (start-up costs seconds). Media goes client <-> node directly:
the front only answers 307 (WHIP/WHEP) or a route (WebSocket). Drain migration: a WHIP publisher
reconnects through the front; a WebSocket client (the SDK) follows the node's `migrate` event to the
node that adopted its session, which replays its input history first (recompute migration).
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

from streamserve.client import ServerError, StreamClient  # noqa: E402
from streamserve.cluster.front import create_front_app  # noqa: E402
from streamserve.cluster.launch import Cluster, start_cluster  # noqa: E402
from tests.transport.whip_clients import ObsLikePublisher, WhepViewer  # noqa: E402

pytestmark = pytest.mark.slow

KV_BUDGET_MB = 64  # each node's KV budget (CPU): nodes report it minus their sessions' caches


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
        c = start_cluster(ServerConfig(pipeline="passthrough", port=0, max_sessions=4, idle_timeout_s=30,
                                       kv_budget_mb=KV_BUDGET_MB),
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


def img(i: int) -> np.ndarray:
    return np.full((24, 32, 3), (i * 7) % 256, np.uint8)


async def test_drain_moves_a_websocket_session_and_frames_keep_flowing(cluster: tuple[Cluster, Front]) -> None:
    c, front = cluster
    async with httpx.AsyncClient(base_url=front.url, timeout=30) as http:
        route = (await http.get("/v1/cluster/route")).json()
        node_a = route["node_id"]
        node_b = next(n for n in c.urls if n != node_a)
        client = StreamClient(route["ws"], pipeline="passthrough", send_format="rgb24", output_format="rgb24",
                              kinds=("video",), open_timeout=30)
        await client.connect()
        try:
            first_id = client.session_id
            for i in range(12):  # history on A: 3 sink frames + the 6 most recent
                await client.send_frame(img(i))
                out = await client.receive(timeout_s=30)
                assert out is not None and np.array_equal(out.data, img(i))
            sent = 12
            drained: dict[str, Any] = {}

            async def drain() -> None:
                drained.update((await http.post(f"/v1/cluster/drain/{node_a}")).json())

            task = asyncio.create_task(drain())
            # Keep sending while the node drains: a send waits while the SDK moves, then goes to B.
            loop = asyncio.get_running_loop()
            deadline, after_move = loop.time() + 60, 0
            while after_move < 3 and loop.time() < deadline:
                await client.send_frame(img(sent))
                sent += 1
                try:
                    out = await client.receive(timeout_s=0.5)
                except TimeoutError:
                    continue
                assert out is not None, client.end_reason
                after_move += bool(client.migrations)
            await task
            assert drained["draining"] is True and drained["ended_sessions"] == [first_id]
            assert len(client.migrations) == 1 and client.end_reason is None
            move = client.migrations[0]
            assert move["event"] == "migrate" and move["url"] == c.urls[node_b] and client.url == move["ws"]
            assert client.session_id != first_id
            # Frames keep flowing on B, in order, pixel for pixel.
            for k in range(5):
                seq = await client.send_frame(img(100 + k))
                out = await client.receive(timeout_s=30)
                while out is not None and not np.array_equal(out.data, img(100 + k)):  # stragglers from the move
                    out = await client.receive(timeout_s=30)
                assert out is not None and out.ref == seq
            loads = await nodes(http)
            assert loads[node_a]["sessions"] == 0 and loads[node_b]["sessions"] == 1
            assert loads[node_b]["replayed"] == {f"session {first_id}": 3 + 6}  # sinks + recent replayed first
            assert loads[node_b]["adopting_sessions"] == 0  # the credential was used up
            # The credential is single-use: presenting it again is refused, naming the parameter.
            with pytest.raises(ServerError, match="resume"):
                async with StreamClient(move["ws"], pipeline="passthrough", params={"resume": move["resume"]}):
                    pass
        finally:
            await client.close()
        # Node A serves again (a rolling upgrade done); the tests after this one start from two nodes.
        assert (await http.post(f"/v1/cluster/undrain/{node_a}")).json()["draining"] is False
        assert (await nodes(http))[node_a]["draining"] is False
        assert (await http.post("/v1/cluster/undrain/node-x")).status_code == 404


async def test_drain_moves_a_webrtc_offer_session(cluster: tuple[Cluster, Front]) -> None:
    """The offer path: the `migrate` message comes on the data channel; the client re-negotiates with
    the named node presenting the credential (what the demo page does) and media flows there."""
    from tests.transport.client import Client

    c, front = cluster
    async with httpx.AsyncClient(base_url=front.url, timeout=30) as http:
        route = (await http.get("/v1/cluster/route")).json()
        node_a = route["node_id"]
        node_b = next(n for n in c.urls if n != node_a)
        first = Client(route["url"], width=64, height=48, fps=15)
        second: Client | None = None
        try:
            await first.connect("passthrough")
            async with asyncio.timeout(60):
                await first.until(lambda: len(first.reader.seen) >= 10)
            drain = asyncio.create_task(http.post(f"/v1/cluster/drain/{node_a}"))
            async with asyncio.timeout(60):
                msg = await first.messages.get()
                while msg.get("event") != "migrate":
                    msg = await first.messages.get()
            assert msg["type"] == "event" and msg["url"] == c.urls[node_b] and msg["offer"].endswith("/v1/webrtc/offer")
            assert (await drain).json()["ended_sessions"] == [first.session_id]
            second = Client(msg["url"], width=64, height=48, fps=15)
            await second.connect(None, {"resume": msg["resume"]})  # pipeline and params come from the adoption
            async with asyncio.timeout(60):
                await second.until(lambda: len(second.reader.seen) >= 10)
            loads = await nodes(http)
            assert loads[node_b]["sessions"] == 1 and loads[node_b]["replayed"][f"session {first.session_id}"] == 3 + 6
        finally:
            for client in (first, second):
                if client is not None:
                    await client.close()
        for _ in range(100):  # the node ends the session when it sees the peer go (DTLS close): bounded wait
            if (await nodes(http))[node_b]["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await nodes(http))[node_b]["sessions"] == 0
        assert (await http.post(f"/v1/cluster/undrain/{node_a}")).status_code == 200


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
        # Free KV memory, as the director sees it: the serving node's budget less this session's cache.
        from streamserve.pipelines.video import VideoDiffusionPipeline
        from streamserve.pipelines.video.params import VideoParams

        need = VideoDiffusionPipeline("cpu").kv_bytes_for(VideoParams(**params))  # the same demo model
        async with httpx.AsyncClient(base_url=front.url, timeout=30) as http:
            loads = await nodes(http)
    budget = KV_BUDGET_MB * 2**20
    assert {n["url"]: n["kv_free_bytes"] for n in loads.values()} == {
        url: budget - need if url == route["url"] else budget for url in c.urls.values()}


def test_drain_command_reports_an_unknown_node(cluster: tuple[Cluster, Front], capsys: pytest.CaptureFixture[str]) -> None:
    from streamserve.cli import main

    _, front = cluster
    assert main(["drain", "node-x", "--front", front.url]) == 1
    assert "node_not_found" in capsys.readouterr().err
