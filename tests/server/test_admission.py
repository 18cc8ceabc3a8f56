"""Admission on the real server: a passthrough pipeline made slow by a known sleep per step.

Step time 55 ms + 10 ms per session in the batch; clients send 10 frames a second. At 10 fps,
U(n) = 10 * (0.055 + 0.010 n) = 0.55 + 0.1 n: 3 sessions (0.85) fit under 0.9, a 4th (0.95) does not.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from streamserve.client import ServerError, StreamClient
from streamserve.transport.probe import StampedVideoTrack
from tests.server.slow_pipeline import FIXED as QOS
from tests.server.slow_pipeline import stream


@pytest.mark.slow
async def test_the_n_plus_first_session_is_refused_and_the_first_n_keep_their_rate(slow_server) -> None:
    url = slow_server.url.replace("http", "ws") + "/v1/ws"
    clients = [StreamClient(url, pipeline="slowpass", params=QOS, send_format="rgb24", output_format="rgb24",
                            kinds=("video",)) for _ in range(3)]
    for c in clients:
        await c.connect()
    try:
        # The 4th over WebSocket: a typed, non-fatal error naming the limit.
        with pytest.raises(ServerError) as refused:
            async with StreamClient(url, pipeline="slowpass", params=QOS, send_format="rgb24", kinds=("video",)):
                pass
        assert refused.value.code == "over_capacity"
        assert refused.value.details["limit"] == "utilization"
        assert 0.9 < refused.value.details["predicted_utilization"] < 1.05
        # ... and over HTTP (WebRTC offer): 503, Retry-After, a JSON reason naming the limit.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(StampedVideoTrack(64, 64))
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=20) as http:
            resp = await http.post("/v1/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer",
                                                             "pipeline": "slowpass", "params": QOS})
            whip = await http.post("/whip/cam1?pipeline=slowpass&fps=10&degrade=none",
                                   content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
            metrics = (await http.get("/metrics")).text
            capacity = (await http.get("/v1/capacity")).json()
        assert capacity["utilization"] == pytest.approx(0.85, abs=0.05)
        assert capacity["headroom"]["slowpass"]["more_sessions"] == 0
        assert len(capacity["sessions"]) == 3 and "slowpass" in capacity["profile"]
        assert all("session_id" not in s and "fps" in s for s in capacity["sessions"])  # ids: admin only
        await pc.close()
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        body: dict[str, Any] = resp.json()
        assert body["error"] == "over_capacity" and body["limit"] == "utilization"
        assert "predicted device utilization" in body["reason"] and "3 live session(s)" in body["reason"]
        assert whip.status_code == 503 and whip.headers["retry-after"] == "5"
        assert whip.json()["error"] == "over_capacity"
        assert 'streamserve_admission_refusals_total{limit="utilization",pipeline="slowpass"} 3.0' in metrics
        # The admitted three keep their rate: every frame sent comes back (10 fps each).
        results = await asyncio.gather(*(stream(c, 3.0) for c in clients))
        for sent, got in results:
            assert got >= 0.9 * sent, results
        stats = await clients[0].stats()
        assert stats["session"]["slo"]["level"] == 0 and stats["session"]["deadline_misses"] == 0
    finally:
        for c in clients:
            await c.close()
