"""SDP offer checks, and a Peer on an in-memory loopback pair with a fake session behind it."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from streamserve.core.errors import BadRequest
from streamserve.transport.peer import Peer, PeerOptions
from streamserve.transport.probe import StampedVideoTrack, StampReader
from streamserve.transport.sdp import parse_offer
from tests.transport.fakes import FakeSessions


async def make_offer(*, audio: bool = False, video_direction: str = "sendrecv",
                     channel: bool = True) -> tuple[RTCPeerConnection, str]:
    """A client offer (stamped 64x64 video, optional audio and control channel)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video_direction == "sendrecv":
        pc.addTrack(StampedVideoTrack(64, 64))
    else:
        pc.addTransceiver("video", direction=video_direction)
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if channel:
        pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_parse_offer_summarises_media() -> None:
    pc, sdp = await make_offer(audio=True)
    offer = parse_offer(sdp)
    await pc.close()
    assert [m.kind for m in offer.media] == ["video", "audio", "application"]
    video = offer.first("video")
    assert video is not None and video.client_sends and video.client_receives
    assert video.codecs[0] == "video/VP8" and "video/H264" in video.codecs


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("", "empty"),
        ("hello", "must start with a v= line"),
        ("v=0\r\nhello world\r\n", "line 2 is not <letter>=<value>"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no media sections"),
        ("v=0\r\nm=video abc\r\n", "malformed SDP"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
         "c=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=mid:0\r\n", "ICE username fragment or password"),
    ],
)
def test_parse_offer_rejects_with_a_reason(sdp: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason) as info:
        parse_offer(sdp)
    assert info.value.status == 400


async def test_parse_offer_rejects_codecs_we_lack() -> None:
    pc, sdp = await make_offer()
    await pc.close()
    vp9 = sdp.replace("VP8/90000", "VP9/90000").replace("H264/90000", "AV1/90000")
    with pytest.raises(BadRequest, match="no codec in common; offered .*VP9"):
        parse_offer(vp9)


async def open_peer(sessions: FakeSessions, **options: object) -> Peer:
    handle = await sessions.open("passthrough", None, source="test")
    return Peer(handle, sessions, PeerOptions(**options))  # type: ignore[arg-type]


async def test_control_messages() -> None:
    sessions = FakeSessions()
    peer = await open_peer(sessions)
    reply = await peer.handle_control(json.dumps({"type": "update", "id": 7, "params": {"mirror": True}}))
    assert reply == {"type": "params", "id": 7, "params": {"mirror": True}}
    reply = await peer.handle_control(json.dumps({"type": "update", "params": {"mirror": "yes"}}))
    assert reply is not None and reply["type"] == "error" and reply["error"] == "invalid_params"
    assert reply["field"] == "mirror" and "mirror" in reply["message"]
    reply = await peer.handle_control(json.dumps({"type": "update", "params": {"nope": 1}}))
    assert reply is not None and reply["field"] == "nope"
    reply = await peer.handle_control("{not json")
    assert reply is not None and reply["error"] == "bad_request"
    reply = await peer.handle_control(json.dumps({"type": "launch"}))
    assert reply is not None and "unknown control message type 'launch'" in reply["message"]
    assert await peer.handle_control(json.dumps({"type": "ping", "t": 12.5})) == {"type": "pong", "t": 12.5}
    stats = await peer.handle_control(json.dumps({"type": "stats"}))
    assert stats is not None and stats["type"] == "stats" and stats["params"] == {"mirror": True}
    await peer.close("test over")
    assert sessions.closed == [("s1", "test over")]


async def connect(peer: Peer, client: RTCPeerConnection, sdp: str) -> None:
    answer = await peer.accept(sdp)
    assert answer.type == "answer" and "VP8" in answer.sdp
    await client.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))


async def test_loopback_echo_then_silence_ends_the_peer_and_session() -> None:
    sessions = FakeSessions()
    peer = await open_peer(sessions, silence_s=0.6, stats_interval_s=0.2)
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    source = StampedVideoTrack(64, 64)
    client.addTrack(source)
    channel = client.createDataChannel("control")
    stats: list[dict[str, object]] = []
    channel.on("message", lambda m: stats.append(json.loads(m)))
    arrived = asyncio.Event()
    channel.on("message", lambda m: arrived.set())
    reader = StampReader(on_frame=arrived.set)
    readers: list[asyncio.Task[None]] = []
    client.on("track", lambda track: readers.append(asyncio.create_task(reader.consume(track))))
    await client.setLocalDescription(await client.createOffer())
    await connect(peer, client, client.localDescription.sdp)
    async with asyncio.timeout(10):
        while len(reader.seen) < 15 or not stats:
            arrived.clear()
            await arrived.wait()
    indices = [i for i, _ in reader.seen]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert stats[0]["type"] == "stats" and stats[0]["session_id"] == "s1"
    # The client goes silent without closing anything: the watchdog notices.
    source.stop()
    silent_at = asyncio.get_running_loop().time()
    reason = await asyncio.wait_for(peer.wait_closed(), 5)
    waited = asyncio.get_running_loop().time() - silent_at
    assert reason.startswith("client gone: no media"), reason
    assert 0.3 < waited < 2.0
    assert sessions.closed and sessions.closed[0][0] == "s1"
    await client.close()
    for task in readers:
        task.cancel()


async def test_session_end_closes_the_peer() -> None:
    sessions = FakeSessions()
    peer = await open_peer(sessions)
    client, sdp = await make_offer()
    await connect(peer, client, sdp)
    await sessions.close(peer.id, "ended by API request")
    assert await asyncio.wait_for(peer.wait_closed(), 5) == "session ended: ended by API request"
    assert peer.pc.connectionState == "closed"
    await client.close()


async def test_viewer_peer_sends_only_and_leaves_the_session_alone() -> None:
    sessions = FakeSessions()
    peer = await open_peer(sessions, receive=False, owns_session=False)
    client, sdp = await make_offer(video_direction="recvonly", channel=False)
    answer = await peer.accept(sdp)
    assert "a=sendonly" in answer.sdp
    await peer.close("viewer left")
    assert sessions.closed == [] and not sessions.handles["s1"].closed
    await client.close()
