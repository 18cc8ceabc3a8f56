"""Kernel tests: without CUDA the Triton kernels run under the interpreter (fp32/fp16, small shapes).

TRITON_INTERPRET must be set before ``streamserve.kernels`` is imported (``@triton.jit`` reads it when
the kernels are decorated), hence here, before any test module is collected. Importing torch first is
fine: it does not decorate our kernels. On a CUDA machine the real kernels run.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(2)
