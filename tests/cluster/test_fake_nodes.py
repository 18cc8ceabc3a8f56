"""Placement across Ray nodes: `ray.cluster_utils.Cluster` with two fake nodes (one with a logical GPU).

`start_cluster` pins one node server per Ray node; the route API places sessions by headroom, so two
WebSocket sessions land on two different Ray nodes and each runs there.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from streamserve.core.config import ServerConfig

ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")

from ray.cluster_utils import Cluster as RayCluster  # noqa: E402

from streamserve.client import StreamClient  # noqa: E402
from streamserve.cluster.launch import Cluster, start_cluster  # noqa: E402
from tests.cluster.test_ray_cluster import Front  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_nodes() -> Iterator[tuple[Cluster, Front]]:
    rc = RayCluster(initialize_head=True, head_node_args={"num_cpus": 1})
    rc.add_node(num_cpus=1, num_gpus=1)  # a logical GPU: Ray schedules on it, nothing runs on a device
    ray.init(address=rc.address, log_to_driver=False)
    try:
        rc.wait_for_nodes()
        c = start_cluster(ServerConfig(pipeline="passthrough", host="127.0.0.1", max_sessions=2))
        front = Front(c.director)
        try:
            yield c, front
        finally:
            front.stop()
            c.stop()
    finally:
        ray.shutdown()
        rc.shutdown()


async def test_sessions_spread_over_ray_nodes(fake_nodes: tuple[Cluster, Front]) -> None:
    c, front = fake_nodes
    infos = ray.get([h.info.remote() for h in c.nodes.values()])
    assert len({i["ray_node"] for i in infos}) == 2  # one node server per Ray node
    frame = np.full((32, 32, 3), 77, np.uint8)
    clients = []
    async with httpx.AsyncClient(base_url=front.url, timeout=30) as http:
        for _ in range(2):
            route = (await http.get("/v1/cluster/route")).json()
            client = StreamClient(route["ws"], pipeline="passthrough", send_format="rgb24", output_format="rgb24")
            await client.__aenter__()
            clients.append((route["node_id"], client))
        try:
            assert len({nid for nid, _ in clients}) == 2  # the second went to the emptier node
            for _, client in clients:
                await client.send_frame(frame)
                out = await client.receive(timeout_s=30)
                assert out is not None and np.array_equal(out.data, frame)
            loads = {n["node_id"]: n["sessions"] for n in (await http.get("/v1/cluster/nodes")).json()}
            assert sorted(loads.values()) == [1, 1]
            # Both nodes at 1 of 2: a third and fourth fit, a fifth gets 503 from the front.
            for _ in range(2):
                route = (await http.get("/v1/cluster/route")).json()
                extra = StreamClient(route["ws"], pipeline="passthrough")
                await extra.__aenter__()
                clients.append((route["node_id"], extra))
            full = await http.get("/v1/cluster/route")
            assert full.status_code == 503 and full.json()["error"] == "no_capacity"
        finally:
            for _, client in clients:
                await client.__aexit__(None, None, None)


def test_nodes_on_a_loopback_front_stay_on_loopback(fake_nodes: tuple[Cluster, Front]) -> None:
    c, _ = fake_nodes
    assert all(url.startswith("http://127.0.0.1:") for url in c.urls.values())
