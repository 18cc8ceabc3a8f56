"""The wheels the GPU check carries to the device machine, and a local stand-in for its image.

The device machine has no network: a package its image lacks travels as a wheel in ``.whl/`` (``make
gpu-wheels``; docs/gpu.md). ``CHECK`` lists what ``benchmarks/gpu_check.sh`` needs beyond the image
(``benchmarks/gpu_image.txt``); ``SERVING`` what the server adds (the serving benchmark's GPU mode).

``--simulate DIR`` builds a folder of links to the distributions of this virtualenv that the image
holds plus the carried ones (package folders, modules and ``.dist-info``). ``python -S`` with only that
folder and the checkout on ``PYTHONPATH`` then sees the device's package set (by name; versions are
this virtualenv's): the dry run (``gpu_check.sh --dry-run``) runs that way, so a new import of a
package the image lacks fails here, in ``make test``, instead of on a GPU.

    python benchmarks/gpu_wheels.py                   # name==version per line (this venv's versions)
    python benchmarks/gpu_wheels.py --serving         # ... plus the server's
    python benchmarks/gpu_wheels.py --simulate DIR    # the stand-in for the image + CHECK
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE_LIST = HERE / "gpu_image.txt"

CHECK = ("diffusers", "uvicorn")  # the Wan model classes; tests/conftest.py imports uvicorn
SERVING = (
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "opentelemetry-api", "websockets", "aiortc", "av", "aioice", "pyee", "pylibsrtp", "cryptography", "cffi",
    "pycparser", "pyopenssl", "google-crc32c", "dnspython", "ifaddr", "soundfile",
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {normalise(line) for line in lines if line and not line.startswith("#")}


def carried(serving: bool = False) -> tuple[str, ...]:
    return CHECK + (SERVING if serving else ())


def requirements(serving: bool = False) -> list[str]:
    """``name==version`` of every carried distribution, at this virtualenv's versions."""
    out = []
    for name in carried(serving):
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed in this virtualenv ({sys.prefix}); cannot pin it") from None
    return out


def _requires(dist: md.Distribution) -> list[str]:
    """Names of the distributions ``dist`` needs here (no extras; markers evaluated for this Python)."""
    from packaging.requirements import InvalidRequirement, Requirement

    names = []
    for line in dist.requires or ():
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(normalise(req.name))
    return names


def simulate(folder: Path, serving: bool = False) -> int:
    """Link the image's and the carried distributions of this virtualenv into ``folder``; returns how many.

    The image's packages come with what *this* virtualenv's versions of them require (on the device
    their own versions' needs are met by the image), so version skew does not pass for a missing
    package; the carried ones come alone, as ``pip install --no-deps`` installs them there."""
    dists: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = normalise(dist.metadata["Name"] or "")
        if name and name != "streamserve":
            dists.setdefault(name, dist)
    todo = [n for n in image_packages() if n in dists]
    allowed = {normalise(n) for n in carried(serving)} | set(todo)
    while todo:
        for dep in _requires(dists[todo.pop()]):
            if dep in dists and dep not in allowed:
                allowed.add(dep)
                todo.append(dep)
    for name in carried(serving):  # pip --no-deps there: say what a carried package declares but lacks
        lacking = [d for d in _requires(dists[normalise(name)]) if d not in allowed] if normalise(name) in dists else []
        if lacking:
            print(f"note: {name} declares {', '.join(lacking)}: neither in the image nor carried", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    linked = 0
    for name in sorted(allowed & dists.keys()):
        dist = dists[name]
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in sorted(tops - {"__pycache__"}):
            src, dst = Path(str(dist.locate_file(top))), folder / top
            if top.endswith(".pth") or not src.exists() or dst.exists():
                continue
            os.symlink(src, dst)
        linked += 1
    return linked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serving", action="store_true", help="also the server's distributions (large: PyAV)")
    p.add_argument("--simulate", metavar="DIR", type=Path, help="build the stand-in for the image in DIR")
    args = p.parse_args(argv)
    if args.simulate:
        n = simulate(args.simulate, args.serving)
        print(f"{args.simulate}: {n} distributions (image list + carried)", file=sys.stderr)
        return 0
    print("\n".join(requirements(args.serving)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
