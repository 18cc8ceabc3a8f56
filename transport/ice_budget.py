"""How many remote ICE candidates a peer connects to, and how fast a client may add them.

Every remote candidate becomes candidate pairs that aioice checks with STUN requests, so a client
that lists hundreds of addresses makes the server send connectivity checks to hosts of the client's
choosing (before the cap: 865 checks to 283 host:ports in 6 s from one 18 KB offer). A peer keeps at
most `max_candidates` distinct remote addresses (transport, host, port), the offer's and the trickled
ones together: from the offer, the highest-priority addresses win (host, then server-reflexive, then
relay, as every client orders them), and the other lines are removed before aiortc sees the offer;
trickled candidates past the cap are ignored. Trickling is also rate-limited (a token bucket of
`max_candidates` tokens refilled at `trickle_per_s`): past it, `TooManyCandidates` (HTTP 429).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from aiortc import RTCIceCandidate

from streamserve.core.errors import StreamserveError

log = logging.getLogger(__name__)


class TooManyCandidates(StreamserveError):
    """Candidates trickled faster than the peer's rate limit (HTTP 429)."""

    status = 429
    code = "too_many_candidates"


@dataclasses.dataclass(frozen=True, slots=True)
class CandidateLimits:
    max_candidates: int = 16  # distinct remote addresses per peer (offer + trickle)
    trickle_per_s: float = 8.0  # sustained rate of trickled candidates; bursts up to max_candidates

    def __post_init__(self) -> None:
        if not 1 <= self.max_candidates <= 1000:
            raise ValueError(f"max_candidates must be in [1, 1000], got {self.max_candidates}")
        if not 0.1 <= self.trickle_per_s <= 1000:
            raise ValueError(f"trickle_per_s must be in [0.1, 1000], got {self.trickle_per_s}")


def _address(line: str) -> tuple[tuple[str, str, str], int] | None:
    """((transport, host, port), priority) of an `a=candidate:` line; None if it does not parse."""
    fields = line[len("a=candidate:"):].split()
    if len(fields) < 6 or not fields[3].isdigit():
        return None
    return (fields[2].lower(), fields[4].lower(), fields[5]), int(fields[3])


class CandidateBudget:
    """One peer's remote-candidate allowance. Not thread-safe (event-loop use only)."""

    def __init__(self, limits: CandidateLimits | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or CandidateLimits()
        self._clock = clock
        self._addresses: set[tuple[str, str, str]] = set()
        self._tokens = float(self.limits.max_candidates)
        self._refilled = clock()
        self.ignored = 0  # candidates past the cap (offer lines and trickled)

    @property
    def used(self) -> int:
        return len(self._addresses)

    def filter_offer(self, sdp: str) -> str:
        """`sdp` without the candidate lines past the cap (kept: the highest-priority addresses)."""
        best: dict[tuple[str, str, str], int] = {}
        for line in sdp.splitlines():
            if line.startswith("a=candidate:") and (parsed := _address(line)) is not None:
                address, priority = parsed
                best[address] = max(priority, best.get(address, -1))
        room = self.limits.max_candidates - len(self._addresses)
        ranked = sorted(best, key=lambda a: best[a], reverse=True)
        keep = self._addresses | set(ranked[:max(0, room)])
        if len(best) <= room:
            self._addresses = keep
            return sdp
        newline = "\r\n" if "\r\n" in sdp else "\n"
        out = []
        for line in sdp.splitlines():
            parsed = _address(line) if line.startswith("a=candidate:") else None
            if parsed is not None and parsed[0] not in keep:
                self.ignored += 1
                continue
            out.append(line)
        log.info("offer lists %d remote addresses; using the %d of highest priority (limit %d)",
                 len(best), len(keep), self.limits.max_candidates)
        self._addresses = keep
        return newline.join(out) + newline

    def admit(self, candidate: RTCIceCandidate) -> bool:
        """Whether to use a trickled candidate. Raises TooManyCandidates past the rate limit."""
        now = self._clock()
        cap = float(self.limits.max_candidates)
        self._tokens = min(cap, self._tokens + (now - self._refilled) * self.limits.trickle_per_s)
        self._refilled = now
        if self._tokens < 1.0:
            raise TooManyCandidates(f"more than {self.limits.trickle_per_s:g} candidates per second "
                                    f"(bursts of {self.limits.max_candidates}); slow down")
        self._tokens -= 1.0
        address = (candidate.protocol.lower(), candidate.ip.lower(), str(candidate.port))
        if address in self._addresses:
            return True
        if len(self._addresses) >= self.limits.max_candidates:
            self.ignored += 1
            return False
        self._addresses.add(address)
        return True
