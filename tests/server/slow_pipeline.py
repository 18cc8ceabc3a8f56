"""Test-only: the passthrough pipeline made slow by a known sleep per step (admission tests).

Step time 55 ms + 10 ms per session in the batch; clients send 10 frames a second. At 10 fps,
U(n) = 10 * (0.055 + 0.010 n) = 0.55 + 0.1 n: 3 sessions (0.85) fit under 0.9, a 4th (0.95) does not.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from streamserve.client import StreamClient
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


async def stream(client: StreamClient, seconds: float, fps: float = FPS) -> tuple[int, int]:
    """Send frames on an `fps` clock for `seconds`; count outputs received."""
    frame = np.zeros((32, 32, 3), np.uint8)
    got = 0

    async def reader() -> None:
        nonlocal got
        while True:
            out = await client.receive(timeout_s=2.0)
            if out is None:
                return
            got += 1

    task = asyncio.create_task(reader())
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds:
        await client.send_frame(frame)
        sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / fps - time.monotonic()))
    await asyncio.sleep(0.5)
    task.cancel()
    return sent, got
