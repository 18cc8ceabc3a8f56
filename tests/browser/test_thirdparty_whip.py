"""A third-party WHIP client, `@eyevinn/whip-web-client` (npm, bundled in tests/browser/thirdparty),
publishes from Chromium's camera to the server cross-origin, with a bearer token and trickle ICE
(CORS preflight, `ETag` on PATCH), and ends with its own DELETE."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamserve.core.config import ServerConfig
from tests.conftest import LiveServer

BUNDLE = Path(__file__).with_name("thirdparty") / "eyevinn-whip-web-client.js"
TOKEN = "eyevinn-secret"
PAGE = """<!doctype html><meta charset="utf-8"><video id="v" autoplay muted playsinline></video>
<script src="whip.js"></script>
<script>
window.publish = async (endpoint, authkey) => {
  const client = new WHIPClient({endpoint, opts: {debug: false, authkey, iceServers: []}});
  await client.setIceServersFromEndpoint();
  const media = await navigator.mediaDevices.getUserMedia({video: {width: 256, height: 256}, audio: false});
  document.getElementById("v").srcObject = media;
  await client.ingest(media);
  window.client = client;
  return await client.getResourceUrl();
};
window.unpublish = async () => { await window.client.destroy(); return true; };
</script>"""


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[str]:
    """The client's page on a second local HTTP server: another origin than the streamserve server."""
    shutil.copy(BUNDLE, tmp_path / "whip.js")
    (tmp_path / "index.html").write_text(PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(5)


def test_eyevinn_whip_web_client_publishes_cross_origin(server_factory: Callable[..., LiveServer], browser: Any,
                                                        other_origin: str) -> None:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(TOKEN,)))
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{other_origin}/index.html")
    resource = page.evaluate("([e, k]) => window.publish(e, k)", [f"{server.url}/whip/eyevinn", TOKEN])
    assert resource.startswith(f"{server.url}/whip/eyevinn/"), resource  # read from the exposed Location
    with httpx.Client(base_url=server.url, timeout=10) as http:
        deadline = time.monotonic() + 30
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            reply = http.get("/v1/streams/eyevinn")
            stats = reply.json() if reply.status_code == 200 else {}
            if stats.get("frames_in", 0) >= 30:
                break
            page.wait_for_timeout(250)
        assert stats.get("frames_in", 0) >= 30, stats
        assert page.evaluate("window.unpublish()") is True  # the library's own DELETE, cross-origin
        assert http.get("/v1/streams/eyevinn").status_code == 404
    assert not [e for e in errors if "CORS" in e or "blocked" in e], errors
