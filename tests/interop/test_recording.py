"""Recording a session's output: started and stopped live over HTTP, finalised when stopped, when the
session ends and when the server stops; the files play in ffprobe/PyAV with the right frame count and
duration; size cap; errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import websockets

from streamserve.core.config import ServerConfig
from streamserve.transport import wsproto as wp
from tests.conftest import LiveServer

W, H = 64, 48
FRAME_US = 33_333  # 30 fps


def frame(seq: int, *, noise: bool = False) -> bytes:
    """RGB24 [H, W, 3]: a bar that moves with `seq`, or [4H, 4W, 3] noise (compresses badly)."""
    if noise:
        pixels = np.random.default_rng(seq).integers(0, 256, (4 * H, 4 * W, 3), dtype=np.uint8)
    else:
        pixels = np.zeros((H, W, 3), dtype=np.uint8)
        pixels[:, (seq * 2) % W] = 255
    height, width = pixels.shape[:2]
    header = wp.MediaHeader(wp.Kind.VIDEO, wp.Format.RGB24, seq, seq * FRAME_US, width=width, height=height)
    return wp.pack_media(header, pixels.tobytes())


async def open_session(server: LiveServer) -> tuple[Any, str]:
    ws = await websockets.connect(server.url.replace("http", "ws") + "/v1/ws")
    await ws.send(json.dumps({"type": "hello", "version": 1}))
    await ws.recv()
    await ws.send(json.dumps({"type": "start", "pipeline": "passthrough",
                              "output": {"video": "rgb24", "kinds": ["video"]}}))
    started = json.loads(await ws.recv())
    SECRETS[started["session_id"]] = started["session_secret"]
    return ws, started["session_id"]


SECRETS: dict[str, str] = {}  # session id -> its secret, the credential of its /v1/sessions routes


def owner(sid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[sid]}"}


async def send_frames(ws: Any, count: int, *, noise: bool = False) -> None:
    for seq in range(count):  # one at a time: every frame comes out, none dropped
        await ws.send(frame(seq, noise=noise))
        header, _ = wp.parse_media(await asyncio.wait_for(ws.recv(), 10))
        assert header.ref == seq


def probe(path: Path) -> tuple[int, float, str]:
    """(video frames, duration in s, codec) as PyAV decodes them; ffprobe agrees when installed."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        duration = float(container.duration or 0) / 1e6
        codec = stream.codec_context.name
    ffprobe = shutil.which("ffprobe")
    if ffprobe:
        out = subprocess.run([ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                              "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert int(out.strip().strip(",")) == frames
    return frames, duration, codec


@pytest.fixture
def server(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    return server_factory(ServerConfig(pipeline="passthrough", port=0, record_dir=str(tmp_path)))


async def test_record_stop_and_download_mp4(server: LiveServer, tmp_path: Path) -> None:
    ws, sid = await open_session(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        started = await http.patch(f"/v1/sessions/{sid}/recording", headers=owner(sid), json={"record": True, "format": "mp4"})
        assert started.status_code == 200 and started.json()["recording"] is True
        busy = await http.get(f"/v1/sessions/{sid}/recording", headers=owner(sid))
        assert busy.status_code == 409 and busy.json()["error"] == "still_recording"
        await send_frames(ws, 30)
        stopped = await http.patch(f"/v1/sessions/{sid}/recording", headers=owner(sid), json={"record": False})
        assert stopped.status_code == 200, stopped.text
        state = stopped.json()
        assert state["recording"] is False and state["frames"] == 30 and state["dropped"] == 0
        download = await http.get(f"/v1/sessions/{sid}/recording", headers=owner(sid))
    await ws.close()
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    path = tmp_path / "download.mp4"
    path.write_bytes(download.content)
    assert (tmp_path / state["file"]).read_bytes() == download.content  # --record-dir holds it
    frames, duration, codec = probe(path)
    assert (frames, codec) == (30, "h264")
    assert duration == pytest.approx(30 * FRAME_US / 1e6, abs=0.05)


async def test_session_end_finalises_a_webm_recording(server: LiveServer, tmp_path: Path) -> None:
    ws, sid = await open_session(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        reply = await http.patch(f"/v1/sessions/{sid}/recording", headers=owner(sid), json={"record": True, "format": "webm"})
        assert reply.status_code == 200
        await send_frames(ws, 20)
        await ws.send(json.dumps({"type": "end"}))
        while isinstance(message := await asyncio.wait_for(ws.recv(), 10), bytes):
            pass
        assert json.loads(message)["type"] == "ended"
        for _ in range(100):  # the recording finalises on the loop right after the session ends
            download = await http.get(f"/v1/sessions/{sid}/recording", headers=owner(sid))
            if download.status_code != 409:
                break
            await asyncio.sleep(0.1)
    assert download.status_code == 200 and download.headers["content-type"] == "video/webm"
    path = tmp_path / "download.webm"
    path.write_bytes(download.content)
    frames, duration, codec = probe(path)
    assert (frames, codec) == (20, "vp8")
    assert duration == pytest.approx(20 * FRAME_US / 1e6, abs=0.05)


async def test_server_stop_finalises_and_size_cap_stops(server_factory: Callable[..., LiveServer],
                                                        tmp_path: Path) -> None:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, record_dir=str(tmp_path),
                                         record_max_bytes=64 * 1024))
    capped_ws, capped = await open_session(server)
    plain_ws, plain = await open_session(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for sid in (capped, plain):
            assert (await http.patch(f"/v1/sessions/{sid}/recording", headers=owner(sid), json={"record": True})).status_code == 200
        await send_frames(capped_ws, 30, noise=True)  # tens of KB a frame: the 64 KiB cap is hit
        await send_frames(plain_ws, 15)
        state = (await http.patch(f"/v1/sessions/{capped}/recording", headers=owner(capped), json={"record": False})).json()
    assert state["reason"].startswith("size cap of 65536 bytes"), state
    assert 0 < state["frames"] < 30 and state["bytes"] <= 64 * 1024 + 128 * 1024  # + the frame that crossed it
    frames, _, _ = probe(tmp_path / state["file"])
    assert frames == state["frames"]
    await asyncio.gather(capped_ws.close(), plain_ws.close(), return_exceptions=True)
    await asyncio.to_thread(server.stop)  # the plain one is still recording: the shutdown finalises it
    (plain_file,) = await asyncio.to_thread(lambda: list(tmp_path.glob(f"{plain}-*.mp4")))
    assert probe(plain_file)[0] == 15


async def test_recording_errors(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, record_dir=str(tmp_path),
                                         tokens=("t",)))
    ws = await websockets.connect(server.url.replace("http", "ws") + "/v1/ws")
    await ws.send(json.dumps({"type": "hello", "version": 1, "token": "t"}))
    await ws.recv()
    await ws.send(json.dumps({"type": "start", "pipeline": "passthrough"}))
    sid = json.loads(await ws.recv())["session_id"]
    auth = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        path = f"/v1/sessions/{sid}/recording"
        assert (await http.patch(path, json={"record": True})).status_code == 401
        assert (await http.patch("/v1/sessions/nope/recording", json={"record": True}, headers=auth)).status_code == 404
        for body, message in (({"record": "yes"}, 'boolean "record"'), ({"record": True, "format": "avi"}, "format"),
                              ({"record": True, "size": 1}, "unknown recording fields")):
            reply = await http.patch(path, json=body, headers=auth)
            assert reply.status_code == 400 and message in reply.json()["message"]
        missing = await http.get(path, headers=auth)
        assert missing.status_code == 404 and "has no recording" in missing.json()["message"]
        assert (await http.patch(path, json={"record": False}, headers=auth)).status_code == 404
    await ws.close()


@pytest.mark.parametrize(("fmt", "codecs"), [("mp4", ("h264", "aac")), ("webm", ("vp8", "opus"))])
def test_recorder_writes_video_and_audio(tmp_path: Path, fmt: str, codecs: tuple[str, str]) -> None:
    from streamserve.core.frames import AudioChunk, VideoFrame
    from streamserve.transport.recorder import Recorder, RecordingOptions

    path = tmp_path / f"av.{fmt}"
    recorder = Recorder(path, RecordingOptions(format=fmt, audio=True))  # type: ignore[arg-type]
    tone = (np.sin(np.arange(1600) * 2 * np.pi * 440 / 48_000) * 8000).astype(np.int16)  # 1/30 s at 48 kHz
    for i in range(30):
        image = np.zeros((H, W, 3), dtype=np.uint8)
        image[:, (i * 2) % W] = 255
        # 60 units fit the writer's queue (QUEUE_SIZE 64): none is dropped however slow the thread.
        assert recorder.offer(VideoFrame(image, i * 3000, 0.0, 1.0))  # 3000/90000 s = 1/30 s
        assert recorder.offer(AudioChunk(np.stack([tone, tone]), 48_000, i * 1600, 0.0, 1.0))
    recorder.close()
    assert recorder.stats()["recording"] is False and recorder.error is None
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == codecs
        frames = sum(1 for _ in container.decode(video))
        assert frames == 30
        container.seek(0)
        samples = sum(f.samples for f in container.decode(audio))
    assert samples / 48_000 == pytest.approx(1.0, abs=0.05)


async def test_websocket_record_message(server: LiveServer, tmp_path: Path) -> None:
    from streamserve.client import ServerError, StreamClient

    url = server.url.replace("http", "ws") + "/v1/ws"
    async with StreamClient(url, pipeline="passthrough", kinds=("video",)) as client:
        with pytest.raises(ServerError, match="not recording"):
            await client.record(False)
        with pytest.raises(ServerError, match="format"):
            await client.record(True, format="avi")
        started = await client.record(True, format="webm")
        assert started["type"] == "recording" and started["recording"] is True
        for seq in range(10):
            await client.send_frame(np.full((H, W, 3), seq * 20, dtype=np.uint8), pts_us=seq * FRAME_US)
            await client.receive(timeout_s=10)
        stopped = await client.record(False)
        secret = client.session_secret
    assert stopped["recording"] is False and stopped["frames"] == 10
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get(stopped["download"])).status_code == 401  # the file is the session's
        download = await http.get(stopped["download"], headers={"Authorization": f"Bearer {secret}"})
    assert download.status_code == 200 and download.headers["content-type"] == "video/webm"
    path = tmp_path / "ws.webm"
    path.write_bytes(download.content)
    assert probe(path)[:1] == (10,)
