"""`transport.dtls`: the peer connection's DTLS context also offers ECDHE-RSA suites, same certificate."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80
from OpenSSL import SSL

from streamserve.transport import dtls

CERTIFICATES = dtls._ATTRIBUTE  # aiortc keeps its certificate list here


async def test_allow_rsa_peers_widens_the_cipher_list_and_keeps_the_certificate() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    stock = getattr(pc, CERTIFICATES)[0]
    fingerprints = stock.getFingerprints()
    stock_ciphers = SSL.Connection(stock._create_ssl_context([SRTP_AES128_CM_SHA1_80])).get_cipher_list()
    assert not any(name.startswith("ECDHE-RSA") for name in stock_ciphers)  # the upstream limitation

    assert dtls.allow_rsa_peers(pc)
    widened = getattr(pc, CERTIFICATES)[0]
    assert isinstance(widened, dtls.RsaTolerantCertificate)
    assert widened.getFingerprints() == fingerprints  # the SDP fingerprint does not change
    ciphers = SSL.Connection(widened._create_ssl_context([SRTP_AES128_CM_SHA1_80])).get_cipher_list()
    assert {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"} <= set(ciphers)
    assert dtls.allow_rsa_peers(pc)  # a second call keeps it
    assert getattr(pc, CERTIFICATES)[0] is widened
    await pc.close()
