"""A datagram-dropping UDP relay on 127.0.0.1 between one WebRTC client and the server.

`LossyRelay` owns two sockets: `client_side` (announced to the client as the server's only ICE
candidate) and `server_side` (announced to the server as the client's only candidate). Whatever the
client sends to `client_side` goes out of `server_side` to the server's real address, and back the
same way, so every datagram (STUN, DTLS, SRTP, SCTP) of the session crosses the relay. Each direction
drops datagrams at its own loss rate, drawn from a seeded RNG (repeatable), and `outage()` drops
everything for a while (a burst); `cut()` drops everything for good (a client that vanished).

`relay_offer` / `relay_answer` rewrite the SDP candidates so the peers find each other only through
the relay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
from collections.abc import Callable

_CANDIDATE = re.compile(r"^a=candidate:.*$\r?\n?", re.M)
_END = "a=end-of-candidates"


@dataclasses.dataclass
class Direction:
    """Counters and the loss rate of one direction."""

    loss: float = 0.0
    forwarded: int = 0
    dropped: int = 0


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_datagram(data, addr)


class LossyRelay:
    """Relays one client <-> server UDP path with independent loss per direction."""

    def __init__(self, *, seed: int = 1, up_loss: float = 0.0, down_loss: float = 0.0) -> None:
        self.up = Direction(up_loss)  # client -> server
        self.down = Direction(down_loss)  # server -> client
        self._rng = random.Random(seed)
        self._client_side: _Side | None = None
        self._server_side: _Side | None = None
        self._client_addr: tuple[str, int] | None = None
        self.server_addr: tuple[str, int] | None = None  # the server's real candidate
        self._outage_until = 0.0
        self._cut = False

    async def start(self) -> LossyRelay:
        loop = asyncio.get_running_loop()
        for name, handler in (("_client_side", self._from_client), ("_server_side", self._from_server)):
            transport, side = await loop.create_datagram_endpoint(lambda h=handler: _Side(h),  # type: ignore[misc]
                                                                  local_addr=("127.0.0.1", 0))
            side.transport = transport
            setattr(self, name, side)
        return self

    @property
    def client_side(self) -> tuple[str, int]:
        assert self._client_side is not None and self._client_side.transport is not None
        return self._client_side.transport.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    @property
    def server_side(self) -> tuple[str, int]:
        assert self._server_side is not None and self._server_side.transport is not None
        return self._server_side.transport.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    def set_loss(self, up: float, down: float) -> None:
        self.up.loss, self.down.loss = up, down

    def outage(self, seconds: float) -> None:
        """Drop every datagram, both ways, for `seconds` from now."""
        self._outage_until = time.monotonic() + seconds

    def cut(self) -> None:
        """Drop everything from now on: the client vanished (no DTLS close reaches the server)."""
        self._cut = True

    def close(self) -> None:
        for side in (self._client_side, self._server_side):
            if side is not None and side.transport is not None:
                side.transport.close()

    def _passes(self, direction: Direction) -> bool:
        blocked = self._cut or time.monotonic() < self._outage_until
        if blocked or (direction.loss > 0 and self._rng.random() < direction.loss):
            direction.dropped += 1
            return False
        direction.forwarded += 1
        return True

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self._client_addr = addr
        if self.server_addr is not None and self._server_side is not None and self._passes(self.up):
            assert self._server_side.transport is not None
            self._server_side.transport.sendto(data, self.server_addr)

    def _from_server(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._client_addr is not None and self._client_side is not None and self._passes(self.down):
            assert self._client_side.transport is not None
            self._client_side.transport.sendto(data, self._client_addr)


def _only_candidate(sdp: str, host: str, port: int) -> str:
    """`sdp` with every candidate replaced by one host candidate at host:port (per m-section)."""
    line = f"a=candidate:relay0 1 udp 2130706431 {host} {port} typ host\r\n"
    out = []
    for section in re.split(r"(?=^m=)", sdp, flags=re.M):
        if section.startswith("m="):
            section = _CANDIDATE.sub("", section)
            if _END in section:
                section = section.replace(_END, line + _END, 1)
            else:
                section = section.rstrip("\r\n") + "\r\n" + line
        out.append(section)
    return "".join(out)


def first_candidate(sdp: str) -> tuple[str, int]:
    """The address of the first IPv4 UDP host candidate in `sdp`."""
    for match in re.finditer(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", sdp, re.M):
        if ":" not in match.group(1):
            return match.group(1), int(match.group(2))
    raise ValueError("no IPv4 host candidate in the SDP")


def relay_offer(relay: LossyRelay, sdp: str) -> str:
    """The client's offer as the server should see it: the client is at the relay's server side."""
    return _only_candidate(sdp, *relay.server_side)


def relay_answer(relay: LossyRelay, sdp: str) -> str:
    """The server's answer as the client should see it; remembers where the server really is."""
    relay.server_addr = first_candidate(sdp)
    return _only_candidate(sdp, *relay.client_side)
