"""Loss benchmark: readable frames through a lossy UDP path, streamserve's loss handling vs without it.

An aiortc client streams stamped 128x128 frames at 30 fps to a passthrough session through a seeded
datagram-dropping relay on 127.0.0.1 (tests/transport/lossy_relay.py), with the same loss each way,
and reads them back (tests/transport/loss_probe.py). Two servers run in this process, and the
client's video receiver is aiortc's own or one that recovers like a browser's:

- `ours`: the default `PeerOptions` (a jitter buffer that re-NACKs, gives up on a lost packet after
  0.2 s of media and asks for a keyframe; periodic keyframes every 2 s; the pacer's late-anchor
  correction), the client with the same receiver (a browser's receiver does the equivalent);
- `ours, aiortc client`: the same server, the client's receiver stock aiortc (it can wait on a
  lost packet for seconds, and nothing the server does unsticks it);
- `stock`: `PeerOptions(loss_recovery=False)`: aiortc's own handling (NACK, RTX, PLI on decode
  errors and on jitter-buffer overflow) on both ends, which is what streamserve did before.

Per loss rate and server: readable % (distinct frames read back / frames sent in the lossy window)
the recovery time after a 0.5 s outage (media time to the first readable frame after it; "-"
when nothing came back within 5 s), and readable % of the 2 s of frames after the outage (no loss
then). Rounds alternate which server goes first.

Run: `PYTHONPATH=. python benchmarks/loss.py [--losses 0 0.02 0.05 0.1] [--seconds 6] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from streamserve.core.config import ServerConfig
from streamserve.transport.peer import PeerOptions
from streamserve.transport.webrtc import WebRTCTransport
from tests.conftest import LiveServer
from tests.transport.loss_probe import LossResult, measure


def start(recovery: bool) -> LiveServer:
    config = ServerConfig(pipeline="passthrough", port=0, log_level="error", idle_timeout_s=10)

    def webrtc(sessions: Any, cfg: ServerConfig) -> WebRTCTransport:
        return WebRTCTransport(sessions, cfg, PeerOptions.from_config(cfg, loss_recovery=recovery))

    return LiveServer(config, [webrtc]).start()


async def one(server: LiveServer, loss: float, seconds: float, seed: int, client: bool) -> LossResult | None:
    try:
        return await measure(server.url, loss, seconds=seconds, seed=seed, recovering_client=client)
    except TimeoutError:  # the session never started
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.10])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    servers = {"ours": start(True), "stock": start(False)}
    setups = {"ours": ("ours", True), "ours, aiortc client": ("ours", False), "stock": ("stock", False)}
    rows: dict[tuple[float, str], list[LossResult | None]] = {}
    try:
        for round_ in range(args.rounds):
            order = list(setups) if round_ % 2 == 0 else list(reversed(setups))
            for loss in args.losses:
                for name in order:
                    server, client = setups[name]
                    result = asyncio.run(one(servers[server], loss, args.seconds, 7 + round_, client))
                    rows.setdefault((loss, name), []).append(result)
    finally:
        for running in servers.values():
            running.stop()

    print("| loss each way | server | readable % (per round) | recovery after a 0.5 s outage, s "
          "| readable % in the 2 s after it |")
    print("|---|---|---|---|---|")
    for (loss, name), results in sorted(rows.items(), key=lambda kv: (kv[0][0], list(setups).index(kv[0][1]))):
        readable = [100 * r.readable if r else 0.0 for r in results]
        recovery = [f"{r.recovery_s:.2f}" if r and r.recovery_s is not None else "-" for r in results]
        after = [100 * r.after_outage if r else 0.0 for r in results]
        print(f"| {100 * loss:.0f}% | {name} | {statistics.mean(readable):.1f} "
              f"({', '.join(f'{v:.0f}' for v in readable)}) | {', '.join(recovery)} "
              f"| {statistics.mean(after):.0f} ({', '.join(f'{v:.0f}' for v in after)}) |")

if __name__ == "__main__":
    main()
