"""What this machine's CPU can do that changes how models should run on it."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (a container's or
    `taskset`'s limit), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what `platform` knows; for the machine
    line of benchmark results."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    return name or platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX; Linux's ``/proc/cpuinfo``
    flags). Elsewhere oneDNN emulates bf16, slower than fp32, so models stay fp32 there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def limit_blas_threads(threads: int = 1) -> None:
    """Limit numpy's BLAS (OpenBLAS in numpy's wheels) to `threads` threads, process-wide.

    The server calls small numpy products from several threads (the log-mel filter banks of Whisper
    and Smart Turn). OpenBLAS splits even an 80 x 201 product across every core and its idle
    workers then busy-wait, so each call kept the other core spinning: measured on this 2-core
    machine, two Smart Turn verdicts at once took 2.2x as long as one and two Whisper transcripts
    2.1x; with one BLAS thread neither slowed the other. torch's own thread pool is set apart (the
    pipelines' `set_num_threads` policies)."""
    if not 1 <= threads <= 1024:
        raise ValueError(f"threads must be in [1, 1024], got {threads}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
