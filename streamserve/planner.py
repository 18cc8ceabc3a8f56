"""`streamserve plan`: how many sessions of a pipeline fit on this device, at what p99, and what the
policy does at 150% load -- from the cost model and the scheduler's own code on a simulated clock.

Capacity is the most sessions for which >= 99% of frames meet their deadline (docs/serving.md). The
planner reports it two ways: what admission predicts (the analytic load model) and what the
simulated engine achieves when everyone is let in at the requested tier; and, at 150% of capacity
with admission and degradation on, who is admitted, at what tier, and the goodput and p99 then.

The cost model may come from a running server (`--from URL`: its `GET /v1/capacity` profile) or a
saved profile; either carries the server's learned non-compute latency (`schedulers/overhead.py`:
wake-up and event-loop delay before a step, step-time spread, step end to session), which the
simulator samples so that its latencies are the server's, not only the device's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamserve.core.config import SessionConfig
from streamserve.schedulers import (
    Admission,
    AdmissionConfig,
    CostModel,
    DegradePolicy,
    SessionSpec,
    SloScheduler,
    WorkShape,
)
from streamserve.schedulers.overhead import Overhead
from streamserve.schedulers.sim import SimResult, SimSession, simulate

GOODPUT_TARGET = 0.99
RATIOS = ("jitter", "pace")  # overhead parts that are ratios of step times (the rest are seconds)


def overhead_value(part: str, value: float) -> str:
    """One learned overhead figure as read: a ratio of step times (`RATIOS`) as "1.24x", the rest
    (seconds) as "0.63 ms"."""
    return f"{value:.2f}x" if part in RATIOS else f"{value * 1000:.2f} ms"


@dataclasses.dataclass
class SweepPoint:
    sessions: int
    goodput: float
    p50_ms: float
    p99_ms: float
    on_time_fps: float
    p99_worst_session_ms: float = math.nan  # the largest per-session p99 (what a server's session stats show)


@dataclasses.dataclass
class PlanReport:
    pipeline: str
    shape: dict[str, Any]
    fps: float
    budget_ms: float
    admission_capacity: int
    simulated_capacity: int
    p99_at_capacity_ms: float
    sweep: list[SweepPoint]
    overload: dict[str, Any]
    overhead: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # part -> mean/p99 (s)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        s = self.shape
        size = f" {s['width']}x{s['height']}, {s['steps']} step(s)" if s["width"] else ""
        lines = [f"{self.pipeline}{size} at {self.fps:g} fps, deadline {self.budget_ms:g} ms:",
                 f"  capacity (>= 99% of frames on time): {self.simulated_capacity} session(s) simulated, "
                 f"{self.admission_capacity} admitted by the cost model",
                 f"  p99 latency at capacity: {self.p99_at_capacity_ms:.1f} ms",
                 "  non-compute latency: " + (", ".join(
                     f"{part} mean {overhead_value(part, v['mean'])} p99 {overhead_value(part, v['p99'])}"
                     f" lag-1 {v.get('lag1', 0.0):.2f}" for part, v in self.overhead.items())
                     or "not modelled (no server measurements in the profile)"),
                 "  sessions  goodput  p50 ms  p99 ms  on-time fps"]
        for p in self.sweep:
            lines.append(f"  {p.sessions:8d}  {p.goodput:7.3f}  {p.p50_ms:6.1f}  {p.p99_ms:6.1f}  {p.on_time_fps:11.1f}")
        o = self.overload
        lines.append(f"  at 150% load ({o['offered']} sessions): {o['admitted']} admitted, {o['refused']} refused "
                     f"({o['refusal']}); tiers {o['tiers']}; goodput {o['goodput']:.3f}, p99 {o['p99_ms']:.1f} ms")
        return "\n".join(lines)


def _scheduler(cost: CostModel, max_batch: int, max_utilization: float) -> SloScheduler:
    truthful = CostModel.from_dict(cost.to_dict())  # the scheduler learns on its own copy
    admission = Admission(truthful, AdmissionConfig(max_utilization=max_utilization,
                                                    restore_utilization=0.7 * max_utilization / 0.9,
                                                    max_batch=max_batch))
    return SloScheduler(truthful, admission, max_batch=max_batch, policy=DegradePolicy())


def _sessions(spec: SessionSpec, n: int, seed: int, stagger: float = 0.0,
              starts: Sequence[float] | None = None) -> list[SimSession]:
    """`n` clients; their frame clocks are not aligned (random phases), or, with `starts`, they
    send their first frames at those times (seconds, e.g. measured from a benchmark's clients)."""
    rnd = random.Random(seed)
    period = 1.0 / spec.fps
    if starts is not None and len(starts) != n:
        raise ValueError(f"need {n} client start times, got {len(starts)}")
    phases = [rnd.random() * period for _ in range(n)] if starts is None else \
        [(t - min(starts)) % period for t in starts]
    return [SimSession(spec, start=stagger * i, phase=phases[i]) for i in range(n)]


def plan(cost: CostModel, spec: SessionSpec, *, max_batch: int = 8, max_utilization: float = 0.9,
         duration: float = 20.0, max_sessions: int | None = None, seed: int = 0,
         overhead: Overhead | None = None, starts: Mapping[int, Sequence[float]] | None = None) -> PlanReport:
    """`overhead`: the non-compute latency to simulate (default: the one `cost` carries, learned by
    the server it came from; none when it carries nothing). `starts`: per session count of the
    sweep, when its clients sent their first frames (the phases of a measured run; default random)."""
    overhead = cost.overhead if overhead is None else overhead
    modelled = overhead.summary().get(spec.pipeline, {})

    profiled = CostModel.from_dict(cost.to_dict())  # the step at the planning speed, which `pace` varies around

    def truth(pipeline: str, shapes: Any, now: float) -> float:
        return profiled.batch_cost(pipeline, shapes)

    adm_cap = Admission(cost, AdmissionConfig(max_utilization=max_utilization, max_batch=max_batch)).headroom(
        spec).more_sessions
    fixed = dataclasses.replace(spec, degrade=())
    limit = max_sessions or max(4, 2 * adm_cap + 2)
    sweep: list[SweepPoint] = []
    results: dict[int, SimResult] = {}
    for n in range(1, limit + 1):
        r = simulate(_sessions(fixed, n, seed, starts=(starts or {}).get(n)), truth, _scheduler(cost, max_batch, max_utilization), duration,
                     warmup=min(2.0, duration / 4), admit_all=True, overhead=overhead, seed=seed + n)
        results[n] = r
        worst = max((_percentile(s.latencies, 99) for s in r.admitted if s.latencies), default=math.nan)
        sweep.append(SweepPoint(n, r.goodput(), 1000 * r.latency_percentile(50), 1000 * r.latency_percentile(99),
                                r.on_time_fps(), 1000 * worst))
    sim_cap = 0
    for p in sweep:  # the largest n such that every count up to it meets the target
        if p.goodput < GOODPUT_TARGET:
            break
        sim_cap = p.sessions
    p99_cap = sweep[sim_cap - 1].p99_ms if sim_cap else math.nan
    offered = max(2, math.ceil(1.5 * max(1, sim_cap)))
    sched = _scheduler(cost, max_batch, max_utilization)
    over = simulate(_sessions(spec, offered, seed + 1, stagger=0.25), truth, sched, duration,
                    warmup=min(2.0, duration / 4) + 0.25 * offered, overhead=overhead, seed=seed)
    admitted = over.admitted
    refusals = sorted({s.reason for s in over.sessions if not s.admitted})
    tiers = [s.tiers[-1][1] if s.tiers else 0 for s in admitted]
    overload = {"offered": offered, "admitted": len(admitted), "refused": offered - len(admitted),
                "refusal": refusals[0] if refusals else "none",
                "tiers": {str(level): tiers.count(level) for level in sorted(set(tiers))},
                "tier_fps": {s.session_id: sched.admission.tier(s.session_id).fps for s in admitted},
                "goodput": over.goodput(), "p99_ms": 1000 * over.latency_percentile(99),
                "on_time_fps": over.on_time_fps()}
    return PlanReport(spec.pipeline, dataclasses.asdict(spec.shape), spec.fps, 1000 * spec.budget_s, adm_cap,
                      sim_cap, p99_cap, sweep, overload,
                      {part: {k: v[k] for k in ("mean", "p99", "lag1") if k in v} for part, v in modelled.items()})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def plot(report: PlanReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = [p.sessions for p in report.sweep]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, [p.p99_ms for p in report.sweep], "o-", label="p99")
    ax1.plot(n, [p.p50_ms for p in report.sweep], "s--", label="p50")
    ax1.axhline(report.budget_ms, color="red", linestyle=":", label="deadline")
    ax1.set_xlabel("sessions")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("latency vs sessions (no admission)")
    ax1.legend()
    ax2.plot(n, [p.goodput for p in report.sweep], "o-", label="goodput (on time / offered)")
    ax2.axhline(GOODPUT_TARGET, color="red", linestyle=":", label="99%")
    ax2.axvline(report.simulated_capacity, color="green", linestyle="--", label=f"capacity {report.simulated_capacity}")
    ax2.set_xlabel("sessions")
    ax2.set_ylabel("goodput")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("goodput vs sessions")
    ax2.legend(loc="lower left")
    for ax in (ax1, ax2):  # sessions are whole: no 1.5 on the axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    s = report.shape
    fig.suptitle(f"{report.pipeline} {s['width']}x{s['height']} {s['steps']} step(s) @ {report.fps:g} fps")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def measure(pipeline: str, spec: SessionSpec, max_batch: int, model: str | None, device: str) -> CostModel:
    """Profile the real pipeline in this process (as the server does at start) into a cost model."""
    import inspect

    from streamserve.gate import measure_profile
    from streamserve.pipelines import registry

    cls = registry.get_class(pipeline)
    options = {"model": model} if model and "model" in inspect.signature(cls.__init__).parameters else {}
    pipe = cls(device=device, **options)
    pipe.warmup()
    params = cls.Params(**{k: v for k, v in (("width", spec.shape.width or None), ("height", spec.shape.height
                           or None), ("steps", spec.shape.steps)) if k in {f.name for f in dataclasses.fields(cls.Params)}})
    sizes = tuple(sorted({1, 2, 4, max_batch} | set(range(1, max_batch + 1, 2))))
    cost = CostModel()
    cost.seed(pipeline, spec.shape, measure_profile(pipe, pipeline, params, spec, sizes))
    return cost


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="video")
    parser.add_argument("--width", type=int, default=None, help="default 256, or the profile's shape")
    parser.add_argument("--height", type=int, default=None, help="default 256, or the profile's shape")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second each client sends")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="per-frame deadline after arrival")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-utilization", type=float, default=0.9)
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds per point")
    parser.add_argument("--max-sessions", type=int, default=None, help="sweep up to this many sessions")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--profile", default=None, help="cost profile JSON (GET /v1/capacity's `profile`)")
    src.add_argument("--from", dest="from_url", default=None, metavar="URL",
                     help="read the learned cost profile from a running server (its GET /v1/capacity)")
    src.add_argument("--step-ms", default=None, help="a hypothetical device: 'A,B' = A + B x batch ms")
    parser.add_argument("--model", default=None, help="model folder (when profiling the real pipeline)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--png", default=None, help="write latency and goodput vs sessions here")
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    parser.add_argument("--save-profile", default=None, help="write the cost profile used (for --profile)")


def main_plan(args: argparse.Namespace) -> int:
    video = args.pipeline != "passthrough"
    width, height = args.width or 256, args.height or 256
    try:
        shape = WorkShape(width if video else 0, height if video else 0, args.steps)
        spec = SessionSpec(args.pipeline, shape, fps=args.fps, budget_s=args.budget_ms / 1000)
        SessionConfig(latency_budget_s=args.budget_ms / 1000)
    except ValueError as exc:
        raise SystemExit(f"streamserve plan: {exc}") from exc
    if args.step_ms:
        try:
            a, b = (float(x) / 1000 for x in args.step_ms.split(","))
        except ValueError:
            raise SystemExit(f"streamserve plan: --step-ms wants 'A,B' in milliseconds, got {args.step_ms!r}") from None
        cost = CostModel()
        cost.seed(args.pipeline, shape, {1: a + b, 2: a + 2 * b})
    elif args.profile:
        path = Path(args.profile)
        if not path.is_file():
            raise SystemExit(f"streamserve plan: --profile {path} does not exist")
        try:
            cost = CostModel.from_dict(json.loads(path.read_text()))
        except ValueError as exc:
            raise SystemExit(f"streamserve plan: --profile {path}: {exc}") from None
    elif args.from_url:
        cost = profile_from_server(args.from_url)
    else:
        cost = measure(args.pipeline, spec, args.max_batch, args.model, args.device)
    if (args.profile or args.from_url) and args.width is None and args.height is None:
        spec = dataclasses.replace(spec, shape=_profiled_shape(cost, args.pipeline, spec.shape))
    report = plan(cost, spec, max_batch=args.max_batch, max_utilization=args.max_utilization,
                  duration=args.duration, max_sessions=args.max_sessions)
    print(report.text())
    if args.png:
        plot(report, Path(args.png))
        print(f"plot: {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps({**report.to_dict(), "profile": cost.to_dict()}, indent=1))
    if args.save_profile:
        Path(args.save_profile).write_text(json.dumps(cost.to_dict(), indent=1))
    return 0


def _profiled_shape(cost: CostModel, pipeline: str, default: WorkShape) -> WorkShape:
    """The shape a profile measured `pipeline` at (its server's default), when none was asked for."""
    entries = cost.to_dict().get(pipeline)
    if not entries:
        raise SystemExit(f"streamserve plan: the profile has no pipeline {pipeline!r} "
                         f"(it has: {', '.join(k for k in cost.to_dict() if not k.startswith('_')) or 'none'})")
    return WorkShape(**entries[0]["shape"]) if default.steps == 1 else dataclasses.replace(
        WorkShape(**entries[0]["shape"]), steps=default.steps)


def profile_from_server(url: str, timeout_s: float = 10.0) -> CostModel:
    """The cost model a running server learned (`GET {url}/v1/capacity`'s `profile`)."""
    base = url.rstrip("/")
    target = base if base.endswith("/v1/capacity") else f"{base}/v1/capacity"
    if not target.startswith(("http://", "https://")):
        raise SystemExit(f"streamserve plan: --from wants an http(s) URL, got {url!r}")
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as reply:
            report = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SystemExit(f"streamserve plan: could not read {target}: {exc}") from None
    profile = report.get("profile") if isinstance(report, dict) else None
    if not profile:
        raise SystemExit(f"streamserve plan: {target} has no cost profile (scheduler "
                         f"{report.get('scheduler') if isinstance(report, dict) else '?'}; the slo scheduler has one)")
    try:
        return CostModel.from_dict(profile)
    except ValueError as exc:
        raise SystemExit(f"streamserve plan: {target}: {exc}") from None
