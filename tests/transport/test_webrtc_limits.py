"""Offer complexity limits, the event loop kept free while offers are handled, the remote ICE
candidate cap (offer and trickle), and RFC 4566's default direction.

The app runs in the test's own event loop (tests/transport/inprocess.py), so a heartbeat task there
sees every stall the server's offer handling causes.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from streamserve.transport.ice_budget import CandidateLimits
from streamserve.transport.offer_limits import DEFAULT_LIMITS, OfferLimits, check_offer_text, with_directions
from tests.transport.inprocess import Heartbeat, InProcess, in_process

LIMITS = DEFAULT_LIMITS


async def aiortc_offer(videos: int = 1, audio: bool = False, data: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for _ in range(videos):
        pc.addTransceiver("video", direction="sendrecv")
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if data:
        pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def session_part(sdp: str) -> str:
    """The session-level lines plus the ICE and DTLS attributes, which media sections inherit."""
    head = sdp.split("m=", 1)[0].replace("a=group:BUNDLE 0 1\r\n", "")
    shared = [line for line in sdp.split("\r\n")
              if line.startswith(("a=ice-ufrag", "a=ice-pwd", "a=fingerprint:sha-256", "a=setup"))]
    return head + "\r\n".join(dict.fromkeys(shared)) + "\r\n"


def many_mlines(sdp: str, count: int) -> str:
    """A compact offer with `count` m-lines (PCMU audio after one video), 65 bytes each,
    like the 62 KB / 900 m-line offer of the issue."""
    video = sdp.split("m=")[1].split("a=ice-ufrag")[0]
    extra = "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n" * (count - 1)
    return session_part(sdp) + "m=" + video + extra


async def post_offer(server: InProcess, sdp: str) -> httpx.Response:
    return await server.http.post("/v1/webrtc/offer", json={"sdp": sdp, "type": "offer"})


async def close_all(server: InProcess) -> None:
    await asyncio.gather(*(peer.close("test over") for peer in list(server.webrtc.peers.values())))


# --- offer complexity -----------------------------------------------------------------------------

async def test_a_900_mline_offer_is_refused_at_once_and_the_loop_never_stalls() -> None:
    sdp = many_mlines(await aiortc_offer(), 900)
    assert 40_000 < len(sdp) < LIMITS.max_bytes  # under the size limit: only the m-line count stops it
    async with in_process() as server, Heartbeat() as heart:
        reply = await post_offer(server, sdp)  # before: a 500 from aiortc after seconds of work
        await asyncio.sleep(0.05)
        assert reply.status_code == 400, reply.text
        assert reply.json() == {"error": "offer_too_complex",
                                "message": "SDP offer has 900 m-lines; the limit is 8"}
        assert server.webrtc.peers == {}
        assert (await server.http.get("/v1/sessions")).json() == []
    print(f"longest event-loop stall {1000 * heart.longest_gap:.1f} ms")
    assert heart.beats > 5 and heart.longest_gap < 0.25  # was 1.5 s with the whole offer answered


async def test_eight_mlines_are_answered_and_nine_refused_without_stalling() -> None:
    eight = await aiortc_offer(videos=6, audio=True, data=True)
    nine = await aiortc_offer(videos=7, audio=True, data=True)
    assert eight.count("\nm=") == 8 and nine.count("\nm=") == 9
    async with in_process() as server:
        assert (await post_offer(server, await aiortc_offer())).status_code == 200  # warm-up: imports etc.
        await close_all(server)
        async with Heartbeat() as heart:
            reply = await post_offer(server, eight)
            assert reply.status_code == 200, reply.text
            assert reply.json()["sdp"].count("\nm=") == 8
            reply = await post_offer(server, nine)
            assert reply.status_code == 400 and "9 m-lines; the limit is 8" in reply.json()["message"]
            await asyncio.sleep(0.05)
        await close_all(server)
    print(f"longest event-loop stall {1000 * heart.longest_gap:.1f} ms")
    assert heart.longest_gap < 0.25  # the largest offer allowed is answered in ~20 ms of loop time


async def test_size_lines_and_candidates_are_limited_with_the_limit_named() -> None:
    sdp = await aiortc_offer()
    async with in_process() as server:
        padded = sdp + "a=x-pad:" + "p" * 2000 + "\r\n"
        big = sdp + "".join(f"a=x-{i}:{'q' * 1000}\r\n" for i in range(70))
        reply = await post_offer(server, big)
        assert reply.status_code == 413 and reply.json()["error"] == "too_large"
        assert f"exceeds the limit of {LIMITS.max_bytes} bytes" in reply.json()["message"]
        long_line = sdp + "a=x-long:" + "l" * 5000 + "\r\n"
        reply = await post_offer(server, long_line)
        assert reply.status_code == 400 and "characters long; the limit is 4096" in reply.json()["message"]
        many_lines = sdp + "a=x\r\n" * 1000
        reply = await post_offer(server, many_lines)
        assert reply.status_code == 400 and "lines; the limit is 1000" in reply.json()["message"]
        candidate = re.search(r"^a=candidate:.*$", sdp, re.M)
        assert candidate is not None
        candidates = sdp.replace(candidate.group(0), "\r\n".join([candidate.group(0)] * 300))
        reply = await post_offer(server, candidates)
        assert reply.status_code == 400
        assert "candidate lines; the limit is 256" in reply.json()["message"]
        reply = await post_offer(server, padded)  # one long-ish line is fine
        assert reply.status_code == 200, reply.text
        await close_all(server)
        # WHIP answers the same way.
        whip = await server.http.post("/whip/cam", content=many_mlines(sdp, 20),
                                      headers={"content-type": "application/sdp"})
        assert whip.status_code == 400 and "20 m-lines; the limit is 8" in whip.json()["message"]


def test_offer_limits_validate() -> None:
    with pytest.raises(ValueError, match="max_media must be a positive integer, got 0"):
        OfferLimits(max_media=0)
    with pytest.raises(ValueError, match="max_candidates must be in"):
        CandidateLimits(max_candidates=0)
    check_offer_text("v=0\r\nm=video 9 X 96\r\n", OfferLimits(max_media=1))


# --- RFC 4566: no direction attribute means sendrecv ----------------------------------------------

def test_the_default_direction_is_written_in() -> None:
    sdp = "v=0\r\ns=-\r\nm=video 9 P 96\r\na=mid:0\r\nm=application 9 P x\r\na=mid:1\r\n"
    assert with_directions(sdp) == ("v=0\r\ns=-\r\nm=video 9 P 96\r\na=sendrecv\r\na=mid:0\r\n"
                                    "m=application 9 P x\r\na=mid:1\r\n")
    session = "v=0\r\na=recvonly\r\nm=audio 9 P 0\r\nm=video 9 P 96\r\na=inactive\r\n"
    assert with_directions(session).split("\r\n")[3] == "a=recvonly"  # the session's direction
    assert with_directions(session).count("a=inactive") == 1
    assert with_directions(sdp.replace("a=mid:0", "a=sendonly")) == sdp.replace("a=mid:0", "a=sendonly")


async def test_an_offer_without_direction_is_answered_as_sendrecv() -> None:
    sdp = (await aiortc_offer()).replace("a=sendrecv\r\n", "")
    assert not re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)", sdp, re.M)
    async with in_process() as server:
        reply = await post_offer(server, sdp)  # was a 500 from aiortc's createAnswer
        assert reply.status_code == 200, reply.text
        assert "a=sendrecv" in reply.json()["sdp"].split("m=video")[1].split("m=")[0]
        await close_all(server)


# --- remote ICE candidates: capped per peer -------------------------------------------------------

class Recorder(asyncio.DatagramProtocol):
    """A UDP socket that remembers whether anything (a STUN check) reached it."""

    def __init__(self, contacted: asyncio.Event) -> None:
        self.datagrams = 0
        self._contacted = contacted

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        self._contacted.set()


async def test_an_offer_with_hundreds_of_candidates_contacts_at_most_the_cap() -> None:
    loop = asyncio.get_running_loop()
    contacted = asyncio.Event()
    sockets = [await loop.create_datagram_endpoint(lambda: Recorder(contacted), local_addr=("127.0.0.1", 0))
               for _ in range(200)]
    ports = [t.get_extra_info("sockname")[1] for t, _ in sockets]
    # Priorities fall with the index: the cap keeps the first 16 addresses.
    lines = "".join(f"a=candidate:c{i} 1 udp {2_000_000_000 - i} 127.0.0.1 {port} typ host\r\n"
                    for i, port in enumerate(ports))
    sdp = re.sub(r"^a=candidate:.*\r\n", "", await aiortc_offer(data=False), flags=re.M)
    sdp = sdp.replace("a=end-of-candidates", lines + "a=end-of-candidates")
    try:
        async with in_process() as server:
            reply = await post_offer(server, sdp)
            assert reply.status_code == 200, reply.text
            peer = next(iter(server.webrtc.peers.values()))
            async with asyncio.timeout(10):
                await contacted.wait()
            await asyncio.sleep(3.0)  # aioice checks a pair every 20 ms: 200 addresses take 4 s
            reached = [i for i, (_, recorder) in enumerate(sockets) if recorder.datagrams]
            assert 0 < len(reached) <= CandidateLimits().max_candidates, reached
            assert set(reached) <= set(range(16))  # the highest-priority ones
            assert peer.candidates.used == 16 and peer.candidates.ignored == 184
            await close_all(server)
    finally:
        for transport, _ in sockets:
            transport.close()


async def test_trickled_candidates_are_capped_and_rate_limited() -> None:
    async with in_process() as server:
        reply = await server.http.post("/whip/cam", content=await aiortc_offer(data=False),
                                       headers={"content-type": "application/sdp"})
        assert reply.status_code == 201, reply.text
        location = reply.headers["location"]
        peer = next(iter(server.whip.resources.values())).peer
        used = peer.candidates.used  # the offer's own addresses

        async def trickle(first: int, count: int) -> httpx.Response:
            frag = "".join(f"a=candidate:t{i} 1 udp 100 127.0.0.1 {20000 + i} typ host\r\n"
                           for i in range(first, first + count))
            return await server.http.patch(location, content=frag,
                                           headers={"content-type": "application/trickle-ice-sdpfrag"})

        assert (await trickle(0, 10)).status_code == 204
        assert peer.candidates.used == min(16, used + 10)
        reply = await trickle(10, 40)  # a burst past the bucket
        assert reply.status_code == 429 and reply.json()["error"] == "too_many_candidates"
        assert "candidates per second" in reply.json()["message"]
        assert peer.candidates.used == 16 and peer.candidates.ignored > 0
        remote = peer.pc.getTransceivers()[0].receiver.transport.transport.getRemoteCandidates()
        assert len({(c.ip, c.port) for c in remote}) <= 16
        await peer.close("test over")
