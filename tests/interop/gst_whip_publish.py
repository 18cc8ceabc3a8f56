"""A WHIP publisher built on GStreamer's `webrtcbin` (RSA DTLS certificate, libnice ICE).

Run with the system Python, which sees Debian's `python3-gi` (the project's virtualenv may not):

    /usr/bin/python3 tests/interop/gst_whip_publish.py http://127.0.0.1:8000/whip/cam --codec vp8 --seconds 8

It sends a moving test pattern (`videotestsrc pattern=ball`, VP8 or H.264) and a sine tone (Opus),
waits for ICE gathering (the offer carries its candidates), POSTs it as `application/sdp`, applies
the answer, streams for `--seconds` after the connection is up (or until its stdin closes, when
`--until-stdin-closes` is given), then DELETEs the resource. One JSON
line per event goes to stdout (`posted`, `connected`, `done`) so a test can follow it; any failure
exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import gi  # type: ignore[import-not-found]  # Debian python3-gi, not in the virtualenv

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # type: ignore[import-not-found]  # noqa: E402

VIDEO = {
    "vp8": "vp8enc deadline=1 cpu-used=8 keyframe-max-dist=30 ! rtpvp8pay pt=96 ! "
           "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 ! "
            "video/x-h264,profile=constrained-baseline ! rtph264pay pt=102 config-interval=-1 "
            "aggregate-mode=zero-latency ! "
            "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000",
}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Publisher:
    def __init__(self, url: str, codec: str, seconds: float, token: str | None, stdin_stops: bool) -> None:
        self.url, self.seconds, self.token = url, seconds, token
        self.location: str | None = None
        self.failure: str | None = None
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.parse_launch(
            "webrtcbin name=wb bundle-policy=max-bundle "
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! "
            f"videoconvert ! queue ! {VIDEO[codec]} ! wb. "
            "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! "
            "audio/x-raw,rate=48000,channels=1 ! opusenc ! rtpopuspay pt=111 ! "
            "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! queue ! wb. ")
        self.wb = self.pipeline.get_by_name("wb")
        self.wb.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.wb.connect("notify::ice-gathering-state", self._on_gathering)
        self.wb.connect("notify::connection-state", self._on_connection)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        if stdin_stops:
            GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, self._on_stdin)

    def _on_stdin(self, fd: int, _condition: Any) -> bool:
        if os.read(fd, 4096):
            return True
        self.loop.quit()  # EOF: the controlling process is done with us
        return False

    def run(self) -> int:
        self.pipeline.set_state(Gst.State.PLAYING)
        for index in range(2):
            transceiver = self.wb.emit("get-transceiver", index)
            if transceiver is not None:
                transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        GLib.timeout_add_seconds(int(self.seconds) + 30, self._fail, "timed out")
        self.loop.run()
        self._delete()
        self.pipeline.set_state(Gst.State.NULL)
        if self.failure:
            print(self.failure, file=sys.stderr)
            return 1
        emit("done")
        return 0

    def _fail(self, reason: str) -> bool:
        self.failure = self.failure or reason
        self.loop.quit()
        return False

    def _on_error(self, _bus: Any, message: Any) -> None:
        error, debug = message.parse_error()
        self._fail(f"GStreamer error: {error.message} ({debug})")

    def _on_negotiation_needed(self, wb: Any) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        wb.emit("create-offer", None, promise)

    def _on_offer(self, promise: Any, _data: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None and reply.has_field("offer") else None
        if offer is None:
            self._fail(f"webrtcbin could not create an offer: {reply.to_string() if reply else 'no reply'}")
            return
        self.wb.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering(self, wb: Any, _pspec: Any) -> None:
        if wb.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self._post)

    def _post(self) -> bool:
        offer = self.wb.get_property("local-description").sdp.as_text()
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=offer.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=20) as reply:
                answer, status = reply.read().decode(), reply.status
                self.location = urllib.parse.urljoin(self.url, reply.headers["Location"])
        except urllib.error.HTTPError as exc:
            return self._fail(f"WHIP POST answered {exc.code}: {exc.read().decode(errors='replace')}")
        emit("posted", status=status, location=self.location)
        _, sdp = GstSdp.SDPMessage.new_from_text(answer)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
        self.wb.emit("set-remote-description", description, Gst.Promise.new())
        return False

    def _on_connection(self, wb: Any, _pspec: Any) -> None:
        state = wb.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            emit("connected")
            GLib.timeout_add(int(self.seconds * 1000), self._finish)
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self._fail("connection failed (DTLS or ICE)")

    def _finish(self) -> bool:
        self.loop.quit()
        return False

    def _delete(self) -> None:
        if self.location is None:
            return
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.location, headers=headers, method="DELETE")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                emit("deleted", status=reply.status)
        except urllib.error.HTTPError as exc:
            emit("deleted", status=exc.code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the WHIP endpoint, e.g. http://127.0.0.1:8000/whip/cam")
    parser.add_argument("--codec", choices=sorted(VIDEO), default="vp8")
    parser.add_argument("--seconds", type=float, default=8.0, help="stream this long once connected")
    parser.add_argument("--token", default=None, help="bearer token")
    parser.add_argument("--until-stdin-closes", action="store_true", help="stop early when stdin closes")
    args = parser.parse_args()
    Gst.init(None)
    return Publisher(args.url, args.codec, args.seconds, args.token, args.until_stdin_closes).run()


if __name__ == "__main__":
    sys.exit(main())
