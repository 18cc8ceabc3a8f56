"""Vanished WebRTC clients leave nothing behind: 100 clients stream through a UDP relay that then
drops everything (UDP gone, no DTLS close, no SCTP abort reaches the server), and the server ends
each peer on its own (silence watchdog; idle_timeout_s tuned low so it takes ~1 s). Afterwards the
process has exactly the threads and file descriptors it had before, RSS within a small bound, and no
peer connection, track, pump or codec context alive.

The app and the clients share this process and event loop (tests/transport/inprocess.py); a client
closes its own side after the relay went dark, which the server never hears of.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections import Counter

import av
import pytest
from aiortc import RTCPeerConnection
from av.video.reformatter import VideoReformatter

from streamserve.core.config import ServerConfig
from streamserve.transport.peer import Peer
from streamserve.transport.tracks import InboundPump, SessionOutputTrack
from tests.transport.client import Client
from tests.transport.inprocess import InProcess, in_process
from tests.transport.lossy_relay import LossyRelay

pytestmark = pytest.mark.slow

TRACKED = (Peer, RTCPeerConnection, InboundPump, SessionOutputTrack, av.codec.context.CodecContext,
           VideoReformatter)
RSS_BOUND_MB = 20.0  # for 100 clients (0.2 MB each); the leak measured 0.6 MB per client


def snapshot() -> tuple[int, int, float, Counter[str]]:
    """(threads, open fds, RSS MiB, live objects by type) of this process, after a collection."""
    gc.collect()
    threads = len(os.listdir("/proc/self/task"))
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    live = Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, TRACKED))
    return threads, fds, rss, live


async def fill_default_executor() -> None:
    """Start every thread of the loop's default executor (aiortc encodes there; the pool grows on
    demand up to its documented default of min(32, cpus + 4) and keeps its threads)."""
    workers = min(32, (os.cpu_count() or 1) + 4)
    barrier = threading.Barrier(workers)
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(None, barrier.wait, 10.0) for _ in range(workers)))


async def vanish(server: InProcess, count: int) -> int:
    """`count` clients stream, then vanish; returns how many had video flowing both ways."""
    clients = []
    for _ in range(count):
        relay = await LossyRelay().start()
        client = Client("http://test", width=64, height=64, relay=relay, http_transport=server.transport)
        await client.connect("passthrough")
        clients.append((client, relay))
    flowing = 0
    for client, _ in clients:
        try:
            async with asyncio.timeout(10):
                await client.until(lambda c=client: len(c.reader.seen) >= 3)  # type: ignore[misc]
            flowing += 1
        except TimeoutError:
            pass
    peers = list(server.webrtc.peers.values())
    for _, relay in clients:
        relay.cut()  # from here on the server hears nothing
    for client, relay in clients:
        await client.close()  # the client's own side; its DTLS close goes nowhere
        relay.close()
    async with asyncio.timeout(30):  # the server's watchdog ends each peer (about 1.2 s of silence)
        reasons = await asyncio.gather(*(peer.wait_closed() for peer in peers))
    assert all(r.startswith(("client gone", "connection failed", "never connected")) for r in reasons), reasons
    assert server.webrtc.peers == {}
    return flowing


async def test_100_vanished_clients_leave_no_threads_fds_memory_or_codec_contexts() -> None:
    config = ServerConfig(pipeline="passthrough", port=0, max_sessions=200, idle_timeout_s=2.0)
    async with in_process(config) as server:
        await vanish(server, 10)  # warm-up: imports, codec tables, allocator arenas
        await vanish(server, 10)
        await fill_default_executor()
        await asyncio.sleep(0.5)
        threads, fds, rss, live = snapshot()
        flowing = 0
        for _ in range(20):
            flowing += await vanish(server, 5)
        assert flowing >= 90  # media (and so every codec context) really was running
        await asyncio.sleep(0.5)
        assert (await server.http.get("/v1/sessions")).json() == []
        threads_after, fds_after, rss_after, live_after = snapshot()
    names = sorted(t.name for t in threading.enumerate())
    print(f"threads {threads} -> {threads_after}, fds {fds} -> {fds_after}, "
          f"RSS {rss:.1f} -> {rss_after:.1f} MiB, live {dict(live)} -> {dict(live_after)}, {names}")
    assert threads_after == threads
    assert fds_after == fds
    assert rss_after - rss < RSS_BOUND_MB
    assert live_after == live and sum(live_after.values()) == 0
