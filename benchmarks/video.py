"""Video pipeline benchmark: bare pipeline against served (WebRTC loopback) in the same run; Wan on GPU.

CPU (default): the embedded demo model at 256x256, one session.

- **bare**: frames handed straight to `VideoDiffusionPipeline.step` back to back -- the pipeline's
  capacity (FPS) and its per-frame step time (p50/p99);
- **served**: the real server (`create_app`, video pipeline, a subprocess on 127.0.0.1) and one aiortc
  client sending index-stamped frames (`streamserve.transport.probe`) at ``--fps``: delivered FPS and
  glass-to-glass latency (client encode -> server decode -> pipeline -> encode -> client decode).
  Served/bare compares delivered FPS with what the pipeline could deliver at that input rate,
  ``min(bare FPS, input FPS)``, bare being the mean of two runs, just before and just after the
  served part (the host's speed drifts). The "noir" style keeps the black/white index cells readable.

GPU (``--gpu``, or ``--gpu-only`` without the CPU part; needs CUDA): a Wan2.1-1.3B-shaped model with
random weights (DiT, Wan VAE; a random prompt embedding stands in for UMT5) at 512x512 in bf16, 1-4
steps with stream batch, dense vs SLA: time to first frame (session opening included) with frames
arriving at 16 FPS, then steady FPS with frames handed over back to back, next to StreamDiffusionV2's
one-H100 figures. ``--dry-run`` runs that part on CPU with a tiny Wan-shaped model at 64x64 (the
script's check in ``make test``; its figures mean nothing).

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
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

from streamserve.serverproc import free_port, server_process

SDV2_FPS = {1: 26.2, 2: 24.0, 3: 21.5, 4: 19.4}  # StreamDiffusionV2, Wan2.1-1.3B, 512x512, one H100
SDV2_TTFF_S = 0.37


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- bare ------------------------------------------------------------------------------------------

def bare(size: int, frames: int, style: str, steps: int, threads: int | None,
         baseline_dtype: str | None = "float32") -> dict[str, Any]:
    """Back-to-back frames through the pipeline in this process, at the pipeline's default precision
    (what the server runs) and, beside it, at ``baseline_dtype``: two pipelines stepped in alternating
    rounds of 40 frames, so a slow spell of the host weighs on both alike."""
    import torch

    from streamserve.core.frames import VideoFrame
    from streamserve.core.plan import Batch, WorkItem
    from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams
    from streamserve.transport.probe import picture, stamp

    pipes = {"default": VideoDiffusionPipeline(device="cpu", threads=threads)}
    if baseline_dtype and pipes["default"].dit.dtype != getattr(torch, baseline_dtype):
        pipes[baseline_dtype] = VideoDiffusionPipeline(device="cpu", threads=threads, dtype=baseline_dtype)
    for pipe in pipes.values():
        pipe.warmup()
        pipe.open_session("bench", VideoParams(style=style, steps=steps, width=size, height=size))  # type: ignore[arg-type]
    pics = [stamp(i, size, size, picture(i, size, size)) for i in range(30)]
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for start in range(0, frames, 40):
        for name, pipe in pipes.items():
            for i in range(start, min(frames, start + 40)):
                frame = VideoFrame(pics[i % len(pics)], i * 3000, 0.0, 1e9)
                t0 = time.perf_counter()
                pipe.step(Batch("video", (WorkItem("bench", frame),)))
                times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {}
    for name, pipe in pipes.items():
        pipe.close_session("bench")
        steady = times[name][5:]
        out[name] = {"fps": len(steady) / sum(steady), "p50_ms": 1000 * percentile(steady, 50),
                     "p99_ms": 1000 * percentile(steady, 99), "dtype": str(pipe.dit.dtype).removeprefix("torch.")}
    return {**out["default"], "baseline": out.get(baseline_dtype or "")}


# --- served ----------------------------------------------------------------------------------------

def serve(port: int, spare_frames: bool, model_process: bool) -> None:
    import uvicorn

    from streamserve.core.config import ServerConfig
    from streamserve.server import create_app

    config = ServerConfig(pipeline="video", port=port, log_level="warning", spare_frames=spare_frames,
                          model_process=model_process)
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def running_server(spare_frames: bool = True, model_process: bool = False) -> Iterator[str]:
    port = free_port()
    cmd = [os.path.abspath(__file__), "--serve", "--port", str(port)] + ["--no-spare-frames"] * (not spare_frames) \
        + ["--model-process"] * model_process
    with server_process(cmd, port, timeout_s=120) as url:
        yield url


def http_json(url: str, body: dict[str, Any] | None = None, secret: str | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if secret:  # a session's own routes need its secret (the offer's answer carries it)
        headers["Authorization"] = f"Bearer {secret}"
    request = urllib.request.Request(url, data, headers)
    with urllib.request.urlopen(request, timeout=60) as reply:
        return dict(json.loads(reply.read()))


async def served(url: str, size: int, fps: float, style: str, steps: int, warmup_s: float,
                 seconds: float, client_jb: str = "frame-end") -> dict[str, Any]:
    """One WebRTC session from an aiortc client. ``client_jb="frame-end"``: the client's receiver
    completes a frame at its marker packet, as browsers do (`streamserve.transport.jitter`, what the
    server's receiver runs); ``"stock"``: aiortc's own buffer, which holds every received frame until
    the next one starts, adding one output frame interval to each latency (the figures before
    2026-12-06's fifth session)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from streamserve.transport import jitter
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
    if client_jb == "frame-end":  # before media flows (ICE and DTLS come first)
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video" and not jitter.install(transceiver.receiver):
                raise RuntimeError("could not install the frame-end jitter buffer on the client")
    try:
        await asyncio.sleep(warmup_s)
        start, sent0 = time.monotonic(), len(source.sent_at)
        await asyncio.sleep(seconds)
        end, sent = time.monotonic(), len(source.sent_at) - sent0
        try:
            stats = await asyncio.to_thread(http_json, f"{url}/v1/sessions/{answer['session_id']}", None,
                                            answer.get("session_secret"))
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
            "drops": {k: v for k, v in stats.items() if k.startswith("dropped")}, "tier": tier_text(stats.get("slo"))}


def tier_text(slo: Any) -> str:
    """The session's tier at the end, as the server reports it (e.g. "24 fps 256x256"): what the
    served frames were (a session the policy lowered to a smaller size is served smaller)."""
    if not isinstance(slo, dict) or "fps" not in slo:
        return "?"
    return f"{slo['fps']:g} fps {slo.get('width')}x{slo.get('height')}"


def cpu_tables(args: argparse.Namespace) -> str:
    """Bare, then served, then bare again (``--rounds R``: R served parts, each between two bare ones,
    on one server): the host's speed drifts by 10-15 % within minutes here, so each served figure is
    compared with the mean of the bare rates measured just before and after it."""
    baseline = None if args.baseline_dtype == "none" else args.baseline_dtype
    bares = [bare(args.size, args.frames, args.style, args.steps, args.threads, baseline)]
    before = bares[0]
    print(f"bare: {before['fps']:.1f} FPS, step p50 {before['p50_ms']:.1f} ms, p99 {before['p99_ms']:.1f} ms "
          f"({before['dtype']})", file=sys.stderr)
    base = before["baseline"]
    if base:
        print(f"bare {base['dtype']}: {base['fps']:.1f} FPS, p50 {base['p50_ms']:.1f} ms", file=sys.stderr)
    rows = []
    with running_server(args.spare_frames, args.model_process) as url:
        for r in range(args.rounds):
            for fps in args.fps:
                s = asyncio.run(served(url, args.size, fps, args.style, args.steps, args.warmup, args.seconds,
                                       args.client_jitter_buffer))
                print(f"served @{fps:g}: {s}", file=sys.stderr)
                rows.append((r, s))
            if r + 1 < args.rounds:  # the server idles meanwhile; the last bare part runs without it
                bares.append(bare(args.size, args.frames, args.style, args.steps, args.threads, None))
                print(f"bare: {bares[-1]['fps']:.1f} FPS, step p50 {bares[-1]['p50_ms']:.1f} ms", file=sys.stderr)
    bares.append(bare(args.size, args.frames, args.style, args.steps, args.threads, None))
    print(f"bare after: {bares[-1]['fps']:.1f} FPS, step p50 {bares[-1]['p50_ms']:.1f} ms", file=sys.stderr)
    lines = ["| input FPS | bare FPS before / after (capacity: their mean) | served FPS | served / min(bare, input) | "
             "glass-to-glass p50 (ms) | p99 (ms) | bare step p50 / p99 (ms), before | server tier at the end | "
             "server drops |",
             "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for r, s in rows:
        b0, b1 = bares[r], bares[r + 1]
        ratio = s["fps"] / min((b0["fps"] + b1["fps"]) / 2, s["fps_in"])
        ratios.append(ratio)
        lines.append(f"| {s['fps_in']:.1f} | {b0['fps']:.1f} / {b1['fps']:.1f} | {s['fps']:.1f} | {ratio:.2f} | "
                     f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {b0['p50_ms']:.1f} / {b0['p99_ms']:.1f} | "
                     f"{s['tier']} | {s['drops']} |")
    if args.rounds > 1:
        lines.append(f"\nServed / min(bare, input) over {args.rounds} rounds: median {float(np.median(ratios)):.2f} "
                     f"(min {min(ratios):.2f}, max {max(ratios):.2f}).")
    versus = (f" Bare at {base['dtype']} in the same rounds: {base['fps']:.1f} FPS (p50 {base['p50_ms']:.1f} ms); "
              f"{before['dtype']} / {base['dtype']}: {before['fps'] / base['fps']:.2f}x." if base else "")
    return (f"Demo model, {args.size}x{args.size}, one session, style {args.style!r}, {args.steps} step(s), "
            f"{before['dtype']} (the default here), torch threads: "
            f"{args.threads or 'pipeline default (all cores but one)'}, client jitter buffer: "
            f"{args.client_jitter_buffer}.{versus}\n\n" + "\n".join(lines))


# --- GPU: Wan2.1-1.3B shape ------------------------------------------------------------------------

WAN_13B = {"dim": 1536, "heads": 12, "layers": 30, "ffn": 8960, "text_dim": 4096, "text_tokens": 512,
           "freq_dim": 256, "vae": "wan2.1"}
# --dry-run: the same code on CPU with a small Wan-shaped DiT (head dim 64, which the SLA kernels take)
# and a small Wan VAE (same 8x/4x compression, fewer channels).
WAN_TINY = {"dim": 128, "heads": 2, "layers": 2, "ffn": 256, "text_dim": 64, "text_tokens": 16,
            "freq_dim": 64, "vae": "tiny"}
INPUT_FPS = 16.0  # Wan's frame rate: frames arrive at this rate until the first output


def wan_model(device: str, dtype: Any, shape: dict[str, Any]) -> Any:
    """Random-weight Wan DiT + Wan VAE built on ``device``, with a fixed random prompt embedding."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from streamserve.pipelines.video.checkpoint import WAN_DEFAULTS, LoadedModel
    from streamserve.pipelines.video.model import CausalWanDiT
    from streamserve.pipelines.video.prompts import PromptEncoder
    from streamserve.pipelines.video.wan_vae import WanStreamingVAE

    class RandomPrompt(PromptEncoder):
        text_dim = int(shape["text_dim"])

        def _encode(self, prompt: str) -> torch.Tensor:  # stands in for UMT5: [1, tokens, text_dim]
            return torch.randn(1, shape["text_tokens"], self.text_dim, device=device, dtype=dtype)

    torch.manual_seed(0)
    wan: Any = WanTransformer3DModel
    vae_cls: Any = AutoencoderKLWan
    with torch.device(device):  # parameters are created (and initialised) on the device: no CPU detour
        dit = wan(num_attention_heads=shape["heads"], attention_head_dim=shape["dim"] // shape["heads"],
                  in_channels=16, out_channels=16, text_dim=shape["text_dim"], freq_dim=shape["freq_dim"],
                  ffn_dim=shape["ffn"], num_layers=shape["layers"])
        if shape["vae"] == "tiny":
            vae = vae_cls(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                          temperal_downsample=[False, True, True])
        else:
            vae = vae_cls()  # Wan2.1's VAE configuration
    causal = CausalWanDiT(dit.to(device, dtype)).eval()
    name = f"random Wan DiT {shape['layers']}x{shape['dim']} ({shape['heads']} heads)"
    return LoadedModel(causal, WanStreamingVAE(vae.to(device, dtype).eval()), RandomPrompt(), WAN_DEFAULTS, name)


def stream_row(pipe: Any, steps: int, attention: str, size: int, seconds: float, sync: Any,
               frame: np.ndarray) -> dict[str, Any]:
    """One (steps, attention) measurement: time to first frame with frames arriving at 16 FPS (session
    opening included), then steady FPS with frames handed over back to back for ``seconds``."""
    from streamserve.core.frames import VideoFrame
    from streamserve.core.plan import Batch, WorkItem
    from streamserve.pipelines.video import VideoParams

    params = VideoParams(steps=steps, attention=attention, width=size, height=size)  # type: ignore[arg-type]

    def step(sid: str, i: int) -> int:
        (res,) = pipe.step(Batch("video", (WorkItem(sid, VideoFrame(frame, i, 0.0, 1e9)),)))
        if res.error:
            raise RuntimeError(res.error)
        sync()
        return len(res.media)

    pipe.open_session("warm", params)  # first-call allocations, kernel selection and compilation,
    for i in range(1 + pipe.vae.temporal_factor * (params.lag_blocks + 1)):  # decoding included
        step("warm", i)
    pipe.close_session("warm")
    sync()

    t0, ttff, i = time.perf_counter(), float("nan"), 0
    pipe.open_session("bench", params)
    try:
        while ttff != ttff:  # nan until the first output frame
            if (wait := t0 + i / INPUT_FPS - time.perf_counter()) > 0:
                time.sleep(wait)  # frame i arrives at t0 + i / 16 s
            if step("bench", i):
                ttff = time.perf_counter() - t0
            i += 1
            if time.perf_counter() - t0 > 30:
                raise RuntimeError(f"no output after {i} frames in 30 s")
        start, produced, last, blocks = time.perf_counter(), 0, time.perf_counter(), 0
        while last - start < seconds or blocks < 2:
            n = step("bench", i)
            i += 1
            if n:
                produced, last, blocks = produced + n, time.perf_counter(), blocks + 1
    finally:
        pipe.close_session("bench")
    # Frames a block needs: 1 then vae.temporal_factor; outputs lag steps - 1 blocks (stream batch).
    floor = pipe.vae.temporal_factor * params.lag_blocks / INPUT_FPS
    return {"steps": steps, "attention": attention, "size": size, "fps": produced / (last - start),
            "ttff_s": ttff, "ttff_input_floor_s": floor, "frames": produced,
            "sdv2_fps": SDV2_FPS[steps], "sdv2_ttff_s": SDV2_TTFF_S}


def gpu_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| steps | attention | FPS | SDV2 FPS (H100) | FPS / SDV2 | time to first frame (s) | input floor (s) "
             "| SDV2 (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['attention']} | {r['fps']:.1f} | {r['sdv2_fps']} | "
                     f"{r['fps'] / r['sdv2_fps']:.2f} | {r['ttff_s']:.2f} | {r['ttff_input_floor_s']:.2f} | "
                     f"{r['sdv2_ttff_s']} |")
    return "\n".join(lines)


def gpu_rows(steps_list: list[int], attentions: list[str], seconds: float, dry_run: bool = False,
             on_rows: Any = None) -> dict[str, Any]:
    """The GPU benchmark (``dry_run``: the same on CPU with a tiny model at 64x64, fp32)."""
    import torch

    from streamserve.pipelines.video import VideoDiffusionPipeline

    device = "cpu" if dry_run else "cuda"
    dtype = torch.float32 if dry_run else torch.bfloat16
    size = 64 if dry_run else 512
    shape = WAN_TINY if dry_run else WAN_13B
    if dry_run:
        torch.set_num_threads(1)  # tiny tensors: more threads only add OpenMP contention
    t = time.perf_counter()
    loaded = wan_model(device, dtype, shape)
    pipe = VideoDiffusionPipeline.from_loaded(loaded, device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    name = torch.cuda.get_device_name() if device == "cuda" else machine()
    result: dict[str, Any] = {"device": name, "model": loaded.source, "dtype": str(dtype).removeprefix("torch."),
                              "size": size, "dry_run": dry_run, "build_s": time.perf_counter() - t, "rows": []}
    frame = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    for attention in attentions:
        for steps in steps_list:
            row = stream_row(pipe, steps, attention, size, seconds, sync, frame)
            print(f"gpu: {row}", file=sys.stderr, flush=True)
            result["rows"].append(row)
            result["table"] = gpu_table(result["rows"])
            if on_rows is not None:
                on_rows(result)
    result["table"] = gpu_table(result["rows"])
    return result


def gpu_text(result: dict[str, Any]) -> str:
    return (f"{result['model']}, {result['size']}x{result['size']}, {result['dtype']}, {result['device']}"
            f"{' (dry run)' if result['dry_run'] else ''}.\n\n{result['table']}")


def machine() -> str:
    from streamserve.core.cpu import cpu_model, usable_cores

    return f"{cpu_model()}, {usable_cores()} cores available, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="square frame size (CPU part)")
    parser.add_argument("--style", default="noir", help="demo style (keeps the index cells readable)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (CPU part)")
    parser.add_argument("--frames", type=int, default=200, help="frames for the bare measurement")
    parser.add_argument("--baseline-dtype", default="float32", choices=["float32", "bfloat16", "none"],
                        help="also measure bare at this precision when the default differs (none: skip)")
    parser.add_argument("--fps", type=float, nargs="+", default=[30.0], help="client input frame rates")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (served)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="served parts, each between two bare ones (the host's speed drifts; default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the bare run (default: the pipeline's, all cores but one)")
    parser.add_argument("--gpu", action="store_true", help="also run the Wan2.1-1.3B GPU part (needs CUDA)")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU part")
    parser.add_argument("--gpu-steps", type=int, nargs="+", default=[1, 2, 3, 4], help="GPU part: steps")
    parser.add_argument("--gpu-attention", nargs="+", choices=["dense", "sla"], default=["dense", "sla"],
                        help="GPU part: attention backends")
    parser.add_argument("--gpu-seconds", type=float, default=None,
                        help="GPU part: seconds of steady streaming per row (default: --seconds)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the GPU part only, on CPU with a tiny Wan-shaped model at 64x64 (checks the script)")
    parser.add_argument("--json", help="also write the results to this file (GPU rows: after each row)")
    parser.add_argument("--client-jitter-buffer", choices=["frame-end", "stock"], default="frame-end",
                        help="served: the aiortc client's video receiver completes a frame at its marker "
                        "packet as a browser does (frame-end), or waits for the next frame (aiortc's stock)")
    parser.add_argument("--no-spare-frames", dest="spare_frames", action="store_false",
                        help="served: a lowered tier runs exactly its rate (A/B of the spare frames, docs/serving.md)")
    parser.add_argument("--model-process", dest="model_process", action="store_true", default=True,
                        help="served: the model in a process of its own, as `streamserve serve` runs it (default)")
    parser.add_argument("--in-process", dest="model_process", action="store_false",
                        help="served: the model in the server's process (`serve --in-process`)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.serve:
        serve(args.port, args.spare_frames, args.model_process)
        return 0
    out: dict[str, Any] = {}

    def save(gpu: dict[str, Any] | None = None) -> None:
        if gpu is not None:
            out["gpu"] = gpu
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)

    if not (args.gpu_only or args.dry_run):
        out["cpu"] = cpu_tables(args)
        print(out["cpu"] + f"\n\n{machine()}\n")
        save()
    if args.gpu or args.gpu_only or args.dry_run:
        import torch

        if not args.dry_run and not torch.cuda.is_available():
            print("no CUDA device: GPU part skipped", file=sys.stderr)
        else:
            seconds = args.gpu_seconds if args.gpu_seconds is not None else (0.3 if args.dry_run else args.seconds)
            result = gpu_rows(args.gpu_steps, args.gpu_attention, seconds, args.dry_run, on_rows=save)
            save(result)
            print(gpu_text(result))
    return 0 if out else 1


if __name__ == "__main__":
    sys.exit(main())
