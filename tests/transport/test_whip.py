"""WHIP ingest and WHEP egress against the real server: an OBS-shaped publisher (H.264 + Opus,
sendonly, no candidates in the offer), viewers pulling the processed output, and every error status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from streamserve.core.config import ServerConfig
from streamserve.core.errors import BadRequest
from streamserve.core.ports import SessionFactory
from streamserve.transport.whip import WhipTransport, params_from_query
from streamserve.transport.whip_http import ice_link_headers, parse_sdpfrag
from tests.conftest import LiveServer
from tests.transport.whip_clients import OBS_OFFER, EncodedVideoTrack, ObsLikePublisher, WhepViewer

TOKEN = "obs-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SDP = {"Content-Type": "application/sdp"}


@pytest.fixture
def whip(server_factory: Callable[..., LiveServer]) -> tuple[LiveServer, WhipTransport]:
    built: list[WhipTransport] = []

    def make(sessions: SessionFactory, config: ServerConfig) -> WhipTransport:
        built.append(WhipTransport(sessions, config))
        return built[-1]

    config = ServerConfig(pipeline="passthrough", port=0, tokens=(TOKEN,), ice_servers=("turn:127.0.0.1:3478",))
    return server_factory(config, transports=[make]), built[0]


async def test_obs_publisher_to_whep_viewers(whip: tuple[LiveServer, WhipTransport]) -> None:
    server, transport = whip
    publisher = ObsLikePublisher(server.url)
    viewers = [WhepViewer(mirrored=True), WhepViewer(mirrored=True)]
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        try:
            reply = await publisher.publish(http, "/whip/live1?pipeline=passthrough&mirror=true", TOKEN)
            # The offer looked like OBS's: audio first, both sendonly, H.264 only, no candidates.
            offer = publisher.offer_sdp
            assert offer.index("m=audio") < offer.index("m=video") and offer.count("a=sendonly") == 2
            assert "a=candidate" not in offer and "H264/90000" in offer and "VP8" not in offer
            assert reply.status_code == 201, reply.text
            assert reply.headers["content-type"] == "application/sdp"
            assert reply.headers["location"].startswith("/whip/live1/")
            assert reply.headers["etag"].startswith('"')
            assert reply.headers.get_list("link") == ['<turn:127.0.0.1:3478>; rel="ice-server"']
            assert "a=candidate" in reply.text and reply.text.count("a=recvonly") == 2
            assert "H264/90000" in reply.text and "opus/48000" in reply.text
            async with asyncio.timeout(15):
                await publisher.connected.wait()  # the server learned our address from our checks

            stats = (await http.get("/v1/streams/live1")).json()
            assert stats["source"] == "whip" and stats["params"] == {"mirror": True}

            for viewer in viewers:
                answer = await viewer.watch(http, "/whep/live1")
                assert answer.status_code == 201, answer.text
                assert answer.headers["location"].startswith("/whep/live1/")
                assert "VP8/90000" in answer.text.split("m=video", 1)[1].split("a=rtpmap", 2)[1]
            got = await asyncio.gather(*(v.frames(10) for v in viewers))
            for indices in got:  # processed (mirrored) frames, in order, at both viewers
                assert indices == sorted(indices) and len(set(indices)) == len(indices)
            assert (await http.get("/v1/streams/live1")).json()["viewers"] == 2

            # A live parameter change by stream name reaches the output.
            patched = await http.patch("/v1/streams/live1", json={"mirror": False}, headers=AUTH)
            assert patched.status_code == 200 and patched.json()["params"] == {"mirror": False}
            viewers[0].mirrored = viewers[1].mirrored = False  # only unmirrored frames read as stamps now
            await asyncio.sleep(0.5)
            await viewers[1].frames(5)

            # DELETE one viewer: the stream and the other viewer go on.
            gone = await http.delete(viewers[0].location or "")
            assert gone.status_code == 200
            assert sum(r.kind == "whep" for r in transport.resources.values()) == 1
            await viewers[1].frames(5)
            assert len(server.manager.list()) == 1

            # DELETE the WHIP resource: the session ends, the remaining viewer's track ends.
            ended = await http.delete(publisher.location or "", headers=AUTH)
            assert ended.status_code == 200
            async with asyncio.timeout(10):
                await viewers[1].ended.wait()
            assert server.manager.list() == [] and transport.resources == {}
            assert (await http.post("/whep/live1", content=OBS_OFFER, headers=SDP)).status_code == 404
            assert (await http.delete(publisher.location or "", headers=AUTH)).status_code == 404
        finally:
            await publisher.close()
            for viewer in viewers:
                await viewer.close()


async def test_literal_obs_offer_is_answered(whip: tuple[LiveServer, WhipTransport]) -> None:
    server, _ = whip
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        reply = await http.post("/whip/obs", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert reply.status_code == 201, reply.text
        answer = reply.text
        audio, video = answer.split("m=video")
        assert "m=audio" in audio and "a=mid:0" in audio and "opus/48000/2" in audio and "a=recvonly" in audio
        assert "a=mid:1" in video and "H264/90000" in video and "a=recvonly" in video
        assert "packetization-mode=1" in video and "a=group:BUNDLE 0 1" in answer
        busy = await http.post("/whip/obs", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert busy.status_code == 409 and busy.json()["error"] == "stream_busy"
        assert (await http.delete(reply.headers["location"], headers=AUTH)).status_code == 200
        assert server.manager.list() == []


async def test_error_statuses(whip: tuple[LiveServer, WhipTransport]) -> None:
    server, _ = whip
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        missing = await http.post("/whip/s", content=OBS_OFFER, headers=SDP)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await http.post("/whip/s", content=OBS_OFFER, headers={**SDP, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        ctype = await http.post("/whip/s", content=OBS_OFFER, headers={**AUTH, "Content-Type": "application/json"})
        assert ctype.status_code == 415
        bad = await http.post("/whip/s", content="hello", headers={**SDP, **AUTH})
        assert bad.status_code == 400 and "malformed SDP" in bad.json()["message"]
        no_ice = OBS_OFFER.replace("a=ice-pwd:kK0u9tYbW6vQ8cX1nZ2mL7dA\r\n", "")
        bad = await http.post("/whip/s", content=no_ice, headers={**SDP, **AUTH})
        assert bad.status_code == 400 and "ICE" in bad.json()["message"]
        recvonly = OBS_OFFER.replace("a=sendonly", "a=recvonly")
        bad = await http.post("/whip/s", content=recvonly, headers={**SDP, **AUTH})
        assert bad.status_code == 400 and "sendonly" in bad.json()["message"]
        unknown = await http.post("/whip/s?pipeline=nope", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_pipeline"
        invalid = await http.post("/whip/s?mirror=maybe", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert invalid.status_code == 422 and invalid.json()["field"] == "mirror"
        assert server.manager.list() == []

        options = await http.options("/whip/s")
        assert options.status_code == 204 and options.headers["accept-post"] == "application/sdp"
        assert options.headers["access-control-allow-origin"] == "*"
        assert "Authorization" in options.headers["access-control-allow-headers"]

        created = await http.post("/whip/s", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert created.status_code == 201
        location, etag = created.headers["location"], created.headers["etag"]
        frag = "a=ice-ufrag:Fx3q\r\na=ice-pwd:kK0u9tYbW6vQ8cX1nZ2mL7dA\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n" \
               "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n"
        trickle = {**AUTH, "Content-Type": "application/trickle-ice-sdpfrag"}
        assert (await http.patch(location, content=frag, headers={**trickle, "If-Match": etag})).status_code == 204
        assert (await http.patch(location, content=frag, headers=trickle)).status_code == 204
        stale = await http.patch(location, content=frag, headers={**trickle, "If-Match": '"other"'})
        assert stale.status_code == 412
        restart = frag.replace("Fx3q", "New1")
        assert (await http.patch(location, content=restart, headers={**trickle, "If-Match": "*"})).status_code == 422
        assert (await http.patch(location, content=frag, headers={**AUTH, **SDP})).status_code == 415
        assert (await http.patch(location, content=frag, headers={"Content-Type": trickle["Content-Type"]})) \
            .status_code == 401
        assert (await http.get(location)).status_code == 405
        assert (await http.delete(location)).status_code == 401
        assert (await http.delete(location + "x", headers=AUTH)).status_code == 404
        assert (await http.delete(location, headers=AUTH)).status_code == 200

        assert (await http.post("/whep/nobody", content=OBS_OFFER, headers=SDP)).status_code == 404
        assert (await http.get("/v1/streams/nobody")).status_code == 404
        assert (await http.patch("/v1/streams/nobody", json={}, headers=AUTH)).status_code == 404
        assert (await http.patch("/v1/streams/nobody", json={})).status_code == 404  # not live: nothing to guard


async def test_whep_needs_a_receiving_offer(whip: tuple[LiveServer, WhipTransport]) -> None:
    server, _ = whip
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        created = await http.post("/whip/w", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert created.status_code == 201
        sendonly = await http.post("/whep/w", content=OBS_OFFER, headers=SDP)
        assert sendonly.status_code == 400 and "recvonly" in sendonly.json()["message"]
        assert (await http.post("/whep/w", content=OBS_OFFER, headers={"Content-Type": "text/plain"})) \
            .status_code == 415
        page = await http.get("/view/w")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/whep/" in page.text or "view.js" in page.text
        assert (await http.delete(created.headers["location"], headers=AUTH)).status_code == 200


def test_params_from_query() -> None:
    pipeline, params = params_from_query({"pipeline": "video", "style": "sketch", "steps": "2", "mirror": "true",
                                          "prompt": "a \"fox\""})
    assert pipeline == "video"
    assert params == {"style": "sketch", "steps": 2, "mirror": True, "prompt": 'a "fox"'}
    assert json.dumps(params_from_query({})) == json.dumps([None, {}])


async def test_stream_list_and_view_form(whip: tuple[LiveServer, WhipTransport]) -> None:
    server, _ = whip
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        assert (await http.get("/v1/streams")).json() == []
        spaced = await http.post("/whip/cam%201?pipeline=passthrough", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert spaced.status_code == 400 and "A-Z a-z 0-9" in spaced.json()["message"]
        created = await http.post("/whip/cam.1?pipeline=passthrough", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert created.status_code == 201 and created.headers["location"].startswith("/whip/cam.1/")
        listed = (await http.get("/v1/streams")).json()
        assert listed == [{"stream": "cam.1", "session_id": server.manager.list()[0].id, "pipeline": "passthrough",
                           "viewers": 0, "view": "/view/cam.1"}]
        form = await http.get("/view", params={"stream": "cam.1"})
        assert form.status_code == 303 and form.headers["location"] == "/view/cam.1"
        assert (await http.get("/view")).status_code == 400
        demo = await http.get("/")
        assert 'action="/view"' in demo.text and 'href="/v1/streams"' in demo.text
        assert (await http.delete(created.headers["location"], headers=AUTH)).status_code == 200
        assert (await http.get("/v1/streams")).json() == []


async def test_undecodable_video_gets_a_keyframe_request(whip: tuple[LiveServer, WhipTransport]) -> None:
    """The publisher's first IDR is lost: the server cannot decode, answers with a PLI, the publisher
    (like OBS) sends an IDR, and processed frames flow to a viewer."""
    server, _ = whip
    track = EncodedVideoTrack(128, 96, fps=15, skip_first_keyframe=True)
    publisher = ObsLikePublisher(server.url, video=track)
    # aiortc routes an incoming PLI to the sender's private `_send_keyframe`; with pre-encoded packets
    # the encoder is ours, so we take the request there, as OBS's encoder does.
    publisher.video_sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
    viewer = WhepViewer()
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        try:
            assert (await publisher.publish(http, "/whip/pli", TOKEN)).status_code == 201
            assert (await viewer.watch(http, "/whep/pli")).status_code == 201
            indices = await viewer.frames(5)
            assert track.keyframe_requests >= 1 and track.keyframes_sent >= 1
            assert indices == sorted(indices)
            assert (await http.delete(publisher.location or "", headers=AUTH)).status_code == 200
        finally:
            await publisher.close()
            await viewer.close()


def test_ice_link_headers_and_sdpfrag() -> None:
    assert ice_link_headers(("stun:stun.example.org:3478", "turn:turn.example.org?transport=udp")) == [
        '<stun:stun.example.org:3478>; rel="ice-server"', '<turn:turn.example.org?transport=udp>; rel="ice-server"']
    frag = parse_sdpfrag("a=ice-ufrag:abc\r\na=ice-pwd:xyz\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:1\r\n"
                         "a=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n")
    assert (frag.ufrag, frag.pwd, frag.end) == ("abc", "xyz", True)
    (candidate,) = frag.candidates
    assert (candidate.ip, candidate.port, candidate.sdpMid, candidate.type) == ("192.0.2.1", 5000, "1", "host")
    with pytest.raises(BadRequest, match="malformed candidate"):
        parse_sdpfrag("a=candidate:1 1 udp\r\n")
