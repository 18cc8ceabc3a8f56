"""The `video` pipeline's behaviour: params, lag, batching, live prompt change, errors, backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamserve.core.errors import InvalidParams
from streamserve.core.frames import AudioChunk, VideoFrame
from streamserve.core.params import parse_params
from streamserve.core.plan import Batch, WorkItem
from streamserve.pipelines import registry
from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams
from streamserve.pipelines.video.resize import fit_frame, to_rgb
from tests.pipelines.video.video_helpers import frames, step_one


def run(pipe: VideoDiffusionPipeline, sid: str, clip: list[np.ndarray], start: int = 0) -> list[list[VideoFrame]]:
    outs = []
    for i, f in enumerate(clip, start):
        res = step_one(pipe, sid, f, i)
        assert res.error is None, res.error
        outs.append([m for m in res.media if isinstance(m, VideoFrame)])
    return outs


def test_registry_and_constructor_options(tiny_demo_dir: Path) -> None:
    assert registry.get_class("video") is VideoDiffusionPipeline
    info = VideoDiffusionPipeline.describe()
    assert info.params["style"]["choices"][0] == "watercolor" and info.params["attention"]["choices"] == ["dense", "sla"]
    with pytest.raises(ValueError, match=r"takes no options, got \['turbo'\]"):
        VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir), turbo=True)
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N"):
        VideoDiffusionPipeline(device="tpu", model=str(tiny_demo_dir))
    with pytest.raises(ValueError, match="position_policy"):
        VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir), position_policy="grow")
    with pytest.raises(ValueError, match=r"threads must be in \[1, 1024\], got 0"):
        VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir), threads=0)
    VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir), threads=1)
    assert torch.get_num_threads() == 1


def test_params_are_validated_by_name() -> None:
    with pytest.raises(InvalidParams, match=r"steps: steps must be in \[1, 4\], got 7"):
        parse_params(VideoParams, {"steps": 7})
    with pytest.raises(InvalidParams, match="style"):
        parse_params(VideoParams, {"style": "vaporwave"})
    with pytest.raises(InvalidParams, match="strictly decreasing"):
        parse_params(VideoParams, {"timesteps": [0.2, 0.4]})
    p = parse_params(VideoParams, {"timesteps": [0.5, 0.25], "stream_batch": True})
    assert p.num_steps == 2 and p.lag_blocks == 1 and p.extra_cache_blocks == 1


def test_resolution_and_prompt_errors_at_session_start(tiny_pipe: VideoDiffusionPipeline) -> None:
    with pytest.raises(ValueError, match=r"width 100: this model renders sizes that are multiples of 16 in \[32, 256\]"):
        tiny_pipe.open_session("a", VideoParams(width=100))
    with pytest.raises(ValueError, match=r"height 512: .* \[32, 256\]"):
        tiny_pipe.open_session("a", VideoParams(height=512))
    with pytest.raises(ValueError, match="prompt 'a cat' is not one of this model's styles: watercolor, sketch"):
        tiny_pipe.open_session("a", VideoParams(prompt="a cat"))
    tiny_pipe.open_session("a", VideoParams(width=96, height=48))
    (out,) = run(tiny_pipe, "a", frames(1, 30, 50))
    assert out[0].data.shape == (48, 96, 3)
    with pytest.raises(ValueError, match="already open"):
        tiny_pipe.open_session("a", VideoParams())
    tiny_pipe.close_session("a")
    tiny_pipe.close_session("never-opened")  # no error


@pytest.mark.parametrize(("steps", "stream_batch", "lag"), [(1, True, 0), (3, True, 2), (3, False, 0)])
def test_stream_batch_lag_and_timing(tiny_pipe: VideoDiffusionPipeline, steps: int, stream_batch: bool, lag: int) -> None:
    tiny_pipe.open_session("s", VideoParams(steps=steps, stream_batch=stream_batch))
    outs = run(tiny_pipe, "s", frames(8))
    assert [len(o) for o in outs] == [0] * lag + [1] * (8 - lag)
    # Each output carries the timing of the input it answers, in order.
    pts = [o[0].pts for o in outs if o]
    assert pts == list(range(8 - lag))
    assert outs[-1][0].deadline == pytest.approx((7 - lag) / 30 + 1.0)
    stats = tiny_pipe.session_stats("s")
    assert stats["lag_blocks"] == lag and stats["blocks_in"] == 8 and stats["blocks_out"] == 8 - lag


def test_sessions_in_one_batch_match_sessions_alone(tiny_pipe: VideoDiffusionPipeline) -> None:
    clip_a, clip_b = frames(5, seed=1), frames(5, seed=2)
    for sid, style in (("a", "sketch"), ("b", "noir")):
        tiny_pipe.open_session(sid, VideoParams(style=style, steps=2))  # type: ignore[arg-type]
    alone_a = run(tiny_pipe, "a", clip_a)
    alone_b = run(tiny_pipe, "b", clip_b)
    for sid, style in (("a", "sketch"), ("b", "noir")):
        tiny_pipe.close_session(sid)
        tiny_pipe.open_session(sid, VideoParams(style=style, steps=2))  # type: ignore[arg-type]
    for i in range(5):
        res = tiny_pipe.step(Batch("video", (WorkItem("a", VideoFrame(clip_a[i], i, 0.0, 1.0)),
                                             WorkItem("b", VideoFrame(clip_b[i], i, 0.0, 1.0)))))
        for r, alone in zip(res, (alone_a, alone_b), strict=True):
            assert len(r.media) == len(alone[i])
            for m, n in zip(r.media, alone[i], strict=True):
                assert np.abs(m.data.astype(int) - n.data.astype(int)).max() <= 1  # type: ignore[union-attr]


def test_live_style_change_blends_and_keeps_the_cache(tiny_pipe: VideoDiffusionPipeline) -> None:
    tiny_pipe.open_session("s", VideoParams(style="sketch", blend_frames=4))
    clip = [frames(1)[0]] * 12
    before = run(tiny_pipe, "s", clip[:6])
    assert tiny_pipe.session_stats("s")["kv_blocks"] == 3  # 1 sink + 2 window: full
    tiny_pipe.update_params("s", VideoParams(style="thermal", blend_frames=4))
    alphas, after = [], []
    for i in range(6, 12):
        after += run(tiny_pipe, "s", [clip[i]], start=i)
        alphas.append(tiny_pipe.session_stats("s")["prompt_blend"])
    assert alphas == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    stats = tiny_pipe.session_stats("s")
    assert stats["blocks_in"] == 12 and stats["kv_blocks"] == 3  # same stream: not restarted
    d = [np.abs(o[0].data.astype(int) - before[-1][0].data.astype(int)).mean() for o in after]
    assert d[0] < d[1] < d[2] < d[3]  # the new style fades in ...
    assert abs(d[5] - d[3]) < 0.1 * d[3]  # ... then holds


def test_changing_steps_restarts_the_stream(tiny_pipe: VideoDiffusionPipeline) -> None:
    tiny_pipe.open_session("s", VideoParams())
    run(tiny_pipe, "s", frames(3))
    tiny_pipe.update_params("s", VideoParams(steps=2))
    assert tiny_pipe.session_stats("s")["blocks_in"] == 0
    outs = run(tiny_pipe, "s", frames(3))
    assert [len(o) for o in outs] == [0, 1, 1]


def test_resize_modes() -> None:
    rgb = np.full((30, 60, 3), 200, np.uint8)
    box = fit_frame(rgb, 64, 64, "letterbox")
    assert box.shape == (3, 64, 64)
    assert box[:, 0].max() == -1.0 and box[:, 32].min() > 0.5  # black bars above, picture in the middle
    assert fit_frame(rgb, 64, 64, "crop").min() > 0.5  # no bars
    assert fit_frame(rgb, 64, 64, "stretch").min() > 0.5
    assert np.array_equal(to_rgb(fit_frame(rgb, 60, 30)), rgb)


def test_bad_items_fail_only_their_session(tiny_pipe: VideoDiffusionPipeline) -> None:
    tiny_pipe.open_session("ok", VideoParams())
    f = frames(1)[0]
    audio = AudioChunk(np.zeros((1, 160), np.int16), 16000, 0, 0.0, 1.0)
    res = tiny_pipe.step(Batch("video", (WorkItem("ok", VideoFrame(f, 0, 0.0, 1.0)),
                                         WorkItem("ghost", VideoFrame(f, 0, 0.0, 1.0)),
                                         WorkItem("sound", audio))))
    assert res[0].error is None and len(res[0].media) == 1
    assert res[1].error == "no open video session 'ghost'"
    assert res[2].error is not None


def test_session_limit_is_a_clear_error(tiny_demo_dir: Path) -> None:
    pipe = VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir), max_sessions=1)
    pipe.open_session("a", VideoParams())
    with pytest.raises(ValueError, match="holds at most 1 sessions at 64x64"):
        pipe.open_session("b", VideoParams())
    pipe.close_session("a")
    pipe.open_session("b", VideoParams())


def test_sla_backend_matches_dense_when_every_block_is_critical(tiny_pipe: VideoDiffusionPipeline) -> None:
    """The tiny model's cache is one 64-token SLA block: SLA then is exact attention."""
    clip = frames(5)
    tiny_pipe.open_session("d", VideoParams(attention="dense"))
    tiny_pipe.open_session("s", VideoParams(attention="sla"))
    dense, sla = run(tiny_pipe, "d", clip), run(tiny_pipe, "s", clip)
    for a, b in zip(dense, sla, strict=True):
        assert np.abs(a[0].data.astype(int) - b[0].data.astype(int)).max() <= 1


def test_motion_aware_noise_follows_the_camera(tiny_pipe: VideoDiffusionPipeline) -> None:
    rng = np.random.default_rng(0)
    tiny_pipe.open_session("still", VideoParams(strength=0.4))
    run(tiny_pipe, "still", [frames(1)[0]] * 6)
    tiny_pipe.open_session("shaky", VideoParams(strength=0.4))
    run(tiny_pipe, "shaky", [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)])
    tiny_pipe.open_session("off", VideoParams(strength=0.4, motion_aware=False))
    run(tiny_pipe, "off", [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)])
    assert tiny_pipe.session_stats("still")["sigma"] == pytest.approx(0.4)
    assert tiny_pipe.session_stats("shaky")["sigma"] == pytest.approx(0.35, abs=1e-3)  # 0.4 * (1 - 0.125)
    assert tiny_pipe.session_stats("off")["sigma"] == pytest.approx(0.4)


def test_fixed_noise_gives_a_still_output_for_a_still_input(tiny_pipe: VideoDiffusionPipeline) -> None:
    still = [frames(1)[0]] * 8
    tiny_pipe.open_session("fixed", VideoParams())
    tiny_pipe.open_session("fresh", VideoParams(fixed_noise=False))
    fixed = [o[0].data for o in run(tiny_pipe, "fixed", still)][4:]
    fresh = [o[0].data for o in run(tiny_pipe, "fresh", still)][4:]
    change = [np.abs(b.astype(int) - a.astype(int)).mean() for a, b in zip(fixed, fixed[1:], strict=False)]
    change_fresh = [np.abs(b.astype(int) - a.astype(int)).mean() for a, b in zip(fresh, fresh[1:], strict=False)]
    assert max(change) < 0.01 < min(change_fresh)


def test_warmup_leaves_no_session(tiny_pipe: VideoDiffusionPipeline) -> None:
    tiny_pipe.warmup()
    assert tiny_pipe.kv_bytes == 0
    torch.testing.assert_close(torch.tensor(1.0), torch.tensor(1.0))


def test_monochrome_styles_are_grey_and_the_grey_fades_with_a_blend(tiny_pipe: VideoDiffusionPipeline) -> None:
    """The grayscale head: noir/sketch come out with R = G = B; a blend to a colour style fades it out."""
    from streamserve.pipelines.video.pipeline import grey_head

    video = torch.rand(3, 2, 4, 4) * 2 - 1
    grey = grey_head(video, 1.0)
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert torch.equal(grey_head(video, 0.0), video)
    half = grey_head(video, 0.5)
    assert torch.allclose(half, (video + grey) / 2, atol=1e-6)

    tiny_pipe.open_session("m", VideoParams(style="noir", blend_frames=4))
    clip = [frames(1)[0]] * 8
    out = run(tiny_pipe, "m", clip[:3])
    spread = [float(np.ptp(o[0].data.astype(int), axis=2).max()) for o in out]
    assert spread == [0.0, 0.0, 0.0]  # max(R, G, B) - min(R, G, B) is 0 everywhere
    tiny_pipe.update_params("m", VideoParams(style="thermal", blend_frames=4))
    monos = []
    for i in range(3, 8):
        run(tiny_pipe, "m", [clip[i]], start=i)
        monos.append(tiny_pipe._sessions["m"].prompt.mono())
    assert monos == pytest.approx([0.75, 0.5, 0.25, 0.0, 0.0])
    tiny_pipe.close_session("m")
