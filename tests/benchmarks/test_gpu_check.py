"""The prepared GPU check cannot rot: its dry run (CPU, Triton interpreter, tiny shapes, only the
device image's packages) runs here and must produce every file and figure the GPU run would."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.timeout(480)  # the module's dry run is set up by whichever test runs first
RETURNED_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what the device tool brings back from $OUT


def run_check(out: Path, *args: str, timeout: float = 450) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": sys.executable, "HOME": str(out.parent)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    return run_check(out, "--dry-run"), out


def parts(out: Path) -> dict[str, list[str]]:
    rows = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines()]
    return {r[0]: r[1:] for r in rows}


@pytest.mark.slow
def test_dry_run_succeeds_with_at_most_eight_returnable_files(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*"))
    assert all(p.is_file() for p in out.iterdir()), files  # flat: nothing nested
    assert len(files) <= 8 and all(RETURNED_NAME.match(f) for f in files), files
    assert {"summary.md", "log.txt", "parts.tsv", "env.json", "tests.xml", "attention.json", "video.json"} <= set(files)
    status = parts(out)
    assert [status[p][0] for p in ("env", "tests", "attention", "video", "kernels")] == ["ok"] * 5, status
    assert status["serving"][0] in ("ok", "skipped"), status


@pytest.mark.slow
def test_dry_run_attention_rows_ran_the_triton_kernels(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = dry_run
    rows = json.loads((out / "attention.json").read_text())
    keys = {(r["shape"].split()[0], r["kh"], r["mode"]) for r in rows}
    assert keys == {(s, kh, m) for s in ("paper", "wan", "stream") for kh in (0.05, 0.1, 0.2) for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert r["impl"] == "triton" and r["dtype"] == "float32"  # the kernels ran, under the interpreter
        assert r["dense_ms"] > 0 and r["sla_ms"] > 0 and r["speedup"] == pytest.approx(r["dense_ms"] / r["sla_ms"])
        assert 0 < r["critical_fraction"] <= 1


@pytest.mark.slow
def test_dry_run_video_rows_cover_steps_and_backends(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = dry_run
    gpu = json.loads((out / "video.json").read_text())["gpu"]
    assert gpu["dry_run"] and gpu["size"] == 64
    rows = gpu["rows"]
    assert [(r["attention"], r["steps"]) for r in rows] == [(a, s) for a in ("dense", "sla") for s in (1, 2, 3, 4)]
    sdv2 = {1: 26.2, 2: 24.0, 3: 21.5, 4: 19.4}
    for r in rows:
        assert r["fps"] > 0 and r["frames"] >= 8 and math.isfinite(r["ttff_s"])
        # Frames arrive at 16 FPS; outputs lag steps - 1 blocks of 4 frames: the first frame cannot come sooner.
        assert r["ttff_input_floor_s"] == pytest.approx(4 * (r["steps"] - 1) / 16)
        assert r["ttff_s"] >= r["ttff_input_floor_s"]
        assert (r["sdv2_fps"], r["sdv2_ttff_s"]) == (sdv2[r["steps"]], 0.37)


@pytest.mark.slow
def test_dry_run_collects_the_gpu_tests_and_summarises_the_goals(
        dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = dry_run
    suites = {s.get("name"): s for s in ET.parse(out / "tests.xml").getroot().iter("testsuite")}
    assert set(suites) == {"gpu-marked", "kernel-suite"}
    cases = list(suites["gpu-marked"].iter("testcase"))
    assert cases and all(c.find("skipped") is not None for c in cases)  # collected; no CUDA here
    summary = (out / "summary.md").read_text()
    assert f"- gpu-marked: passed 0, failed 0, skipped {len(cases)}" in summary
    assert "- kernel-suite: passed 0, failed 0, skipped 0 (none ran: collected only)" in summary
    assert summary in done.stdout  # printed at the end as well
    assert "DRY RUN" in summary
    for goal in (r"SLA forward speed-up .* \| [0-9.]+x .*\| >= 10x \| dry run",
                 r"FPS, .* 1 step \| [0-9.]+ \(dense [0-9.]+, sla [0-9.]+\) \| >= 30 \| dry run",
                 r"time to first frame, 1 step \(s\) \| [0-9.]+ .*\| <= 0.3 \| dry run"):
        assert re.search(goal, summary), goal
    assert "| serving |" in summary


def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    done = run_check(tmp_path / "out", "--parts", "attention,gpu", timeout=30)
    assert done.returncode == 2 and "unknown part 'gpu'" in done.stderr
    done = run_check(tmp_path / "out", "--budget", "5m", timeout=30)
    assert done.returncode == 2 and "--budget must be whole seconds, got '5m'" in done.stderr


def test_a_spent_budget_skips_parts_and_still_writes_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_check(out, "--dry-run", "--parts", "attention,video", "--budget", "0", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    status = parts(out)
    assert status["attention"][0] == "skipped" and "budget spent" in status["attention"][2]
    assert "env" not in status  # not asked for
    summary = (out / "summary.md").read_text()
    assert "| SLA forward speed-up" in summary and "not measured" in summary


def test_the_gpu_runs_arguments_parse(tmp_path: Path) -> None:
    """The non-dry commands of gpu_check.sh, as written there, are accepted by the scripts (no CUDA here:
    the video script parses them, says the GPU part is skipped and exits 1)."""
    script = SCRIPT.read_text()
    line = next(x for x in script.splitlines() if "benchmarks/video.py --gpu-only" in x)
    args = line.split("benchmarks/video.py", 1)[1].replace('"$OUT/video.json"', str(tmp_path / "v.json")).split()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "video.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                                                "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1 and "no CUDA device: GPU part skipped" in done.stderr, done.stderr[-2000:]
    assert 'benchmarks/attention.py --json "$OUT/attention.json"' in script  # all shapes, kh, both passes


def test_wheel_list_carries_what_the_image_lacks_and_nothing_it_has() -> None:
    from benchmarks import gpu_wheels

    reqs = gpu_wheels.requirements()
    names = {r.split("==")[0] for r in reqs}
    assert {"diffusers", "uvicorn"} <= names
    image = gpu_wheels.image_packages()
    assert {"torch", "triton", "numpy", "transformers", "safetensors"} <= image
    assert not {gpu_wheels.normalise(n) for n in gpu_wheels.carried(serving=True)} & image
    assert "av" not in names  # the check's parts must not pull in the transport stack (PyAV is ~36 MB)
