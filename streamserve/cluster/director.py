"""`Director`: places new sessions on the node with the most headroom and drains nodes.

A Ray actor holding the nodes (their actor handles and URLs). Placement asks every node for its
load and applies the same :class:`~streamserve.schedulers.placement.Placement` protocol as one
machine's devices: by default :class:`~streamserve.schedulers.placement.GoodputHeadroom`, the node
whose engines' cost models say it can serve the most more sessions within their deadlines (fewest
sessions while a node's cost model is cold), among the nodes whose free KV memory can hold a new
session's cache (each node reports both: its most free device, and a default session's bytes). Draining is remembered here too, so a drained node gets
no new session even before it reports back.
"""

from __future__ import annotations

from typing import Any

from streamserve.devices import kv_fits
from streamserve.schedulers.placement import EngineLoad, GoodputHeadroom, Placement, choose


def snapshot(loads: list[dict[str, Any]]) -> list[EngineLoad]:
    """Node load reports -> placement snapshots; goodput headroom for all nodes or for none (a cold
    cost model on one node would make the scores incomparable)."""
    warm = bool(loads) and all(ld.get("more_sessions") is not None for ld in loads)
    return [EngineLoad(i, ld["node_id"], ld["sessions"], ld["max_sessions"], ld["draining"],
                       kv_free_bytes=ld.get("kv_free_bytes"), more_sessions=ld["more_sessions"] if warm else None,
                       free_utilization=ld["free_utilization"] if warm else None)
            for i, ld in enumerate(loads)]


class Director:
    def __init__(self, placement: Placement | None = None) -> None:
        self.placement: Placement = placement or GoodputHeadroom()
        self.nodes: dict[str, tuple[Any, str]] = {}  # node id -> (actor handle, url)
        self.draining: set[str] = set()
        self.placed = 0
        self.moved: dict[str, str] = {}  # stream -> node that adopted it (until it reconnects)

    def register(self, node_id: str, handle: Any, url: str) -> None:
        self.nodes[node_id] = (handle, url)
        self.draining.discard(node_id)

    def loads(self) -> list[dict[str, Any]]:
        import ray

        ids = list(self.nodes)
        out = []
        for node_id, got in zip(ids, ray.get([self.nodes[n][0].load.remote() for n in ids]), strict=True):
            out.append({**got, "draining": got["draining"] or node_id in self.draining})
        return out

    def place(self) -> dict[str, Any] | None:
        """The node a new session should go to: ``{"node_id", "url"}``, or None when all are full."""
        loads = self.loads()
        fitting = [snap for snap, ld in zip(snapshot(loads), loads, strict=True)
                   if kv_fits(snap, ld.get("kv_session_bytes"))]  # its free KV memory holds a session's cache
        best = choose(self.placement, fitting)
        if best is None:
            return None
        self.placed += 1
        return {"node_id": best.device, "url": loads[best.index]["url"]}

    def place_stream(self, stream: str) -> dict[str, Any] | None:
        """Like :meth:`place`, but a stream moved by a drain goes back to the node holding its history."""
        node_id = self.moved.pop(stream, None)
        if node_id is not None and node_id in self.nodes and node_id not in self.draining:
            return {"node_id": node_id, "url": self.nodes[node_id][1]}
        return self.place()

    def find_stream(self, stream: str) -> dict[str, Any] | None:
        for ld in self.loads():
            if stream in ld["streams"]:
                return {"node_id": ld["node_id"], "url": ld["url"]}
        return None

    def drain(self, node_id: str) -> list[str]:
        """Stop placements on ``node_id`` and move its live sessions (recompute migration): each one's
        input history goes to the node it will continue on; a named stream's publisher reconnects
        through the front and is sent there, a WebSocket / offer client is told where to go (a
        ``migrate`` event with a one-time resume credential). Returns the ended session ids."""
        import ray

        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r}; nodes: {sorted(self.nodes)}")
        self.draining.add(node_id)
        node = self.nodes[node_id][0]
        moving = ray.get(node.prepare_drain.remote())
        targets: dict[str, str] = {}
        for adoption in moving:
            target = self.place()
            if target is None:
                continue  # nowhere to go: the session restarts wherever its client reconnects
            ray.get(self.nodes[target["node_id"]][0].adopt.remote(adoption))
            if adoption.stream is not None:
                self.moved[adoption.stream] = target["node_id"]
            elif adoption.resume is not None and adoption.session_id is not None:
                targets[adoption.session_id] = f"{target['url']}#{adoption.resume}"
        return ray.get(node.drain.remote(targets))  # type: ignore[no-any-return]

    def undrain(self, node_id: str) -> None:
        """Take new sessions on ``node_id`` again (after a rolling upgrade, or a drain called off)."""
        import ray

        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r}; nodes: {sorted(self.nodes)}")
        ray.get(self.nodes[node_id][0].undrain.remote())
        self.draining.discard(node_id)
