"""WHIP/WHEP details third-party clients rely on: DELETE after the client closed first, CORS headers
a browser client needs to see, `Allow` on OPTIONS, and TURN servers with credentials (RFC 9725 4.6)
announced in `Link` headers and used by the server's own peer (a real coturn relay when installed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from streamserve.core.config import ServerConfig
from streamserve.core.ports import SessionFactory
from streamserve.transport.whip import WhipTransport
from streamserve.transport.whip_http import ENDED_GRACE_S, ice_link_headers
from tests.conftest import LiveServer
from tests.transport.whip_clients import ObsLikePublisher, WhepViewer

SDP = {"Content-Type": "application/sdp"}


def whip_server(server_factory: Callable[..., LiveServer], **config: object) -> tuple[LiveServer, WhipTransport]:
    built: list[WhipTransport] = []

    def make(sessions: SessionFactory, cfg: ServerConfig) -> WhipTransport:
        built.append(WhipTransport(sessions, cfg))
        return built[-1]

    server = server_factory(ServerConfig(pipeline="passthrough", port=0, **config), transports=[make])  # type: ignore[arg-type]
    return server, built[0]


async def test_delete_after_the_client_closed_its_peer_answers_200_within_the_grace(
        server_factory: Callable[..., LiveServer]) -> None:
    server, transport = whip_server(server_factory)
    assert ENDED_GRACE_S == 60.0  # documented in docs/obs.md
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        publisher, viewer = ObsLikePublisher(server.url), WhepViewer()
        reply = await publisher.publish(http, "/whip/grace")
        assert reply.status_code == 201, reply.text
        async with asyncio.timeout(15):
            await publisher.connected.wait()
        assert (await viewer.watch(http, "/whep/grace")).status_code == 201
        whip_location, whep_location = publisher.location, viewer.location
        assert whip_location and whep_location
        peers = {r.id: r.peer for r in transport.resources.values()}
        # The clients close their peers without a DELETE: the server ends both resources.
        await viewer.close()
        await publisher.close()
        async with asyncio.timeout(15):
            for peer in peers.values():
                await peer.wait_closed()
        assert transport.resources == {}
        # A late DELETE still succeeds, for the publisher's session and the viewer alike.
        assert (await http.delete(whep_location)).status_code == 200
        assert (await http.delete(whip_location)).status_code == 200
        # A resource that never existed, or one under another stream, is still unknown.
        missing = await http.delete("/whip/grace/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert (await http.delete(whip_location.replace("/grace/", "/other/"))).status_code == 404
        # Past the grace period the resource is forgotten.
        transport.ended.grace_s = 0.0
        assert (await http.delete(whip_location)).status_code == 404


async def test_cors_and_allow_headers(server_factory: Callable[..., LiveServer]) -> None:
    server, _ = whip_server(server_factory, ice_servers=("stun:127.0.0.1:3478",))
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        for endpoint in ("/whip/cors", "/whep/cors"):
            reply = await http.options(endpoint, headers={"Origin": "https://player.example",
                                                          "Access-Control-Request-Method": "POST"})
            assert reply.status_code == 204
            assert reply.headers["allow"] == "POST, OPTIONS"
            assert reply.headers["accept-post"] == "application/sdp"
            assert reply.headers.get_list("link") == ['<stun:127.0.0.1:3478>; rel="ice-server"']
            assert int(reply.headers["access-control-max-age"]) >= 600
            exposed = {h.strip() for h in reply.headers["access-control-expose-headers"].split(",")}
            assert {"Location", "ETag", "Link", "Accept-Patch", "Accept-Post", "Allow"} <= exposed
            allowed = {h.strip() for h in reply.headers["access-control-allow-headers"].split(",")}
            assert {"Authorization", "Content-Type", "If-Match", "ETag"} <= allowed
        resource = await http.options("/whip/cors/some-resource")
        assert resource.headers["allow"] == "PATCH, DELETE, OPTIONS"
        assert resource.headers["accept-patch"] == "application/trickle-ice-sdpfrag"
        wrong = await http.get("/whip/cors/some-resource")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "PATCH, DELETE, OPTIONS"
        # A real answer carries the same CORS headers, so a cross-origin script can read Location.
        publisher = ObsLikePublisher(server.url)
        created = await publisher.publish(http, "/whip/cors")
        assert created.status_code == 201
        assert "Location" in created.headers["access-control-expose-headers"]
        await publisher.close()


def test_turn_link_attributes() -> None:
    links = ice_link_headers(("stun:s.example:3478", "turn:t.example:3478?transport=udp"), "alice", "s3cret")
    assert links == ['<stun:s.example:3478>; rel="ice-server"',
                     '<turn:t.example:3478?transport=udp>; rel="ice-server"; username="alice"; '
                     'credential="s3cret"; credential-type="password"']
    with pytest.raises(ValueError, match="go together; got only turn_username"):
        ServerConfig(turn_username="alice")
    with pytest.raises(ValueError, match="turn_credential must be non-empty printable text"):
        ServerConfig(turn_username="alice", turn_credential='pa"ss')


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stun_answers(port: int, tries: int = 50) -> bool:
    """Whether a STUN server answers a Binding request on 127.0.0.1:`port` (0.2 s per try)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for _ in range(tries):
            request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + os.urandom(12)
            sock.sendto(request, ("127.0.0.1", port))
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                continue
            if reply[8:20] == request[8:20]:
                return True
    return False


@pytest.fixture
def coturn() -> Iterator[int]:
    """coturn (Debian `coturn`) on a free loopback port with user alice / s3cret."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn (turnserver) is not installed")
    port = free_udp_port()
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
         "--min-port=49160", "--max-port=49200", "--lt-cred-mech", "--user=alice:s3cret", "--realm=streamserve",
         "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--log-file=stdout", "--simple-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        # Ready once its auth threads run (coturn prints the relay threads' lines before it creates the
        # servers and their auth threads: an allocation sent then can go unanswered) and it answers a
        # STUN Binding request on the port. The rest of its log is drained, never left to fill the pipe.
        for line in proc.stdout:  # bounded: coturn prints its start-up lines, then serves
            if "IO method (auth thread)" in line:
                break
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        assert stun_answers(port), "coturn did not answer a STUN Binding request within 10 s"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_turn_servers_with_credentials_reach_clients_and_the_servers_peer(
        coturn: int, server_factory: Callable[..., LiveServer]) -> None:  # coturn outlives the server
    url = f"turn:127.0.0.1:{coturn}?transport=udp"
    server, _ = whip_server(server_factory, ice_servers=(url,), turn_username="alice", turn_credential="s3cret")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        publisher = ObsLikePublisher(server.url)
        reply = await publisher.publish(http, "/whip/turn")
        await publisher.close()
    assert reply.status_code == 201, reply.text
    assert reply.headers.get_list("link") == [
        f'<{url}>; rel="ice-server"; username="alice"; credential="s3cret"; credential-type="password"']
    # The server's own peer allocated a relay on coturn with those credentials.
    relays = [line for line in reply.text.splitlines() if line.startswith("a=candidate:") and "typ relay" in line]
    assert relays and all(" 127.0.0.1 " in line for line in relays), reply.text


def test_turn_credentials_from_flags_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamserve.cli import build_parser, config_from_args

    base = ["serve", "--ice-server", "turn:t.example:3478"]
    parser = build_parser()
    flags = config_from_args(parser.parse_args([*base, "--turn-username", "u", "--turn-credential", "p"]))
    assert (flags.turn_username, flags.turn_credential) == ("u", "p")
    monkeypatch.setenv("STREAMSERVE_TURN_USERNAME", "env-user")
    monkeypatch.setenv("STREAMSERVE_TURN_CREDENTIAL", "env-pass")
    env = config_from_args(parser.parse_args(base))
    assert (env.turn_username, env.turn_credential) == ("env-user", "env-pass")
    secret = tmp_path / "turn-secret"
    secret.write_text("file-pass\n")
    from_file = config_from_args(parser.parse_args([*base, "--turn-credential-file", str(secret)]))
    assert (from_file.turn_username, from_file.turn_credential) == ("env-user", "file-pass")
    monkeypatch.delenv("STREAMSERVE_TURN_CREDENTIAL")
    with pytest.raises(SystemExit, match="turn_username and turn_credential go together"):
        config_from_args(parser.parse_args(base))
