"""Deadline scheduling in pure Python: `schedule(now) -> StepPlan`, then `update(plan, outputs)`.

`SloScheduler` (the server's) adds the cost model, goodput admission, degradation tiers, lanes for
voice and stall-free joins to EDF batching; `EDFScheduler` and `FifoScheduler` are baselines;
`simulate` runs the same scheduler on a simulated clock (the capacity planner).
"""

from streamserve.schedulers.admission import Admission, AdmissionConfig, Decision, Headroom, Load
from streamserve.schedulers.base import InboxView, Scheduler
from streamserve.schedulers.cost import CostModel, WorkShape
from streamserve.schedulers.edf import EDFScheduler
from streamserve.schedulers.fifo import FifoScheduler
from streamserve.schedulers.latency import LatencyModel
from streamserve.schedulers.policy import DegradePolicy, PolicyConfig, TierChange
from streamserve.schedulers.slo import Join, SloScheduler
from streamserve.schedulers.spec import SessionSpec, Tier, ladder

__all__ = [
    "Admission",
    "AdmissionConfig",
    "CostModel",
    "Decision",
    "DegradePolicy",
    "EDFScheduler",
    "FifoScheduler",
    "Headroom",
    "InboxView",
    "Join",
    "LatencyModel",
    "Load",
    "PolicyConfig",
    "Scheduler",
    "SessionSpec",
    "SloScheduler",
    "Tier",
    "TierChange",
    "WorkShape",
    "ladder",
]
