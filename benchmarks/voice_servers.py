"""The voice benchmark's servers (benchmarks/voice.py): a stand-in streaming chat endpoint, the voice
server in this process or its own, and video clients in their own process beside it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import numpy as np

ANSWER = "Sure. Here is a short answer to your question, in a few words."


def start_instant_llm(token_s: float) -> str:
    """A local OpenAI-compatible streaming endpoint that answers every question with ANSWER, one
    word per `token_s` (a stand-in for a GPU LLM server: it isolates the voice pipeline's own cost)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for i, word in enumerate(ANSWER.split(" ")):
                    time.sleep(token_s)
                    chunk = {"choices": [{"delta": {"content": (" " if i else "") + word}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def start_server(llm_url: str | None, llm_model: str | None, asr_engine: str = "torch",
                 scheduler: str = "slo") -> tuple[Any, int]:
    import uvicorn

    from streamserve.core.config import ServerConfig
    from streamserve.server import create_app
    from streamserve.serving import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = tuple((k, v) for k, v in (("llm_url", llm_url), ("llm_model", llm_model), ("asr_engine", asr_engine)) if v)
    config = ServerConfig(pipeline="voice", port=port, log_level="warning", idle_timeout_s=30.0,
                          max_sessions=8, pipeline_options=options, scheduler=scheduler)
    server = uvicorn.Server(uvicorn_config(create_app(config), config, lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, port


def server_process(llm_url: str | None, llm_model: str | None, asr_engine: str, scheduler: str, port: Any,
                    stop: Any) -> None:
    server, p = start_server(llm_url, llm_model, asr_engine, scheduler)
    port.value = p
    stop.wait()
    server.should_exit = True
    time.sleep(1.0)


class ServerProcess:
    """The server in its own process (`--server-process`): the clients' 50 messages a second per
    session no longer share the server's interpreter (its GIL), as on a real deployment."""

    def __init__(self, llm_url: str | None, llm_model: str | None, asr_engine: str, scheduler: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._port, self._stop = ctx.Value("i", 0), ctx.Event()
        self._proc = ctx.Process(target=server_process, daemon=True,
                                 args=(llm_url, llm_model, asr_engine, scheduler, self._port, self._stop))
        self._proc.start()
        deadline = time.monotonic() + 300
        while not self._port.value:
            if not self._proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server process did not start")
            time.sleep(0.1)
        self.port = int(self._port.value)
        self.should_exit = False

    def close(self) -> None:
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)


async def video_client(port: int, seconds: float, stop: Any, size: int = 256, fps: float = 30.0) -> dict[str, Any]:
    """One video session (the demo model) sending RGB frames on a clock until `stop` (at most `seconds`)."""
    from streamserve.client import StreamClient

    frame = np.random.default_rng(1).integers(0, 255, (size, size, 3), np.uint8)
    async with StreamClient(f"ws://127.0.0.1:{port}/v1/ws", pipeline="video", send_format="rgb24",
                            output_format="rgb24", kinds=("video",), open_timeout=120) as client:
        received = 0

        async def receive() -> None:
            nonlocal received
            async for _ in client:
                received += 1

        reader = asyncio.create_task(receive())
        t0, k = time.monotonic(), 0
        try:
            while time.monotonic() - t0 < seconds and not stop.is_set():
                await client.send_frame(frame, pts_us=round(time.monotonic() * 1e6))
                k += 1
                await asyncio.sleep(max(0.0, t0 + k / fps - time.monotonic()))
            await asyncio.sleep(0.5)
            stats = (await client.stats())["session"]
        finally:
            reader.cancel()
        return {"frames_in": k, "frames_out": received, "seconds": time.monotonic() - t0,
                "tier_fps": (stats.get("slo") or {}).get("fps")}


def video_process(port: int, n: int, seconds: float, stop: Any, out: Any) -> None:
    """Video clients in their own process, so their frame traffic does not slow the voice clients."""
    async def run() -> list[Any]:
        return list(await asyncio.gather(*(video_client(port, seconds, stop) for _ in range(n)), return_exceptions=True))

    out.put([r if isinstance(r, dict) else repr(r) for r in asyncio.run(run())])
