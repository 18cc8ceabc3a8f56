"""The server's CPU thread policy: numpy's BLAS pool never keeps another core spinning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamserve.core.cpu import cpu_model, limit_blas_threads

# Whisper's and Smart Turn's log-mel (an 80 x 201 filter-bank product per call, numpy's BLAS) in a
# loop on one thread; prints the process's CPU time over this thread's. OpenBLAS's default pool
# spreads each product over every core and its workers busy-wait between calls: 1.85-1.96 here.
_SCRIPT = """
import sys, time, numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
policy = sys.argv[1]
if policy == "video":
    from streamserve.pipelines.video.pipeline import set_cpu_threads
    set_cpu_threads("cuda", None)
elif policy == "voice":
    from streamserve.pipelines.voice.pipeline import _cpu_threads
    _cpu_threads()
fe = FeatureExtractor(feature_size=80)
x = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
fe(x, padding=0)
p0, t0 = time.process_time(), time.thread_time()
for _ in range(40):
    fe(x, padding=0)
from threadpoolctl import threadpool_info
blas = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
print((time.process_time() - p0) / (time.thread_time() - t0), blas)
"""


@pytest.mark.parametrize("policy", ["video", "voice"])
def test_the_pipelines_give_numpy_blas_one_thread_that_does_not_spin(policy: str) -> None:
    pytest.importorskip("faster_whisper")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, policy], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split(maxsplit=1)
    ratio, blas = float(out[0]), out[1].strip()
    assert blas == "[1]", f"numpy's BLAS pools after the {policy} policy: {blas} threads"
    # One thread's work costs one thread's CPU: nothing else in the process burns a core meanwhile.
    assert ratio < 1.2, f"the process used {ratio:.2f}x this thread's CPU time during numpy's log-mels"


def test_a_bad_blas_thread_count_is_refused() -> None:
    with pytest.raises(ValueError, match="threads must be in"):
        limit_blas_threads(0)


def test_cpu_model_names_the_processor_of_proc_cpuinfo() -> None:
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.exists() else []
    model = cpu_model()
    assert model and (not names or model == names[0])
