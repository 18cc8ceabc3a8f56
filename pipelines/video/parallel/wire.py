"""Messages between pipeline stages: a fixed-size head (sizes + pickled metadata), then one payload.

One message from rank ``a`` to rank ``b`` is, in order on the pair's channel (tag 0)::

    head     uint8 [HEAD_BYTES]   int64 metadata length, int64 payload length, then the pickled dict
                                  (kind, sequence number, items, tensor shapes/dtypes...) when it fits
    meta     uint8 [len]          only when the dict does not fit in the head
    payload  uint8 [bytes]        every tensor of the message, packed (8-byte aligned), when any

Two transfers for a usual message, whatever its tensor count: each transfer the receiver waits for
is a wake-up (on a loaded CPU, milliseconds), and the old layout (header, metadata, one transfer per
tensor) made a forward's hop wait for 3-5 of them. Every send and receive is waited on with a
timeout: a rank that died fails the next transfer at once ("connection closed by peer"), one that
hangs fails it after the timeout; both raise :class:`StageFailed` naming the peer. Metadata is only
ever unpickled from the server's own ranks.
"""

from __future__ import annotations

import datetime
import math
import pickle
from typing import Any

import torch
import torch.distributed as dist

from streamserve.core.errors import StreamserveError

_DTYPES = {str(t): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8,
                                torch.bool)}


HEAD_BYTES = 2048
"""The first transfer of every message: sizes, and the pickled metadata when it fits (it usually does)."""

IDLE_TIMEOUT = datetime.timedelta(days=7)
"""How long a stage rank waits for the next message: no traffic is no failure (a server without
video-pp sessions sends none); a dead rank 0 ends the wait at once (connection closed)."""


class StageFailed(StreamserveError, RuntimeError):
    """A pipeline-parallel stage (another rank) died, hung past the timeout, or raised."""

    status = 503
    code = "pipeline_stage_failed"


class Channel:
    """Point-to-point messages over one torch.distributed process group (gloo on CPU, NCCL on GPU).

    ``device`` is where received tensors land (NCCL needs them on the GPU; gloo on the CPU).
    """

    def __init__(self, group: Any, rank: int, world: int, timeout_s: float, device: torch.device) -> None:
        self.group, self.rank, self.world = group, rank, world
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.device = device
        self.bytes_sent = 0
        self._unwaited: list[tuple[Any, torch.Tensor, int]] = []  # (work, tensor kept alive, dst)

    @property
    def next(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def prev(self) -> int:
        return (self.rank - 1) % self.world

    def _send(self, t: torch.Tensor, dst: int, wait: bool = True) -> None:
        t = t.contiguous()
        try:
            work = self.group.send([t], dst, 0)
            if wait:
                work.wait(self.timeout)
            else:
                self._unwaited.append((work, t, dst))
        except Exception as exc:  # gloo raises RuntimeError; keep its text, name the peer
            raise StageFailed(f"rank {self.rank}: sending to rank {dst} failed: {_short(exc)}") from exc
        self.bytes_sent += t.numel() * t.element_size()

    def flush(self, *, completed_only: bool = False) -> None:
        """Wait for every send posted with ``wait=False`` (each within the timeout); with
        ``completed_only``, just collect those already done (and raise if one failed)."""
        while self._unwaited:
            work, _, dst = self._unwaited[0]
            if completed_only and not work.is_completed():
                return
            self._unwaited.pop(0)
            try:
                work.wait(self.timeout)
            except Exception as exc:
                self._unwaited.clear()
                raise StageFailed(f"rank {self.rank}: sending to rank {dst} failed: {_short(exc)}") from exc

    def _recv(self, t: torch.Tensor, src: int, timeout: datetime.timedelta | None = None) -> torch.Tensor:
        try:
            self.group.recv([t], src, 0).wait(timeout or self.timeout)
        except Exception as exc:
            raise StageFailed(f"rank {self.rank}: receiving from rank {src} failed: {_short(exc)}") from exc
        return t

    def send(self, dst: int, meta: dict[str, Any], tensors: list[torch.Tensor] = (),  # type: ignore[assignment]
             wait: bool = True) -> None:
        """Send one message. ``wait=False`` posts the transfers and returns; :meth:`flush` waits for
        them (rank 0 does, after receiving a result: with several forwards in flight a blocking send
        would deadlock against the last rank's send back)."""
        layout, size = [], 0
        for t in tensors:
            layout.append((tuple(t.shape), str(t.dtype), size))
            size += _aligned(t.numel() * t.element_size())
        blob = pickle.dumps({**meta, "tensors": layout})
        head = torch.zeros(HEAD_BYTES, dtype=torch.uint8)
        head[:16] = torch.tensor([len(blob), size], dtype=torch.int64).view(torch.uint8)
        inline = len(blob) <= HEAD_BYTES - 16
        if inline:
            head[16 : 16 + len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        self._send(head.to(self.device), dst, wait)
        if not inline:
            self._send(torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(self.device), dst, wait)
        if tensors:
            payload = torch.empty(size, dtype=torch.uint8, device=self.device)
            for t, (_, _, offset) in zip(tensors, layout, strict=True):
                flat = t.detach().to(self.device).contiguous().reshape(-1).view(torch.uint8)
                payload[offset : offset + flat.numel()] = flat
            self._send(payload, dst, wait)

    def recv(self, src: int, idle: bool = False) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """One message from ``src``. ``idle``: the wait for its first transfer may be as long as the
        server stays idle (a worker waiting for the next forward; a peer that dies still fails it at
        once); the rest of the message, once it started, is bound by the transfer timeout."""
        head = self._recv(torch.empty(HEAD_BYTES, dtype=torch.uint8, device=self.device), src,
                          IDLE_TIMEOUT if idle else None).cpu()
        meta_len, size = (int(v) for v in head[:16].view(torch.int64).tolist())
        if meta_len <= HEAD_BYTES - 16:
            blob = head[16 : 16 + meta_len]
        else:
            blob = self._recv(torch.empty(meta_len, dtype=torch.uint8, device=self.device), src).cpu()
        meta: dict[str, Any] = pickle.loads(blob.numpy().tobytes())
        layout = meta["tensors"]
        if bool(layout) != (size > 0):
            raise StageFailed(f"rank {self.rank}: message from rank {src} lists {len(layout)} tensors "
                              f"for a {size}-byte payload")
        if not layout:
            return meta, []
        payload = self._recv(torch.empty(size, dtype=torch.uint8, device=self.device), src)
        tensors = []
        for shape, dt, offset in layout:
            dtype = _DTYPES[dt]
            n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            tensors.append(payload[offset : offset + n].view(dtype).reshape(shape))
        return meta, tensors


def _aligned(n: int) -> int:
    """``n`` rounded up to 8 bytes (each packed tensor starts aligned for any dtype's view)."""
    return (n + 7) // 8 * 8


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def make_group(backend: str, store: Any, rank: int, world: int, timeout_s: float) -> Any:
    """A process group of its own (no global ``init_process_group``: a server may run several)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout  # the public constructor takes the timeout through its options
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
