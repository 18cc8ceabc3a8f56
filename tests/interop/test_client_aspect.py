"""`streamserve client -o` gives the input's size and aspect back: undoing the server's letterbox."""

from __future__ import annotations

import numpy as np
import pytest

from streamserve.client_aspect import content_box, restore_aspect
from streamserve.pipelines.video.resize import fit_frame, to_rgb


def picture(h: int, w: int) -> np.ndarray:
    """[h, w, 3] uint8: smooth gradients (no bars of its own), so resampling error stays small."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1).astype(np.uint8)


@pytest.mark.parametrize(("in_size", "model"), [((320, 240), (256, 256)), ((240, 320), (256, 256)),
                                                ((640, 360), (256, 256)), ((200, 200), (320, 192))])
@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_restore_undoes_the_servers_fit(in_size: tuple[int, int], model: tuple[int, int], mode: str) -> None:
    (in_w, in_h), (out_w, out_h) = in_size, model
    source = picture(in_h, in_w)
    served = to_rgb(fit_frame(source, out_w, out_h, mode))  # what the video pipeline makes of it
    assert served.shape == (out_h, out_w, 3)
    restored = restore_aspect(served, in_w, in_h, mode)
    assert restored.shape == (in_h, in_w, 3)
    error = np.abs(restored.astype(np.int16) - source.astype(np.int16))
    assert error.mean() < 4.0 and np.percentile(error, 99) < 40, (error.mean(), np.percentile(error, 99))
    if mode == "letterbox":  # no black bar survives: the edges hold picture
        assert restored[:, :2].mean() > 0 and restored[-2:].mean() > 0 and restored[:2].max() > 0


def test_content_box_and_the_cases_left_alone() -> None:
    assert content_box(256, 256, 320, 240) == (0, 32, 256, 192)
    assert content_box(256, 256, 240, 320) == (32, 0, 192, 256)
    same = picture(48, 64)
    assert restore_aspect(same, 64, 48) is same  # already the input's size
    cropped = picture(256, 256)
    assert restore_aspect(cropped, 320, 240, "crop") is cropped  # edges were cut: nothing to restore
