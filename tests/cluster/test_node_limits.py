"""A cluster node serves with `streamserve serve`'s connection limits (it faces the same clients)."""

from __future__ import annotations

import socket
import time

from streamserve.cluster.node import NodeServer
from streamserve.core.config import ServerConfig
from streamserve.core.limits import LimitsConfig
from tests.security.test_limits import _closed_within, _serves_within


def test_a_node_closes_slow_heads_and_connections_over_its_cap() -> None:
    limits = LimitsConfig(header_timeout_s=1.0, keep_alive_s=1.0, max_connections=3)
    node = NodeServer("n1", ServerConfig(pipeline="passthrough", host="127.0.0.1", port=0, limits=limits))
    try:
        port = int(node.url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never a complete head
        assert _closed_within(slow, 10.0)  # before: held until the client gave up
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _closed_within(extra, 5.0)
        for sock in (slow, extra, *held):
            sock.close()
        assert _serves_within(node.url, 10.0), "the node did not serve after the held connections closed"
    finally:
        node.stop()
