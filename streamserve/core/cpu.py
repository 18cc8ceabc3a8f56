"""What this machine's CPU can do that changes how models should run on it."""

from __future__ import annotations

import functools
from pathlib import Path


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
