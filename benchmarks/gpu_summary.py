"""The GPU check's environment record and summary (``benchmarks/gpu_check.sh``; docs/gpu.md).

    python benchmarks/gpu_summary.py env OUT/env.json   # versions, device, nvidia-smi, imports
    python benchmarks/gpu_summary.py summary OUT        # OUT/summary.md from whatever parts finished
    python benchmarks/gpu_summary.py merge-junit OUT/tests.xml A.xml B.xml   # one file for the pytest runs

The summary reads the parts' files (``parts.tsv``, ``env.json``, ``tests.xml``, ``attention.json``,
``video.json``, ``serving.json``), any of which may be missing when a part failed or ran out of time,
and sets the measured figures next to the goals.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# (goal, target, "min" = at least / "max" = at most)
SLA_FWD_GOAL = 10.0  # SLA forward speed-up over flash SDPA, paper shape, kh = 0.05
FPS_GOAL = 30.0  # 512x512, 1 step
TTFF_GOAL_S = 0.3  # time to first frame, 1 step
IMPORTS = ("torch", "triton", "numpy", "diffusers", "transformers", "uvicorn", "streamserve.kernels",
           "streamserve.pipelines.video.pipeline", "streamserve.pipelines.video.wan_vae")


# ------------------------------------------------------------------------------------------------ env

def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                           "platform": platform.platform(), "cpus": os.cpu_count(),
                           "triton_interpret": os.environ.get("TRITON_INTERPRET", ""), "imports": {}}
    for name in IMPORTS:
        try:
            mod = importlib.import_module(name)
            env["imports"][name] = str(getattr(mod, "__version__", "ok"))
        except Exception as exc:  # noqa: BLE001 - recorded: the part that needs it will fail too
            env["imports"][name] = f"FAILED: {type(exc).__name__}: {exc}"
    try:
        import torch

        env["cuda"] = torch.cuda.is_available()
        env["torch_cuda"] = torch.version.cuda
        if env["cuda"]:
            props = torch.cuda.get_device_properties(0)
            env["device"] = torch.cuda.get_device_name(0)
            env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            env["memory_gib"] = round(props.total_memory / 2**30, 1)
            env["multiprocessors"] = props.multi_processor_count
    except Exception as exc:  # noqa: BLE001
        env["cuda"] = f"FAILED: {exc}"
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi], capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = done.stdout.splitlines()[:12]
    return env


# -------------------------------------------------------------------------------------------- summary

def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parts(out: Path) -> list[list[str]]:
    try:
        return [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _suites(path: Path) -> list[dict[str, Any]]:
    """Per junit test suite: name, passed, skipped and the failures (name: first line of the message)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = []
    for suite in suites:
        res: dict[str, Any] = {"name": suite.get("name", "pytest"), "passed": 0, "failed": [], "skipped": 0}
        for case in suite.iter("testcase"):
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is not None:
                message = (bad.get("message") or "").strip().splitlines()
                res["failed"].append(f"{case.get('classname', '')}::{case.get('name', '')}: "
                                     f"{message[0][:200] if message else ''}")
            elif case.find("skipped") is not None:
                res["skipped"] += 1
            else:
                res["passed"] += 1
        out.append(res)
    return out


def merge_junit(target: Path, sources: list[Path]) -> None:
    """One ``<testsuites>`` file holding every suite of ``sources`` (pytest writes one file per run)."""
    merged = ET.Element("testsuites")
    for src in sources:
        try:
            root = ET.parse(src).getroot()
        except (OSError, ET.ParseError):
            continue
        merged.extend([root] if root.tag == "testsuite" else list(root))
    ET.ElementTree(merged).write(target, encoding="unicode", xml_declaration=True)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _verdict(value: float | None, target: float, at_least: bool, dry: bool) -> str:
    if value is None or math.isnan(value):
        return "not measured"
    if dry:
        return "dry run (not a GPU figure)"
    ok = value >= target if at_least else value <= target
    return "MET" if ok else "not met"


def goals(attention: list[dict[str, Any]] | None, video: dict[str, Any] | None, dry: bool) -> list[str]:
    lines = ["| goal | measured | target | verdict |", "|---|---|---|---|"]
    fwd = [r for r in attention or [] if r["shape"].startswith("paper") and r["kh"] == 0.05 and r["mode"] == "fwd"]
    sla = fwd[0]["speedup"] if fwd else None
    sparse = f" (sparse part alone {fwd[0]['speedup_sparse_only']:.1f}x)" if fwd else ""
    lines.append(f"| SLA forward speed-up over flash SDPA, B2 H16 L32760 D128, kh=0.05 | {_fmt(sla, '.1f')}x{sparse} "
                 f"| >= {SLA_FWD_GOAL:g}x | {_verdict(sla, SLA_FWD_GOAL, True, dry)} |")
    one = [r for r in (video or {}).get("rows", []) if r["steps"] == 1]
    best_fps = max((r["fps"] for r in one), default=None)
    best_ttff = min((r["ttff_s"] for r in one), default=None)
    per = ", ".join(f"{r['attention']} {r['fps']:.1f}" for r in one)
    lines.append(f"| FPS, Wan2.1-1.3B shape, 512x512, 1 step | {_fmt(best_fps, '.1f')} ({per}) | >= {FPS_GOAL:g} "
                 f"| {_verdict(best_fps, FPS_GOAL, True, dry)} |")
    per = ", ".join(f"{r['attention']} {r['ttff_s']:.2f}" for r in one)
    lines.append(f"| time to first frame, 1 step (s) | {_fmt(best_ttff)} ({per}) | <= {TTFF_GOAL_S:g} "
                 f"| {_verdict(best_ttff, TTFF_GOAL_S, False, dry)} |")
    return lines


def attention_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| shape | kh | pass | dense ms | SLA ms | speed-up | sparse-only speed-up | critical pairs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['kh']} | {r['mode']} | {r['dense_ms']:.2f} | {r['sla_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['speedup_sparse_only']:.2f}x | {100 * r['critical_fraction']:.1f}% |")
    return lines


def summary(out: Path) -> str:
    env = _load(out / "env.json") or {}
    attention = _load(out / "attention.json")
    video = (_load(out / "video.json") or {}).get("gpu")
    serving = _load(out / "serving.json")
    suites = _suites(out / "tests.xml")
    dry = bool(env.get("triton_interpret")) or bool(video and video.get("dry_run"))
    device = env.get("device") or ("CPU (dry run)" if dry else "no CUDA device")
    imports = env.get("imports", {})
    md = [f"# GPU check{' (DRY RUN: CPU, Triton interpreter, tiny shapes)' if dry else ''}", "",
          f"device: {device}; capability {env.get('capability', '—')}; torch {imports.get('torch', '—')} "
          f"(CUDA {env.get('torch_cuda', '—')}); triton {imports.get('triton', '—')}; "
          f"diffusers {imports.get('diffusers', '—')}; Python {env.get('python', '—')}", ""]
    failed_imports = [f"{k}: {v}" for k, v in imports.items() if str(v).startswith("FAILED")]
    if failed_imports:
        md += ["imports that failed:", *[f"- {x}" for x in failed_imports], ""]
    md += ["## Parts", "", "| part | status | seconds | detail |", "|---|---|---|---|"]
    md += [f"| {' | '.join((p + ['', '', '', ''])[:4])} |" for p in _parts(out)]
    md += ["", "## Goals", "", *goals(attention, video, dry), ""]
    if suites:
        md += ["## Tests on the device", ""]
        for t in suites:
            ran = t["passed"] + len(t["failed"]) + t["skipped"]
            md.append(f"- {t['name']}: passed {t['passed']}, failed {len(t['failed'])}, skipped {t['skipped']}"
                      + ("" if ran else " (none ran: collected only)"))
            md += [f"  - FAILED {f}" for f in t["failed"]]
        md.append("")
    if attention:
        md += ["## Attention: SLA vs flash SDPA (benchmarks/attention.py)", "",
               f"{attention[0]['device']}, {attention[0]['dtype']}, impl {attention[0]['impl']}; "
               "speed-up = dense time / SLA time (linear branch included); sparse-only: proj=None", "",
               *attention_table(attention), ""]
    if video and video.get("rows"):
        md += ["## Video: Wan2.1-1.3B shape, random weights (benchmarks/video.py --gpu-only)", "",
               f"{video['model']}, {video['size']}x{video['size']}, {video['dtype']}, {video['device']}; "
               f"model built in {video['build_s']:.1f} s", "", video["table"], ""]
    if serving is not None:
        md += ["## Serving (benchmarks/serving.py --gpu)", ""]
        text = serving.get("table") or serving.get("markdown") if isinstance(serving, dict) else None
        md += [text if isinstance(text, str) else "```\n" + json.dumps(serving, indent=1)[:3000] + "\n```", ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="record the environment as JSON")
    e.add_argument("path", type=Path)
    m = sub.add_parser("merge-junit", help="merge pytest junit files into one")
    m.add_argument("target", type=Path)
    m.add_argument("sources", type=Path, nargs="+")
    s = sub.add_parser("summary", help="write OUT/summary.md and print it")
    s.add_argument("out", type=Path)
    s.add_argument("--quiet", action="store_true", help="write the file only")
    args = p.parse_args(argv)
    if args.cmd == "env":
        env = environment()
        args.path.write_text(json.dumps(env, indent=2))
        print(json.dumps(env, indent=2))
        return 0 if not any(str(v).startswith("FAILED") for v in env["imports"].values()) else 1
    if args.cmd == "merge-junit":
        merge_junit(args.target, args.sources)
        return 0
    text = summary(args.out)
    (args.out / "summary.md").write_text(text + "\n")
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
