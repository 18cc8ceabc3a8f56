"""Test-only: the passthrough pipeline made slow by a known sleep per step (admission tests).

Step time 55 ms + 10 ms per session in the batch; clients send 10 frames a second. At 10 fps,
U(n) = 10 * (0.055 + 0.010 n) = 0.55 + 0.1 n: 3 sessions (0.85) fit under 0.9, a 4th (0.95) does not.
"""

from __future__ import annotations

import time

from streamserve.core.plan import Batch, StepOutput
from streamserve.pipelines.passthrough import PassthroughPipeline

STEP_S, PER_ITEM_S, FPS = 0.055, 0.010, 10.0
FIXED = {"fps": FPS, "degrade": []}  # refuse rather than offer a lower tier


class SlowPassthrough(PassthroughPipeline):
    """Passthrough that sleeps a known time per step."""

    name = "slowpass"

    def step(self, batch: Batch) -> list[StepOutput]:
        time.sleep(STEP_S + PER_ITEM_S * batch.size)
        return super().step(batch)
