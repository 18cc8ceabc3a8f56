"""A video jitter buffer that hands a frame to the decoder as soon as its last packet is in.

aiortc's `JitterBuffer` completes a frame only when the first packet of the *next* frame arrives
(`_remove_frame` looks for a change of RTP timestamp), so every received video frame waits one frame
interval (33 ms at 30 fps) before it is even decoded. RTP marks the last packet of a video frame
with the marker bit (RFC 3550 section 5.1; RFC 7741 for VP8, RFC 6184 for H.264), and browsers, OBS
and aiortc's own sender set it. `FrameEndJitterBuffer` completes a frame at its marker packet, when
every packet since the previous frame is present; a frame whose marker packet was lost still
completes on the timestamp change, exactly as before.

aiortc has no public hook for the receiver's jitter buffer, so `install` swaps the private attribute
of one `RTCRtpReceiver`, in this one place, and leaves the stock buffer in place (logging once) when
that attribute is not there. Upstream: aiortc/aiortc#1418 (a jitter buffer rewrite, open).
"""

from __future__ import annotations

import functools
import logging

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

log = logging.getLogger(__name__)

_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # name-mangled `self.__jitter_buffer`


class FrameEndJitterBuffer(JitterBuffer):
    """`JitterBuffer` for video that also completes a frame at its marker packet."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        payloads: list[bytes] = []  # depacketized by the receiver into `packet._data`
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]  # type: ignore[operator]
            if packet is None:
                return None  # a gap: wait for it (or for the stock overflow handling)
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the next frame started: this one is complete
                self.remove(count)
                return JitterFrame(data=b"".join(payloads), timestamp=timestamp)
            payloads.append(packet._data)  # type: ignore[attr-defined]
            if packet.marker:  # the frame's last packet: complete now
                self.remove(count + 1)
                return JitterFrame(data=b"".join(payloads), timestamp=timestamp)
        return None


def install(receiver: RTCRtpReceiver) -> bool:
    """Give a video receiver a `FrameEndJitterBuffer` (call before media flows). False if not possible."""
    current = getattr(receiver, _ATTRIBUTE, None)
    if type(current) is not JitterBuffer or not getattr(current, "_is_video", False):
        _warn_once(type(current).__name__)
        return False
    setattr(receiver, _ATTRIBUTE, FrameEndJitterBuffer(capacity=current.capacity, is_video=True))
    return True


@functools.cache
def _warn_once(found: str) -> None:
    log.warning("cannot install the low-latency jitter buffer on this aiortc version (found %s); "
                "received video waits one extra frame", found)
