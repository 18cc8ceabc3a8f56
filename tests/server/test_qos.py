"""QoS params: parsed apart from the pipeline's, bad values named; tiers mapped back to params."""

from __future__ import annotations

import dataclasses

import pytest

from streamserve.core.config import SessionConfig
from streamserve.core.errors import InvalidParams
from streamserve.pipelines.passthrough import PassthroughPipeline
from streamserve.qos import Qos, build_spec, params_for_tier, split_qos
from streamserve.schedulers import SessionSpec, WorkShape, ladder


def test_split_qos_takes_its_keys_and_validates_them() -> None:
    qos, rest = split_qos({"priority": 3, "fps": 15, "degrade": "fps,steps", "mirror": True})
    assert qos == Qos(priority=3, fps=15.0, min_fps=10.0, degrade=("fps", "steps")) and rest == {"mirror": True}
    assert split_qos({"degrade": "none"})[0].degrade == ()
    assert split_qos(None) == (Qos(), {})
    for bad, field in (({"priority": 10}, "priority"), ({"priority": "high"}, "priority"), ({"fps": 0}, "fps"),
                       ({"fps": True}, "fps"), ({"degrade": ["fps", "colour"]}, "degrade"),
                       ({"degrade": ["fps", "fps"]}, "degrade")):
        with pytest.raises(InvalidParams) as err:
            split_qos(bad)
        assert err.value.field == field


def test_spec_and_tier_params_for_a_pipeline_without_resolution() -> None:
    pipe = PassthroughPipeline()
    spec = build_spec(pipe, "passthrough", pipe.Params(), Qos(priority=2, fps=20), SessionConfig(latency_budget_s=0.1))
    assert (spec.lane, spec.fps, spec.budget_s, spec.priority, spec.shape) == ("video", 20.0, 0.1, 2, WorkShape())
    # 0.95, 0.9, 0.8, 2/3 and 1/2 of 20 fps; 20/3 is under min_fps 10.
    assert [t.fps for t in ladder(spec)] == pytest.approx([20.0, 19.0, 18.0, 16.0, 40 / 3, 10.0])


@dataclasses.dataclass(frozen=True)
class SizedParams:
    width: int | None = None
    height: int | None = None
    steps: int = 2
    style: str = "noir"


def test_params_for_tier_lowers_only_what_the_tier_lowered() -> None:
    spec = SessionSpec("video", WorkShape(256, 256, 2))
    tiers = ladder(spec)
    user = SizedParams(style="sketch")
    assert params_for_tier(user, spec, tiers[1]) is user  # a frame-rate tier: the pipeline is untouched
    assert tiers[7].knob == "resolution"  # after the six frame-rate rungs
    assert params_for_tier(user, spec, tiers[7]) == SizedParams(192, 192, 2, "sketch")
    assert params_for_tier(user, spec, tiers[-1]) == SizedParams(128, 128, 1, "sketch")
    assert params_for_tier(user, spec, tiers[0]) is user  # restored: the user's own params again
