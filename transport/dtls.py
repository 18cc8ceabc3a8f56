"""DTLS with peers whose certificate is RSA (GStreamer's webrtcbin, and every WHIP tool built on it).

aiortc's certificate is ECDSA (P-256), and `RTCCertificate._create_ssl_context` offers only
`ECDHE-ECDSA-*` cipher suites. In DTLS 1.2 a suite names the *server's* key type, and aiortc answers
a WHIP/WHEP offer (`a=setup:actpass`) as the DTLS client (`a=setup:active`), so the remote end is the
DTLS server. GStreamer's `webrtcbin` (through its `dtlsagent`) uses an RSA certificate, so the client
offers nothing the server can pick: the handshake fails with "no shared cipher" and no media flows.

The fix is to also offer the `ECDHE-RSA-*` suites. Which key our own certificate has does not change
(the client's certificate is checked by signature, not by suite), and when aiortc is the DTLS server
its ECDSA key still selects an ECDSA suite. aiortc has no public hook for the cipher list
(upstream: aiortc PRs #1011, #1392 and #1421, none merged in 1.16), so `allow_rsa_peers(pc)` swaps
the peer connection's certificate for an `RsaTolerantCertificate` (same key, same certificate, same
fingerprint) before any transport is created, in this one place. If aiortc changes the private name
it logs a warning once and leaves the stock behaviour (RSA peers then fail as before).
"""

from __future__ import annotations

import functools
import logging

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile
from OpenSSL import SSL

log = logging.getLogger(__name__)

_ATTRIBUTE = "_RTCPeerConnection__certificates"  # name-mangled `self.__certificates`

# Strongest first; OpenSSL picks by the server's key type: ECDSA suites for an EC key, RSA for RSA.
CIPHER_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
)


class RsaTolerantCertificate(RTCCertificate):
    """aiortc's certificate, whose DTLS context also offers the ECDHE-RSA cipher suites."""

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(":".join(CIPHER_SUITES).encode())
        return ctx


def allow_rsa_peers(pc: RTCPeerConnection) -> bool:
    """Let `pc` complete DTLS with RSA-certificate peers. Call before `setRemoteDescription`.

    Returns False (and warns once) when this aiortc version keeps its certificates elsewhere."""
    certificates = getattr(pc, _ATTRIBUTE, None)
    if isinstance(certificates, list) and len(certificates) == 1 \
            and isinstance(certificates[0], RsaTolerantCertificate):
        return True  # already done
    if not isinstance(certificates, list) or len(certificates) != 1 \
            or type(certificates[0]) is not RTCCertificate:
        _warn_once(type(certificates).__name__)
        return False
    stock = certificates[0]
    certificates[0] = RsaTolerantCertificate(key=stock._key, cert=stock._cert)
    return True


@functools.cache
def _warn_once(found: str) -> None:
    log.warning("cannot widen aiortc's DTLS cipher list on this aiortc version (found %s); "
                "peers with RSA certificates (GStreamer webrtcbin) will fail the DTLS handshake", found)
