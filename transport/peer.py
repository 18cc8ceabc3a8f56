"""One WebRTC peer connection bound to one session, independent of how its offer arrived.

`Peer.accept(offer_sdp)` answers an SDP offer (the JSON offer endpoint, WHIP and WHEP all end up
here) and wires the media:

- the client's video goes through an `InboundPump` into the session (freshest frame wins);
- the client's audio is pushed into the session chunk by chunk (a video-only pipeline passes it
  straight through), and echoed back when the client also receives audio;
- when the client receives video, a `SessionOutputTrack` plays the session's output, paced by pts;
- a data channel labelled `control` carries JSON both ways: `{"type": "update", "params": {...}}`
  from the client (answered with `params` or `error`), `ping`/`pong`, `stats` once a second, and
  the session's control events (`{"type": "event", "event": "transcript", ...}`, voice).

The peer ends when the connection fails or closes, the control channel closes, the session ends, or
the client goes silent: no media for `silence_s` (aiortc's ICE consent check alone takes ~30 s to
notice a vanished client). Ending the peer ends the session when the peer owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from streamserve.core.clock import SYSTEM_CLOCK, Clock
from streamserve.core.config import ServerConfig
from streamserve.core.errors import BadRequest, StreamserveError
from streamserve.core.frames import MediaKind
from streamserve.core.ports import SessionFactory, SessionHandle
from streamserve.transport import dtls, jitter
from streamserve.transport.ice_budget import CandidateBudget, CandidateLimits
from streamserve.transport.recovery import DEFAULT_KEYFRAME_INTERVAL_S, keyframe_interval
from streamserve.transport.sdp import Offer, parse_offer
from streamserve.transport.tracks import InboundPump, PtsPacer, SessionOutputTrack, drain

log = logging.getLogger(__name__)

CONTROL_LABEL = "control"
SILENCE_FRACTION = 0.6  # of idle_timeout_s: notice a vanished client early enough to end it in time


@dataclasses.dataclass(frozen=True)
class PeerOptions:
    """How a peer treats its session. `from_config` derives the timing from a ServerConfig."""

    latency_budget_s: float = 0.25  # deadline = arrival + budget for every unit pushed
    silence_s: float = 3.0  # no inbound media or control for this long: the client is gone
    connect_timeout_s: float = 15.0  # offer answered but never connected
    stats_interval_s: float = 1.0  # `stats` messages on the control channel
    ice_servers: tuple[str, ...] = ()  # STUN (and TURN, with credentials) URLs for the server's candidates
    turn_username: str | None = None  # for the turn:/turns: URLs
    turn_credential: str | None = None
    receive: bool = True  # push the client's media into the session
    send: bool = True  # play the session's output to a client that receives
    owns_session: bool = True  # ending the peer ends the session (False for viewers)
    low_latency_receive: bool = True  # decode a video frame at its last packet (see transport.jitter)
    keyframe_interval_s: float = DEFAULT_KEYFRAME_INTERVAL_S  # periodic keyframes (see transport.recovery)
    loss_recovery: bool = True  # False: aiortc's own loss handling only (for comparisons)
    candidate_limits: CandidateLimits = CandidateLimits()  # remote ICE candidates (transport.ice_budget)

    def __post_init__(self) -> None:
        if not 0.1 <= self.keyframe_interval_s <= 600:
            raise ValueError(f"keyframe_interval_s must be in [0.1, 600], got {self.keyframe_interval_s}")

    @classmethod
    def from_config(cls, config: ServerConfig, **overrides: Any) -> PeerOptions:
        base = cls(
            latency_budget_s=config.session.latency_budget_s,
            silence_s=config.idle_timeout_s * SILENCE_FRACTION,
            ice_servers=tuple(u for u in config.ice_servers  # aiortc needs credentials for TURN
                              if u.startswith("stun:") or config.turn_credential is not None),
            turn_username=config.turn_username, turn_credential=config.turn_credential,
        )
        return dataclasses.replace(base, **overrides)


def _codec_preferences(kind: str) -> list[Any]:
    """VP8 first (cheapest to encode in software, every browser has it), then H.264, then the rest."""
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    rank = {"video/vp8": 0, "video/rtx": 1, "video/h264": 2}
    return sorted(codecs, key=lambda c: rank.get(c.mimeType.lower(), 3))


class Peer:
    """An RTCPeerConnection serving one session. Create, `accept(offer)`, and `close()` when done."""

    def __init__(
        self,
        handle: SessionHandle,
        sessions: SessionFactory,
        options: PeerOptions,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.handle = handle
        self._sessions = sessions
        self.options = options
        self._clock = clock
        servers = [RTCIceServer(urls=url) if url.startswith("stun:") else
                   RTCIceServer(urls=url, username=options.turn_username, credential=options.turn_credential)
                   for url in options.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))  # [] also avoids Google STUN
        dtls.allow_rsa_peers(self.pc)  # GStreamer's webrtcbin has an RSA certificate
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pumps: list[InboundPump] = []
        self._out_tracks: list[SessionOutputTrack] = []
        self._control: RTCDataChannel | None = None
        self._expects_media = False
        self._connected = False
        self._last_seen = clock.now()
        self._wake = asyncio.Event()  # the watchdog re-plans on connection changes
        self._closing = False
        self._closed = asyncio.Event()
        self.candidates = CandidateBudget(options.candidate_limits)
        self._on_closed: list[Callable[[Peer], object]] = []
        self.reason: str | None = None

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def tracks(self) -> list[MediaStreamTrack]:
        """Every track this peer reads or plays (all `ended` once it has closed)."""
        return [pump.track for pump in self._pumps] + list(self._out_tracks)

    def on_closed(self, callback: Callable[[Peer], object]) -> None:
        """Run `callback(peer)` once the peer has closed."""
        self._on_closed.append(callback)

    # --- negotiation ----------------------------------------------------------------------------
    async def accept(self, offer: str | Offer) -> RTCSessionDescription:
        """Answer an SDP offer. Raises BadRequest (with aiortc's reason) for an offer it rejects."""
        parsed = offer if isinstance(offer, Offer) else parse_offer(offer)
        sdp = self.candidates.filter_offer(parsed.sdp)  # at most max_candidates remote addresses
        pc = self.pc
        video = parsed.first("video")
        if video is not None:
            # Created before the offer is applied so the answer follows our codec preference.
            wants_output = self.options.send and video.client_receives
            transceiver = pc.addTransceiver("video", direction="sendrecv" if wants_output else "recvonly")
            transceiver.setCodecPreferences(_codec_preferences("video"))

        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, TypeError, AssertionError) as exc:
            raise BadRequest(f"malformed SDP: {exc or type(exc).__name__}") from exc
        except Exception as exc:  # aiortc's OperationError etc.: an offer we cannot serve
            raise BadRequest(f"unusable SDP offer: {exc or type(exc).__name__}") from exc

        for section in parsed.media:
            if section.kind == "video" and section is video and self.options.send and section.client_receives:
                self._add_output(MediaKind.VIDEO)
            elif section.kind == "audio" and section is parsed.first("audio") and self.options.send \
                    and section.client_receives:
                self._add_output(MediaKind.AUDIO)

        try:
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)  # gathers candidates: the answer is complete (no trickle)
        except Exception as exc:  # an offer aiortc took but cannot answer: the client's problem, not a 500
            log.warning("session %s: cannot answer the offer", self.id, exc_info=True)
            raise BadRequest(f"unusable SDP offer: cannot answer it: {exc or type(exc).__name__}") from exc
        self._spawn(self._follow_session(), "follow-session")
        self._spawn(self._watchdog(), "watchdog")
        if self.options.loss_recovery and any(t.kind == "video" for t in self._out_tracks):
            self._spawn(keyframe_interval(pc, self.options.keyframe_interval_s), "keyframes")
        local = pc.localDescription
        return RTCSessionDescription(sdp=local.sdp, type=local.type)

    async def add_remote_candidate(self, candidate: RTCIceCandidate) -> bool:
        """Add a trickled candidate within the peer's budget: False if ignored (past the cap).
        Raises TooManyCandidates (429) past the rate limit."""
        if not self.candidates.admit(candidate):
            log.info("session %s: ignoring trickled candidate %s:%s (limit %d addresses)", self.id,
                     candidate.ip, candidate.port, self.candidates.limits.max_candidates)
            return False
        await self.pc.addIceCandidate(candidate)
        return True

    def _add_output(self, kind: MediaKind) -> None:
        pacer = PtsPacer() if self.options.loss_recovery else PtsPacer(window_s=math.inf)
        track = SessionOutputTrack(self.handle.subscribe(kind), kind, pacer=pacer, clock=self._clock)
        self._out_tracks.append(track)
        self.pc.addTrack(track)

    # --- media ----------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.options.low_latency_receive:
            receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
            if receiver is not None:
                jitter.install(receiver, recover=self.options.loss_recovery)
        first_of_kind = not any(p.kind == track.kind for p in self._pumps)
        if not (self.options.receive and first_of_kind and track.kind in ("video", "audio")):
            self._spawn(drain(track), f"drain-{track.kind}")  # keep aiortc's queue empty
            return
        pump = InboundPump(track, self.handle, latency_budget_s=self.options.latency_budget_s,
                           freshest=track.kind == "video", on_media=self._mark_alive, clock=self._clock)
        self._pumps.append(pump)
        self._expects_media = True
        pump.start()

    def _mark_alive(self) -> None:
        self._last_seen = self._clock.now()

    # --- control channel ------------------------------------------------------------------------
    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CONTROL_LABEL or self._control is not None:
            return
        self._control = channel
        channel.on("message", self._on_control_message)
        channel.on("close", lambda: self._spawn(self.close("control channel closed"), "close"))
        self._spawn(self._send_stats(), "stats")
        if getattr(self.handle, "subscribe_events", None) is not None:
            self._spawn(self._send_events(), "events")

    async def _send_events(self) -> None:
        """The session's control events (voice: transcripts, thinking, latency) as `event` messages."""
        sub = self.handle.subscribe_events()  # type: ignore[attr-defined]
        try:
            while (event := await sub.get()) is not None:
                self._send({"type": "event", **event})
        finally:
            sub.close()

    def _on_control_message(self, message: str | bytes) -> None:
        self._mark_alive()
        self.handle.touch()
        self._spawn(self._answer_control(message), "control")

    async def _answer_control(self, message: str | bytes) -> None:
        reply = await self.handle_control(message)
        if reply is not None:
            self._send(reply)

    async def handle_control(self, message: str | bytes) -> dict[str, Any] | None:
        """The reply to one control message (a JSON object with a `type`)."""
        try:
            msg = json.loads(message)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"type": "error", **BadRequest(f"control messages are JSON objects: {exc}").to_dict()}
        if not isinstance(msg, dict):
            return {"type": "error", **BadRequest("control messages are JSON objects").to_dict()}
        kind = msg.get("type")
        ref = {"id": msg["id"]} if "id" in msg else {}
        if kind == "update":
            params = msg.get("params")
            if not isinstance(params, dict):
                return {"type": "error", **ref, **BadRequest("update needs a `params` object").to_dict()}
            try:
                return {"type": "params", **ref, "params": await self.handle.update(params)}
            except StreamserveError as exc:
                return {"type": "error", **ref, **exc.to_dict()}
        if kind == "ping":
            return {"type": "pong", **ref, "t": msg.get("t")}
        if kind == "stats":
            return self.stats_message()
        return {"type": "error", **ref,
                **BadRequest(f"unknown control message type {kind!r}; known: update, ping, stats").to_dict()}

    def stats_message(self) -> dict[str, Any]:
        return {"type": "stats", **self.handle.stats(), "transport": self.stats()}

    def stats(self) -> dict[str, Any]:
        """Transport-side counters: what the pumps and output tracks did."""
        inbound = {p.kind: p.stats() for p in self._pumps}
        outbound = {t.kind: {"sent": t.sent, "reanchors": t.pacer.reanchors} for t in self._out_tracks}
        return {"connection": self.pc.connectionState, "inbound": inbound, "outbound": outbound}

    def _send(self, message: dict[str, Any]) -> None:
        channel = self._control
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(message, default=str))

    async def _send_stats(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.options.stats_interval_s)
            self._send(self.stats_message())

    # --- lifetime -------------------------------------------------------------------------------
    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("session %s: connection %s", self.id, state)
        if state == "connected":
            self._connected = True
            self._mark_alive()
        elif state in ("failed", "closed"):
            self._spawn(self.close(f"connection {state}"), "close")
        self._wake.set()

    async def _watchdog(self) -> None:
        """Ends a peer that never connects, or whose media stops (a client that vanished)."""
        while not self._closing:
            if not self._connected:
                due, reason = self._last_seen + self.options.connect_timeout_s, "never connected"
            elif self._expects_media:
                due, reason = self._last_seen + self.options.silence_s, "client gone: no media"
            else:
                await self._wake.wait()  # a viewer: connection state and ICE consent decide
                self._wake.clear()
                continue
            wait = due - self._clock.now()
            if wait <= 0:
                await self.close(f"{reason} for {self._clock.now() - self._last_seen:.1f} s")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _follow_session(self) -> None:
        reason = await self.handle.wait_closed()
        await self.close(f"session ended: {reason}")

    async def close(self, reason: str) -> None:
        """Tear everything down (idempotent): tracks, the connection and, if owned, the session."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.reason = reason
        log.info("session %s: peer closing (%s)", self.id, reason)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for pump in self._pumps:
            await pump.stop()
        for track in self._out_tracks:
            track.stop()
        try:
            await self.pc.close()
        except Exception:
            log.exception("session %s: closing the peer connection failed", self.id)
        if self.options.owns_session:
            with contextlib.suppress(StreamserveError):
                await self._sessions.close(self.handle.id, reason)
        self._closed.set()
        for callback in self._on_closed:
            callback(self)

    async def wait_closed(self) -> str:
        await self._closed.wait()
        return self.reason or ""

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        if self._closing and not name.startswith("close"):
            coro.close()
            return
        task = asyncio.create_task(coro, name=f"peer-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: %s failed", self.id, task.get_name(), exc_info=task.exception())
