"""Browser fixtures: Debian's Chromium driven by Playwright, with a generated fake camera.

The tests SKIP when /usr/bin/chromium is missing, unless STREAMSERVE_REQUIRE_BROWSER=1 (CI), where
they FAIL. `playwright install` is never needed: Playwright launches the system Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamserve.transport.probe import BAND_TOP, stamp
from tests.conftest import require_browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
]
CAMERA_SIZE = 256
CAMERA_FPS = 30
CAMERA_FRAMES = 150  # the file loops every 5 s; readers unwrap indices modulo this


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if require_browser():
            pytest.fail(f"STREAMSERVE_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    return CHROMIUM


def _label(image: np.ndarray, index: int) -> np.ndarray:
    """Write `frame N` in big digits above the code band (for people looking at the screenshot)."""
    import cv2

    out = np.ascontiguousarray(image)
    size = out.shape[0]
    cv2.putText(out, f"frame {index:03d}", (size // 16, int(size * 0.55)), cv2.FONT_HERSHEY_SIMPLEX,
                size / 220, (255, 255, 255), max(2, size // 90), cv2.LINE_AA)
    return out


def write_y4m(path: Path, frames: int = CAMERA_FRAMES, size: int = CAMERA_SIZE, fps: int = CAMERA_FPS) -> Path:
    """A 4:2:0 .y4m whose frame i shows the stamp of index i (see streamserve.transport.probe)."""
    import av

    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{size} H{size} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for index in range(frames):
            rgb = stamp(index, size, size)
            band = int(size * BAND_TOP)
            rgb[:band] = _label(rgb[:band], index)
            yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
            out.write(b"FRAME\n")
            for plane, (w, h) in zip(yuv.planes, ((size, size), (size // 2, size // 2), (size // 2, size // 2)),
                                     strict=True):
                data = np.frombuffer(bytes(plane), np.uint8).reshape(h, plane.line_size)[:, :w]
                out.write(data.tobytes())
    return path


@pytest.fixture(scope="session")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_y4m(tmp_path_factory.mktemp("camera") / "stamped.y4m")


@pytest.fixture
def browser(chromium_path: Path, fake_camera: Path) -> Iterator[Any]:
    """A headless Chromium whose camera plays `fake_camera`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(chromium_path),
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={fake_camera}"],
        )
        try:
            yield chromium
        finally:
            chromium.close()
