"""ktls_ossl: Linux kernel TLS for Python, with OpenSSL 3 doing (and verifying) the handshake.

Keys reach the kernel only after the peer's Finished has been verified; from then on ``send``,
``recv``, ``sendfile`` and ``splice`` on the TCP socket are encrypted by the kernel, and every
non-data record the kernel surfaces is handled by a defined rule.
"""
from ._ossl import ffi as _ffi, lib as _lib
from . import kernel, pump, session
from .errors import (
    KernelTLSError,
    KTLSCipherUnavailableError,
    KTLSKeyExpiredError,
    KTLSKeyLimitError,
    KTLSRecordError,
    KTLSRekeyUnsupportedError,
    KTLSUnavailableError,
    KTLSUnwrappedError,
)
from .keys import KernelCipher, TrafficKeys
from .handshake import Policy, Session
from .socket import KTLSSocket, KTLSStatus
from .context import SSLContext, create_default_context

OPENSSL_VERSION = _ffi.string(_lib.OpenSSL_version(_lib.OPENSSL_VERSION)).decode("ascii")
OPENSSL_VERSION_NUMBER = _lib.OpenSSL_version_num()
# The headers the extension was compiled against (the runtime library may be newer).
OPENSSL_BUILD_VERSION = _ffi.string(_lib.OPENSSL_VERSION_TEXT).decode("ascii")

from ._version import __version__

__all__ = [
    "SSLContext",
    "create_default_context",
    "KTLSSocket",
    "KTLSStatus",
    "Policy",
    "Session",
    "OPENSSL_VERSION",
    "OPENSSL_VERSION_NUMBER",
    "OPENSSL_BUILD_VERSION",
    "KernelCipher",
    "KernelTLSError",
    "KTLSCipherUnavailableError",
    "KTLSKeyExpiredError",
    "KTLSKeyLimitError",
    "KTLSRecordError",
    "KTLSRekeyUnsupportedError",
    "KTLSUnavailableError",
    "KTLSUnwrappedError",
    "TrafficKeys",
    "kernel",
    "pump",
    "session",
]
