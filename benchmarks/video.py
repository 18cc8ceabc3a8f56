"""Video pipeline benchmark: bare pipeline against served (WebRTC loopback) in the same run; Wan on GPU.

CPU (default): the embedded demo model at 256x256, one session.

- **bare**: frames handed straight to `VideoDiffusionPipeline.step` back to back -- the pipeline's
  capacity (FPS) and its per-frame step time (p50/p99);
- **served**: the real server (`create_app`, video pipeline, a subprocess on 127.0.0.1) and one aiortc
  client sending index-stamped frames (`streamserve.transport.probe`) at ``--fps``: delivered FPS and
  glass-to-glass latency (client encode -> server decode -> pipeline -> encode -> client decode).
  Served/bare compares delivered FPS with what the pipeline could deliver at that input rate,
  ``min(bare FPS, input FPS)``. The "noir" style keeps the black/white index cells readable.

GPU (``--gpu``, needs CUDA): a Wan2.1-1.3B-shaped model with random weights (DiT, Wan VAE; a random
prompt embedding stands in for UMT5) at 512x512, 1-4 steps with stream batch, dense vs SLA: FPS and
time to first frame with frames arriving at 16 FPS, next to StreamDiffusionV2's one-H100 figures.

Run ``python benchmarks/video.py`` (or ``streamserve bench video``); ``--help`` for options. Prints
markdown tables (goals: served >= 15 FPS, served/bare >= 0.9, p99 <= 150 ms on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

SDV2_FPS = {1: 26.2, 2: 24.0, 3: 21.5, 4: 19.4}  # StreamDiffusionV2, Wan2.1-1.3B, 512x512, one H100
SDV2_TTFF_S = 0.37


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- bare ------------------------------------------------------------------------------------------

def bare(size: int, frames: int, style: str, steps: int, threads: int | None) -> dict[str, float]:
    """Back-to-back frames through the pipeline in this process."""
    from streamserve.core.frames import VideoFrame
    from streamserve.core.plan import Batch, WorkItem
    from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams
    from streamserve.transport.probe import picture, stamp

    pipe = VideoDiffusionPipeline(device="cpu", threads=threads)
    pipe.warmup()
    pipe.open_session("bench", VideoParams(style=style, steps=steps, width=size, height=size))  # type: ignore[arg-type]
    pics = [stamp(i, size, size, picture(i, size, size)) for i in range(30)]
    times = []
    for i in range(frames):
        frame = VideoFrame(pics[i % len(pics)], i * 3000, 0.0, 1e9)
        t0 = time.perf_counter()
        pipe.step(Batch("video", (WorkItem("bench", frame),)))
        times.append(time.perf_counter() - t0)
    pipe.close_session("bench")
    steady = times[5:]
    return {"fps": len(steady) / sum(steady), "p50_ms": 1000 * percentile(steady, 50),
            "p99_ms": 1000 * percentile(steady, 99)}


# --- served ----------------------------------------------------------------------------------------

def serve(port: int) -> None:
    import uvicorn

    from streamserve.core.config import ServerConfig
    from streamserve.server import create_app

    config = ServerConfig(pipeline="video", port=port, log_level="warning")
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def http_json(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return dict(json.loads(reply.read()))


async def served(url: str, size: int, fps: float, style: str, steps: int, warmup_s: float,
                 seconds: float) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from streamserve.transport.probe import StampedVideoTrack, StampReader

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    source, reader = StampedVideoTrack(size, size, fps), StampReader()
    tasks: list[asyncio.Task[None]] = []
    pc.addTrack(source)
    pc.on("track", lambda track: tasks.append(asyncio.create_task(reader.consume(track))))
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "pipeline": "video",
            "params": {"style": style, "steps": steps, "width": size, "height": size}}
    answer = await asyncio.to_thread(http_json, f"{url}/v1/webrtc/offer", body)
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    try:
        await asyncio.sleep(warmup_s)
        start, sent0 = time.monotonic(), len(source.sent_at)
        await asyncio.sleep(seconds)
        end, sent = time.monotonic(), len(source.sent_at) - sent0
        try:
            stats = await asyncio.to_thread(http_json, f"{url}/v1/sessions/{answer['session_id']}")
        except OSError as exc:  # the session ended early (its error is in the server log)
            stats = {"dropped": f"session gone: {exc}"}
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    window = [(i, t) for i, t in reader.seen if start <= t < end]
    lat = [1000 * (t - source.sent_at[i]) for i, t in window if i in source.sent_at]
    return {"fps_in": sent / (end - start), "fps": len({i for i, _ in window}) / (end - start),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "unreadable": reader.unreadable,
            "drops": {k: v for k, v in stats.items() if k.startswith("dropped")}}


def cpu_tables(args: argparse.Namespace) -> str:
    b = bare(args.size, args.frames, args.style, args.steps, args.threads)
    print(f"bare: {b['fps']:.1f} FPS, step p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms", file=sys.stderr)
    rows = []
    with running_server() as url:
        for fps in args.fps:
            s = asyncio.run(served(url, args.size, fps, args.style, args.steps, args.warmup, args.seconds))
            print(f"served @{fps:g}: {s}", file=sys.stderr)
            rows.append((fps, s))
    lines = ["| input FPS | bare FPS (capacity) | served FPS | served / min(bare, input) | "
             "glass-to-glass p50 (ms) | p99 (ms) | bare step p50 / p99 (ms) | server drops |",
             "|---|---|---|---|---|---|---|---|"]
    for _fps, s in rows:
        ratio = s["fps"] / min(b["fps"], s["fps_in"])
        lines.append(f"| {s['fps_in']:.1f} | {b['fps']:.1f} | {s['fps']:.1f} | {ratio:.2f} | {s['p50_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {s['drops']} |")
    return (f"Demo model, {args.size}x{args.size}, one session, style {args.style!r}, {args.steps} step(s), "
            f"torch threads: {args.threads or 'pipeline default (all cores but one)'}.\n\n" + "\n".join(lines))


# --- GPU: Wan2.1-1.3B shape ------------------------------------------------------------------------

def wan_13b(device: str) -> Any:
    """Random-weight Wan2.1-1.3B DiT + Wan VAE, with a fixed random prompt embedding."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from streamserve.pipelines.video.checkpoint import WAN_DEFAULTS, LoadedModel
    from streamserve.pipelines.video.model import CausalWanDiT
    from streamserve.pipelines.video.prompts import PromptEncoder
    from streamserve.pipelines.video.wan_vae import WanStreamingVAE

    class RandomPrompt(PromptEncoder):
        text_dim = 4096

        def _encode(self, prompt: str) -> torch.Tensor:
            return torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16)

    torch.manual_seed(0)
    wan: Any = WanTransformer3DModel
    dit = wan(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)
    causal = CausalWanDiT(dit.to(device, torch.bfloat16)).eval()
    vae_cls: Any = AutoencoderKLWan
    vae = vae_cls().to(device, torch.bfloat16).eval()
    return LoadedModel(causal, WanStreamingVAE(vae), RandomPrompt(), WAN_DEFAULTS, "random Wan2.1-1.3B shape")


def gpu_rows(steps_list: list[int], attentions: list[str], seconds: float) -> str:
    import torch

    from streamserve.core.frames import VideoFrame
    from streamserve.core.plan import Batch, WorkItem
    from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams

    pipe = VideoDiffusionPipeline.from_loaded(wan_13b("cuda"), "cuda")
    frame = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    lines = ["| steps | attention | FPS | SDV2 FPS (H100) | time to first frame (s) | SDV2 (s) |",
             "|---|---|---|---|---|---|"]
    for attention in attentions:
        for steps in steps_list:
            params = VideoParams(steps=steps, attention=attention, width=512, height=512)  # type: ignore[arg-type]
            pipe.open_session("warm", params)
            for i in range(9):
                pipe.step(Batch("video", (WorkItem("warm", VideoFrame(frame, i, 0.0, 1e9)),)))
            pipe.close_session("warm")
            torch.cuda.synchronize()
            # Time to first frame: frames arrive at 16 FPS (Wan's rate); the clock starts at the first.
            pipe.open_session("b", params)
            t0, first, i, produced = time.perf_counter(), None, 0, 0
            while time.perf_counter() - t0 < seconds:
                due = t0 + i / 16.0
                if first is None and (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)  # paced until the first output, then as fast as possible
                (res,) = pipe.step(Batch("video", (WorkItem("b", VideoFrame(frame, i, 0.0, 1e9)),)))
                torch.cuda.synchronize()
                if res.media and first is None:
                    first, t_steady, produced = time.perf_counter() - t0, time.perf_counter(), 0
                elif res.media:
                    produced += len(res.media)
                i += 1
            fps = produced / (time.perf_counter() - t_steady) if first is not None else 0.0
            pipe.close_session("b")
            lines.append(f"| {steps} | {attention} | {fps:.1f} | {SDV2_FPS[steps]} | {first or float('nan'):.2f} | "
                         f"{SDV2_TTFF_S} |")
    return f"Wan2.1-1.3B shape, random weights, 512x512, bf16, {torch.cuda.get_device_name()}.\n\n" + "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores available, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square frame size (CPU part)")
    parser.add_argument("--style", default="noir", help="demo style (keeps the index cells readable)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (CPU part)")
    parser.add_argument("--frames", type=int, default=200, help="frames for the bare measurement")
    parser.add_argument("--fps", type=float, nargs="+", default=[30.0], help="client input frame rates")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (served)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the bare run (default: the pipeline's, all cores but one)")
    parser.add_argument("--gpu", action="store_true", help="also run the Wan2.1-1.3B GPU part (needs CUDA)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    parser.add_argument("--json", help="also write the tables to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.port)
        return 0
    out: dict[str, str] = {}
    if not args.gpu_only:
        out["cpu"] = cpu_tables(args)
        print(out["cpu"] + f"\n\n{machine()}\n")
    if args.gpu or args.gpu_only:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: GPU part skipped", file=sys.stderr)
        else:
            out["gpu"] = gpu_rows([1, 2, 3, 4], ["dense", "sla"], seconds=args.seconds)
            print(out["gpu"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0 if out else 1


if __name__ == "__main__":
    sys.exit(main())
