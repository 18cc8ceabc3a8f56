"""How complex an SDP offer may be, checked on the raw text before anything parses it.

An offer is the one thing an anonymous client sends that makes the server build objects per line:
aiortc creates a transceiver (and an ICE/DTLS transport when not bundled) per m-line and an ICE
candidate pair per remote candidate. Unbounded, a 62 KB offer with 900 m-lines took 2 s, blocked the
event loop for 1.5 s and produced a 900 KB answer. `check_offer_text` counts lines in one pass over
the text (microseconds for the largest allowed offer) and refuses an offer past any limit, naming it:
413 for the size, 400 for the rest. The defaults fit every real client with room to spare: a
browser's audio + video + data offer has 3 m-lines and 60-150 lines.
"""

from __future__ import annotations

import dataclasses

from streamserve.core.errors import BadRequest, StreamserveError

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class OfferTooLarge(StreamserveError):
    """The offer is bigger than `OfferLimits.max_bytes` (HTTP 413)."""

    status = 413
    code = "too_large"


class OfferTooComplex(BadRequest):
    """The offer has more m-lines, candidates or lines than `OfferLimits` allows (HTTP 400)."""

    code = "offer_too_complex"


@dataclasses.dataclass(frozen=True, slots=True)
class OfferLimits:
    """Ceilings on an SDP offer. Each is checked on the raw text, before parsing."""

    max_bytes: int = 64 * 1024  # UTF-8 bytes of the whole offer
    max_lines: int = 1000  # every line (attribute lines included)
    max_line_bytes: int = 4096  # one line
    max_media: int = 8  # m-lines (audio, video, application)
    max_candidate_lines: int = 256  # a=candidate lines, over all m-lines (duplicates included)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"OfferLimits.{field.name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = OfferLimits()


def check_offer_text(sdp: str, limits: OfferLimits = DEFAULT_LIMITS) -> None:
    """Raise OfferTooLarge / OfferTooComplex if `sdp` is past a limit. Linear in len(sdp)."""
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise OfferTooLarge(f"SDP offer of {size} bytes exceeds the limit of {limits.max_bytes} bytes")
    lines = sdp.splitlines()
    media = candidates = longest = 0
    for line in lines:
        longest = max(longest, len(line))
        if line.startswith("m="):
            media += 1
        elif line.startswith("a=candidate:"):
            candidates += 1
    if media > limits.max_media:
        raise OfferTooComplex(f"SDP offer has {media} m-lines; the limit is {limits.max_media}")
    if candidates > limits.max_candidate_lines:
        raise OfferTooComplex(f"SDP offer has {candidates} candidate lines; the limit is "
                              f"{limits.max_candidate_lines}")
    if len(lines) > limits.max_lines:
        raise OfferTooComplex(f"SDP offer has {len(lines)} lines; the limit is {limits.max_lines}")
    if longest > limits.max_line_bytes:
        raise OfferTooComplex(f"SDP offer has a line {longest} characters long; the limit is "
                              f"{limits.max_line_bytes}")


def with_directions(sdp: str) -> str:
    """`sdp` with an explicit direction attribute in every audio/video m-section.

    RFC 4566 section 6 (and RFC 8866): a media section without `a=sendrecv|sendonly|recvonly|inactive`
    takes the session-level direction, or sendrecv when there is none. aiortc reads only the
    media-level attribute and fails in `createAnswer` (a 500) without it, so the default is written in.
    """
    newline = "\r\n" if "\r\n" in sdp else "\n"
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session_direction = next((line[2:] for line in sections[0] if line[2:] in DIRECTIONS), "sendrecv")
    changed = False
    for section in sections[1:]:
        kind = section[0][2:].split(" ", 1)[0]
        if kind in ("audio", "video") and not any(line[2:] in DIRECTIONS for line in section[1:]):
            section.insert(1, f"a={session_direction}")
            changed = True
    if not changed:
        return sdp
    return newline.join(line for section in sections for line in section) + newline
