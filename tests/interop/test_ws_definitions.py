"""WebSocket protocol behaviour docs/protocol.md defines (section 3, "Defined edge cases"): the `ref`
flag from a client, repeated/backwards `seq`, negative `pts_us`, what `end` does to units in flight,
that `stats` is never pushed, pipeline discovery, and `unauthorized` in place of the hello reply."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from streamserve.core.config import ServerConfig
from streamserve.transport import wsproto as wp
from tests.conftest import LiveServer

W, H = 16, 8


def frame(seq: int, pts_us: int, *, ref: int | None = None) -> bytes:
    pixels = np.full((H, W, 3), seq % 251, dtype=np.uint8).tobytes()
    header = wp.MediaHeader(wp.Kind.VIDEO, wp.Format.RGB24, seq, pts_us, width=W, height=H, ref=ref)
    return wp.pack_media(header, pixels)


async def started(url: str, hello: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    ws = await websockets.connect(url)
    await ws.send(json.dumps(hello or {"type": "hello", "version": 1}))
    reply = json.loads(await ws.recv())
    await ws.send(json.dumps({"type": "start", "pipeline": "passthrough",
                              "output": {"video": "rgb24", "kinds": ["video"]}}))
    assert json.loads(await ws.recv())["type"] == "started"
    return ws, reply


@pytest.fixture
def url(live_server: LiveServer) -> str:
    return live_server.url.replace("http", "ws") + "/v1/ws"


async def test_seq_and_pts_are_echoed_as_sent(url: str) -> None:
    """Repeated and backwards `seq`, and negative `pts_us`, are accepted and echoed unchanged."""
    ws, _ = await started(url)
    sent = [(5, -1_000_000), (5, -500_000), (3, 0), (4_294_967_295, -1)]
    echoed = []
    for seq, pts in sent:  # one at a time, so freshest-wins drops none
        await ws.send(frame(seq, pts))
        header, payload = wp.parse_media(await asyncio.wait_for(ws.recv(), 10))
        echoed.append((header.ref, header.pts_us))
        assert payload[0] == seq % 251
    assert echoed == sent
    await ws.close()


async def test_ref_flag_from_a_client_is_bad_header(url: str) -> None:
    ws, _ = await started(url)
    await ws.send(frame(1, 0, ref=1))
    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert error["code"] == "bad_header" and error["fatal"] is True and "flags to 0" in error["message"]
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == wp.CLOSE_PROTOCOL_ERROR


async def test_end_discards_in_flight_units_and_reports_final_stats(url: str) -> None:
    ws, hello = await started(url)
    assert hello["capabilities"]["pipelines_url"] == "/v1/pipelines"
    # stats is never pushed: with no request and no media, nothing arrives.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), 1.5)
    for seq in range(20):  # a burst, then `end` at once
        await ws.send(frame(seq, seq * 33_000))
    await ws.send(json.dumps({"type": "end"}))
    outputs = 0
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(message, bytes):
            outputs += 1
            continue
        ended = json.loads(message)
        break
    assert ended["type"] == "ended" and ended["reason"] == "ended by client"
    stats = ended["stats"]
    assert stats["frames_in"] <= 20 and stats["frames_out"] >= outputs
    # Every unit is accounted for: output, dropped (counted) or discarded by `end` (the rest).
    assert stats["frames_out"] + stats["frames_dropped"] <= 20
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == wp.CLOSE_NORMAL


async def test_pipelines_are_discoverable_from_the_hello(live_server: LiveServer, url: str) -> None:
    ws, hello = await started(url)
    await ws.close()
    async with httpx.AsyncClient(base_url=live_server.url, timeout=120) as http:  # first call imports torch
        listed = (await http.get(hello["capabilities"]["pipelines_url"])).json()
    names = {p["name"] for p in listed}
    assert hello["capabilities"]["default_pipeline"] in names
    assert listed[[p["name"] for p in listed].index("passthrough")]["params"]["mirror"]["type"] == "bool"


async def test_unauthorized_replaces_the_hello_reply(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=("t",)))
    async with websockets.connect(server.url.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "version": 1, "token": "wrong"}))
        first = json.loads(await ws.recv())
        assert first["type"] == "error" and first["code"] == "unauthorized"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == wp.CLOSE_POLICY
        assert closed.value.rcvd.reason == "unauthorized"
