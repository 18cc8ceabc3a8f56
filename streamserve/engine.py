"""The engine: one thread per device running the step loop.

    plan = scheduler.schedule(now)
    outputs = pipeline.step(batch)        for each batch in the plan
    scheduler.update(plan, outputs, elapsed)

Pipelines are created, opened, updated and closed only on this thread (`call` queues such work
between steps), so a pipeline needs no locks. Results reach the asyncio loop through the thread-safe
`deliver` callback. The thread sleeps on an event that new input or a queued call sets: no polling.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from streamserve.core.clock import SYSTEM_CLOCK, Clock
from streamserve.core.plan import Batch, StepOutput, WorkItem
from streamserve.pipelines.base import Pipeline
from streamserve.schedulers.base import Scheduler

log = logging.getLogger(__name__)
T = TypeVar("T")

Deliver = Callable[[Sequence[StepOutput], Sequence[WorkItem]], None]


class EngineObserver(Protocol):
    def step_done(self, pipeline: str, batch_size: int, seconds: float) -> None: ...


class Engine:
    def __init__(
        self,
        scheduler: Scheduler,
        pipeline_factory: Callable[[str], Pipeline],
        deliver: Deliver,
        *,
        device: str = "cpu",
        clock: Clock = SYSTEM_CLOCK,
        observer: EngineObserver | None = None,
        idle_wait_s: float = 0.5,
    ) -> None:
        self.scheduler = scheduler
        self.device = device
        self._factory = pipeline_factory
        self._deliver = deliver
        self._clock = clock
        self._observer = observer
        self._idle_wait_s = idle_wait_s
        self._pipelines: dict[str, Pipeline] = {}
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.device}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("engine thread did not stop within %.1f s", timeout)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """New input arrived: let the loop run a step."""
        self._wake.set()

    # --- work on the engine thread --------------------------------------------------------------
    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the engine thread between steps; the future carries its result or exception."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._stopped.is_set() or self._stopping.is_set():
            fut.set_exception(RuntimeError("the engine has stopped"))
            return fut
        self._calls.put((fn, fut))
        self._wake.set()
        return fut

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline instance `name`, created on first use (engine thread only)."""
        pipe = self._pipelines.get(name)
        if pipe is None:
            pipe = self._factory(name)
            self._pipelines[name] = pipe
        return pipe

    def created(self) -> dict[str, Pipeline]:
        """The pipelines created so far, by name (a copy; never creates one): for read-only figures
        another thread may take, such as their KV memory."""
        return dict(self._pipelines)

    def _run_calls(self) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller, who decides
                fut.set_exception(exc)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._run_calls()
                idle_for = self._step_once()
                if idle_for is not None:
                    self._wake.wait(idle_for)
                    self._wake.clear()
        except Exception:
            log.exception("engine loop crashed")
        finally:
            self._stopped.set()
            self._fail_pending_calls()
            for name, pipe in self._pipelines.items():
                try:
                    close = getattr(pipe, "close", None)
                    if close:
                        close()
                except Exception:
                    log.exception("closing pipeline %s failed", name)

    def _fail_pending_calls(self) -> None:
        while True:
            try:
                _, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the engine has stopped"))

    def _step_once(self) -> float | None:
        """Run one plan. Returns None if it did work, else how long to sleep (new input wakes sooner)."""
        plan = self.scheduler.schedule(self._clock.now())
        if plan.empty and not plan.expired and not plan.skipped and not plan.chores:
            return self._idle_for(plan.wake_at)
        outputs: list[StepOutput] = []
        elapsed: dict[str, float] = {}
        for batch in plan.batches:
            t0 = time.perf_counter()
            outputs.extend(self._run_batch(batch))
            elapsed[batch.pipeline] = time.perf_counter() - t0
            if self._observer:
                self._observer.step_done(batch.pipeline, batch.size, elapsed[batch.pipeline])
        for chore in plan.chores:
            t0 = time.perf_counter()
            error: BaseException | None = None
            try:
                chore.run()
            except Exception as exc:  # handed to the chore's owner (e.g. a session open that failed)
                error = exc
            elapsed[chore.key] = elapsed.get(chore.key, 0.0) + time.perf_counter() - t0
            try:
                chore.done(error)
            except Exception:
                log.exception("chore callback for %s failed", chore.session_id)
        self.scheduler.update(plan, outputs, elapsed)
        self.steps += 1
        self._deliver(outputs, plan.expired + plan.skipped)
        return None if (plan.batches or plan.chores) else self._idle_for(plan.wake_at)

    def _idle_for(self, wake_at: float | None) -> float:
        if wake_at is None:
            return self._idle_wait_s
        return min(self._idle_wait_s, max(0.0, wake_at - self._clock.now()))

    def _run_batch(self, batch: Batch) -> list[StepOutput]:
        """Run a batch; if it raises, run its items one by one so only the failing session ends."""
        try:
            outs = self.pipeline(batch.pipeline).step(batch)
            if len(outs) != batch.size:
                raise RuntimeError(f"pipeline {batch.pipeline!r} returned {len(outs)} outputs for "
                                   f"{batch.size} items")
            return outs
        except Exception as exc:
            if batch.size == 1:
                item = batch.items[0]
                log.error("pipeline %s failed for session %s:\n%s", batch.pipeline, item.session_id,
                          traceback.format_exc())
                return [StepOutput(item.session_id, error=f"{type(exc).__name__}: {exc}")]
        results: list[StepOutput] = []
        for item in batch.items:
            results.extend(self._run_batch(Batch(batch.pipeline, (item,))))
        return results
