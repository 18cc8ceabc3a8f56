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


# --- loss: give up on a lost packet, ask for a keyframe, drop frames until it comes ---------------

VP8_KEY = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + b"key"  # frame tag bit 0 = 0, start code
VP8_DELTA = bytes([0x11, 0x02, 0x00]) + b"delta"


def lossy_buffer() -> FrameEndJitterBuffer:
    return FrameEndJitterBuffer(capacity=128, is_video=True, gap_wait_s=0.1, keyframe_wait_s=1.0,
                                pli_repeat_s=0.25)


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> tuple[list[int], list[int]]:
    """(timestamps of the frames out, indices of the packets whose `add` asked for a PLI)."""
    out, plis = [], []
    for i, p in enumerate(packets):
        pli, frame = buffer.add(p)
        if frame is not None:
            out.append(frame.timestamp)
        if pli:
            plis.append(i)
    return out, plis


def one_packet_frames(first_seq: int, count: int, *, key_at: set[int] = frozenset(),  # type: ignore[assignment]
                      lose: set[int] = frozenset()) -> list[RtpPacket]:  # type: ignore[assignment]
    """`count` one-packet frames at 30 fps (3000 ticks apart); frame k lost when k in `lose`."""
    return [packet(first_seq + k, 3000 * k, VP8_KEY if k in key_at else VP8_DELTA, marker=True)
            for k in range(count) if k not in lose]


def test_keyframes_are_recognised() -> None:
    from streamserve.transport.jitter import is_keyframe

    assert is_keyframe(VP8_KEY) and not is_keyframe(VP8_DELTA)
    assert is_keyframe(b"\x00\x00\x00\x01\x67sps\x00\x00\x00\x01\x65idr")  # SPS + IDR
    assert not is_keyframe(b"\x00\x00\x00\x01\x41slice")  # a non-IDR slice


def test_stock_buffer_freezes_on_a_lost_packet() -> None:
    # What the issue measured: nothing after the gap comes out until the buffer overflows.
    out, plis = feed(JitterBuffer(capacity=128, is_video=True), one_packet_frames(1000, 60, lose={5}))
    assert max(out) < 5 * 3000 and plis == []


def test_a_stale_gap_is_skipped_with_a_pli_and_frames_wait_for_a_keyframe() -> None:
    # Frame 5 lost; frames after it are deltas until a keyframe at 12 (the answer to the PLI).
    packets = one_packet_frames(1000, 30, key_at={0, 12}, lose={5})
    buffer = lossy_buffer()
    out, plis = feed(buffer, packets)
    assert out[:5] == [0, 3000, 6000, 9000, 12000]  # before the loss: at once
    # gap_wait 0.1 s = 9000 ticks: frame 8 (24000) is the first more than 0.1 s past frame 4 (12000).
    assert plis == [packets.index(next(p for p in packets if p.timestamp == 24000))]
    assert [t for t in out if 12000 < t < 36000] == []  # deltas decoded from a broken reference: dropped
    assert out[5:] == [3000 * k for k in range(12, 30)]  # from the keyframe on, every frame
    assert buffer.gaps_skipped == 1 and buffer.frames_dropped == 6  # frames 6 to 11
    assert buffer.keyframe_requests == 1


def test_the_keyframe_request_is_repeated_and_the_wait_is_bounded() -> None:
    # No keyframe ever comes (a sender that ignores PLI): ask every 0.25 s, give up after 1 s.
    packets = one_packet_frames(1000, 80, key_at={0}, lose={5})
    buffer = lossy_buffer()
    out, plis = feed(buffer, packets)
    assert len(plis) >= 4
    resumed = [t for t in out if t > 12000]
    assert resumed and resumed[0] <= 12000 + 3000 * 6 + 90_000 + 3000  # within keyframe_wait after the skip
    assert resumed == list(range(resumed[0], 80 * 3000, 3000))


def test_a_gap_filled_in_time_by_a_retransmission_loses_nothing() -> None:
    packets = one_packet_frames(1000, 12, key_at={0})
    lost = packets.pop(5)
    packets.insert(7, lost)  # arrives two frames late (a NACK answered)
    out, plis = feed(lossy_buffer(), packets)
    # aiortc's receiver takes one frame per packet added, so the frames held behind the gap leave
    # one per packet that follows: in order, none lost, no PLI.
    assert out == [3000 * k for k in range(10)] and plis == []


def test_a_late_retransmission_of_a_skipped_packet_is_ignored() -> None:
    packets = one_packet_frames(1000, 60, key_at={0, 20}, lose={5})
    stale = one_packet_frames(1000, 6)[5]
    out, _ = feed(lossy_buffer(), packets[:40] + [stale] + packets[40:])
    assert 15000 not in out and out[-1] == 59 * 3000  # the stream goes on, the old frame stays out


def test_missing_packets_are_asked_for_again_until_they_arrive() -> None:
    from streamserve.transport.jitter import RetryingNackGenerator

    now = [0.0]
    nacks = RetryingNackGenerator(retry_s=4.0, clock=lambda: now[0])
    asks = []
    for seq in range(100, 130):  # one packet a second (exact floats); 105 is lost, and its answers
        now[0] = float(seq - 100)
        if seq != 105 and nacks.add(packet(seq, seq * 300, b"x")):
            asks.append((seq, sorted(nacks.missing)))
    assert asks[0] == (106, [105])  # the stock generator's NACK, at the gap
    assert [seq for seq, _ in asks] == [106, 110, 114, 118, 122, 126]  # then every retry_s
    assert all(missing == [105] for _, missing in asks)
    nacks.add(packet(105, 105 * 300, b"x"))  # the retransmission arrives: no more asking
    now[0] += 10.0
    assert not nacks.add(packet(130, 130 * 300, b"x")) and nacks.missing == set()


def test_packets_given_up_on_are_no_longer_asked_for() -> None:
    from streamserve.transport.jitter import RetryingNackGenerator

    nacks = RetryingNackGenerator()
    for seq in (100, 101, 103, 104, 107):
        nacks.add(packet(seq, 0, b"x"))
    assert nacks.missing == {102, 105, 106}
    nacks.forget_before(105)  # the jitter buffer skipped to 105
    assert nacks.missing == {105, 106}


def test_without_recovery_the_buffer_waits_like_aiortc() -> None:
    packets = one_packet_frames(1000, 60, key_at={0}, lose={5})
    out, plis = feed(FrameEndJitterBuffer(capacity=128, recover=False), packets)
    assert out == [3000 * k for k in range(5)] and plis == []  # frozen at the gap, as stock
