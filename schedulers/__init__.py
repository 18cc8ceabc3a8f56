"""Deadline scheduling in pure Python: `schedule(now) -> StepPlan`, then `update(plan, outputs)`."""

from streamserve.schedulers.base import InboxView, Scheduler
from streamserve.schedulers.edf import EDFScheduler
from streamserve.schedulers.latency import LatencyModel

__all__ = ["EDFScheduler", "InboxView", "LatencyModel", "Scheduler"]
