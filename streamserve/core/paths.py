"""Where the static web demo lives, from a source checkout or an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path


def web_demo_dir() -> Path:
    """The `web_demo/` folder: `$STREAMSERVE_WEB_DEMO`, else the checkout's folder beside `streamserve/`."""
    override = os.environ.get("STREAMSERVE_WEB_DEMO")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent  # .../streamserve/core
    for candidate in (here.parent.parent / "web_demo", here.parent / "web_demo"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "web_demo/ not found beside the streamserve package; set STREAMSERVE_WEB_DEMO to its folder"
    )
