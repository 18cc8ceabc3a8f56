"""A pipeline run in a process of its own (what `streamserve serve` does with the video model).

The engine thread steps a pipeline through some thousand torch calls a step, each of which gives the
GIL up and takes it back; in a server the event loop (aiortc, SRTP, the jitter buffer) and the codec
threads hold the GIL part of the time, so a step in the server's process runs slower than the same
step alone (benchmarks/RESULTS.md, "Served video at 320²"). `ProcessPipeline` keeps the model in a
child process with a GIL of its own: the engine thread calls the same `Pipeline` methods, which go to
the child over a socket pair, and waits without holding the GIL.

What crosses the socket: each method's arguments and result, pickled (a batch's frames as numpy
arrays), and with every reply the KV bytes the child's sessions hold (`kv_held_bytes`, read by
placement from another thread). `open_pieces` returns stand-ins that run the child's pieces one by
one. A pipeline's `ticker` does not cross (the voice pipeline runs in the server's process).

If the child dies (killed, out of memory, a crash in native code), the call that finds it out
raises, so the sessions in that batch end with an error naming the exit code; the next call starts
a fresh child, and the sessions of the dead one end with an error at their next step (their state
is gone). `close` stops the child; the child also exits when the server's process dies (its end of
the socket closes).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import multiprocessing.connection
import os
import pickle
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, ClassVar

from streamserve.core.plan import Batch, StepOutput
from streamserve.pipelines.base import Pipeline

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # the child imports torch and loads the weights before it answers
STOP_TIMEOUT_S = 10.0
SOCKET_BUFFER_BYTES = 8 << 20
MALLOC_MMAP_THRESHOLD = 8 << 20

# The methods the engine thread may call on the child's pipeline, by name.
_METHODS = frozenset({"warmup", "work_shape", "check_params", "open_session", "update_params",
                      "close_session", "step", "kv_bytes_for"})


def process_pipeline(cls: type[Pipeline]) -> type[ProcessPipeline]:
    """A `Pipeline` class with `cls`'s name, params and media kinds whose instances run a `cls` in a
    child process (the server does this for the pipelines that set `Pipeline.own_process`)."""
    attrs = {"name": cls.name, "description": cls.description, "Params": cls.Params, "inputs": cls.inputs,
             "outputs": cls.outputs, "target": cls, "__module__": __name__}
    if not callable(getattr(cls, "kv_bytes_for", None)):
        attrs["kv_bytes_for"] = None  # keeps no KV cache: placement asks nothing (`DeviceEngines.kv_need`)
    return type(f"Process{cls.__name__}", (ProcessPipeline,), attrs)


def importable(cls: type) -> bool:
    """Whether a child process can import `cls` by its module and name (a class made at run time, or
    one defined in a script's ``__main__``, cannot: the server runs those in its own process)."""
    if cls.__module__ == "__main__":
        return False
    try:
        found = importlib.import_module(cls.__module__)
        for part in cls.__qualname__.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is cls


class ProcessPipeline(Pipeline):
    """The engine's side of a pipeline in a child process (`process_pipeline` makes the subclass)."""

    target: ClassVar[type[Pipeline]]

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        self.device = device
        self._options = options
        self._lock = threading.Lock()  # one call at a time on the pipe (placement asks from the loop)
        self._child: subprocess.Popen[bytes] | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._generation = 0  # which child; a session lives in the child it was opened in
        self._opened: dict[str, int] = {}
        self._kv_held = 0
        keep_frames_on_heap()  # the frames this side pickles and unpickles, as in the child
        with self._lock:
            self._start()

    # --- the child ----------------------------------------------------------------------------------
    def _start(self) -> None:
        # A fresh interpreter (`python -m`), not a fork of a process that holds threads and torch, nor
        # multiprocessing's spawn, which would run the server's main module again in the child.
        ours, theirs = socket.socketpair()
        for end in (ours, theirs):  # a batch of frames in one write, not a round of wake-ups per 200 KB
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        target = f"{self.target.__module__}:{self.target.__qualname__}"
        try:
            proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())], env=_child_env(),
                                    pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
        self._child, self._conn = proc, multiprocessing.connection.Connection(ours.detach())
        try:
            self._conn.send((target, self.device, self._options, logging.getLogger().getEffectiveLevel()))
            self._receive(START_TIMEOUT_S)
        except BaseException:
            self._stop_child()
            raise
        log.info("pipeline %s runs in process %d", self.name, proc.pid)

    def _receive(self, timeout: float | None = None) -> Any:
        assert self._conn is not None and self._child is not None
        try:
            if timeout is not None and not self._conn.poll(timeout):
                raise RuntimeError(f"the model process of {self.name!r} did not answer in {timeout:.0f} s")
            status, value, kv_held = self._conn.recv()
        except (EOFError, OSError) as exc:
            try:
                code: int | None = self._child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = None
            self._stop_child()
            raise RuntimeError(f"the model process of {self.name!r} exited (code {code})") from exc
        self._kv_held = kv_held
        if status == "err":
            raise value
        return value

    def _request(self, *message: Any) -> Any:
        with self._lock:
            if self._conn is None:
                self._start()
            assert self._conn is not None
            try:
                self._conn.send(message)
            except (OSError, ValueError) as exc:  # the child is gone; _receive names its exit code
                log.debug("sending to the model process failed: %s", exc)
            return self._receive()

    def _stop_child(self) -> None:
        conn, proc, self._conn, self._child = self._conn, self._child, None, None
        self._generation += 1  # the sessions of this child are gone with it
        if conn is not None:
            conn.close()  # the child's recv sees EOF and exits
        if proc is not None:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("the model process %d did not stop in %.0f s: killed", proc.pid, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the child (the engine calls this when it stops)."""
        with self._lock:
            self._stop_child()

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none runs)."""
        return None if self._child is None else self._child.pid

    # --- Pipeline -----------------------------------------------------------------------------------
    def warmup(self) -> None:
        self._request("call", "warmup", ())

    def work_shape(self, params: Any) -> dict[str, Any]:
        return self._request("call", "work_shape", (params,))

    def check_params(self, params: Any) -> None:
        self._request("call", "check_params", (params,))

    def open_pieces(self, session_id: str, params: Any) -> list[tuple[str, Callable[[], None]]]:
        names = self._request("pieces", session_id, params)
        self._opened[session_id] = self._generation

        def piece(index: int) -> None:
            self._live(session_id)
            self._request("piece", session_id, index)

        return [(name, functools.partial(piece, i)) for i, name in enumerate(names)]

    def open_session(self, session_id: str, params: Any) -> None:
        self._request("call", "open_session", (session_id, params))
        self._opened[session_id] = self._generation

    def update_params(self, session_id: str, params: Any) -> None:
        self._live(session_id)
        self._request("call", "update_params", (session_id, params))

    def close_session(self, session_id: str) -> None:
        if self._opened.pop(session_id, None) == self._generation and self._conn is not None:
            self._request("call", "close_session", (session_id,))

    def step(self, batch: Batch) -> list[StepOutput]:
        lost = [item.session_id for item in batch.items if self._opened.get(item.session_id) != self._generation]
        if lost:  # opened in a child that has died: say so rather than ask the new one
            if len(lost) < batch.size:
                raise RuntimeError("the batch mixes sessions of a lost model process")  # the engine retries one by one
            return [StepOutput(sid, error=self._lost_message()) for sid in lost]
        return self._request("call", "step", (batch,))

    def kv_bytes_for(self, params: Any) -> int:
        return int(self._request("call", "kv_bytes_for", (params,)))

    def kv_held_bytes(self) -> int:
        """The KV bytes the child's sessions held at its last reply (any thread)."""
        return self._kv_held if self._conn is not None else 0

    def _live(self, session_id: str) -> None:
        if self._opened.get(session_id) != self._generation:
            raise RuntimeError(self._lost_message())

    def _lost_message(self) -> str:
        return f"the model process of {self.name!r} was restarted and this session's state was lost"


def keep_frames_on_heap() -> bool:
    """In this process, what `_child_env` asks of the child's malloc (glibc's `mallopt`; the
    environment variables, when the operator set them, win). Returns whether it was applied."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
                    and libc.mallopt(m_trim_threshold, 4 * MALLOC_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def _child_env() -> dict[str, str]:
    """The server's environment, with glibc's malloc told to keep frame-sized blocks (up to 8 MB) on
    its heap instead of mapping fresh pages for each: a 320² frame pickled or unpickled otherwise
    page-faults its way through 0.3 MB, a third of a millisecond, several times a step. A value the
    operator set is kept."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MALLOC_MMAP_THRESHOLD))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(4 * MALLOC_MMAP_THRESHOLD))
    return env


# --- in the child ------------------------------------------------------------------------------------

def _serve(conn: multiprocessing.connection.Connection) -> None:
    """The child's loop: build the pipeline the first message names, then answer requests until the
    pipe closes."""
    target, device, options, log_level = conn.recv()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s [model]: %(message)s")
    pieces: dict[str, list[Callable[[], None]]] = {}
    pipe: Pipeline | None = None

    def reply(status: str, value: Any) -> None:
        held = getattr(pipe, "kv_held_bytes", None)
        conn.send((status, value, int(held()) if callable(held) else 0))

    try:
        module, _, name = target.partition(":")
        cls = getattr(importlib.import_module(module), name)
        pipe = cls(device=device, **options)
    except BaseException as exc:
        reply("err", _portable(exc))
        return
    reply("ok", None)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        try:
            status, value = "ok", _handle(pipe, pieces, message)
        except BaseException as exc:
            status, value = "err", _portable(exc)
        try:
            reply(status, value)
        except (EOFError, OSError):  # the server's process is gone
            return
        except Exception as exc:  # a result that does not pickle
            reply("err", _portable(exc))


def _handle(pipe: Pipeline, pieces: dict[str, list[Callable[[], None]]], message: tuple[Any, ...]) -> Any:
    op = message[0]
    if op == "call":
        _, name, args = message
        if name not in _METHODS:
            raise ValueError(f"not a pipeline method the engine calls: {name!r}")
        if name == "close_session":
            pieces.pop(args[0], None)
        return getattr(pipe, name)(*args)
    if op == "pieces":
        _, session_id, params = message
        named = pipe.open_pieces(session_id, params)
        pieces[session_id] = [fn for _, fn in named]
        return [piece_name for piece_name, _ in named]
    if op == "piece":
        _, session_id, index = message
        fns = pieces[session_id]
        fns[index]()
        if index == len(fns) - 1:
            del pieces[session_id]
        return None
    raise ValueError(f"unknown request {op!r}")


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it pickles (a ValueError naming a bad parameter reaches the caller as itself), else a
    RuntimeError with its type, message and traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        text = "".join(traceback.format_exception(exc))
        return RuntimeError(f"{type(exc).__name__}: {exc}\n{text}")


if __name__ == "__main__":
    _serve(multiprocessing.connection.Connection(int(sys.argv[1])))
