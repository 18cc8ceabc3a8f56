"""The demo page's Record button: records the output on the server, then offers the finished MP4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import httpx

from tests.browser.conftest import CAMERA_SIZE
from tests.conftest import LiveServer


def test_record_button_records_and_offers_the_file(live_server: LiveServer, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(f"{live_server.url}/?pipeline=passthrough&width={CAMERA_SIZE}&height={CAMERA_SIZE}")
    page.wait_for_selector("#start:not([disabled])", timeout=60_000)  # /v1/pipelines imports torch once
    assert page.is_disabled("#record")  # no session yet
    page.click("#start")
    page.wait_for_selector("#status[data-state=live]", timeout=20_000)
    page.wait_for_selector("#record:not([disabled])", timeout=10_000)
    page.click("#record")
    page.wait_for_selector("#record[data-recording='1']", timeout=10_000)
    assert "recording" in (page.text_content("#recording-info") or "")
    page.wait_for_timeout(2000)
    page.click("#record")
    page.wait_for_selector("#recording-link:not([hidden])", timeout=20_000)
    info = page.text_content("#recording-info") or ""
    href = page.get_attribute("#recording-link", "href")
    assert href and "/recording?token=" in href and "frames" in info  # the session's secret, for the link
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        assert http.get(href.split("?")[0]).status_code == 401  # without it the file is not anyone's
        download = http.get(href)
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    path = tmp_path / "recorded.mp4"
    path.write_bytes(download.content)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 20 and frames[0].shape[:2] == (CAMERA_SIZE, CAMERA_SIZE)  # ~30 fps for 2 s
    assert int(info.split()[0]) == len(frames)
    page.click("#stop")
