"""The Python client SDK (`streamserve.client`) and `streamserve client` against a live server."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamserve.client import (
    ServerError,
    SessionEnded,
    StreamClient,
    add_client_arguments,
    convert,
    main_client,
    parse_param_args,
)
from streamserve.core.config import ServerConfig
from streamserve.core.frames import MediaKind
from streamserve.transport.ws import WebSocketTransport
from tests.conftest import LiveServer


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    srv = LiveServer(ServerConfig(pipeline="passthrough", port=0), [WebSocketTransport]).start()
    yield srv
    srv.stop()


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/ws"


def gradient(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4 + i * 8) % 256, y * 5, np.full_like(x, 128)], -1).astype(np.uint8)


async def test_round_trip_through_the_sdk(server: LiveServer) -> None:
    async with StreamClient(ws_url(server), pipeline="passthrough", output_format="rgb24",
                            send_format="rgb24") as client:
        assert client.session_id and client.started["params"] == {"mirror": False}
        assert client.server_hello["capabilities"]["flow_control"] == "freshest-wins"
        latencies = []
        for i in range(10):
            frame = gradient(i)
            t0 = time.perf_counter()
            seq = await client.send_frame(frame, pts_us=i * 40_000)
            out = await client.receive(timeout_s=5)
            latencies.append(time.perf_counter() - t0)
            assert out is not None and out.kind is MediaKind.VIDEO
            assert out.ref == seq == i and out.pts_us == i * 40_000
            np.testing.assert_array_equal(out.data, frame)  # rgb24 both ways: lossless
        assert await client.update({"mirror": True}) == {"mirror": True}
        await client.send_frame(gradient(0))
        out = await client.receive(timeout_s=5)
        assert out is not None
        np.testing.assert_array_equal(out.data, gradient(0)[:, ::-1])
        stats = await client.stats()
        assert stats["session"]["frames_out"] == 11 and stats["connection"]["messages_in"] >= 13
        with pytest.raises(ServerError) as err:
            await client.update({"mirror": "sideways"})
        assert err.value.code == "invalid_params" and err.value.details["field"] == "mirror"
        assert not err.value.fatal
    assert sorted(latencies)[len(latencies) // 2] < 1.0
    await asyncio.sleep(0.1)
    assert server.manager.list() == []


async def test_the_sdk_never_offers_compression(server: LiveServer) -> None:
    """docs/protocol.md, section 1: no permessage-deflate, though this test server (uvicorn's
    defaults) would accept it: media is raw or already compressed."""
    async with StreamClient(ws_url(server), pipeline="passthrough") as client:
        assert client._ws is not None and list(client._ws.protocol.extensions) == []


async def test_jpeg_and_audio_and_async_iteration(server: LiveServer) -> None:
    async with StreamClient(ws_url(server), jpeg_quality=95) as client:
        for i in range(3):
            await client.send_frame(gradient(i, 32, 32), pts_us=i)
        tone = (np.sin(np.arange(960) / 10) * 8000).astype(np.int16)[None, :].repeat(2, 0)  # [2, 960]
        await client.send_audio(tone, 48_000, pts_us=7)
        got: dict[MediaKind, list[np.ndarray]] = {MediaKind.VIDEO: [], MediaKind.AUDIO: []}
        async with asyncio.timeout(5):
            async for out in client:
                got[out.kind].append(out.data)
                if len(got[MediaKind.VIDEO]) == 3 and got[MediaKind.AUDIO]:
                    break
        for i, frame in enumerate(got[MediaKind.VIDEO]):
            assert frame.shape == (32, 32, 3)
            assert np.abs(frame.astype(int) - gradient(i, 32, 32)).mean() < 4  # JPEG q95
        np.testing.assert_array_equal(got[MediaKind.AUDIO][0], tone)  # audio passes through untouched
        assert await client.end() == "ended by client"
        assert await client.receive(timeout_s=5) is None
        with pytest.raises(SessionEnded):
            await client.send_frame(gradient(0))


async def test_refused_start_raises(server: LiveServer) -> None:
    with pytest.raises(ServerError) as err:
        async with StreamClient(ws_url(server), pipeline="no-such-pipeline"):
            pass
    assert err.value.code == "unknown_pipeline" and "passthrough" in err.value.details["available"]


def write_video(path: Path, frames: int = 24, fps: int = 24) -> list[np.ndarray]:
    pictures = [gradient(i) for i in range(frames)]
    with av.open(str(path), "w") as container:
        codec = "rawvideo" if path.suffix == ".y4m" else "libx264"
        stream = container.add_stream(codec, rate=Fraction(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i, rgb in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return pictures


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)], rate


@pytest.mark.parametrize(("src", "dst"), [("in.y4m", "out.mp4"), ("in.mp4", "out.y4m")])
async def test_convert_a_file_end_to_end(server: LiveServer, tmp_path: Path, src: str, dst: str) -> None:
    pictures = write_video(tmp_path / src)
    result = await convert(str(tmp_path / src), str(tmp_path / dst), url=ws_url(server), pipeline="passthrough",
                           params={"mirror": True}, progress=False)
    assert (result.frames_in, result.frames_out, result.lost) == (24, 24, 0)
    assert result.latency_ms_p50 is not None and result.latency_ms_p50 < 1000
    frames, rate = read_video(tmp_path / dst)
    assert len(frames) == 24 and rate == pytest.approx(24, rel=0.01)
    for frame, picture in zip(frames, pictures, strict=True):
        assert frame.shape == (48, 64, 3)
        assert np.abs(frame.astype(int) - picture[:, ::-1]).mean() < 8  # mirrored (codec loss aside)


def test_streamserve_client_command(server: LiveServer, tmp_path: Path) -> None:
    """The installed command, as a user runs it: a generated file in, a converted file out, a progress bar."""
    write_video(tmp_path / "in.y4m", frames=12)
    out = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, "-m", "streamserve.cli", "client", "--input", str(tmp_path / "in.y4m"),
                           "--output", str(out), "--url", ws_url(server), "--pipeline", "passthrough",
                           "--param", "mirror=true"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "12/12 frames" in done.stdout and "lost 0" in done.stdout
    assert "frame" in done.stderr and "12/12" in done.stderr  # tqdm's bar
    assert len(read_video(out)[0]) == 12


def test_main_client_errors(server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_video(tmp_path / "in.y4m", frames=6)
    parser = argparse.ArgumentParser()
    add_client_arguments(parser)
    args = parser.parse_args(["-i", str(tmp_path / "in.y4m"), "-o", str(tmp_path / "out.avi"),
                              "--url", ws_url(server), "--param", "mirror=true", "--no-progress"])
    assert main_client(args) == 0
    assert "6/6 frames" in capsys.readouterr().out
    assert len(read_video(tmp_path / "out.avi")[0]) == 6
    bad = parser.parse_args(["-i", str(tmp_path / "in.y4m"), "-o", str(tmp_path / "x.avi"),
                             "--url", ws_url(server), "--param", "mirror=maybe", "--no-progress"])
    assert main_client(bad) == 1
    assert "invalid_params" in capsys.readouterr().err
    missing = parser.parse_args(["-i", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "x.avi"),
                                 "--url", ws_url(server), "--no-progress"])
    assert main_client(missing) == 1
    assert "nope.mp4" in capsys.readouterr().err
    wrong_ext = parser.parse_args(["-i", str(tmp_path / "in.y4m"), "-o", str(tmp_path / "x.gif"),
                                   "--url", ws_url(server), "--no-progress"])
    assert main_client(wrong_ext) == 1
    assert ".gif" in capsys.readouterr().err


def test_parse_param_args() -> None:
    assert parse_param_args(["prompt=a cat", "steps=2", "mirror=true", "style=\"x\""]) == {
        "prompt": "a cat", "steps": 2, "mirror": True, "style": "x"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_param_args(["nothing"])
