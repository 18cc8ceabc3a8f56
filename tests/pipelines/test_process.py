"""A pipeline in a process of its own (`pipelines/process.py`, `streamserve serve`'s default): the same
results as in the server's process, errors that name the problem, a dead child that ends only its
sessions, and nothing left running."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from streamserve.client import StreamClient
from streamserve.core.config import ServerConfig
from streamserve.core.frames import VideoFrame
from streamserve.core.plan import Batch, WorkItem
from streamserve.pipelines import registry
from streamserve.pipelines.passthrough import PassthroughParams, PassthroughPipeline
from streamserve.pipelines.process import importable, process_pipeline


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def item(sid: str, pts: int, data: np.ndarray) -> Batch:
    return Batch("passthrough", (WorkItem(sid, VideoFrame(data, pts, 0.0, 1e9)),))


class ChildPassthrough(PassthroughPipeline):
    """The passthrough, marked to run in a child process (the child imports it from here)."""

    name = "childpass"
    own_process = True


class ShapeThatDoesNotPickle(PassthroughPipeline):
    """Answers `work_shape` with something pickle cannot send back."""

    name = "badshape"

    def work_shape(self, params: object) -> dict[str, object]:
        return {"width": lambda: 16}


@pytest.fixture
def remote():  # type: ignore[no-untyped-def]
    pipe = process_pipeline(PassthroughPipeline)(device="cpu")
    yield pipe
    pipe.close()


def test_the_class_keeps_the_pipelines_name_params_and_media() -> None:
    cls = process_pipeline(PassthroughPipeline)
    assert cls.name == "passthrough" and cls.Params is PassthroughParams
    assert cls.inputs == PassthroughPipeline.inputs and cls.describe() == PassthroughPipeline.describe()
    assert cls.kv_bytes_for is None  # the passthrough keeps no KV cache: placement asks nothing


def test_the_server_moves_the_video_model_only() -> None:
    builtins = ("passthrough", "video", "voice", "video-pp")
    # voice needs the server's ticker, video-pp its devices' threads
    assert [name for name in builtins if registry.get_class(name).own_process] == ["video"]


def test_a_class_made_at_run_time_stays_in_the_servers_process() -> None:
    from streamserve.manager import SessionManager

    made = type("MadeNow", (PassthroughPipeline,), {"name": "madenow", "own_process": True})
    assert importable(ChildPassthrough) and not importable(made)
    registry.register(made, replace=True)
    try:
        manager = SessionManager(ServerConfig(pipeline="madenow", model_process=True))
        assert type(manager._create_pipeline("madenow")) is made  # a child could not import it
    finally:
        registry.unregister("madenow")


def test_steps_run_in_the_child_and_return_its_frames(remote) -> None:  # type: ignore[no-untyped-def]
    assert remote.pid is not None and remote.pid != os.getpid()
    frame = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    remote.open_session("a", PassthroughParams())
    (out,) = remote.step(item("a", 7, frame))
    assert out.error is None and out.media[0].pts == 7
    np.testing.assert_array_equal(out.media[0].data, frame)
    remote.update_params("a", PassthroughParams(mirror=True))
    (out,) = remote.step(item("a", 8, frame))
    np.testing.assert_array_equal(out.media[0].data, frame[:, ::-1])
    pieces = remote.open_pieces("b", PassthroughParams(mirror=True))
    assert [name for name, _ in pieces] == ["open"]
    for _, run in pieces:
        run()
    batch = Batch("passthrough", (WorkItem("a", VideoFrame(frame, 9, 0.0, 1e9)),
                                  WorkItem("b", VideoFrame(frame[::-1].copy(), 9, 0.0, 1e9))))
    outs = remote.step(batch)
    assert [o.session_id for o in outs] == ["a", "b"]
    np.testing.assert_array_equal(outs[1].media[0].data, frame[::-1, ::-1])


def test_a_bad_option_fails_the_start_with_the_pipelines_own_error() -> None:
    with pytest.raises(ValueError, match=r"PassthroughPipeline takes no options, got \['colour'\]"):
        process_pipeline(PassthroughPipeline)(device="cpu", colour="red")


def test_a_dead_child_ends_its_sessions_and_the_next_open_starts_a_fresh_one(remote) -> None:  # type: ignore[no-untyped-def]
    frame = np.zeros((4, 4, 3), np.uint8)
    remote.open_session("a", PassthroughParams())
    first = remote.pid
    os.kill(first, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"the model process of 'passthrough' exited \(code -9\)"):
        remote.step(item("a", 1, frame))
    assert gone(first) and remote.pid is None and remote.kv_held_bytes() == 0
    (out,) = remote.step(item("a", 2, frame))  # no new child for a session of the dead one
    assert out.error == "the model process of 'passthrough' was restarted and this session's state was lost"
    with pytest.raises(RuntimeError, match="state was lost"):
        remote.update_params("a", PassthroughParams(mirror=True))
    remote.close_session("a")  # nothing to close: must not raise
    remote.open_session("b", PassthroughParams())
    assert remote.pid not in (None, first)
    (out,) = remote.step(item("b", 3, frame))
    assert out.error is None and out.media[0].pts == 3


def test_a_result_that_does_not_pickle_is_an_error_and_the_child_goes_on() -> None:
    pipe = process_pipeline(ShapeThatDoesNotPickle)(device="cpu")
    try:
        with pytest.raises(AttributeError, match="Can't pickle local object 'ShapeThatDoesNotPickle.work_shape"):
            pipe.work_shape(PassthroughParams())
        pipe.open_session("a", PassthroughParams())
        (out,) = pipe.step(item("a", 5, np.zeros((4, 4, 3), np.uint8)))
        assert out.error is None and out.media[0].pts == 5
    finally:
        pipe.close()


def test_close_stops_the_child(remote) -> None:  # type: ignore[no-untyped-def]
    pid = remote.pid
    remote.close()
    assert remote.pid is None and gone(pid)


def test_the_video_pipeline_in_a_process_renders_what_it_renders_in_ours() -> None:
    from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams

    local = VideoDiffusionPipeline(device="cpu")
    remote = process_pipeline(VideoDiffusionPipeline)(device="cpu")
    try:
        assert remote.work_shape(VideoParams()) == local.work_shape(VideoParams())
        assert remote.kv_bytes_for(VideoParams()) == local.kv_bytes_for(VideoParams())
        with pytest.raises(ValueError, match="width 333"):
            remote.check_params(VideoParams(width=333))
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(6)]
        outputs = []
        for pipe in (local, remote):
            params = VideoParams(width=128, height=128, style="cartoon", seed=3)
            for _, run in pipe.open_pieces("s", params):
                run()
            got: list[np.ndarray] = []
            for i, frame in enumerate(frames):
                (out,) = pipe.step(Batch("video", (WorkItem("s", VideoFrame(frame, i, 0.0, 1e9)),)))
                assert out.error is None
                got.extend(m.data for m in out.media)
            outputs.append(got)
        assert remote.kv_held_bytes() > 0
        assert len(outputs[0]) == len(outputs[1]) > 0
        for a, b in zip(*outputs, strict=True):
            np.testing.assert_array_equal(a, b)
        remote.close_session("s")
        assert remote.kv_held_bytes() == 0
    finally:
        remote.close()
        local.close_session("s")


def test_a_server_with_model_process_serves_and_leaves_no_child(server_factory) -> None:  # type: ignore[no-untyped-def]
    registry.register(ChildPassthrough, replace=True)
    try:
        server = server_factory(ServerConfig(pipeline="childpass", port=0, model_process=True))
        engine = server.manager.devices.engines[0]
        frame = np.full((16, 16, 3), 77, np.uint8)
        url = server.url.replace("http", "ws") + "/v1/ws"

        async def run(pipeline: str) -> list[np.ndarray]:
            async with StreamClient(url, pipeline=pipeline, send_format="rgb24", output_format="rgb24",
                                    kinds=("video",)) as client:
                got = []
                for _ in range(5):
                    await client.send_frame(frame)
                    out = await client.receive(timeout_s=10.0)
                    assert out is not None
                    got.append(out.data)
                return got

        for pipeline in ("childpass", "passthrough"):
            got = asyncio.run(run(pipeline))
            assert len(got) == 5 and all((g == 77).all() for g in got)
        pipes = engine.created()
        assert type(pipes["passthrough"]) is PassthroughPipeline  # not marked: stays in the server's process
        pid = pipes["childpass"].pid
        assert pid is not None and pid != os.getpid()
        server.stop()
        assert gone(pid)
    finally:
        registry.unregister("childpass")


def test_serve_runs_the_video_model_in_a_child_unless_told_otherwise() -> None:
    from streamserve.cli import build_parser, config_from_args
    from streamserve.manager import SessionManager
    from streamserve.pipelines.process import ProcessPipeline

    parser = build_parser()
    default, inside = (config_from_args(parser.parse_args(["serve", *flags])) for flags in ([], ["--in-process"]))
    assert (default.model_process, inside.model_process) == (True, False)
    assert not ServerConfig().model_process  # the library's default: what tests and benchmarks build
    pipe = SessionManager(default)._create_pipeline("video")  # what the engine thread runs; warmed up
    try:
        assert isinstance(pipe, ProcessPipeline) and pipe.pid not in (None, os.getpid())
    finally:
        pipe.close()
    assert type(SessionManager(default)._create_pipeline("passthrough")) is PassthroughPipeline


def test_frames_stay_on_mallocs_heap_unless_the_operator_says_otherwise(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from streamserve.pipelines.process import MALLOC_MMAP_THRESHOLD, _child_env, keep_frames_on_heap

    assert _child_env()["MALLOC_MMAP_THRESHOLD_"] == str(MALLOC_MMAP_THRESHOLD)
    assert keep_frames_on_heap()  # glibc on Linux: mallopt took it
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert _child_env()["MALLOC_MMAP_THRESHOLD_"] == "65536" and not keep_frames_on_heap()
