"""Transport benchmark: streamserve's WebRTC path against a minimal hand-written aiortc echo server.

The servers run as subprocesses on 127.0.0.1: `streamserve` (`create_app`, passthrough pipeline,
every transport), `streamserve-stock-jb` (the same with aiortc's stock video jitter buffer, which
holds each received frame until the next one starts: what the session path costs by itself) and
`echo`, the ~20 lines a user would write from aiortc's examples (answer the offer, send each
received track back through a `MediaRelay`). One aiortc client in this process
sends frames stamped with their index (`streamserve.transport.probe`) at a fixed rate, reads the
index back from every frame it receives, and measures, after a warm-up, per size and server:

- delivered FPS: distinct frames received per second of the measurement window;
- glass-to-glass p50 / p95: from the moment a frame leaves the client's track (before encoding) to
  the moment the client has it decoded, including both encodes, both decodes and the server;
- the p50 ratio streamserve / echo (goal: <= 1.0).

Rounds alternate which server goes first. Run: `python benchmarks/transport.py` (or
`streamserve bench transport`); `--help` for sizes, rate and durations. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from streamserve.serverproc import free_port, server_process

SERVERS = ("streamserve", "streamserve-stock-jb", "echo")


# --- the two servers (run in subprocesses) ---------------------------------------------------------

def serve_streamserve(port: int, stock_jitter_buffer: bool = False) -> None:
    """The real server. `stock_jitter_buffer` swaps in a WebRTC transport that keeps aiortc's own
    jitter buffer (see streamserve.transport.jitter), to show what the session path alone costs."""
    import uvicorn

    from streamserve.core.config import ServerConfig
    from streamserve.server import create_app, default_transports
    from streamserve.transport.peer import PeerOptions
    from streamserve.transport.webrtc import WebRTCTransport

    config = ServerConfig(pipeline="passthrough", port=port, log_level="warning")
    transports = None
    if stock_jitter_buffer:
        def stock(sessions: Any, config: ServerConfig) -> WebRTCTransport:
            options = PeerOptions.from_config(config, low_latency_receive=False)
            return WebRTCTransport(sessions, config, peer_options=options)

        transports = [stock, *(t for t in default_transports() if t is not WebRTCTransport)]
    uvicorn.run(create_app(config, transports), host="127.0.0.1", port=port, log_level="warning")


def serve_echo(port: int) -> None:
    """What a user writes by hand: answer the offer, relay every received track back."""
    import uvicorn
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaRelay
    from fastapi import FastAPI

    app = FastAPI()
    relay = MediaRelay()
    peers: set[RTCPeerConnection] = set()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/offer")
    async def offer(body: dict[str, str]) -> dict[str, str]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.add(pc)

        @pc.on("track")
        def on_track(track: Any) -> None:
            pc.addTrack(relay.subscribe(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                peers.discard(pc)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --- the client ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    server: str
    size: int
    fps_sent: float
    fps_delivered: float
    latencies_ms: list[float]
    unreadable: int
    server_drops: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 95)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return dict(json.loads(reply.read()))


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return dict(json.loads(reply.read()))


async def measure(server: str, base_url: str, size: int, fps: float, warmup_s: float, seconds: float) -> Result:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from streamserve.transport.probe import StampedVideoTrack, StampReader

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    source = StampedVideoTrack(size, size, fps)
    reader = StampReader()
    tasks: list[asyncio.Task[None]] = []
    pc.addTrack(source)
    pc.on("track", lambda track: tasks.append(asyncio.create_task(reader.consume(track))))
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    if server.startswith("streamserve"):
        answer = await asyncio.to_thread(post_json, f"{base_url}/v1/webrtc/offer",
                                         {**offer, "pipeline": "passthrough"})
    else:
        answer = await asyncio.to_thread(post_json, f"{base_url}/offer", offer)
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    try:
        await asyncio.sleep(warmup_s)
        start = time.monotonic()
        sent_before = len(source.sent_at)
        await asyncio.sleep(seconds)
        end = time.monotonic()
        sent = len(source.sent_at) - sent_before
        drops = {}
        if "session_id" in answer:  # where streamserve dropped frames, if it did
            stats = await asyncio.to_thread(get_json, f"{base_url}/v1/sessions/{answer['session_id']}")
            drops = {k: int(stats[k]) for k in ("dropped_inbox", "dropped_expired")}
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    window = [(i, t) for i, t in reader.seen if start <= t < end]
    latencies = [1000 * (t - source.sent_at[i]) for i, t in window if i in source.sent_at]
    return Result(server, size, sent / (end - start), len({i for i, _ in window}) / (end - start),
                  latencies, reader.unreadable, drops)


# --- orchestration ---------------------------------------------------------------------------------

@contextlib.contextmanager
def running(kind: str) -> Iterator[str]:
    """Start one server in a subprocess; yields its base URL once /healthz answers."""
    port = free_port()
    args = [os.path.abspath(__file__), "--serve", kind, "--port", str(port)]
    with server_process(args, port, timeout_s=60, poll_s=0.2, name=f"the {kind} server") as url:
        yield url


def machine() -> str:
    import aiortc
    import av

    from streamserve.core.cpu import cpu_model, usable_cores

    return (f"{cpu_model()}, {usable_cores()} cores available, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, aiortc {aiortc.__version__}, PyAV {av.__version__}")


def table(results: list[Result], fps: float) -> str:
    lines = ["| size | server | input FPS | delivered FPS | glass-to-glass p50 (ms) | p95 (ms) | p50 vs echo |",
             "|---|---|---|---|---|---|---|"]
    for size in sorted({r.size for r in results}):
        merged = {}
        for server in SERVERS:
            runs = [r for r in results if r.size == size and r.server == server]
            merged[server] = Result(server, size, statistics.mean(r.fps_sent for r in runs),
                                    statistics.mean(r.fps_delivered for r in runs),
                                    [v for r in runs for v in r.latencies_ms], sum(r.unreadable for r in runs))
        base = merged["echo"].p50
        for server in SERVERS:
            r = merged[server]
            ratio = f"{r.p50 / base:.2f}" if server != "echo" else "1.00 (baseline)"
            lines.append(f"| {size}² | {server} | {r.fps_sent:.1f} | {r.fps_delivered:.1f} | {r.p50:.1f} | "
                         f"{r.p95:.1f} | {ratio} |")
    return "\n".join(lines) + f"\n\nInput {fps:g} FPS; {machine()}."


def run(sizes: list[int], fps: float, warmup_s: float, seconds: float, rounds: int) -> list[Result]:
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        urls = {server: stack.enter_context(running(server)) for server in SERVERS}
        for size in sizes:
            for round_ in range(rounds):
                order = SERVERS if round_ % 2 == 0 else SERVERS[::-1]
                for server in order:
                    result = asyncio.run(measure(server, urls[server], size, fps, warmup_s, seconds))
                    print(f"{size}² {server:11s} delivered {result.fps_delivered:5.1f} fps  "
                          f"p50 {result.p50:6.1f} ms  p95 {result.p95:6.1f} ms  {result.server_drops or ''}",
                          file=sys.stderr)
                    results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sizes")
    parser.add_argument("--fps", type=float, default=30.0, help="input frame rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per size and server (alternating)")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.serve == "echo":
            serve_echo(args.port)
        else:
            serve_streamserve(args.port, stock_jitter_buffer=args.serve == "streamserve-stock-jb")
        return 0
    results = run(args.sizes, args.fps, args.warmup, args.seconds, args.rounds)
    print(table(results, args.fps))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([dataclasses.asdict(r) for r in results], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
