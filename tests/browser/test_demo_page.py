"""The demo page in real Chromium: fake camera in, passthrough over WebRTC, output read back from the page.

Each camera frame carries its index as big black/white cells (see `streamserve.transport.probe`). A probe
script samples both `<video>` elements on every presented frame (requestVideoFrameCallback -> canvas)
and decodes the index, so the test can check that frames flow, in order, at >= 80% of the camera
rate, and measure glass-to-glass latency: when index i is shown as output minus when it was shown
as the local preview. The test also drives a live parameter change through the page's controls and
saves a screenshot (the README's docs/demo.png with STREAMSERVE_UPDATE_DOCS=1).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from streamserve.transport.probe import read_stamp, unwrap
from tests.browser.conftest import CAMERA_FPS, CAMERA_FRAMES, CAMERA_SIZE
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "demo.png"
# The README screenshot is rewritten only when asked (STREAMSERVE_UPDATE_DOCS=1), so a test run
# leaves the checkout clean; otherwise the screenshot goes to the test's temporary folder.
UPDATE_DOCS = os.environ.get("STREAMSERVE_UPDATE_DOCS") == "1"
MEASURE_S = 5.0

# Reads the same 24-bit code as streamserve.transport.probe.read_stamp, from a 64x64 downscale.
PROBE_JS = """
(() => {
  const ROWS = 3, COLS = 8, BITS = 12, MOD = 1 << BITS, N = 64;
  const probe = (window.__probe = {local: [], output: [], unreadable: {local: 0, output: 0}});
  function read(ctx) {
    const d = ctx.getImageData(0, 0, N, N).data;
    let value = 0;
    for (let bit = 0; bit < ROWS * COLS; bit++) {
      const r = Math.floor(bit / COLS), c = bit % COLS;
      const y = Math.floor(N * (5 / 8 + (r + 0.5) / 8)), x = Math.floor((N * (c + 0.5)) / COLS);
      let sum = 0;
      for (let dy = -1; dy <= 1; dy++)
        for (let dx = -1; dx <= 1; dx++) {
          const o = 4 * ((y + dy) * N + (x + dx));
          sum += d[o] + d[o + 1] + d[o + 2];
        }
      if (sum / 27 > 127) value |= 1 << bit;
    }
    const index = value & (MOD - 1), check = value >>> BITS;
    return check === (~index & (MOD - 1)) ? index : null;
  }
  for (const id of ["local", "output"]) {
    const video = document.getElementById(id);
    const canvas = Object.assign(document.createElement("canvas"), {width: N, height: N});
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    const onFrame = (now, meta) => {
      if (video.videoWidth) {
        ctx.drawImage(video, 0, 0, N, N);
        const index = read(ctx);
        if (index === null) probe.unreadable[id]++;
        else probe[id].push([index, meta.expectedDisplayTime, meta.width, meta.height, meta.presentedFrames,
                             meta.captureTime ?? null]);
      }
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
})();
"""


# The page's own receive counters for the output video (getStats inbound-rtp).
DECODED_JS = """
async () => {
  let out = null;
  (await window.streamserve.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") out = {decoded: s.framesDecoded, dropped: s.framesDropped};
  });
  return out;
}
"""


def unwrapped(samples: list[list[float]]) -> list[tuple[int, float]]:
    """(index counted from the camera's start, display time ms) with the file's loops unwrapped."""
    out: list[tuple[int, float]] = []
    previous: int | None = None
    for index, shown, *_ in samples:
        previous = unwrap(int(index), previous, CAMERA_FRAMES)
        out.append((previous, shown))
    return out


def glass_to_glass_ms(local: list[list[Any]], output: list[list[Any]]) -> list[float]:
    """Per output frame: when it is shown minus when the camera captured it (ms).

    The capture time is the local preview's `captureTime` for the same index (its display time where
    the browser gives no capture time), the latest one before the output was shown: the camera file
    loops, so an index comes round again every few seconds.
    """
    captured: dict[int, list[float]] = {}
    for index, shown, _w, _h, _presented, capture in local:
        captured.setdefault(int(index), []).append(capture if capture is not None else shown)
    latencies = []
    for index, shown, *_ in output:
        earlier = [t for t in captured.get(int(index), []) if t <= shown]
        if earlier and shown - max(earlier) < 1000 * CAMERA_FRAMES / CAMERA_FPS / 2:
            latencies.append(shown - max(earlier))
    return latencies


def save_screenshot(page: Any, path: Path, attempts: int = 3) -> None:
    """docs/demo.png, with both videos paused. Headless screenshots of video now and then show a
    stale output frame (10 frames behind what the page measures), which would misstate the latency:
    read both frames' indices off the picture and keep the attempt where they are closest."""
    import cv2

    best: tuple[int, bytes] | None = None
    for _ in range(attempts):
        page.evaluate("document.querySelectorAll('video').forEach((v) => v.pause())")
        png = page.screenshot()
        page.evaluate("document.querySelectorAll('video').forEach((v) => v.play())")
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None, "the screenshot is not a PNG"
        image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
        shown = []
        for selector in ("#local", "#output"):
            box = page.locator(selector).bounding_box()
            x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
            shown.append(read_stamp(image[y : y + h, x : x + w]))
        local, output = shown
        lag = (local - output) % CAMERA_FRAMES if local is not None and output is not None else CAMERA_FRAMES
        if best is None or lag < best[0]:
            best = (lag, png)
        if lag <= 2:
            break
        page.wait_for_timeout(2_000)  # let the overlay's once-a-second figures recover from the pause
    assert best is not None
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(best[1])


def active_sessions(http: httpx.Client) -> float:
    values = re.findall(r"^streamserve_active_sessions\{[^}]*\} (\S+)$", http.get("/metrics").text, re.M)
    return sum(float(v) for v in values)


def test_demo_page_streams_in_order_and_measures_latency(
    live_server: LiveServer, browser: Any, record_property: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.goto(f"{live_server.url}/?pipeline=passthrough&width={CAMERA_SIZE}&height={CAMERA_SIZE}")

    # The picker and the parameter form come from GET /v1/pipelines.
    page.wait_for_selector("#start:not([disabled])", timeout=10_000)
    options = page.eval_on_selector_all("#pipeline option", "els => els.map(e => e.value)")
    assert "passthrough" in options and page.input_value("#pipeline") == "passthrough"
    assert page.is_visible("#params input[name=mirror][type=checkbox]")

    page.evaluate(PROBE_JS)
    page.click("#start")
    page.wait_for_selector("#status[data-state=live]", timeout=20_000)
    page.wait_for_function("window.__probe.output.length >= 10", timeout=20_000)
    start = page.evaluate("window.__probe.output.length")
    decoded_before = page.evaluate(DECODED_JS)
    page.wait_for_timeout(MEASURE_S * 1000)
    probe = page.evaluate("window.__probe")
    decoded_after = page.evaluate(DECODED_JS)

    # Frames flow, in order, at >= 80% of the camera rate.
    output = unwrapped(probe["output"][start:])
    indices = [i for i, _ in output]
    assert len(indices) > MEASURE_S * CAMERA_FPS * 0.5, f"only {len(indices)} output frames; {console}"
    # Never backwards. Chromium's file camera itself sends a frame twice now and then (always the
    # file's first frame when it loops), so a rare repeat is the camera's; the aiortc integration
    # test checks the server path for strictly increasing indices.
    assert all(b >= a for a, b in zip(indices, indices[1:], strict=False)), f"out of order: {indices}"
    repeats = [a for a, b in zip(indices, indices[1:], strict=False) if a == b]
    assert len(repeats) <= 3, f"frames repeated: {repeats} in {indices}"
    span_frames = indices[-1] - indices[0]
    span_s = (output[-1][1] - output[0][1]) / 1000
    # The fraction of the camera's frames the page presented: `presentedFrames` counts every frame
    # composited, also those whose callback the busy page missed; `read` counts frames the probe
    # actually read back (a lower bound).
    presented = probe["output"][-1][4] - probe["output"][start][4]
    delivered = presented / span_frames
    read = (len(set(indices)) - 1) / span_frames
    camera_fps = span_frames / span_s
    decoded = {k: decoded_after[k] - decoded_before[k] for k in decoded_after}  # for diagnosis
    stats = page.evaluate("window.streamserve.serverStats")
    assert delivered >= 0.8 and read >= 0.6, (
        f"presented {delivered:.2f}, read back {read:.2f} of the camera's {span_frames} frames; "
        f"browser decoded {decoded}; server: {stats}")
    assert camera_fps > 0.8 * CAMERA_FPS

    # Glass to glass: captured by the camera -> shown as output, per frame index.
    latencies = glass_to_glass_ms(probe["local"], probe["output"][start:])
    assert len(latencies) > len(indices) // 2
    p50, p95 = np.percentile(latencies, 50), np.percentile(latencies, 95)
    assert p50 < 1000, f"glass-to-glass p50 {p50:.0f} ms"
    width, height = probe["output"][-1][2:4]
    summary = (f"browser demo: {len(indices)} frames read in {span_s:.1f} s; presented {delivered:.1%} "
               f"(read back {read:.1%}) of the {camera_fps:.1f} fps camera ({width}x{height}); "
               f"glass-to-glass p50 {p50:.0f} ms, p95 {p95:.0f} ms; decoded {decoded}")
    print(f"{summary}; repeats {repeats}")
    for name, value in [("delivered_ratio", round(delivered, 3)), ("read_back_ratio", round(read, 3)),
                        ("camera_fps", round(camera_fps, 1)),
                        ("glass_to_glass_p50_ms", round(p50, 1)), ("glass_to_glass_p95_ms", round(p95, 1))]:
        record_property(name, value)

    # The stats overlay shows both sides: getStats (client) and the control channel (server).
    page.wait_for_function("document.getElementById('stats').textContent.includes('server  in')",
                           timeout=5_000)
    stats_text = page.text_content("#stats") or ""
    assert "output  " in stats_text and "fps" in stats_text
    assert "tier    0/6: 30.0 fps · requested quality" in stats_text  # the scheduler's tier (of 7) and why
    save_screenshot(page, SCREENSHOT if UPDATE_DOCS else tmp_path / "demo.png")

    # A live parameter change through the page's control: mirrored frames stop reading as codes.
    session_id = page.evaluate("window.streamserve.sessionId")
    owner = {"Authorization": f"Bearer {page.evaluate('window.streamserve.sessionSecret')}"}  # the page's own
    before = page.evaluate("window.__probe.unreadable.output")
    page.check("#params input[name=mirror]")
    page.wait_for_function(f"window.__probe.unreadable.output > {before} + 10", timeout=5_000)
    with httpx.Client(base_url=live_server.url, timeout=5, headers=owner) as http:
        assert http.get(f"/v1/sessions/{session_id}").json()["params"]["mirror"] is True
        page.uncheck("#params input[name=mirror]")
        readable = page.evaluate("window.__probe.output.length")
        page.wait_for_function(f"window.__probe.output.length > {readable} + 10", timeout=5_000)

        # Stop ends the session on the server, and /metrics agrees.
        page.click("#stop")
        deadline = time.monotonic() + 5
        while http.get(f"/v1/sessions/{session_id}").status_code != 404:
            assert time.monotonic() < deadline, "the session outlived the Stop button"
            time.sleep(0.05)
        assert active_sessions(http) == 0
    errors = [line for line in console if line.startswith("error")]
    assert not errors, errors


def test_demo_page_reports_a_bad_pipeline(live_server: LiveServer, browser: Any) -> None:
    """Errors from the offer endpoint reach the page's status line."""
    page = browser.new_page()
    page.goto(f"{live_server.url}/?pipeline=passthrough")
    page.wait_for_selector("#start:not([disabled])", timeout=10_000)
    page.evaluate("""() => {
        const select = document.getElementById('pipeline');
        select.append(new Option('nope', 'nope'));
        select.value = 'nope';
    }""")
    page.click("#start")
    page.wait_for_selector("#status[data-state=error]", timeout=10_000)
    status = page.text_content("#status") or ""
    assert "400" in status and "unknown pipeline 'nope'" in status and "passthrough" in status
    with httpx.Client(base_url=live_server.url, timeout=5) as http:
        assert http.get("/v1/sessions").json() == []
