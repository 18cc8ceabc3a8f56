"""Video loss recovery on the sending side: a keyframe interval as a safety net.

What aiortc (1.16) already does, read from its source: a receiver NACKs missing packets
(`NackGenerator`) and sends a PLI on a decode error or a jitter-buffer overflow; a sender answers
NACKs from its packet history (wrapped in RTX when the answer negotiated `video/rtx`, which our codec
preferences keep) and answers PLI/FIR with a keyframe. What it lacks, and this module and
`transport.jitter` add: a receiver that gives up on a lost packet quickly and asks for a keyframe
(`jitter.FrameEndJitterBuffer`), and periodic keyframes, so a viewer whose PLI was lost too, or
whose sender ignores PLI, still recovers within one interval.

aiortc's encoders set the GOP to 3000 frames and have no public way to ask for a keyframe
(`RTCRtpSender.generateKeyFrame()` of W3C webrtc-encoded-transform#125 is not implemented), so
`request_keyframe` calls the sender's own PLI handler, `_send_keyframe` (aiortc/aiortc#280 made it
send one keyframe per request), in this one place.
"""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCPeerConnection, RTCRtpSender

log = logging.getLogger(__name__)

DEFAULT_KEYFRAME_INTERVAL_S = 2.0


def request_keyframe(sender: RTCRtpSender) -> bool:
    """Make the sender's next encoded video frame a keyframe. False if this aiortc cannot."""
    force = getattr(sender, "_send_keyframe", None)
    if not callable(force):
        log.warning("this aiortc has no RTCRtpSender._send_keyframe: no periodic keyframes")
        return False
    force()
    return True


async def keyframe_interval(pc: RTCPeerConnection, interval_s: float) -> None:
    """Every `interval_s`, ask each of the connection's live video senders for a keyframe.

    Runs until cancelled. The encoder is asked, not forced out of turn: the keyframe replaces the
    next frame the track produces, so the frame rate and pacing stay as they were.
    """
    if interval_s <= 0:
        raise ValueError(f"keyframe interval must be > 0 s, got {interval_s}")
    while True:
        await asyncio.sleep(interval_s)
        for transceiver in pc.getTransceivers():
            sender = transceiver.sender
            if sender.kind == "video" and sender.track is not None and not request_keyframe(sender):
                return
