"""Serving benchmark: SLO-aware scheduling against baselines measured in the same run (docs/serving.md).

CPU (default): the embedded demo video model at 256x256; camera-like clients over WebSocket send
RGB24 frames on a 30 fps clock (not lock-step) and time each output against its send time. The
server runs in a subprocess (its own torch threads), the clients in this one.

- **bare**: the pipeline alone, batches of 1, 2, 4, 8 sessions back to back: the physical limit.
- **P1 served/bare**: 1 and 4 sessions, admission off and tiers fixed (the serving path alone):
  delivered FPS / min(bare FPS at that batch, offered FPS). Goal >= 0.9.
- **P2 batching**: aggregate on-time FPS (latency <= the 250 ms deadline) at 4 sessions, our server
  vs the same server with ``--max-batch 1`` (both admit all 4 at the requested tier, so that only
  batching differs). Goal >= 2.0x.
- **P3 overload** at 150% of capacity: a FIFO server that never drops (StreamDiffusionV2's demo
  policy; inbox 64 frames) vs ours: p99 ratio (goal >= 10x), ours <= deadline, every admitted session
  at its tier's frame rate, refused ones told why.
- **joins**: 2 sessions stream at 10 fps while 5 more (5 fps, 128px) open, admission on, each
  opening costing an extra 240 ms in 8 pieces (a real text encoder): stall-free (ours) vs opened in
  one blocking call: the live sessions' frames not delivered on time.
- **planner**: `streamserve plan` on the cost model (and the latency outside the step) the server
  learned serving P1's one session, against the capacity and p99 measured by adding sessions
  (admission off) until < 99% of frames are on time.

Single checks (benchmarks/serving_checks.py): ``--only-planner`` (calibrate, ``plan --from``,
sweep; ``--size``/``--fps``), ``--only-joins`` (demo model and a sleep-paced device),
``--only-sleep`` (the planner on a sleep-paced device).

``--gpu``: the same on CUDA with a Wan2.1-1.3B-shaped model (random weights) at 512x512.
Run ``python benchmarks/serving.py`` (or ``streamserve bench serving``); prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

from streamserve.serverproc import free_port, server_process

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET_S = 0.25
STAGGER_S = 0.3  # clients of a measurement start this far apart (each on its own frame clock)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- the server (subprocess) -----------------------------------------------------------------------

def wan_pipeline_class() -> Any:
    """A `video` pipeline over a random-weight Wan2.1-1.3B-shaped model on CUDA (benchmarks/video.py)."""
    import importlib.util

    from streamserve.pipelines.video import VideoDiffusionPipeline

    spec = importlib.util.spec_from_file_location("bench_video", os.path.join(HERE, "video.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class WanBench(VideoDiffusionPipeline):
        def __init__(self, device: str = "cuda", **options: Any) -> None:
            fresh = VideoDiffusionPipeline.from_loaded(module.wan_13b(device), device)
            self.__dict__.update(fresh.__dict__)

    return WanBench


def serve(args: argparse.Namespace) -> int:
    from serving_checks import sleep_pipeline_class, slow_open_class

    from streamserve.core.config import ServerConfig, SessionConfig
    from streamserve.pipelines import registry
    from streamserve.server import create_app
    from streamserve.serving import serve as run_server

    if args.gpu:
        registry.register(wan_pipeline_class(), replace=True)
    if args.sleep_ms:
        a, b = (float(x) / 1000 for x in args.sleep_ms.split(","))
        registry.register(sleep_pipeline_class(a, b), replace=True)
    if args.open_ms:
        registry.register(slow_open_class(registry.get_class("video"), args.open_ms), replace=True)
    config = ServerConfig(pipeline="video", port=args.port, log_level="warning", max_batch=args.max_batch,
                          scheduler=args.scheduler, device="cuda" if args.gpu else "cpu", max_sessions=64,
                          max_utilization=args.max_utilization,
                          session=SessionConfig(latency_budget_s=BUDGET_S, inbox_size=args.inbox_size))
    app = create_app(config)
    if args.no_admission:  # admit everyone at the requested tier (P1 and the capacity sweep)
        gate = app.state.manager.gate
        gate.admission.config = type(gate.admission.config)(max_utilization=1.0, restore_utilization=0.5,
                                                            max_batch=args.max_batch)
        gate.admission.check = lambda sid, spec, _a=gate.admission: _admit_all(_a, sid, spec)
    if args.blocking_joins:  # open sessions in one piece, at once (a server without stall-free joins)
        app.state.manager.scheduler.stall_free = False
    if args.no_supersede:  # overloaded sessions run their oldest unit (A/B of the freshest-frame rule)
        app.state.manager.scheduler.supersede = False
    if args.no_adapt_batch:  # the largest batch the group allows (A/B of the batch size choice)
        app.state.manager.scheduler.adapt_batch = False
    if args.no_spare_frames:  # a lowered tier runs exactly its rate (A/B of the spare frames)
        app.state.manager.scheduler.spare = False
    return run_server(app, config)  # as `streamserve serve` runs it (its uvicorn options included)


def _admit_all(admission: Any, sid: str, spec: Any) -> Any:
    from streamserve.schedulers import Decision, ladder

    admission.ensure(sid, spec)
    return Decision(True, ladder(spec)[0], "none", "admission off (benchmark)", admission.load().utilization)


@contextlib.contextmanager
def running_server(gpu: bool, scheduler: str = "slo", max_batch: int = 8, no_admission: bool = False,
                   inbox_size: int = 2, blocking_joins: bool = False, sleep_ms: str = "",
                   open_ms: float = 0.0, supersede: bool = True, adapt_batch: bool = True) -> Iterator[str]:
    port = free_port()
    cmd = [os.path.abspath(__file__), "--serve", "--port", str(port), "--scheduler", scheduler,
           "--max-batch", str(max_batch), "--inbox-size", str(inbox_size)]
    cmd += ["--gpu"] * gpu + ["--no-admission"] * no_admission + ["--blocking-joins"] * blocking_joins
    cmd += ["--no-supersede"] * (not supersede) + ["--no-adapt-batch"] * (not adapt_batch)
    cmd += ["--sleep-ms", sleep_ms] if sleep_ms else []
    cmd += ["--open-ms", str(open_ms)] if open_ms else []
    with server_process(cmd, port, timeout_s=300) as url:
        if scheduler == "slo":  # wait for the warm-up profile (it runs before any session opens)
            while not get_json(f"{url}/v1/capacity").get("profile", {}).get("video"):
                time.sleep(0.3)
        yield url


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as reply:
        return dict(json.loads(reply.read()))


# --- bare ------------------------------------------------------------------------------------------

def bare(size: int, gpu: bool, steps: int = 12) -> dict[int, float]:
    """Aggregate FPS of the pipeline alone, n sessions per batch, frames back to back."""
    from streamserve.core.frames import VideoFrame
    from streamserve.core.plan import Batch, WorkItem
    from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams

    pipe = wan_pipeline_class()() if gpu else VideoDiffusionPipeline(device="cpu")
    pipe.warmup()
    rng = np.random.default_rng(0)
    out = {}
    for n in (1, 2, 4, 8):
        ids = [f"b{i}" for i in range(n)]
        for sid in ids:
            pipe.open_session(sid, VideoParams(width=size, height=size))
        times = []
        for k in range(steps):
            frames = [VideoFrame(rng.integers(0, 255, (size, size, 3), np.uint8), k * 3000, 0.0, 1e9) for _ in ids]
            t0 = time.perf_counter()
            pipe.step(Batch("video", tuple(WorkItem(s, f) for s, f in zip(ids, frames, strict=True))))
            times.append(time.perf_counter() - t0)
        for sid in ids:
            pipe.close_session(sid)
        out[n] = n / percentile(times[3:], 50)
    return out


# --- clients ---------------------------------------------------------------------------------------

async def one_client(url: str, size: int, fps: float, seconds: float, start_delay: float, warmup: float,
                     params: dict[str, Any]) -> dict[str, Any]:
    from streamserve.client import ServerError, StreamClient

    await asyncio.sleep(start_delay)
    client = StreamClient(url.replace("http", "ws") + "/v1/ws", pipeline="video", params=params,
                          send_format="rgb24", output_format="rgb24", kinds=("video",), open_timeout=60)
    try:
        await client.connect()
    except ServerError as exc:
        return {"admitted": False, "code": exc.code, "reason": exc.details.get("reason", str(exc)),
                "limit": exc.details.get("limit")}
    frame = np.random.default_rng(1).integers(0, 255, (size, size, 3), np.uint8)
    latencies: list[float] = []
    t0 = time.monotonic()  # the frame clock starts here, after connecting: its phase is this client's
    counted_from = t0 + warmup

    async def receive() -> None:
        while True:
            out = await client.receive(timeout_s=None)
            if out is None:
                return
            sent = out.pts_us / 1e6
            if sent >= counted_from:
                latencies.append(out.received - sent)

    reader = asyncio.create_task(receive())
    sent, k = 0, 0
    before: dict[str, Any] | None = None if warmup > 0 else {}
    try:
        while time.monotonic() - t0 < warmup + seconds:
            now = time.monotonic()
            if before is None and now >= counted_from:  # the server's counters at the window's start
                before = (await client.stats())["session"]
            await client.send_frame(frame, pts_us=round(now * 1e6))
            sent += now >= counted_from
            k += 1
            await asyncio.sleep(max(0.0, t0 + k / fps - time.monotonic()))  # frames on a clock
        await asyncio.sleep(1.0)  # let the last outputs arrive
        stats = (await client.stats())["session"]
    finally:
        reader.cancel()
        await client.close()
    on_time = sum(1 for v in latencies if v <= BUDGET_S)
    slo = stats.get("slo") or {}
    return {"admitted": True, "started": t0, "sent": sent, "received": len(latencies), "on_time": on_time,
            "fps": len(latencies) / seconds, "on_time_fps": on_time / seconds, "latencies": latencies,
            "tier": slo.get("level"), "tier_fps": slo.get("fps"), "reason": slo.get("reason"),
            # frames the server delivered late or dropped within the window (not the transport)
            "server_missed": sum(stats.get(k, 0) - (before or {}).get(k, 0)
                                 for k in ("deadline_misses", "dropped_expired", "dropped_inbox")),
            "server_p99_ms": (stats.get("latency_ms") or {}).get("p99")}


async def clients(url: str, n: int, size: int, fps: float, seconds: float, stagger: float = STAGGER_S,
                  warmup: float = 3.0, params: dict[str, Any] | None = None) -> dict[str, Any]:
    # Each client counts the same wall-clock window: later joiners wait less before counting.
    results = await asyncio.gather(*(one_client(url, size, fps, seconds, stagger * i,
                                                warmup + stagger * (n - 1 - i), dict(params or {}))
                                     for i in range(n)))
    admitted = [r for r in results if r["admitted"]]
    lat = [v for r in admitted for v in r["latencies"]]
    return {"sessions": results, "admitted": len(admitted), "refused": n - len(admitted),
            "starts": [r["started"] for r in admitted] if len(admitted) == n else None,
            "fps": sum(r["fps"] for r in admitted), "on_time_fps": sum(r["on_time_fps"] for r in admitted),
            "goodput": sum(r["on_time"] for r in admitted) / max(1, sum(r["sent"] for r in admitted)),
            # the server's own count (what the planner models): frames not late, expired or evicted there
            "server_goodput": max(0.0, 1 - sum(r["server_missed"] for r in admitted)
                                  / max(1, sum(r["sent"] for r in admitted))),
            "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
            # arrival at the server -> output ready (what the planner models; excludes the transport)
            "server_p99_ms": max((r["server_p99_ms"] or math.nan for r in admitted), default=math.nan)}


def measure(url: str, n: int, size: int, seconds: float, params: dict[str, Any] | None = None,
            fps: float = 30.0) -> dict[str, Any]:
    return asyncio.run(clients(url, n, size, fps, seconds, params=params))


def joins(url: str, size: int, seconds: float, live: int = 2, joining: int = 5, fps: float = 10.0,
          join_size: int = 128, join_fps: float = 5.0, sized: bool = True) -> dict[str, Any]:
    """`live` sessions stream at `fps` while `joining` more (smaller and slower, so that the steady
    load fits the device and admission lets them in) open one after another, 0.5 s apart, during the
    measured window: the live sessions' frames not delivered on time are the joins' stall."""
    params: dict[str, Any] = {"degrade": [], "fps": fps}
    small: dict[str, Any] = {"degrade": [], "fps": join_fps}
    if sized:  # a pipeline with a resolution knob (not the sleep-paced passthrough)
        params.update(width=size, height=size)
        small.update(width=join_size, height=join_size)

    async def go() -> list[dict[str, Any]]:
        warmup = 3.0
        return list(await asyncio.gather(
            *(one_client(url, size, fps, seconds, 0.0, warmup, params) for _ in range(live)),
            *(one_client(url, join_size, join_fps, max(1.0, seconds - 0.5 * i - 1.0), warmup + 0.5 + 0.5 * i, 0.0,
                         small) for i in range(joining))))

    got = asyncio.run(go())
    old = [r for r in got[:live] if r["admitted"]]
    profile = get_json(f"{url}/v1/capacity").get("profile", {})
    pieces = {k: v[0]["seconds"].get("1") for k, v in profile.items() if "#" in k and v}
    return {"live_sent": sum(r["sent"] for r in old), "live_missed": sum(r["sent"] - r["on_time"] for r in old),
            "live_server_missed": sum(r["server_missed"] for r in old),
            "live_p99_ms": 1000 * percentile([v for r in old for v in r["latencies"]], 99),
            "live_server_p99_ms": max(((r["server_p99_ms"] or math.nan) for r in old), default=math.nan),
            "live_admitted": len(old), "live_refused": [r.get("reason") for r in got[:live] if not r["admitted"]],
            "joined": sum(1 for r in got[live:] if r["admitted"]),
            "refused": [r.get("reason") for r in got[live:] if not r["admitted"]],
            "open_pieces_ms": {k: 1000 * v for k, v in pieces.items() if v is not None},
            "load": os.getloadavg()[0]}


# --- the run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from streamserve.planner import profile_from_server

    size, gpu, secs = args.size, args.gpu, args.seconds
    fixed = {"width": size, "height": size, "degrade": []}
    res: dict[str, Any] = {"size": size, "seconds": secs, "machine": machine(gpu), "open_ms_check": args.open_ms_check}
    print(f"bare pipeline at {size}x{size} ...", flush=True)
    res["bare"] = bare(size, gpu)
    print(f"  {res['bare']}", flush=True)
    with running_server(gpu, no_admission=True) as url:
        for n in (1, 4):
            print(f"P1: {n} session(s), admission off ...", flush=True)
            res[f"p1_{n}"] = measure(url, n, size, secs, fixed)
            if n == 1:  # the planner's input: what the server learned serving one session (plan --from URL)
                profile = profile_from_server(url).to_dict()
                res["profile"] = profile
                res["overhead"] = get_json(f"{url}/v1/capacity").get("overhead", {})
        sweep = {}
        for n in range(1, args.max_sweep + 1):
            print(f"capacity sweep: {n} session(s) ...", flush=True)
            sweep[n] = measure(url, n, size, secs, fixed)
            if sweep[n]["goodput"] < 0.99 and n >= 2:
                break
        res["sweep"] = sweep
    for blocking in (False, True):
        with running_server(gpu, blocking_joins=blocking, open_ms=args.open_ms_check) as url:
            print(f"joins: 2 live sessions at 10 fps while 5 join at 5 fps 128px, opening + {args.open_ms_check:g} ms "
                  f"({'blocking' if blocking else 'stall-free'}) ...", flush=True)
            res["joins_blocking" if blocking else "joins_ours"] = joins(url, size, secs)
    # P2 isolates batching: both servers admit all 4 at the requested tier.
    with running_server(gpu, no_admission=True) as url:
        print("P2: 4 sessions, ours ...", flush=True)
        res["p2_ours"] = measure(url, 4, size, secs, fixed)
    with running_server(gpu, max_batch=1, no_admission=True) as url:
        print("P2: 4 sessions, --max-batch 1 ...", flush=True)
        res["p2_batch1"] = measure(url, 4, size, secs, fixed)
    measured_cap = 0
    for n, point in sorted(res["sweep"].items()):
        if point["goodput"] < 0.99:
            break
        measured_cap = n
    res["measured_capacity"] = measured_cap
    res["measured_capacity_server"] = _capacity(res["sweep"], "server_goodput")
    offered = max(2, math.ceil(1.5 * max(1, measured_cap)))
    res["p3_offered"] = offered
    with running_server(gpu, scheduler="fifo", inbox_size=64) as url:
        print(f"P3: {offered} sessions, FIFO never-drop ...", flush=True)
        res["p3_fifo"] = measure(url, offered, size, secs, {"width": size, "height": size})
    with running_server(gpu) as url:
        print(f"P3: {offered} sessions, ours ...", flush=True)
        res["p3_ours"] = measure(url, offered, size, secs, {"width": size, "height": size})
    res["plan"] = planner(profile, size, secs, sweep=res["sweep"])
    return res


def planner(profile: dict[str, Any], size: int, seconds: float, max_sessions: int = 6, fps: float = 30.0,
            sweep: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """`streamserve plan` on a profile read from the server (its learned overhead included)."""
    from streamserve.planner import plan
    from streamserve.schedulers import CostModel, SessionSpec, WorkShape

    spec = SessionSpec("video", WorkShape(size, size, 1), fps=fps, budget_s=BUDGET_S)
    # Simulate the measured clients' own frame phases (when each sent its first frame).
    starts = {int(n): p["starts"] for n, p in (sweep or {}).items() if p.get("starts")}
    report = plan(CostModel.from_dict(profile), spec, starts=starts,
                  duration=max(20.0, 2 * seconds), max_sessions=max_sessions)
    return report.to_dict()


def _capacity(sweep: dict[int, dict[str, Any]], key: str = "goodput") -> int:
    cap = 0
    for n, point in sorted(sweep.items()):
        if point.get(key, point["goodput"]) < 0.99:
            break
        cap = n
    return cap


def _overhead_text(over: dict[str, Any]) -> str:
    from streamserve.planner import overhead_value as fmt

    return ", ".join(f"{p} mean {fmt(p, v['mean'])} / p99 {fmt(p, v['p99'])} / lag-1 {v.get('lag1', 0):.2f}"
                     for p, v in over.items()) or "nothing (no overhead in the profile)"


def _worst_p99(plan: dict[str, Any], n: int) -> float:
    """The planner's worst session p99 at `n` sessions (a server's session stats give the same)."""
    return float(next((p["p99_worst_session_ms"] for p in plan["sweep"] if p["sessions"] == n), float("nan")))


def machine(gpu: bool) -> str:
    if gpu:
        import torch

        return torch.cuda.get_device_name(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    from streamserve.core.cpu import cpu_model, usable_cores

    return f"{cpu_model()}, {usable_cores()} cores, load {load:.1f} at start"


def table(res: dict[str, Any]) -> str:
    bare_fps = res["bare"]
    lines = [f"Machine: {res['machine']}; demo video model {res['size']}x{res['size']}, 1 step; "
             f"clients send RGB24 over WebSocket on a 30 fps clock; {res['seconds']:g} s measured per point.", "",
             "| batch | bare FPS (aggregate) |", "|---|---|"]
    lines += [f"| {n} | {fps:.1f} |" for n, fps in bare_fps.items()]
    lines += ["", "| check | ours | baseline | ratio | goal |", "|---|---|---|---|---|"]
    for n in (1, 4):
        p = res[f"p1_{n}"]
        ref = min(bare_fps[n], 30.0 * n)
        lines.append(f"| P1 served/bare, {n} session(s) | {p['fps']:.1f} FPS | {ref:.1f} FPS (bare, batch {n}) | "
                     f"{p['fps'] / ref:.2f} | >= 0.9 |")
    o, b = res["p2_ours"], res["p2_batch1"]
    p2 = f"{o['on_time_fps'] / b['on_time_fps']:.2f}x" if b["on_time_fps"] > 0 else "n/a (baseline 0)"
    lines.append(f"| P2 on-time FPS, 4 sessions | {o['on_time_fps']:.1f} | {b['on_time_fps']:.1f} (--max-batch 1) | "
                 f"{p2} | >= 2.0x |")
    f, us = res["p3_fifo"], res["p3_ours"]
    lines.append(f"| P3 p99 at 150% ({res['p3_offered']} sessions) | {us['p99_ms']:.0f} ms | {f['p99_ms']:.0f} ms "
                 f"(FIFO) | {f['p99_ms'] / max(us['p99_ms'], 1e-9):.1f}x | >= 10x, ours <= 250 ms |")
    lines += ["", "P3, ours, per session:", ""]
    for i, s in enumerate(us["sessions"]):
        if s["admitted"]:
            lines.append(f"- session {i}: tier {s['tier']} ({s['tier_fps']:g} fps) -> delivered {s['fps']:.1f} fps, "
                         f"{s['on_time'] / max(1, s['received']):.1%} of outputs on time; {s['reason']}")
        else:
            lines.append(f"- session {i}: refused ({s['code']}, limit {s['limit']}): {s['reason']}")
    jo, jb = res["joins_ours"], res["joins_blocking"]
    lines += ["", f"| 5 join (5 fps 128px, opening + {res['open_ms_check']:g} ms in 8 pieces) 2 live ones (10 fps) "
              "| joined | live frames missed, client | server | live p99 client / server |", "|---|---|---|---|---|"]
    for name, j in (("stall-free (ours)", jo), ("opened in one blocking call", jb)):
        lines.append(f"| {name} | {j['joined']} of 5 (live: {j['live_admitted']} of 2) | "
                     f"{j['live_missed']} of {j['live_sent']} | "
                     f"{j['live_server_missed']} | {j['live_p99_ms']:.0f} / {j['live_server_p99_ms']:.0f} ms |")
    plan = res["plan"]
    sweep = res["sweep"]
    cap = res.get("measured_capacity_server", res["measured_capacity"])
    p99_cap = sweep[cap]["server_p99_ms"] if cap else float("nan")
    lines += ["", "Planner input: the cost model the server learned serving P1's one session (`plan --from URL`); "
              "latency outside the step: " + _overhead_text(res.get("overhead", {}).get("video", {})), "",
              "| capacity at 30 fps | planner | measured |", "|---|---|---|",
              f"| sessions with >= 99% on time | {plan['simulated_capacity']} (admission: "
              f"{plan['admission_capacity']}) | {cap} server side ({res['measured_capacity']} client side) |",
              f"| p99 at the measured capacity (server side, worst session) | "
              f"{_worst_p99(plan, cap):.0f} ms | {p99_cap:.0f} ms |", "",
              "| sessions (admission off) | measured goodput, server (client) | planner goodput | measured p99, server "
              "(worst session) | planner p99, worst session | measured p99, client |", "|---|---|---|---|---|---|"]
    planned = {p["sessions"]: p for p in plan["sweep"]}
    for n, point in sorted(sweep.items()):
        pl = planned.get(int(n), {})
        lines.append(f"| {n} | {point.get('server_goodput', float('nan')):.3f} ({point['goodput']:.3f}) | "
                     f"{pl.get('goodput', float('nan')):.3f} | {point['server_p99_ms']:.0f} ms | "
                     f"{_worst_p99(plan, int(n)):.0f} ms | {point['p99_ms']:.0f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="Wan2.1-1.3B-shaped model on CUDA at 512x512")
    parser.add_argument("--size", type=int, default=None, help="resolution (default 256, GPU 512)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--max-sweep", type=int, default=4, help="largest session count in the capacity sweep")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scheduler", default="slo", help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--max-utilization", type=float, default=0.9, help=argparse.SUPPRESS)
    parser.add_argument("--inbox-size", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-admission", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--blocking-joins", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-supersede", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-adapt-batch", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-spare-frames", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sleep-ms", default="", help=argparse.SUPPRESS)
    parser.add_argument("--open-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--open-ms-check", type=float, default=240.0,
                        help="extra opening cost (ms, in 8 pieces) for the joins check (a real text encoder)")
    parser.add_argument("--joins-devices", default="model,sleep",
                        help="which joins checks: the demo model (model) and/or a sleep-paced device (sleep)")
    parser.add_argument("--only-joins", action="store_true",
                        help="only stall-free vs blocking joins (demo model's opening, then an expensive one)")
    parser.add_argument("--only-sleep", action="store_true",
                        help="only the planner check on a sleep-paced pipeline (fast, insensitive to CPU load)")
    parser.add_argument("--fps", type=float, default=30.0, help="client frame rate for --only-planner")
    parser.add_argument("--only-planner", action="store_true",
                        help="only the planner vs server check for the demo model (calibrate, plan --from, sweep)")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args)
    args.size = args.size or (512 if args.gpu else 256)
    if args.only_sleep or args.only_joins or args.only_planner:
        import serving_checks as checks

        which = "sleep" if args.only_sleep else "joins" if args.only_joins else "planner"
        res = getattr(checks, f"{which}_check")(args)
        print(getattr(checks, f"{which}_table")(res))
    else:
        res = run(args)
        print(table(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
