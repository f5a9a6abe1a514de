"""What CPython's SSLSocket reports about an established connection (cipher, ALPN, certificates,
channel binding), read from the handshake's SSL object whatever carries the record layer now."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from ._ossl import ffi, lib

if TYPE_CHECKING:
    from .handshake import Handshake


class TLSInfo:
    """The facts of ``handshake``'s connection, as _ssl._SSLSocket's methods give them."""

    def __init__(self, handshake: Handshake) -> None:
        self._handshake = handshake

    def cipher(self):
        pointer = lib.SSL_get_current_cipher(self._handshake.ssl)
        if pointer == ffi.NULL:
            return None
        return _cipher_tuple(pointer)

    def shared_ciphers(self):
        server = lib.SSL_get_ciphers(self._handshake.ssl)
        client = lib.SSL_get_client_ciphers(self._handshake.ssl)
        if server == ffi.NULL or client == ffi.NULL:
            return None
        offered = {lib.SSL_CIPHER_get_id(lib.sk_SSL_CIPHER_value(client, i))
                   for i in range(lib.sk_SSL_CIPHER_num(client))}
        shared = []
        for i in range(lib.sk_SSL_CIPHER_num(server)):
            pointer = lib.sk_SSL_CIPHER_value(server, i)
            if lib.SSL_CIPHER_get_id(pointer) in offered:
                shared.append(_cipher_tuple(pointer))
        return shared

    def compression(self):
        method = lib.SSL_get_current_compression(self._handshake.ssl)
        if method == ffi.NULL:
            return None
        name = lib.SSL_COMP_get_name(method)
        return ffi.string(name).decode("ascii") if name != ffi.NULL else None

    def selected_alpn_protocol(self):
        data = ffi.new("const unsigned char **")
        length = ffi.new("unsigned int *")
        lib.SSL_get0_alpn_selected(self._handshake.ssl, data, length)
        if data[0] == ffi.NULL or length[0] == 0:
            return None
        return bytes(ffi.buffer(data[0], length[0])).decode("ascii", "replace")

    def channel_binding(self, cb_type: str = "tls-unique"):
        if cb_type != "tls-unique":
            raise ValueError(f"'{cb_type}' channel binding type not implemented")
        buffer = ffi.new("unsigned char[128]")
        # tls-unique is the first Finished of the latest handshake: ours as a client of a new
        # session or as a server of a resumed one, the peer's otherwise (RFC 5929).
        if bool(lib.SSL_session_reused(self._handshake.ssl)) ^ (not self._handshake.server_side):
            length = lib.SSL_get_finished(self._handshake.ssl, buffer, 128)
        else:
            length = lib.SSL_get_peer_finished(self._handshake.ssl, buffer, 128)
        if length == 0:
            return None
        return bytes(ffi.buffer(buffer, length))

    def version(self) -> str | None:
        return self._handshake.version()

    def peer_certificate(self, binary_form: bool = False):
        """CPython's getpeercert(): the DER, or the decoded certificate where it was verified."""
        if not self._handshake.is_finished:
            raise ValueError("handshake not done yet")
        return getpeercert_result(self.peer_certificate_der(), self.peer_verified(), binary_form)

    def peer_verified(self) -> bool:
        """The peer's certificate went through verification (VERIFY_PEER): CPython decodes only then."""
        return bool(self.verify_mode() & lib.SSL_VERIFY_PEER)

    def peer_certificate_der(self) -> bytes | None:
        return _der(lib.SSL_get0_peer_certificate(self._handshake.ssl))

    def verify_mode(self) -> int:
        return lib.SSL_CTX_get_verify_mode(lib.SSL_get_SSL_CTX(self._handshake.ssl))

    def verified_chain(self) -> list[bytes]:
        return _chain(lib.SSL_get0_verified_chain(self._handshake.ssl))

    def unverified_chain(self) -> list[bytes]:
        chain = _chain(lib.SSL_get_peer_cert_chain(self._handshake.ssl))
        # A server's view of the client chain lacks the leaf (OpenSSL's documented asymmetry).
        if self._handshake.server_side:
            leaf = self.peer_certificate_der()
            if leaf is not None:
                chain.insert(0, leaf)
        return chain


def getpeercert_result(der: bytes | None, verified: bool, binary_form: bool):
    """What CPython's getpeercert() returns for the peer's certificate ``der``: None without one,
    the DER with ``binary_form``, {} for a certificate that was not verified, else the decoded dict."""
    if der is None:
        return None
    if binary_form:
        return der
    if not verified:
        return {}
    from .certificate import decode_certificate
    return decode_certificate(der)


def _cipher_tuple(pointer):
    name = lib.SSL_CIPHER_get_name(pointer)
    version = lib.SSL_CIPHER_get_version(pointer)
    return (
        ffi.string(name).decode("ascii") if name != ffi.NULL else None,
        ffi.string(version).decode("ascii") if version != ffi.NULL else None,
        lib.SSL_CIPHER_get_bits(pointer, ffi.NULL),
    )


def _der(x509_pointer) -> bytes | None:
    if x509_pointer == ffi.NULL:
        return None
    out = ffi.new("unsigned char **")
    length = lib.i2d_X509(x509_pointer, out)
    if length < 0:
        raise errors.ssl_error_from_code(errors.pop_error_code())
    try:
        return bytes(ffi.buffer(out[0], length))
    finally:
        lib.OPENSSL_free(out[0])


def _chain(stack) -> list[bytes]:
    if stack == ffi.NULL:
        return []
    return [_der(lib.sk_X509_value(stack, i)) for i in range(lib.sk_X509_num(stack))]
