"""Policy.AFTER_CCS: OpenSSL's own kernel TLS (SSL_OP_ENABLE_KTLS), watched, for comparison.

OpenSSL installs keys in the kernel itself, TLS 1.2's at ChangeCipherSpec (before the peer's
Finished is verified: the gap ktls_ossl closes). Nothing reports when it does, so the watch
samples its BIOs at every message OpenSSL's callback reports and records the moment in the audit
trail. OpenSSL's kTLS cannot replace the kernel's TLS 1.3 send key: once OpenSSL sends a KeyUpdate,
or the peer requests one, whatever OpenSSL would write next goes out under a stale key, so
sending is refused from then on, with the reason.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._ossl import ffi, lib
from .errors import KTLSRekeyUnsupportedError
from .records import ContentType, HandshakeType

if TYPE_CHECKING:
    from .handshake import Handshake

__all__ = ["OpenSSLOffloadWatch", "openssl_version"]


def openssl_version() -> str:
    return ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)).decode("ascii")


class OpenSSLOffloadWatch:
    """Where OpenSSL's own kTLS put a connection's keys, and whether it can still send."""

    def __init__(self, handshake: Handshake, event: Callable[[str], None]) -> None:
        self._handshake = handshake
        self._event = event
        self.tx = self.rx = False
        # Why nothing can be sent any more (OpenSSL moved its TLS 1.3 write key without the kernel).
        self.send_refusal: KTLSRekeyUnsupportedError | None = None
        # Where OpenSSL's own kTLS installed keys shows at the first message after it did.
        handshake.watch_every_message()

    def sample(self) -> None:
        """Where OpenSSL's own kTLS installed keys, as soon as the next message shows it."""
        tx, rx = self._handshake.openssl_offload()
        if tx and not self.tx:
            self._event("TX installed in the kernel by OpenSSL")
        if rx and not self.rx:
            self._event("RX installed in the kernel by OpenSSL")
        self.tx, self.rx = tx, rx

    def observe(self, write_p: int, content_type: int, data: bytes) -> None:
        """One message OpenSSL reported (from inside its message callback)."""
        self.sample()
        if (content_type == ContentType.HANDSHAKE and data[:1] == bytes([HandshakeType.key_update])
                and self.tx and self.send_refusal is None and (write_p or data[4:5] == b"\x01")):
            why = "OpenSSL sent a KeyUpdate" if write_p else "the peer requested a KeyUpdate"
            self.send_refusal = rekey_error(why)
            self._event(f"{why}; OpenSSL's kTLS cannot move the kernel's TX key: sending disabled")

    def check_send(self) -> None:
        if self.send_refusal is not None:
            raise self.send_refusal

    def check_key_update(self) -> None:
        """A KeyUpdate asked for by the application: refused where the kernel sends."""
        if self.tx:
            raise rekey_error("a KeyUpdate was asked for", "so nothing was sent")

    def missing_reason(self, ulp_message: str | None) -> str:
        """Why a direction is not in the kernel after the handshake (``ulp_message``: the kernel's
        reason where it has no TLS at all)."""
        return ulp_message or (f"{openssl_version()} kept this direction in user space (its kTLS covers "
                               "less than the kernel's, e.g. OpenSSL 3.0 never offloads TLS 1.3 reception)")


def rekey_error(why: str, outcome: str = "so nothing more can be sent on this connection") -> KTLSRekeyUnsupportedError:
    return KTLSRekeyUnsupportedError(
        0, f"{why}, but OpenSSL's own kernel TLS (Policy.AFTER_CCS, {openssl_version()}) cannot "
           f"replace the kernel's TLS 1.3 send key, {outcome} (Policy.AFTER_FINISHED updates keys "
           "where the kernel can, Linux 6.14+)",
        "KEY_UPDATE_UNSUPPORTED")
