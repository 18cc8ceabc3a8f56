"""`Director`: places new sessions on the node with the most headroom and drains nodes.

A Ray actor holding the nodes (their actor handles and URLs). Placement asks every node for its
load and applies the same :class:`~streamserve.schedulers.placement.Placement` protocol as one
machine's devices (fewest sessions by default; a goodput cost model plugs in there). Draining is
remembered here too, so a drained node gets no new session even before it reports back.
"""

from __future__ import annotations

from typing import Any

from streamserve.schedulers.placement import EngineLoad, FewestSessions, Placement, choose


class Director:
    def __init__(self, placement: Placement | None = None) -> None:
        self.placement: Placement = placement or FewestSessions()
        self.nodes: dict[str, tuple[Any, str]] = {}  # node id -> (actor handle, url)
        self.draining: set[str] = set()
        self.placed = 0

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
        snapshot = [EngineLoad(i, ld["node_id"], ld["sessions"], ld["max_sessions"], ld["draining"])
                    for i, ld in enumerate(loads)]
        best = choose(self.placement, snapshot)
        if best is None:
            return None
        self.placed += 1
        return {"node_id": best.device, "url": loads[best.index]["url"]}

    def find_stream(self, stream: str) -> dict[str, Any] | None:
        for ld in self.loads():
            if stream in ld["streams"]:
                return {"node_id": ld["node_id"], "url": ld["url"]}
        return None

    def drain(self, node_id: str) -> list[str]:
        """Stop placements on ``node_id`` and end its sessions (clients reconnect elsewhere)."""
        import ray

        if node_id not in self.nodes:
            raise KeyError(f"no node {node_id!r}; nodes: {sorted(self.nodes)}")
        self.draining.add(node_id)
        return ray.get(self.nodes[node_id][0].drain.remote())  # type: ignore[no-any-return]
