"""Pipeline parallel on CPU (gloo): the ring's output equals the single-process pipeline's, frame for frame.

Each test spawns real ranks (one process per extra stage) that load only their blocks from the
model folder; the single-process reference is the plain `video` pipeline on the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from streamserve.core.frames import VideoFrame
from streamserve.core.plan import Batch, WorkItem
from streamserve.pipelines.video import VideoDiffusionPipeline
from streamserve.pipelines.video.parallel.pipeline import PipelinedVideoPipeline
from streamserve.pipelines.video.parallel.split import Move
from streamserve.pipelines.video.parallel.stage import load_stage_dit
from streamserve.pipelines.video.params import VideoParams
from tests.pipelines.video.video_helpers import frames, step_one

pytestmark = pytest.mark.slow


def run_pair(ref: VideoDiffusionPipeline, pp: PipelinedVideoPipeline, n: int, moves: dict[int, Move],
             params: VideoParams) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Feed the same frames to both; change the style at frame 8; make `moves` before those frames."""
    out_ref: list[np.ndarray] = []
    out_pp: list[np.ndarray] = []
    for pipe in (ref, pp):
        pipe.open_session("s", params)
    for i, f in enumerate(frames(n)):
        if i == 8:
            for pipe in (ref, pp):
                pipe.update_params("s", dataclasses.replace(params, style="sketch"))
        if i in moves:
            pp.group.move_block(moves[i])
        a, b = step_one(ref, "s", f, i), step_one(pp, "s", f, i)
        assert a.error is None and b.error is None, (a.error, b.error)
        out_ref += [m.data for m in a.media]  # type: ignore[misc]
        out_pp += [m.data for m in b.media]  # type: ignore[misc]
    return out_ref, out_pp


def test_stage_loads_only_its_blocks(tiny_pp_dir: Path) -> None:
    dit = load_stage_dit(tiny_pp_dir / "transformer", range(2, 4), "cpu", torch.float32)
    devices = [next(b.parameters()).device.type for b in dit.transformer.blocks]
    assert devices == ["meta", "meta", "cpu", "cpu"]
    assert dit.transformer.patch_embedding.weight.device.type == "cpu"


def test_two_ranks_equal_single_process(tiny_pp_dir: Path) -> None:
    torch.set_num_threads(1)
    ref = VideoDiffusionPipeline("cpu", str(tiny_pp_dir))
    pp = PipelinedVideoPipeline.from_folder(str(tiny_pp_dir), stages=2)
    try:
        params = VideoParams(steps=2)  # stream batch: 2 blocks in flight per forward
        moves = {12: Move(1, 0, 1), 18: Move(1, 1, 0)}  # stage 0 -> 1, then back (block + its KV)
        out_ref, out_pp = run_pair(ref, pp, 24, moves, params)
        assert len(out_ref) == len(out_pp) == 23  # one block of lag with 2 steps
        for a, b in zip(out_ref, out_pp, strict=True):
            assert a.shape == b.shape == (64, 64, 3)
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        # The style change is visible (the prompt travelled with the data), the KV rolled past its window.
        assert np.abs(out_ref[4].astype(int) - out_ref[20].astype(int)).mean() > 1.0
        assert ref.session_stats("s")["blocks_in"] == 24 > ref.num_sinks + ref.window + 1
        stats = pp.parallel_stats()
        assert stats["stages"] == [(0, 2), (2, 4)] and stats["moves"] == 2 and stats["forwards"] >= 24
        assert stats["broken"] is None
        # The stream batch's two items were in the ring together (one micro-batch each, KV writes
        # deferred to the tick's end on every stage), not one forward at a time.
        assert stats["inflight"] == 2 and stats["max_in_flight"] == 2 and stats["micro_batches_per_tick"] > 1.9
        assert 0.0 <= stats["bubble"] < 1.0
        assert pp.session_stats("s")["parallel"]["stages"] == [(0, 2), (2, 4)]
    finally:
        pp.close()
    assert all(not p.is_alive() for p in pp.group.processes)


def test_three_ranks_with_moves_both_ways(tiny_pp_dir: Path) -> None:
    torch.set_num_threads(1)
    ref = VideoDiffusionPipeline("cpu", str(tiny_pp_dir))
    pp = PipelinedVideoPipeline.from_folder(str(tiny_pp_dir), stages=3)
    try:
        assert pp.parallel_stats()["stages"] == [(0, 2), (2, 3), (3, 4)]
        # 2 -> 1 goes toward rank 0: the block travels the ring's second lap.
        moves = {6: Move(1, 0, 1), 11: Move(2, 1, 2), 16: Move(2, 2, 1)}
        out_ref, out_pp = run_pair(ref, pp, 20, moves, VideoParams(steps=1))
        assert len(out_ref) == len(out_pp) == 20
        for a, b in zip(out_ref, out_pp, strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert pp.parallel_stats()["stages"] == [(0, 1), (1, 3), (3, 4)]
    finally:
        pp.close()


def step_many(pipe: object, frames_by_session: dict[str, np.ndarray], i: int) -> dict[str, list[np.ndarray]]:
    items = tuple(WorkItem(sid, VideoFrame(f, i, i / 30, i / 30 + 1.0)) for sid, f in frames_by_session.items())
    outs = pipe.step(Batch("video", items))  # type: ignore[attr-defined]
    assert all(o.error is None for o in outs), [o.error for o in outs]
    return {o.session_id: [m.data for m in o.media] for o in outs}  # type: ignore[misc]


def test_two_streams_in_flight_across_streams_and_steps(tiny_pp_dir: Path) -> None:
    """Two streams with a stream batch of 3 in one tick: 6 items in 3 micro-batches in the ring at once
    (stages work on different streams and denoising steps); a style change on one stream and a block
    move on the way; both streams equal the single-process pipeline over 22 chunks."""
    torch.set_num_threads(1)
    ref = VideoDiffusionPipeline("cpu", str(tiny_pp_dir))
    pp = PipelinedVideoPipeline.from_folder(str(tiny_pp_dir), stages=2, inflight=3)
    params = VideoParams(steps=3)
    try:
        for pipe in (ref, pp):
            for sid in ("a", "b"):
                pipe.open_session(sid, params)
        outs: list[dict[str, list[np.ndarray]]] = [{"a": [], "b": []}, {"a": [], "b": []}]
        fa, fb = frames(22, seed=1), frames(22, seed=2)
        for i in range(22):
            if i == 7:
                for pipe in (ref, pp):
                    pipe.update_params("a", dataclasses.replace(params, style="sketch"))
            if i == 13:
                pp.group.move_block(Move(1, 0, 1))
            for k, pipe in enumerate((ref, pp)):
                for sid, got in step_many(pipe, {"a": fa[i], "b": fb[i]}, i).items():
                    outs[k][sid] += got
        for sid in ("a", "b"):
            assert len(outs[0][sid]) == len(outs[1][sid]) == 20  # two blocks of lag with 3 steps
            for a, b in zip(outs[0][sid], outs[1][sid], strict=True):
                assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert np.abs(outs[0]["a"][3].astype(int) - outs[0]["a"][18].astype(int)).mean() > 1.0
        stats = pp.parallel_stats()
        assert stats["max_in_flight"] == 3 and stats["moves"] == 1 and stats["broken"] is None
    finally:
        pp.close()
