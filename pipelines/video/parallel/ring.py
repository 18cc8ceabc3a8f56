"""The stage ring: rank 0 (in the server's engine thread) drives, ranks 1..R-1 run in processes of their own.

    rank 0: stage 0 ──hidden + latents' header──▶ rank 1: stage 1 ──▶ ... ──▶ rank R-1: last stage
       ▲                                                                              │
       └──────────────────────── velocity of every item (+ stage times) ─────────────┘

Messages travel the ring in order, so whatever rank 0 sends -- a forward, a session's end, a block
move, a new prompt inside a forward -- reaches every stage in the order it was sent. Ranks 1..R-1
are spawned by :class:`StageGroup` itself (``multiprocessing`` spawn) or started by ``torchrun``
(:func:`worker_main` reads ``RANK``/``WORLD_SIZE``/``MASTER_PORT``); each loads only its own blocks.
A rank that fails turns the message into an ``error`` message that the ring carries back to rank 0,
which raises :class:`~.wire.StageFailed`; a rank that dies makes the next transfer fail at once.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
import traceback
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from ..model import CausalWanDiT
from .split import Balancer, Move, apply_move, check_ranges
from .stage import Stage, drop_other_blocks, load_stage_causal, load_stage_dit
from .wire import Channel, StageFailed, make_group

log = logging.getLogger(__name__)

_DTYPES = {str(t): t for t in (torch.float32, torch.float16, torch.bfloat16)}


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """What every rank needs to start: the model, its stage ranges and devices, and the wire."""

    transformer_dir: str  # a diffusers WanTransformer3DModel folder
    ranges: tuple[tuple[int, int], ...]  # (start, stop) of each stage's blocks
    devices: tuple[str, ...]  # one per rank
    dtype: str
    window: int
    backend: str = "gloo"
    timeout_s: float = 30.0  # every transfer after start-up
    startup_timeout_s: float = 300.0  # joining the group and loading the blocks
    host: str = "127.0.0.1"
    causal_weights: str | None = None  # a CausVid / StreamDiffusionV2 .pt each rank applies to its blocks
    checkpoint_key: str = "generator"

    def __post_init__(self) -> None:
        if len(self.ranges) != len(self.devices):
            raise ValueError(f"{len(self.ranges)} stages but {len(self.devices)} devices: {self.devices}")
        if not 0.1 <= self.timeout_s <= 3600:
            raise ValueError(f"timeout_s must be in [0.1, 3600], got {self.timeout_s}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    @property
    def world(self) -> int:
        return len(self.ranges)


def _store(spec: GroupSpec, port: int, master: bool) -> Any:
    import datetime

    timeout = datetime.timedelta(seconds=spec.startup_timeout_s)
    return dist.TCPStore(spec.host, port, spec.world, master, timeout=timeout, wait_for_workers=False)


# ---------------------------------------------------------------------------------------------- worker


def worker_main(rank: int, spec: GroupSpec, port: int) -> None:
    """Run stage ``rank`` until rank 0 sends ``stop`` (or the ring breaks). Entry point of spawned ranks."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, int(os.environ.get("STREAMSERVE_STAGE_THREADS", "1"))))
    device = torch.device(spec.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    group = make_group(spec.backend, dist.PrefixStore("stages", _store(spec, port, False)), rank, spec.world,
                       spec.startup_timeout_s)
    channel = Channel(group, rank, spec.world, spec.startup_timeout_s, device)
    start, stop = spec.ranges[rank]
    dit = load_stage_dit(spec.transformer_dir, range(start, stop), spec.devices[rank], _DTYPES[spec.dtype])
    if spec.causal_weights is not None:
        load_stage_causal(dit, spec.causal_weights, range(start, stop), spec.checkpoint_key)
    stage = Stage(dit, range(start, stop), rank, spec.world, spec.window)
    serve_stage(stage, channel, spec.timeout_s)


def serve_stage(stage: Stage, channel: Channel, timeout_s: float) -> None:
    """The worker loop: receive from the previous rank, run, send to the next (all transfers waited on)."""
    import datetime

    while True:
        meta, tensors = channel.recv(channel.prev, idle=True)  # idle between forwards is not a failure
        channel.timeout = datetime.timedelta(seconds=timeout_s)  # start-up is over once rank 0 spoke
        kind = meta["kind"]
        if kind in ("stop", "error"):
            channel.send(channel.next, meta, tensors)
            if kind == "stop":
                return
            continue
        try:
            meta, tensors = handle(stage, meta, tensors)
        except Exception as exc:  # noqa: BLE001 - reported to rank 0 through the ring
            log.exception("stage %d failed on a %s message", stage.index, kind)
            meta, tensors = {"kind": "error", "seq": meta.get("seq"), "rank": stage.index,
                             "message": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc(limit=8)}, []
        channel.send(channel.next, meta, tensors)


def handle(stage: Stage, meta: dict[str, Any], tensors: list[torch.Tensor]) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Apply one message to ``stage``; returns what goes on to the next rank."""
    kind = meta["kind"]
    if kind == "forward":
        data, prompts = tensors[0], tensors[1:]
        for sid, states in zip(meta["prompt_sessions"], prompts, strict=True):
            stage.set_prompt(sid, states)
        t0 = time.perf_counter()
        out = stage.forward(meta, data)
        times = [*meta["times"], time.perf_counter() - t0]
        return {**meta, "times": times}, [out] if stage.last else [out, *prompts]
    if kind == "close":
        stage.close_session(meta["session_id"])
        return meta, tensors
    if kind == "hello":
        return {**meta, "layers": [*meta["layers"], (stage.layers.start, stage.layers.stop)]}, tensors
    if kind == "move":
        move = Move(*meta["move"])
        if stage.index == move.src and not meta.get("carried"):
            blob = stage.give_block(move.layer)
            return {**meta, "carried": True}, [torch.frombuffer(bytearray(blob), dtype=torch.uint8)]
        if stage.index == move.dst and meta.get("carried") and not meta.get("installed"):
            stage.take_block(tensors[0].cpu().numpy().tobytes())
            return {**meta, "installed": True}, []
        return meta, tensors
    raise StageFailed(f"stage {stage.index}: unknown message kind {kind!r}")


# ---------------------------------------------------------------------------------------------- rank 0


class StageGroup:
    """Rank 0's side of the ring: stage 0 runs in the caller's thread, the other stages in their ranks.

    Args:
        dit: rank 0's model (blocks outside stage 0 are freed here).
        spec: the group; ``spec.world == 1`` runs every stage in this process (the reference).
        balancer: moves blocks between stages from measured stage times (None: never).
    """

    def __init__(self, dit: CausalWanDiT, spec: GroupSpec, balancer: Balancer | None = None) -> None:
        check_ranges([range(a, b) for a, b in spec.ranges], dit.num_layers)
        self.spec = spec
        self.ranges = [range(a, b) for a, b in spec.ranges]
        self.balancer = balancer
        self.broken: str | None = None
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._pending: deque[int] = deque()
        self._seq = 0
        self.stats: dict[str, float] = {"forwards": 0, "stage_seconds": 0.0, "round_trip_seconds": 0.0,
                                        "moves": 0}
        self.stage_times: list[float] = [0.0] * spec.world
        self.channel: Channel | None = None
        self._results: deque[tuple[dict[str, Any], list[torch.Tensor]]] = deque()
        if spec.world > 1:
            drop_other_blocks(dit, self.ranges[0])
        self.stage = Stage(dit, self.ranges[0], 0, spec.world, spec.window)
        if spec.world > 1:
            self._start_workers(dit)

    def _start_workers(self, dit: CausalWanDiT) -> None:
        store = _store(self.spec, 0, True)
        ctx = multiprocessing.get_context("spawn")
        for rank in range(1, self.spec.world):
            p = ctx.Process(target=worker_main, args=(rank, self.spec, store.port), daemon=True,
                            name=f"streamserve-stage-{rank}")
            p.start()
            self.processes.append(p)
        self._store = store  # keeps the rendezvous alive
        try:
            group = make_group(self.spec.backend, dist.PrefixStore("stages", store), 0, self.spec.world,
                               self.spec.startup_timeout_s)
            self.channel = Channel(group, 0, self.spec.world, self.spec.startup_timeout_s, dit.device)
            reply = self._round_trip({"kind": "hello", "layers": []}, [])
        except BaseException:
            self.shutdown()
            raise
        import datetime

        self.channel.timeout = datetime.timedelta(seconds=self.spec.timeout_s)
        got = [range(a, b) for a, b in reply[0]["layers"]]
        if got != self.ranges:
            self.shutdown()
            raise StageFailed(f"stages report blocks {got}, expected {self.ranges}")
        log.info("pipeline stages up: %s on %s", self.ranges, self.spec.devices)

    # ------------------------------------------------------------------ transfers

    def _check(self) -> None:
        if self.broken is not None:
            raise StageFailed(f"the pipeline-parallel group is down: {self.broken}")

    def _fail(self, exc: BaseException) -> StageFailed:
        dead = [p.name for p in self.processes if not p.is_alive()]
        why = f"{exc}" + (f" (exited: {', '.join(dead)})" if dead else "")
        self.broken = why
        log.error("pipeline-parallel group failed: %s", why)
        return exc if isinstance(exc, StageFailed) else StageFailed(why)

    def _send_on(self, meta: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        assert self.channel is not None
        self.channel.send(1, meta, tensors, wait=False)  # waited on in _recv_back

    def _recv_back(self) -> tuple[dict[str, Any], list[torch.Tensor]]:
        assert self.channel is not None
        meta, tensors = self.channel.recv(self.spec.world - 1)
        # Once the newest forward came back, everything sent before it has been received: wait on
        # those sends. Otherwise only collect the finished ones (waiting on a send still queued
        # behind a reply that rank 0 has not asked for yet would deadlock).
        self.channel.flush(completed_only=bool(self._pending) and meta.get("seq") != self._pending[-1])
        if meta["kind"] == "error":
            raise StageFailed(f"stage {meta['rank']} failed: {meta['message']}\n{meta.get('traceback', '')}")
        return meta, tensors

    def _round_trip(self, meta: dict[str, Any], tensors: list[torch.Tensor]) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Send a control message around the ring (nothing else in flight) and wait for it."""
        if self._pending:
            raise RuntimeError("control messages go around an empty ring; collect pending forwards first")
        meta, tensors = handle(self.stage, meta, tensors)
        if self.spec.world == 1:
            return meta, tensors
        self._send_on(meta, tensors)
        return self._recv_back()

    # ------------------------------------------------------------------ forwards

    def submit(self, meta: dict[str, Any], x: torch.Tensor, prompts: list[torch.Tensor]) -> int:
        """Run stage 0 on latents ``x [N, C, 1, h, w]`` and send the result on; returns a sequence number.
        ``meta`` holds items, sigma, key, grid, pool, prompt_sessions (one entry per ``prompts`` tensor)."""
        self._check()
        self._seq += 1
        meta = {**meta, "kind": "forward", "seq": self._seq, "times": [], "x_shape": tuple(x.shape),
                "sent_at": time.perf_counter()}
        try:
            out_meta, out = handle(self.stage, meta, [x, *prompts])
            if self.spec.world == 1:
                self._results.append((out_meta, out))
            else:
                self._send_on(out_meta, out)
        except Exception as exc:
            raise self._fail(exc) from exc
        self._pending.append(self._seq)
        return self._seq

    @property
    def pending(self) -> int:
        return len(self._pending)

    def collect(self) -> torch.Tensor:
        """The velocity ``[N, C, 1, h, w]`` of the oldest submitted forward (waits for it)."""
        self._check()
        if not self._pending:
            raise RuntimeError("no forward in flight")
        try:
            meta, tensors = self._results.popleft() if self.spec.world == 1 else self._recv_back()
        except Exception as exc:
            raise self._fail(exc) from exc
        seq = self._pending.popleft()
        if meta["seq"] != seq:
            raise self._fail(StageFailed(f"ring out of order: got forward {meta['seq']}, expected {seq}"))
        self._account(meta)
        return tensors[0]

    def forward(self, meta: dict[str, Any], x: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
        self.submit(meta, x, prompts)
        return self.collect()

    def _account(self, meta: dict[str, Any]) -> None:
        times: list[float] = meta["times"]
        rtt = time.perf_counter() - meta["sent_at"]
        self.stats["forwards"] += 1
        self.stats["stage_seconds"] += sum(times)
        self.stats["round_trip_seconds"] += rtt
        self.stage_times = [0.8 * a + 0.2 * b for a, b in zip(self.stage_times, times, strict=True)] \
            if self.stats["forwards"] > 1 else list(times)
        if self.balancer is not None and not self._pending:
            move = self.balancer.observe(times, self.ranges)
            if move is not None:
                self.move_block(move)

    # ------------------------------------------------------------------ control

    def close_session(self, session_id: str) -> None:
        """Free a session's KV and prompt on every stage (in stream order). No-op when the group is down."""
        if self.broken is not None:
            return
        try:
            self._round_trip({"kind": "close", "session_id": session_id}, [])
        except Exception as exc:
            raise self._fail(exc) from exc

    def move_block(self, move: Move) -> None:
        """Move a boundary block (weights and KV) to a neighbouring stage; nothing may be in flight."""
        self._check()
        new = apply_move(self.ranges, move)  # validates
        meta: dict[str, Any] = {"kind": "move", "move": (move.layer, move.src, move.dst)}
        tensors: list[torch.Tensor] = []
        try:
            for _lap in range(2):  # a move toward rank 0's side needs the second lap
                meta, tensors = self._round_trip(meta, tensors)
                if meta.get("installed"):
                    break
            else:
                raise StageFailed(f"block move {move} was not installed after two laps")
        except Exception as exc:
            raise self._fail(exc) from exc
        self.ranges = new
        self.stats["moves"] += 1
        log.info("moved block %d from stage %d to %d: stages now %s", move.layer, move.src, move.dst, new)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the ranks (politely if the ring works, by force otherwise)."""
        if self.channel is not None and self.broken is None and not self._pending:
            try:
                self._send_on({"kind": "stop"}, [])
                self._recv_back()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.warning("stopping the stage ranks: %s", exc)
        for p in self.processes:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(timeout)
        self.processes = []
        self.broken = self.broken or "shut down"
