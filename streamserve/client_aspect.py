"""Give a file converted by `streamserve client` its input's size and aspect ratio back.

A pipeline may render at its own resolution (the video pipeline works at its model size, 256x256 for
the demo model) and fits an input of another shape by its `resize` parameter; with the default,
`letterbox`, a 320x240 input comes back as 256x256 with black bars. `restore_aspect` undoes that
on the client: it cuts the picture out of the bars (the same centred geometry the server used) and
scales it to the input's size. `stretch` is undone by scaling alone. `crop` cannot be undone (the
edges were cut before the model saw them): that output is kept as the model made it.
"""

from __future__ import annotations

import av
import numpy as np


def content_box(out_w: int, out_h: int, in_w: int, in_h: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of an in_w x in_h picture letterboxed into out_w x out_h, as
    `pipelines.video.resize.fit_frame` places it (scaled to fit, centred, rounded)."""
    scale = min(out_w / in_w, out_h / in_h)
    w, h = max(1, round(in_w * scale)), max(1, round(in_h * scale))
    return (out_w - w) // 2, (out_h - h) // 2, w, h


def restore_aspect(rgb: np.ndarray, in_w: int, in_h: int, resize: str = "letterbox") -> np.ndarray:
    """rgb [H, W, 3] uint8 of the pipeline's size -> [in_h, in_w, 3] (or unchanged for `crop`)."""
    out_h, out_w = rgb.shape[:2]
    if (out_w, out_h) == (in_w, in_h) or resize == "crop":
        return rgb
    if resize == "letterbox":
        left, top, w, h = content_box(out_w, out_h, in_w, in_h)
        rgb = rgb[top : top + h, left : left + w]
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=in_w, height=in_h, interpolation="BILINEAR").to_ndarray(format="rgb24")
