"""The frame-end jitter buffer: a video frame completes at its marker packet, not one frame later."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from streamserve.transport.jitter import FrameEndJitterBuffer, install


def packet(seq: int, timestamp: int, data: bytes, marker: bool = False) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=timestamp, marker=int(marker))
    p._data = data  # type: ignore[attr-defined]  # what aiortc's receiver sets after depacketizing
    return p


def frames(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet whose arrival completed it, timestamp, data) per completed frame."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


# Three frames of 2, 3 and 1 packets; the last packet of each carries the marker bit.
STREAM = [packet(100, 0, b"a1"), packet(101, 0, b"a2", True),
          packet(102, 3000, b"b1"), packet(103, 3000, b"b2"), packet(104, 3000, b"b3", True),
          packet(105, 6000, b"c1", True)]


def test_frames_complete_at_their_marker_packet() -> None:
    assert frames(FrameEndJitterBuffer(capacity=128, is_video=True), STREAM) == [
        (1, 0, b"a1a2"), (4, 3000, b"b1b2b3"), (5, 6000, b"c1")]


def test_stock_buffer_waits_for_the_next_frame() -> None:
    # The one-frame delay this module removes: each frame completes one packet (a frame) later.
    assert frames(JitterBuffer(capacity=128, is_video=True), STREAM) == [(2, 0, b"a1a2"), (5, 3000, b"b1b2b3")]


def test_reordered_packets_wait_for_the_whole_frame() -> None:
    stream = [STREAM[0], STREAM[2], STREAM[4], STREAM[1], STREAM[3], STREAM[5]]
    assert frames(FrameEndJitterBuffer(capacity=128, is_video=True), stream) == [
        (3, 0, b"a1a2"), (4, 3000, b"b1b2b3"), (5, 6000, b"c1")]


def test_a_lost_marker_packet_still_completes_on_the_next_timestamp() -> None:
    stream = [STREAM[0], packet(101, 0, b"a2", marker=False), STREAM[2], STREAM[3], STREAM[4]]
    assert frames(FrameEndJitterBuffer(capacity=128, is_video=True), stream) == [
        (2, 0, b"a1a2"), (4, 3000, b"b1b2b3")]


async def test_install_swaps_only_a_stock_video_buffer() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver("video").receiver
    assert install(video)
    assert isinstance(video._RTCRtpReceiver__jitter_buffer, FrameEndJitterBuffer)  # type: ignore[attr-defined]
    assert not install(video)  # already swapped
    assert not install(pc.addTransceiver("audio").receiver)
    await pc.close()
