"""Readable frames through a lossy path: an aiortc client streams stamped frames to a passthrough
session through a `LossyRelay` and reads them back. Shared by the loss tests and benchmarks/loss.py.

A frame is *readable* when the client decoded it and its stamp reads back (a frame decoded from a
broken reference reads wrong and fails the stamp's check; a frozen picture repeats an index already
counted). `readable` = distinct indices read back / frames sent, over the lossy window.
`recovery_s` = media time from the end of an outage to the first readable frame sent after it,
from the frames' own indices (index / fps), so it does not depend on how busy the machine is (None:
nothing readable within 5 s); `after_outage` = readable fraction of the 2 s of frames sent after it;
`settled` = the same over its second half (1-2 s after the outage), where only a stream that stays
degraded for good, not a slow recovery on a busy machine, can score low.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from tests.transport.client import Client
from tests.transport.lossy_relay import LossyRelay

FPS = 30.0


@dataclasses.dataclass(frozen=True)
class LossResult:
    loss: float
    sent: int
    readable: float  # fraction of the frames sent in the lossy window that came back readable
    recovery_s: float | None  # media time after the outage until the first readable frame
    after_outage: float  # readable fraction of the frames sent in the 2 s after the outage
    settled: float  # readable fraction of the frames sent 1-2 s after the outage
    dropped_up: int
    dropped_down: int


def _readable(client: Client, first: int, last: int) -> int:
    return len({i for i, _ in client.reader.seen if first <= i < last})


async def measure(url: str, loss: float, *, seconds: float = 6.0, outage_s: float = 0.5, seed: int = 7,
                  size: int = 128, recovering_client: bool = True) -> LossResult:
    """Stream for `seconds` at `loss` both ways, then one outage of `outage_s`; see the module doc.
    `recovering_client`: the client's video receiver recovers from loss like a browser's (see
    tests/transport/client.py); False: aiortc's own, which the server cannot unstick."""
    relay = await LossyRelay(seed=seed).start()
    client = Client(url, width=size, height=size, fps=FPS, relay=relay, recovering_receiver=recovering_client)
    try:
        await client.connect("passthrough")
        async with asyncio.timeout(15):
            await client.until(lambda: len(client.reader.seen) >= 10)
        relay.set_loss(loss, loss)
        first = client.video._index
        await asyncio.sleep(seconds)
        last = client.video._index
        relay.set_loss(0.0, 0.0)
        await asyncio.sleep(0.5)  # frames of the window still in flight
        readable = _readable(client, first, last)

        relay.outage(outage_s)
        await asyncio.sleep(outage_s)
        resumed = client.video._index  # the first frame sent after the outage
        window = int(2 * FPS)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await client.until(lambda: any(i >= resumed for i, _ in client.reader.seen))
        await asyncio.sleep(max(0.0, (resumed + window - client.video._index) / FPS) + 0.5)
        after = [i for i, _ in client.reader.seen if i >= resumed]
        return LossResult(loss=loss, sent=last - first, readable=readable / max(1, last - first),
                          recovery_s=(min(after) - resumed) / FPS if after else None,
                          after_outage=_readable(client, resumed, resumed + window) / window,
                          settled=_readable(client, resumed + window // 2, resumed + window) / (window - window // 2),
                          dropped_up=relay.up.dropped, dropped_down=relay.down.dropped)
    finally:
        await client.close()
        relay.close()
