"""A video jitter buffer that hands a frame to the decoder as soon as its last packet is in, and
gives up on a lost packet quickly (then asks for a keyframe) instead of freezing.

aiortc's `JitterBuffer` completes a frame only when the first packet of the *next* frame arrives
(`_remove_frame` looks for a change of RTP timestamp), so every received video frame waits one frame
interval (33 ms at 30 fps) before it is even decoded. RTP marks the last packet of a video frame
with the marker bit (RFC 3550 section 5.1; RFC 7741 for VP8, RFC 6184 for H.264), and browsers, OBS
and aiortc's own sender set it. `FrameEndJitterBuffer` completes a frame at its marker packet, when
every packet since the previous frame is present; a frame whose marker packet was lost still
completes on the timestamp change, exactly as before. Loss handling: see the class.

aiortc has no public hook for the receiver's jitter buffer or NACK generator, so `install` swaps the
private attributes of one `RTCRtpReceiver`, in this one place, and leaves the stock buffer in place (logging once) when
that attribute is not there. Upstream: aiortc/aiortc#1418 (a jitter buffer rewrite, open).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket
from aiortc.utils import uint16_add, uint16_gt

log = logging.getLogger(__name__)

_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # name-mangled `self.__jitter_buffer`
_NACK_ATTRIBUTE = "_RTCRtpReceiver__nack_generator"


VIDEO_CLOCK_RATE = 90_000
GAP_WAIT_S = 0.2  # how long (media time) a missing packet may hold back newer frames
KEYFRAME_WAIT_S = 1.0  # after a skipped gap, drop frames until a keyframe arrives, at most this long
PLI_REPEAT_S = 0.25  # while waiting for that keyframe, ask again this often (media time)
NACK_RETRY_S = 0.04  # ask again for packets still missing this long after the last NACK


def is_keyframe(data: bytes) -> bool:
    """Whether a depacketized video frame is a keyframe: VP8 (RFC 6386 9.1) or H.264 Annex B (IDR/SPS)."""
    if data.startswith(b"\x00\x00\x00\x01") or data.startswith(b"\x00\x00\x01"):
        for unit in data.split(b"\x00\x00\x01")[1:]:
            if unit and (unit[0] & 0x1F) in (5, 7):  # IDR slice or sequence parameter set
                return True
        return False
    # VP8 frame tag: bit 0 of byte 0 is 0 for a key frame, which then carries the start code 9d 01 2a.
    return len(data) >= 6 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a"


def _ticks_after(a: int, b: int) -> int:
    """RTP timestamp `a` minus `b`, modulo 2^32, as a signed number of ticks."""
    diff = (a - b) & 0xFFFFFFFF
    return diff - (1 << 32) if diff >= 1 << 31 else diff


class FrameEndJitterBuffer(JitterBuffer):
    """`JitterBuffer` for video that completes a frame at its marker packet and recovers from loss.

    Loss: aiortc's buffer waits for a missing packet until 512 packets later (seconds of frozen video
    at low bitrates) when neither the packet nor its NACK retransmission arrives. Here a gap that
    holds back newer packets for more than `gap_wait_s` of media time is given up: the incomplete
    frames are dropped, a PLI is requested (`add` returns `pli_flag=True`, which the receiver sends),
    and frames are dropped until a keyframe arrives (decoding them would show corrupt pictures),
    asking again every `pli_repeat_s`, for at most `keyframe_wait_s` (then frames flow again anyway).
    `recover=False`: aiortc's loss handling exactly (only the frame-end completion differs).
    """

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = True, *, recover: bool = True,
                 gap_wait_s: float = GAP_WAIT_S, keyframe_wait_s: float = KEYFRAME_WAIT_S,
                 pli_repeat_s: float = PLI_REPEAT_S) -> None:
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        self._recover = recover
        self._gap_wait = gap_wait_s * VIDEO_CLOCK_RATE if recover else math.inf  # ticks
        self._keyframe_wait = int(keyframe_wait_s * VIDEO_CLOCK_RATE)
        self._pli_repeat = int(pli_repeat_s * VIDEO_CLOCK_RATE)
        self._newest: int | None = None  # newest RTP timestamp seen
        self._last_out: int | None = None  # RTP timestamp of the last frame completed
        self._want_keyframe_since: int | None = None  # RTP timestamp of the skip
        self._last_pli: int | None = None
        self._pli = False
        self.on_skip: Callable[[int], None] | None = None  # gets the new origin after a skipped gap
        self.gaps_skipped = 0
        self.frames_dropped = 0  # complete frames dropped while waiting for a keyframe
        self.keyframe_requests = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if not self._recover:
            return super().add(packet)
        if self._origin is not None:
            behind = uint16_add(self._origin, -packet.sequence_number)
            if 0 < behind <= RTP_HISTORY_SIZE and behind < uint16_add(packet.sequence_number, -self._origin):
                # A retransmission of a packet given up on (NACKs reach back RTP_HISTORY_SIZE packets):
                # the stock buffer would take one more than MAX_MISORDER back for a stream restart.
                return False, None
        if self._newest is None or _ticks_after(packet.timestamp, self._newest) > 0:
            self._newest = packet.timestamp
        pli_flag, frame = super().add(packet)
        if pli_flag:  # the stock overflow handling dropped packets: the next frames need a keyframe
            self._await_keyframe(packet.timestamp)
        pli, self._pli = self._pli, False
        return pli_flag or pli, frame

    def _request_keyframe(self, timestamp: int) -> None:
        self._pli = True
        self._last_pli = timestamp
        self.keyframe_requests += 1

    def _await_keyframe(self, timestamp: int) -> None:
        if self._want_keyframe_since is None:
            self._want_keyframe_since = timestamp
        self._last_pli = timestamp

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        while True:
            frame, skipped = self._next_frame()
            if frame is None:
                if not skipped:
                    return None
                continue  # a gap was given up: look again from the new origin
            self._last_out = frame.timestamp
            if self._want_keyframe_since is not None:
                waited = _ticks_after(frame.timestamp, self._want_keyframe_since)
                if is_keyframe(frame.data) or waited > self._keyframe_wait:
                    self._want_keyframe_since = None
                else:
                    self.frames_dropped += 1
                    assert self._last_pli is not None
                    if _ticks_after(frame.timestamp, self._last_pli) > self._pli_repeat:
                        self._request_keyframe(frame.timestamp)
                    continue
            return frame

    def _next_frame(self) -> tuple[JitterFrame | None, bool]:
        """(the frame complete at the origin, whether a stale gap was skipped instead)."""
        payloads: list[bytes] = []  # depacketized by the receiver into `packet._data`
        timestamp = None
        assert self._origin is not None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None, self._skip_stale_gap(count, timestamp)
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the next frame started: this one is complete
                self.remove(count)
                return JitterFrame(data=b"".join(payloads), timestamp=timestamp), False
            payloads.append(packet._data)  # type: ignore[attr-defined]
            if packet.marker:  # the frame's last packet: complete now
                self.remove(count + 1)
                return JitterFrame(data=b"".join(payloads), timestamp=timestamp), False
        return None, False

    def _skip_stale_gap(self, gap: int, before: int | None) -> bool:
        """Drop everything up to the first frame that starts after the gap at origin+`gap`, if the
        gap is older than `gap_wait_s` (media time). `before`: the timestamp of the packets before it."""
        if not self._recover:
            return False
        assert self._origin is not None and self._newest is not None
        after = None
        for count in range(gap + 1, self.capacity):  # the first packet after the gap
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is not None:
                after = (count, packet.timestamp)
                break
        if after is None:
            return False
        # How old the missing media is: at least as new as the frame it broke or the last frame out.
        reference = before if before is not None else self._last_out if self._last_out is not None else after[1]
        if _ticks_after(self._newest, reference) <= self._gap_wait:
            return False
        # Packets after the gap with the timestamp of the frame it broke are useless: skip them too.
        start = after[0]
        while start < self.capacity:
            packet = self._packets[(self._origin + start) % self._capacity]
            if packet is not None and packet.timestamp != before:
                break
            start += 1
        self.remove(start)
        if self.on_skip is not None:
            self.on_skip(self._origin)
        self.gaps_skipped += 1
        self._await_keyframe(reference)
        self._request_keyframe(reference)
        return True


class RetryingNackGenerator(NackGenerator):
    """aiortc's `NackGenerator`, which asks for missing packets only when a *new* gap appears, so a
    lost NACK or a lost retransmission is asked for again only at the next loss (a third of a second
    at 5% loss), after `gap_wait_s` has usually given up on it. This one also says "send a NACK"
    for packets still missing `retry_s` after the last one, and forgets packets the jitter buffer has
    given up on (`forget_before`)."""

    def __init__(self, retry_s: float = NACK_RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._retry_s = retry_s
        self._clock = clock
        self._last_nack = -math.inf
        self.retries = 0

    def add(self, packet: RtpPacket) -> bool:
        missed = super().add(packet)
        now = self._clock()
        if missed or (self.missing and now - self._last_nack >= self._retry_s):
            self.retries += not missed
            self._last_nack = now
            return True  # the receiver sends a NACK listing every packet in `missing`
        return False

    def forget_before(self, sequence_number: int) -> None:
        self.missing = {seq for seq in self.missing if not uint16_gt(sequence_number, seq)}


def install(receiver: RTCRtpReceiver, *, recover: bool = True) -> bool:
    """Give a video receiver a `FrameEndJitterBuffer` (call before media flows) and, with `recover`,
    a `RetryingNackGenerator`. False if not possible. `recover=False` keeps aiortc's loss handling
    (wait for a missing packet until the buffer overflows; NACK only on new gaps)."""
    current = getattr(receiver, _ATTRIBUTE, None)
    if type(current) is not JitterBuffer or not getattr(current, "_is_video", False):
        _warn_once(type(current).__name__)
        return False
    if not recover:
        setattr(receiver, _ATTRIBUTE, FrameEndJitterBuffer(capacity=current.capacity, recover=False))
        return True
    buffer = FrameEndJitterBuffer(capacity=current.capacity)
    if type(getattr(receiver, _NACK_ATTRIBUTE, None)) is NackGenerator:
        nacks = RetryingNackGenerator()
        buffer.on_skip = nacks.forget_before
        setattr(receiver, _NACK_ATTRIBUTE, nacks)
    setattr(receiver, _ATTRIBUTE, buffer)
    return True


@functools.cache
def _warn_once(found: str) -> None:
    log.warning("cannot install the low-latency jitter buffer on this aiortc version (found %s); "
                "received video waits one extra frame", found)
