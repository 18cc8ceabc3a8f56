"""The demo page follows a drain in real Chromium: its session moves to another cluster node and the
output video keeps playing (the page re-negotiates with the node named by the `migrate` event).

A local Ray cluster (two node servers, one per module as in tests/cluster) runs the passthrough
pipeline; the page is opened on node-0, starts a session there, and node-0 is drained. Measured on
the page: output frames presented (``requestVideoFrameCallback``) before and after the move, and the
camera stamp read from the output picture (the frames after the move are live camera frames).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from streamserve.core.config import ServerConfig
from streamserve.transport.probe import read_stamp
from tests.browser.test_video_page import decode

ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")

from streamserve.cluster.launch import Cluster, start_cluster  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = 256

# When each output frame is presented (performance.now() of its requestVideoFrameCallback).
COUNT_JS = """
(() => {
  const video = document.getElementById("output");
  const seen = (window.__frames = []);
  const onFrame = (now) => {
    seen.push(now);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
})();
"""

GRAB_OUTPUT_JS = f"""
() => {{
  const video = document.getElementById("output");
  const canvas = Object.assign(document.createElement("canvas"), {{width: {SIZE}, height: {SIZE}}});
  canvas.getContext("2d").drawImage(video, 0, 0, {SIZE}, {SIZE});
  return canvas.toDataURL("image/png");
}}
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        c = start_cluster(ServerConfig(pipeline="passthrough", port=0, max_sessions=4, idle_timeout_s=30),
                          nodes=2, local=True)
        try:
            yield c
        finally:
            c.stop()
    finally:
        ray.shutdown()


def stamp_of(page: Any) -> int | None:
    return read_stamp(decode(page.evaluate(GRAB_OUTPUT_JS)))


def sessions(c: Cluster) -> dict[str, int]:
    return {ld["node_id"]: ld["sessions"] for ld in ray.get(c.director.loads.remote())}


def test_demo_page_renegotiates_when_its_node_drains(cluster: Cluster, browser: Any, record_property: Any) -> None:
    c = cluster
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.goto(f"{c.urls['node-0']}/?pipeline=passthrough&width={SIZE}&height={SIZE}")
    page.wait_for_selector("#start:not([disabled])", timeout=20_000)
    page.evaluate(COUNT_JS)
    page.click("#start")
    page.wait_for_selector("#status[data-state=live]", timeout=30_000)
    page.wait_for_function("window.__frames.length >= 30", timeout=30_000)
    first_status = page.text_content("#status") or ""
    assert sessions(c) == {"node-0": 1, "node-1": 0}
    before = stamp_of(page)
    assert before is not None, "the output shows no camera stamp"

    drained_at = page.evaluate("performance.now()")
    ended = ray.get(c.director.drain.remote("node-0"), timeout=60)
    assert len(ended) == 1
    # The page re-negotiates with node-1 (a new session there, resumed from the moved history).
    page.wait_for_function(
        "(t) => document.querySelector('#status').dataset.state === 'live' && "
        "window.__frames.filter((f) => f > t).length >= 60", arg=drained_at, timeout=60_000)
    after_status = page.text_content("#status") or ""
    assert after_status.startswith("Live") and after_status != first_status  # another session id
    assert sessions(c) == {"node-0": 0, "node-1": 1}
    # Frames keep coming after the move, and they are live camera frames (the stamp moves on).
    frames = page.evaluate("window.__frames")
    after = [t for t in frames if t > drained_at]
    gap = max(np.diff([drained_at, *after]))  # the longest wait for a frame from the drain on: the outage
    stamps = []
    for _ in range(3):
        stamps.append(stamp_of(page))
        page.wait_for_timeout(300)
    assert all(s is not None for s in stamps) and len(set(stamps)) >= 2, stamps
    rate = (len(after) - 1) / ((after[-1] - after[0]) / 1000.0)
    record_property("migration_outage_ms", round(float(gap), 1))
    record_property("fps_after_move", round(rate, 1))
    print(f"demo page migration: longest frame gap {gap:.0f} ms from the drain on, {rate:.1f} fps after the "
          f"move ({len(frames) - len(after)} frames before)")
    assert rate > 5.0, f"{rate:.1f} fps after the move"
    errors = [line for line in console if line.startswith("error")]
    assert not errors, errors
    page.close()
