"""`/view/{stream}` in real Chromium: it waits for the stream, plays its processed output (moving, in
order), shows nothing else, and picks the stream up again after it restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from streamserve.core.config import ServerConfig
from streamserve.transport.probe import read_stamp
from streamserve.transport.whip import WhipTransport
from tests.conftest import LiveServer
from tests.transport.whip_clients import ObsLikePublisher

GRAB_JS = """
() => {
  const video = document.getElementById("output");
  if (!video.videoWidth) return null;
  const canvas = Object.assign(document.createElement("canvas"), {width: video.videoWidth, height: video.videoHeight});
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(video, 0, 0);
  return {w: canvas.width, h: canvas.height, data: Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data)};
}
"""


class PublisherThread:
    """An OBS-shaped WHIP publisher on its own event loop, for a synchronous (Playwright) test."""

    def __init__(self, base_url: str, stream: str) -> None:
        self.base_url, self.stream = base_url, stream
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.publisher: ObsLikePublisher | None = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self, **query: str) -> None:
        async def go() -> None:
            self.publisher = ObsLikePublisher(self.base_url, width=128, height=96, fps=15)
            async with httpx.AsyncClient(base_url=self.base_url, timeout=20) as http:
                path = f"/whip/{self.stream}?" + "&".join(f"{k}={v}" for k, v in query.items())
                reply = await self.publisher.publish(http, path)
                assert reply.status_code == 201, reply.text
            async with asyncio.timeout(15):
                await self.publisher.connected.wait()

        self._run(go())

    def stop(self) -> None:
        async def go() -> None:
            if self.publisher is not None:
                async with httpx.AsyncClient(base_url=self.base_url, timeout=20) as http:
                    if self.publisher.location:
                        await http.delete(self.publisher.location)
                await self.publisher.close()
                self.publisher = None

        self._run(go())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def publisher(server_factory: Callable[..., LiveServer]) -> Iterator[tuple[LiveServer, PublisherThread]]:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0), transports=[WhipTransport])
    pub = PublisherThread(server.url, "cam1")
    yield server, pub
    pub.close()


def grab(page: Any) -> np.ndarray | None:
    shot = page.evaluate(GRAB_JS)
    if shot is None:
        return None
    return np.array(shot["data"], np.uint8).reshape(shot["h"], shot["w"], 4)[..., :3]


def stamps(page: Any, count: int, within: float = 15.0) -> list[int]:
    """Read the stamp index of the shown frame until `count` distinct readable ones were seen."""
    seen: list[int] = []
    deadline = time.monotonic() + within
    while len(seen) < count and time.monotonic() < deadline:
        frame = grab(page)
        index = read_stamp(frame) if frame is not None else None
        if index is not None and (not seen or index != seen[-1]):
            seen.append(index)
        page.wait_for_timeout(100)
    return seen


def test_view_page_plays_the_stream(browser: Any, publisher: tuple[LiveServer, PublisherThread]) -> None:
    server, pub = publisher
    page = browser.new_page()
    page.goto(f"{server.url}/view/cam1")
    # Nothing is live yet: the page waits (and keeps asking) without showing anything.
    page.wait_for_function("document.body.dataset.state === 'waiting'", timeout=10_000)

    pub.start(pipeline="passthrough", mirror="true")
    page.wait_for_function("document.body.dataset.state === 'playing'", timeout=20_000)
    page.wait_for_function("window.streamserveView.framesDecoded() > 10", timeout=20_000)
    mirrored = grab(page)
    assert mirrored is not None and mirrored.shape == (96, 128, 3)
    assert read_stamp(mirrored[:, ::-1]) is not None  # the processed (mirrored) output, not the input
    session = server.manager.by_stream("cam1")
    assert session is not None
    httpx.patch(f"{server.url}/v1/streams/cam1", json={"mirror": False}, timeout=5,
                headers={"Authorization": f"Bearer {session.secret}"}).raise_for_status()
    seen = stamps(page, 5)
    assert len(seen) == 5 and seen == sorted(seen), seen  # moving, in order

    # Only the video, on a transparent page, with no controls and no text.
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgba(0, 0, 0, 0)"
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgba(0, 0, 0, 0)"
    assert page.evaluate("document.getElementById('output').controls") is False
    assert page.evaluate("document.body.innerText.trim()") == ""
    assert page.evaluate("document.querySelectorAll('body *:not(script):not([hidden])').length") == 1
    stats = httpx.get(f"{server.url}/v1/streams/cam1", timeout=5).json()
    assert stats["viewers"] == 1
    codec = page.evaluate("""async () => {
      const stats = await window.streamserveView.peer().getStats();  // the codec of the inbound video
      let codecId = null, mime = null;
      stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") codecId = r.codecId; });
      stats.forEach((r) => { if (r.id === codecId) mime = r.mimeType; });
      return mime;
    }""")
    assert codec == "video/VP8"  # what OBS's Linux browser can decode

    # The stream restarts (OBS stops and starts streaming): the page follows by itself.
    pub.stop()
    page.wait_for_function("['retrying', 'waiting', 'connecting'].includes(document.body.dataset.state)",
                           timeout=15_000)
    pub.start(pipeline="passthrough")
    page.wait_for_function("document.body.dataset.state === 'playing'", timeout=20_000)
    assert len(stamps(page, 3)) == 3
    page.close()
