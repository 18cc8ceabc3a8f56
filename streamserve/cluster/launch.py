"""Start a cluster: connect to Ray, one `NodeServer` per Ray node (or ``nodes`` on a local Ray), a
`Director`, and the front app. Used by ``streamserve serve --ray ADDRESS`` and by the tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from streamserve.core.config import ServerConfig

from .director import Director
from .node import NodeServer


@dataclasses.dataclass
class Cluster:
    director: Any  # Ray actor handle
    nodes: dict[str, Any]  # node id -> NodeServer actor handle
    urls: dict[str, str]

    def stop(self) -> None:
        import ray

        ray.get([h.stop.remote() for h in self.nodes.values()])
        for h in [*self.nodes.values(), self.director]:
            ray.kill(h)


def start_cluster(node_config: ServerConfig, *, nodes: int | None = None, local: bool = False) -> Cluster:
    """Start the actors on an initialised Ray. ``local``: ``nodes`` node servers on this machine (tests,
    one box); otherwise one per alive Ray node, pinned there, advertising the node's IP."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    director: Any = ray.remote(num_cpus=0)(Director).remote()
    node_cls: Any = ray.remote(num_cpus=0)(NodeServer)
    handles: dict[str, Any] = {}
    if local:
        if not nodes or nodes < 1:
            raise ValueError(f"a local cluster needs nodes >= 1, got {nodes}")
        for i in range(nodes):
            handles[f"node-{i}"] = node_cls.remote(f"node-{i}", node_config)
    else:
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            ip, rid = n["NodeManagerAddress"], n["NodeID"]
            node_id = f"{ip}-{rid[:8]}"  # several Ray nodes may share an IP (containers, tests)
            # A loopback --host means one machine: nodes stay on loopback. Otherwise every node listens
            # on all interfaces and clients are redirected to its Ray address.
            loopback = node_config.host.startswith("127.") or node_config.host == "localhost"
            cfg = dataclasses.replace(node_config, host=node_config.host if loopback else "0.0.0.0", port=0)
            advertise = node_config.host if loopback else ip
            handles[node_id] = node_cls.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(rid, soft=False)).remote(node_id, cfg, advertise)
    infos = ray.get([h.info.remote() for h in handles.values()])
    urls = {i["node_id"]: i["url"] for i in infos}
    ray.get([director.register.remote(nid, handles[nid], urls[nid]) for nid in handles])
    return Cluster(director, handles, urls)


def serve_cluster(address: str, config: ServerConfig, nodes: int | None) -> None:
    """``streamserve serve --ray ADDRESS``: the front on ``config.host:port``, the nodes on Ray."""
    import ray
    import uvicorn

    from .front import create_front_app

    local = address == "local"
    ray.init(address=None if local else address, num_cpus=None, include_dashboard=False)
    node_config = dataclasses.replace(config, port=0)
    cluster = start_cluster(node_config, nodes=nodes or 1, local=local) if local else start_cluster(node_config)
    print(f"streamserve cluster front on http://{config.host}:{config.port}/ over nodes {cluster.urls}", flush=True)
    try:
        uvicorn.run(create_front_app(cluster.director), host=config.host, port=config.port,
                    log_level=config.log_level)
    finally:
        cluster.stop()
        ray.shutdown()
