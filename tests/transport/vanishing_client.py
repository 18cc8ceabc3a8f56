"""A WebRTC client meant to be killed: connects, prints its session id, streams until SIGKILL.

Run as `python -m tests.transport.vanishing_client URL`. Killing the process sends no DTLS close, no
SCTP abort, nothing: exactly a browser tab that lost power or network.
"""

from __future__ import annotations

import asyncio
import sys

from tests.transport.client import Client


async def main(url: str) -> None:
    client = Client(url, width=64, height=64)
    session_id = await client.connect()
    print(session_id, client.session_secret, flush=True)
    await asyncio.Event().wait()  # stream until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
