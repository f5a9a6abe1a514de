"""A scripted raw TLS endpoint for security tests: it completes or subverts handshakes on purpose.

Written for this project on top of ktls_ossl.records / ktls_ossl.keys and ``cryptography``
(X25519 ECDHE, ECDSA signatures, the TLS 1.2 PRF and the TLS 1.3 key schedule, transcript hashes,
Finished and CertificateVerify). See ``peer.py``.
"""
from .peer import (
    HostileClient,
    HostileServer,
    Observed,
    PeerError,
    TLS12_SUITE,
    TLS13_SUITE,
    hostile_endpoint,
)

__all__ = [
    "HostileClient",
    "HostileServer",
    "Observed",
    "PeerError",
    "TLS12_SUITE",
    "TLS13_SUITE",
    "hostile_endpoint",
]
