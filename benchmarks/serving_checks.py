"""The single-purpose checks of `benchmarks/serving.py` (`--only-planner`, `--only-joins`,
`--only-sleep`): the planner against the real server, stall-free vs blocking joins, and the planner
on a sleep-paced device. Run through `python benchmarks/serving.py --only-...`."""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any

from serving import (
    _capacity,
    _overhead_text,
    get_json,
    joins,
    machine,
    measure,
    planner,
    running_server,
)


def sleep_pipeline_class(a_s: float, b_s: float) -> Any:
    """`video` replaced by a passthrough that sleeps a + b x batch seconds per step: a device of known
    speed that other processes' CPU load does not disturb (the planner's check on the real server)."""
    from streamserve.pipelines.passthrough import PassthroughPipeline

    class SleepPass(PassthroughPipeline):
        name = "video"

        def step(self, batch: Any) -> Any:
            time.sleep(a_s + b_s * batch.size)
            return super().step(batch)

    return SleepPass


def slow_open_class(base: Any, open_ms: float, pieces: int = 8) -> Any:
    """`base` whose session opening also costs `open_ms`, in `pieces` equal steps (a stand-in for a
    real text encoder run layer by layer on the device: the time passes without using the CPU)."""

    class SlowOpen(base):  # type: ignore[misc, valid-type]
        def open_pieces(self, session_id: str, params: Any) -> Any:
            encoder = [("encoder", functools.partial(time.sleep, open_ms / 1000 / pieces))] * pieces
            return [*encoder, *super().open_pieces(session_id, params)]

    return SlowOpen


def joins_check(args: argparse.Namespace) -> dict[str, Any]:
    """Stall-free vs blocking joins on the real server (admission on): the demo model with its own
    opening, then with an opening made expensive (`--open-ms-check`, in 8 pieces), then the same
    expensive opening on a sleep-paced device (20 ms + 5 ms x batch per step: other processes' CPU
    load does not change its step time, so the comparison holds on a busy machine)."""
    out: dict[str, Any] = {"machine": machine(args.gpu), "size": args.size, "seconds": args.seconds}
    cases = [("model", 0.0, ""), ("model", args.open_ms_check, ""), ("sleep", args.open_ms_check, "20,5")]
    for device, open_ms, sleep_ms in (c for c in cases if c[0] in args.joins_devices.split(",")):
        for blocking in (False, True):
            with running_server(args.gpu, blocking_joins=blocking, open_ms=open_ms, sleep_ms=sleep_ms) as url:
                mode = "blocking" if blocking else "stall-free"
                size, join_size = (args.size, 128) if device == "model" else (64, 64)
                print(f"joins ({device}): 2 live at 10 fps {size}px + 5 joining at 5 fps {join_size}px, {mode}, "
                      f"open +{open_ms:g} ms ...", flush=True)
                out[f"{device}/{mode}/{open_ms:g}"] = joins(url, size, args.seconds, join_size=join_size,
                                                            sized=device == "model")
    return out


def joins_table(res: dict[str, Any]) -> str:
    lines = [f"Machine: {res['machine']}; 2 live sessions at 10 fps while 5 join at 5 fps (admission on; demo "
             f"model: live {res['size']}px, joiners 128px; sleep device: 20 ms + 5 ms x batch, 64px), "
             f"{res['seconds']:g} s window.", "",
             "| device | opening | mode | joined | live frames missed (client) | missed (server) | "
             "live p99 client / server | open pieces (learned, ms) | load |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in res.items():
        if key.count("/") != 2:
            continue
        device, mode, extra = key.split("/")
        opening = "own" if extra == "0" else f"+ {extra} ms in 8 pieces"
        pieces = ", ".join(f"{k.split('#')[1]} {v:.1f}" for k, v in sorted(r["open_pieces_ms"].items()))
        lines.append(f"| {'demo model' if device == 'model' else 'sleep-paced'} | {opening} | {mode} | "
                     f"{r['joined']} of 5 (live {r['live_admitted']} of 2) | {r['live_missed']} of {r['live_sent']} | "
                     f"{r['live_server_missed']} | {r['live_p99_ms']:.0f} / {r['live_server_p99_ms']:.0f} ms | "
                     f"{pieces} | {r['load']:.1f} |")
    return "\n".join(lines)


def planner_check(args: argparse.Namespace, sleep_ms: str = "") -> dict[str, Any]:
    """Planner vs the real server for the demo model (or, with `sleep_ms`, a passthrough sleeping
    a + b x batch ms per step, 64x64 frames): one session calibrates (the server learns its cost
    model and overhead), `streamserve plan` reads that profile from the server (`--from`), and the
    sweep 1..N (admission off) is measured beside the prediction."""
    from streamserve.planner import profile_from_server

    size, secs, fps = (args.size if not sleep_ms else 64), args.seconds, args.fps
    fixed: dict[str, Any] = {"degrade": [], "fps": fps}
    if not sleep_ms:
        fixed.update(width=size, height=size)
    device = f"a passthrough sleeping {sleep_ms} ms (a + b x batch) per step, {size}x{size}" if sleep_ms else \
        f"demo video model {size}x{size}, 1 step"
    res: dict[str, Any] = {"size": size, "seconds": secs, "fps": fps, "machine": machine(args.gpu), "sweep": {},
                           "device": device}
    with running_server(args.gpu and not sleep_ms, no_admission=True, sleep_ms=sleep_ms) as url:
        print(f"calibration: 1 session at {fps:g} fps {size}px ...", flush=True)
        res["calibration"] = measure(url, 1, size, secs, fixed, fps)
        res["profile"] = profile_from_server(url).to_dict()
        res["overhead"] = get_json(f"{url}/v1/capacity").get("overhead", {})
        for n in range(1, args.max_sweep + 1):
            print(f"sweep: {n} session(s) ...", flush=True)
            res["sweep"][n] = measure(url, n, size, secs, fixed, fps)
    res["load_end"] = os.getloadavg()[0]
    res["plan"] = planner(res["profile"], 0 if sleep_ms else size, secs, max_sessions=args.max_sweep, fps=fps,
                          sweep=res["sweep"])
    res["measured_capacity"] = _capacity(res["sweep"], "server_goodput")
    res["measured_capacity_client"] = _capacity(res["sweep"])
    return res


def planner_table(res: dict[str, Any]) -> str:
    plan, sweep, cap = res["plan"], res["sweep"], res["measured_capacity"]
    planned = {p["sessions"]: p for p in plan["sweep"]}
    over = res.get("overhead", {}).get("video", {})
    p99_cap = sweep[cap]["server_p99_ms"] if cap else float("nan")
    # The server's figure is its sessions' worst p99 (session stats): compare the planner's worst session.
    pl_cap = planned.get(cap, {}).get("p99_worst_session_ms", float("nan"))
    lines = [f"Machine: {res['machine']} (load {res.get('load_end', float('nan')):.1f} at the end); "
             f"{res.get('device', 'demo video model')}; {res.get('fps', 30):g} fps RGB24 clients over WebSocket; "
             f"{res['seconds']:g} s per point.",
             "", "Learned by the server during the 1-session calibration (read by `streamserve plan --from URL`): "
             + _overhead_text(over), "",
             f"| capacity at {res.get('fps', 30):g} fps | planner | measured | ratio |", "|---|---|---|---|",
             f"| sessions with >= 99% on time | {plan['simulated_capacity']} (admission: {plan['admission_capacity']}) "
             f"| {cap} server side ({res.get('measured_capacity_client', cap)} client side) | |",
             f"| p99 at the measured capacity ({cap} sessions, server side, worst session) | {pl_cap:.0f} ms | "
             f"{p99_cap:.0f} ms | "
             f"{pl_cap / p99_cap if p99_cap else float('nan'):.2f} |", "",
             "| sessions | measured goodput, server (client) | planner goodput | measured p99, server (worst session) "
             "| planner p99, worst session (all) | planner/measured p99 | measured p99, client (all) |",
             "|---|---|---|---|---|---|---|"]
    for n, point in sorted(sweep.items()):
        pl = planned.get(int(n), {})
        worst = pl.get("p99_worst_session_ms", float("nan"))
        ratio = worst / point["server_p99_ms"] if point["server_p99_ms"] else float("nan")
        lines.append(f"| {n} | {point.get('server_goodput', float('nan')):.3f} ({point['goodput']:.3f}) | "
                     f"{pl.get('goodput', float('nan')):.3f} | {point['server_p99_ms']:.0f} ms | "
                     f"{worst:.0f} ms ({pl.get('p99_ms', float('nan')):.0f} ms) | {ratio:.2f} | "
                     f"{point['p99_ms']:.0f} ms |")
    return "\n".join(lines)


def sleep_check(args: argparse.Namespace) -> dict[str, Any]:
    """The planner check on a device of known speed (10 ms + 5 ms x batch of sleep per step)."""
    return planner_check(args, sleep_ms="10,5")


def sleep_table(res: dict[str, Any]) -> str:
    return planner_table(res)
