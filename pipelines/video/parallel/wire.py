"""Messages between pipeline stages: a small header, a pickled metadata dict, then tensors.

One message from rank ``a`` to rank ``b`` is, in order on the pair's channel (tag 0)::

    header   int64 [2]          (metadata length in bytes, number of tensors)
    meta     uint8 [len]        pickled dict: kind, sequence number, items, tensor shapes/dtypes...
    tensor_0 ... tensor_{n-1}   as listed in meta["tensors"]

Every send and receive is waited on with a timeout: a rank that died fails the next transfer at once
("connection closed by peer"), one that hangs fails it after the timeout; both raise
:class:`StageFailed` naming the peer. Metadata is only ever unpickled from the server's own ranks.
"""

from __future__ import annotations

import datetime
import pickle
from typing import Any

import torch
import torch.distributed as dist

from streamserve.core.errors import StreamserveError

_DTYPES = {str(t): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8,
                                torch.bool)}


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
        meta = {**meta, "tensors": [(tuple(t.shape), str(t.dtype)) for t in tensors]}
        blob = torch.frombuffer(bytearray(pickle.dumps(meta)), dtype=torch.uint8)
        self._send(torch.tensor([blob.numel(), len(tensors)], dtype=torch.int64, device=self.device), dst, wait)
        self._send(blob.to(self.device), dst, wait)
        for t in tensors:
            self._send(t.to(self.device), dst, wait)

    def recv(self, src: int, idle: bool = False) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """One message from ``src``. ``idle``: the wait for its first transfer may be as long as the
        server stays idle (a worker waiting for the next forward; a peer that dies still fails it at
        once); the rest of the message, once it started, is bound by the transfer timeout."""
        header = self._recv(torch.zeros(2, dtype=torch.int64, device=self.device), src, IDLE_TIMEOUT if idle else None)
        size, count = (int(v) for v in header.tolist())
        blob = self._recv(torch.empty(size, dtype=torch.uint8, device=self.device), src)
        meta: dict[str, Any] = pickle.loads(blob.cpu().numpy().tobytes())
        if len(meta["tensors"]) != count:
            raise StageFailed(f"rank {self.rank}: message from rank {src} lists {len(meta['tensors'])} tensors, "
                              f"header says {count}")
        tensors = [self._recv(torch.empty(shape, dtype=_DTYPES[dt], device=self.device), src)
                   for shape, dt in meta["tensors"]]
        return meta, tensors


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
