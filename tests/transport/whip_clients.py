"""Test clients for WHIP and WHEP: an aiortc publisher shaped like OBS Studio 30.2+, and a viewer."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from typing import Any

import av
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamserve.transport.probe import StampedVideoTrack, StampReader, read_stamp, stamp, unwrap
from tests.transport.client import ToneTrack

# What OBS 30.2 (libdatachannel) sends: Opus at mid 0, H.264 (constrained baseline, packetization
# mode 1, no B-frames) at mid 1, both sendonly, BUNDLE, and not a single ICE candidate.
OBS_OFFER = """v=0
o=rtc 2890844526 0 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=group:LS 0 1
a=msid-semantic:WMS *
a=ice-options:ice2,trickle
a=fingerprint:sha-256 {fingerprint}
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=mid:0
a=sendonly
a=ssrc:1405473530 cname:obs-cname
a=ssrc:1405473530 msid:obs-stream obs-audio
a=msid:obs-stream obs-audio
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1
a=setup:actpass
a=ice-ufrag:Fx3q
a=ice-pwd:kK0u9tYbW6vQ8cX1nZ2mL7dA
m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=mid:1
a=sendonly
a=ssrc:2405473531 cname:obs-cname
a=ssrc:2405473531 msid:obs-stream obs-video
a=msid:obs-stream obs-video
a=rtcp-mux
a=rtpmap:96 H264/90000
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtcp-fb:96 goog-remb
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1
a=setup:actpass
a=ice-ufrag:Fx3q
a=ice-pwd:kK0u9tYbW6vQ8cX1nZ2mL7dA
""".replace("\n", "\r\n").format(fingerprint=":".join(f"{b:02X}" for b in range(32)))


def strip_candidates(sdp: str) -> str:
    """The offer without a=candidate / a=end-of-candidates lines, as OBS 30.2+ sends it."""
    lines = [line for line in sdp.splitlines()
             if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


class EncodedVideoTrack(MediaStreamTrack):
    """Stamped frames that we H.264-encode ourselves, as OBS does (x264, no B-frames, a keyframe only
    every `keyint` frames), handed to aiortc as packets. `skip_first_keyframe` drops the first IDR so
    the receiver cannot decode; `request_keyframe()` (what OBS does on a PLI) makes the next one IDR."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: float = 15.0, *, keyint: int = 1000,
                 skip_first_keyframe: bool = False) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.codec = av.CodecContext.create("libx264", "w")
        assert isinstance(self.codec, av.VideoCodecContext)
        self.codec.width, self.codec.height, self.codec.pix_fmt = width, height, "yuv420p"
        self.codec.time_base = Fraction(1, round(fps))
        self.codec.options = {"bframes": "0", "keyint": str(keyint), "tune": "zerolatency", "preset": "ultrafast",
                              "scenecut": "0"}
        self.skip_first_keyframe = skip_first_keyframe
        self.keyframe_requests = 0
        self.keyframes_sent = 0
        self._force = False
        self._index = 0
        self._start: float | None = None

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self._force = True

    async def recv(self) -> av.Packet:
        while True:
            index, self._index = self._index, self._index + 1
            self._start = self._start or time.monotonic()
            delay = self._start + index / self.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = av.VideoFrame.from_ndarray(stamp(index, self.height, self.width), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index
            if self._force:
                frame.pict_type = av.video.frame.PictureType.I
                self._force = False
            for packet in self.codec.encode(frame):
                if packet.is_keyframe and self.skip_first_keyframe:
                    self.skip_first_keyframe = False
                    continue
                self.keyframes_sent += packet.is_keyframe
                packet.time_base = self.codec.time_base
                return packet


class ObsLikePublisher:
    """Publishes like OBS: Opus (mid 0) + H.264 (mid 1), sendonly, an offer with no candidates."""

    def __init__(self, base_url: str, *, width: int = 128, height: int = 96, fps: float = 15.0,
                 video: MediaStreamTrack | None = None) -> None:
        self.base_url = base_url
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = video or StampedVideoTrack(width, height, fps)
        self.pc.addTransceiver(ToneTrack(), direction="sendonly")
        transceiver = self.pc.addTransceiver(self.video, direction="sendonly")
        self.video_sender = transceiver.sender
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() == "video/h264" and c.parameters.get("profile-level-id") == "42e01f"]
        transceiver.setCodecPreferences(h264)  # constrained baseline: no B-frames
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)
        self.offer_sdp = ""
        self.location: str | None = None

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer_sdp = strip_candidates(self.pc.localDescription.sdp)
        return self.offer_sdp

    async def publish(self, http: httpx.AsyncClient, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        reply = await http.post(path, content=await self.offer(), headers=headers)
        if reply.status_code == 201:
            self.location = reply.headers["location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(reply.text, "answer"))
        return reply

    async def close(self) -> None:
        await self.pc.close()


class WhepViewer:
    """A recvonly viewer that reads the stamp index of every frame it receives."""

    def __init__(self, *, mirrored: bool = False) -> None:
        self.pc = RTCConfigurationPeer()
        self.pc.addTransceiver("video", direction="recvonly")
        self._frame = asyncio.Event()
        self.reader = StampReader()
        self.mirrored = mirrored
        self.location: str | None = None
        self.ended = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        """Like StampReader.consume, but `mirrored` may change while it runs."""
        previous: int | None = None
        try:
            while True:
                frame = await track.recv()
                rgb = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                self.reader.last_frame = rgb
                index = read_stamp(rgb[:, ::-1] if self.mirrored else rgb)
                if index is None:
                    self.reader.unreadable += 1
                else:
                    previous = unwrap(index, previous)
                    self.reader.seen.append((previous, time.monotonic()))
                    self._frame.set()
        except MediaStreamError:
            pass
        finally:
            self.ended.set()

    async def watch(self, http: httpx.AsyncClient, path: str) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        reply = await http.post(path, content=self.pc.localDescription.sdp,
                                headers={"Content-Type": "application/sdp"})
        if reply.status_code == 201:
            self.location = reply.headers["location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(reply.text, "answer"))
        return reply

    async def frames(self, count: int, within: float = 15.0) -> list[int]:
        """Wait until `count` more readable frames arrived; their indices."""
        start = len(self.reader.seen)
        async with asyncio.timeout(within):
            while len(self.reader.seen) < start + count:
                self._frame.clear()
                await self._frame.wait()
        return [i for i, _ in self.reader.seen[start:]]

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def RTCConfigurationPeer() -> RTCPeerConnection:  # noqa: N802 - reads like a constructor
    """A peer connection that uses no STUN server (nothing outside 127.0.0.1 is reachable)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))
