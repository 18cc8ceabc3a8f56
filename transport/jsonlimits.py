"""JSON from untrusted clients with a nesting limit: deep nesting is a 400 naming the problem, never a
RecursionError (a 500) from the parser or from code walking the result."""

from __future__ import annotations

import json
import re
from typing import Any

from streamserve.core.errors import BadRequest, InvalidParams

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """The deepest nesting of objects/arrays in `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(text: str | bytes, max_depth: int, *, what: str = "JSON") -> Any:
    """`json.loads` with at most `max_depth` levels of nesting. Raises BadRequest naming the problem."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise BadRequest(f"{what} is nested {depth} levels deep; at most {max_depth} are allowed")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None


def loads_object(body: str | bytes, max_depth: int) -> dict[str, Any]:
    """A request body that must be a JSON object of parameters."""
    value = loads(body, max_depth, what="the body")
    if not isinstance(value, dict):
        raise InvalidParams("params", f"the body must be a JSON object of parameters, got {type(value).__name__}")
    return value
