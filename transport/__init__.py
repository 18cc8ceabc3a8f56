"""Transports: how media reaches sessions (`streamserve.core.ports` only) and comes back.

- `sdp`: validating SDP offers (400s with reasons) before anything is allocated.
- `media`: PyAV frames <-> core `VideoFrame` / `AudioChunk`.
- `tracks`: `InboundPump` (drains aiortc's unbounded receive queue to the freshest frame) and
  `SessionOutputTrack` (plays a session's output, paced by pts).
- `peer`: `Peer`, one RTCPeerConnection bound to one session, whatever carried the offer.
- `webrtc`: `WebRTCTransport`, the JSON offer/answer endpoint `POST /v1/webrtc/offer`.

Submodules import aiortc; this package module imports nothing, so `import streamserve.transport` is cheap.
"""
