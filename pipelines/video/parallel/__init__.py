"""Pipeline parallel video diffusion: the DiT's blocks split over devices in a ring of stages.

* :mod:`.split` -- contiguous block ranges per stage and the balancer that moves blocks;
* :mod:`.wire` -- a fixed head (sizes + metadata) and one packed payload over a torch.distributed process group, with timeouts;
* :mod:`.stage` -- one stage: its blocks, their rolling KV and prompt keys; selective weight loading;
* :mod:`.ring` -- rank 0's driver and the other ranks' loop;
* :mod:`.pipeline` -- `video-pp`, the `video` pipeline whose DiT forward goes around the ring.
"""

from .split import Balancer, BalancerConfig, Move, split_layers
from .wire import StageFailed

__all__ = ["Balancer", "BalancerConfig", "Move", "StageFailed", "split_layers"]
