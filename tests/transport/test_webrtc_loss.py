"""Video through a lossy path: a seeded datagram-dropping relay on 127.0.0.1 between an aiortc client
and the real server (passthrough), 5% loss each way, then a burst outage (see loss_probe). The
client's video receiver recovers from loss the way a browser's does (transport.jitter installed on
it): aiortc's own can wait on a lost packet for seconds, which no server can unstick.

Before the loss handling (transport.jitter, transport.recovery, the pacer's late-anchor correction):
64-70% of frames readable at 5% loss, and after an outage the output ran at ~2-3 fps for good.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import LiveServer
from tests.transport.loss_probe import measure

pytestmark = pytest.mark.slow


async def test_five_percent_loss_each_way_stays_readable_and_recovers_from_a_burst(
        server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory()
    # 96x96: less CPU for the four encodes and decodes per frame on a busy machine.
    result = await measure(server.url, 0.05, seconds=6.0, outage_s=0.5, seed=7, size=96)
    print(result)
    assert result.dropped_up > 5 and result.dropped_down > 5  # the path really was lossy
    assert result.readable >= 0.90, result
    assert result.recovery_s is not None and result.recovery_s <= 1.0, result
    # ... and it stays recovered: before the fix the pacer stuck at 2-3 fps for good (4-54% of the 2 s
    # after the outage; <= 10% of its second half). The whole 2 s also hold the recovery itself, which
    # CPU starvation of this one process stretches (0.57-0.77 seen in CI runs); the second half does not.
    assert result.settled >= 0.7, result
