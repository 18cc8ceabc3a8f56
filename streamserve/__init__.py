"""streamserve: a real-time generation server for live video and voice.

The package root stays import-light; the composition root is :mod:`streamserve.server`.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# The subpackages live in top-level folders of the repository (`pipelines/` is imported as
# `streamserve.pipelines`, and so on), mapped by pyproject's `package-dir`. Installed (wheel or
# editable finder) they resolve through that mapping. But when Python runs with the checkout itself on
# sys.path (`python -m streamserve...` from the repository root), this folder is found as a plain
# package and the mapping is bypassed; let the subpackage search look in the checkout as well.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_checkout, "kv_rolling", "__init__.py")
):
    __path__.append(_checkout)
