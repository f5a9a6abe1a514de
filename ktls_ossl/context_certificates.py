"""SSLContext's certificates, keys and verification: its own certificate chain and key, DH
parameters, the trust store (CA files, directories and data, the system's default paths, what the
store holds) and how the peer's certificate is verified (mode, flags, host name checks).

A mixin of ktls_ossl.context.SSLContext (the class that owns ``_ssl_ctx``), kept apart because it
is one concern with its own OpenSSL calls; behaviour and errors are CPython's (Modules/_ssl.c).
"""
from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._ossl import ffi, lib
from .cpython_args import (
    _INT_MAX,
    _ULONG_MASK,
    _as_int,
    _as_unsigned_int_mask,
    _as_unsigned_long_mask,
    _filesystem_path,
    _library_error,
    _message_error,
    _os_error,
    _PasswordSource,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, StrOrBytesPath

__all__ = ["CertificateSettings"]

_VERIFY_MODES = {
    ssl.CERT_NONE: lib.SSL_VERIFY_NONE,
    ssl.CERT_OPTIONAL: lib.SSL_VERIFY_PEER,
    ssl.CERT_REQUIRED: lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
}
_VERIFY_MODE_MASK = lib.SSL_VERIFY_NONE | lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT


class CertificateSettings:
    """The certificate, trust-store and verification part of SSLContext (needs ``_ssl_ctx``,
    ``_password_lock``, ``_check_hostname``, ``_hostflags``, ``_post_handshake_auth``)."""

    # --- verification ---------------------------------------------------------------------------

    def _set_verify(self, mode: int) -> None:
        if mode not in _VERIFY_MODES:
            raise ValueError("invalid value for verify_mode")
        # Keep whatever verify callback is installed, as CPython does.
        callback = lib.SSL_CTX_get_verify_callback(self._ssl_ctx)
        lib.SSL_CTX_set_verify(self._ssl_ctx, _VERIFY_MODES[mode], callback)

    # The setters here take any int, as CPython's C setters do; the getters give ssl's enums.
    @property
    def verify_mode(self) -> ssl.VerifyMode:
        value = lib.SSL_CTX_get_verify_mode(self._ssl_ctx) & _VERIFY_MODE_MASK
        for mode, bits in _VERIFY_MODES.items():
            if bits == value:
                return ssl.VerifyMode(mode)
        raise ssl.SSLError("invalid return value from SSL_CTX_get_verify_mode")

    @verify_mode.setter
    def verify_mode(self, value: int) -> None:
        mode = _as_int(value)
        if mode == ssl.CERT_NONE and self._check_hostname:
            raise ValueError("Cannot set verify_mode to CERT_NONE when check_hostname is enabled.")
        self._set_verify(mode)

    @property
    def check_hostname(self) -> bool:
        return self._check_hostname

    @check_hostname.setter
    def check_hostname(self, value: bool) -> None:
        enable = bool(value)
        if enable and lib.SSL_CTX_get_verify_mode(self._ssl_ctx) == lib.SSL_VERIFY_NONE:
            self._set_verify(ssl.CERT_REQUIRED)  # check_hostname=True implies CERT_REQUIRED
        self._check_hostname = enable

    @property
    def verify_flags(self) -> ssl.VerifyFlags:
        return ssl.VerifyFlags(lib.X509_VERIFY_PARAM_get_flags(lib.SSL_CTX_get0_param(self._ssl_ctx)))

    @verify_flags.setter
    def verify_flags(self, value: int) -> None:
        new_flags = _as_unsigned_long_mask(value)
        params = lib.SSL_CTX_get0_param(self._ssl_ctx)
        flags = lib.X509_VERIFY_PARAM_get_flags(params)
        clear = flags & ~new_flags & _ULONG_MASK
        add = ~flags & new_flags & _ULONG_MASK
        if clear and not lib.X509_VERIFY_PARAM_clear_flags(params, clear):
            raise _library_error()
        if add and not lib.X509_VERIFY_PARAM_set_flags(params, add):
            raise _library_error()

    @property
    def _host_flags(self) -> int:
        # OpenSSL 3.0 can read these back, but CPython keeps its own copy; so do we.
        return self._hostflags

    @_host_flags.setter
    def _host_flags(self, value) -> None:
        flags = _as_unsigned_int_mask(value)
        self._hostflags = flags
        lib.X509_VERIFY_PARAM_set_hostflags(lib.SSL_CTX_get0_param(self._ssl_ctx), flags)

    @property
    def hostname_checks_common_name(self) -> bool:
        never = lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT
        return self._hostflags & never != never

    @hostname_checks_common_name.setter
    def hostname_checks_common_name(self, value: bool) -> None:
        if value:
            self._host_flags = self._hostflags & ~lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT
        else:
            self._host_flags = self._hostflags | lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT

    @property
    def post_handshake_auth(self) -> bool:
        # Applied per connection by the handshake layer, as CPython applies it per SSL (bpo-37428).
        return self._post_handshake_auth

    @post_handshake_auth.setter
    def post_handshake_auth(self, value: bool) -> None:
        self._post_handshake_auth = bool(value)

    @post_handshake_auth.deleter
    def post_handshake_auth(self) -> None:
        raise AttributeError("cannot delete attribute")

    # --- certificates and keys -------------------------------------------------------------------

    def load_cert_chain(
            self, certfile: StrOrBytesPath, keyfile: StrOrBytesPath | None = None,
            password: Callable[[], str | bytes | bytearray] | str | bytes | bytearray | None = None,
    ) -> None:
        lib.ERR_clear_error()
        certfile_path = _filesystem_path(certfile, "certfile")
        keyfile_path = _filesystem_path(keyfile, "keyfile") if keyfile is not None else None
        source = _PasswordSource(password) if password is not None else None
        # The password callback is a context-wide setting for the duration of this call.
        with self._password_lock:
            handle = None
            if source is not None:
                handle = ffi.new_handle(source)
                lib.SSL_CTX_set_default_passwd_cb(self._ssl_ctx, lib.ktls_passwd_cb)
                lib.SSL_CTX_set_default_passwd_cb_userdata(self._ssl_ctx, handle)
            try:
                ffi.errno = 0
                result = lib.SSL_CTX_use_certificate_chain_file(self._ssl_ctx, certfile_path)
                if result != 1:
                    raise self._load_failure(source, ffi.errno)
                ffi.errno = 0
                result = lib.SSL_CTX_use_PrivateKey_file(
                    self._ssl_ctx, keyfile_path or certfile_path, lib.SSL_FILETYPE_PEM)
                if result != 1:
                    raise self._load_failure(source, ffi.errno)
                if lib.SSL_CTX_check_private_key(self._ssl_ctx) != 1:
                    raise _library_error()
            finally:
                lib.SSL_CTX_set_default_passwd_cb(self._ssl_ctx, ffi.NULL)
                lib.SSL_CTX_set_default_passwd_cb_userdata(self._ssl_ctx, ffi.NULL)
                del handle

    @staticmethod
    def _load_failure(source: _PasswordSource | None, saved_errno: int) -> BaseException:
        """CPython's order: the password callback's exception, then errno (file errors), then
        the OpenSSL error (e.g. "[SSL] PEM lib" for a wrong password)."""
        if source is not None and source.error is not None:
            lib.ERR_clear_error()
            return source.error
        if saved_errno:
            return _os_error(saved_errno)
        return _library_error()

    def load_verify_locations(
            self, cafile: StrOrBytesPath | None = None, capath: StrOrBytesPath | None = None,
            cadata: str | ReadableBuffer | None = None,
    ) -> None:
        if cafile is None and capath is None and cadata is None:
            raise TypeError("cafile, capath and cadata cannot be all omitted")
        cafile_path = _filesystem_path(cafile, "cafile") if cafile is not None else None
        capath_path = _filesystem_path(capath, "capath") if capath is not None else None
        if cadata is not None:
            self._load_cadata(cadata)
        if cafile_path is not None or capath_path is not None:
            lib.ERR_clear_error()
            ffi.errno = 0
            result = lib.SSL_CTX_load_verify_locations(
                self._ssl_ctx,
                cafile_path if cafile_path is not None else ffi.NULL,
                capath_path if capath_path is not None else ffi.NULL)
            saved_errno = ffi.errno
            if result != 1:
                raise _os_error(saved_errno) if saved_errno else _library_error()

    def _load_cadata(self, cadata) -> None:
        invalid = "cadata should be an ASCII string or a bytes-like object"
        if isinstance(cadata, str):
            try:
                data = cadata.encode("ascii")
            except UnicodeEncodeError:
                raise TypeError(invalid) from None
            self._add_ca_certs(data, lib.SSL_FILETYPE_PEM)
            return
        try:
            view = memoryview(cadata)
        except TypeError:
            raise TypeError(invalid) from None
        with view:
            if not view.c_contiguous:
                raise BufferError("memoryview: underlying buffer is not C-contiguous")
            if view.ndim > 1:
                raise TypeError("cadata should be a contiguous buffer with a single dimension")
            data = view.tobytes()
        self._add_ca_certs(data, lib.SSL_FILETYPE_ASN1)

    def _add_ca_certs(self, data: bytes, filetype: int) -> None:
        """Every certificate in ``data`` (PEM text, or concatenated DER) into the trust store."""
        if not data:
            raise ValueError("Empty certificate data")
        if len(data) > _INT_MAX:
            raise OverflowError("Certificate data is too long.")
        lib.ERR_clear_error()
        buffer = ffi.from_buffer(data)
        bio = lib.BIO_new_mem_buf(buffer, len(data))
        if bio == ffi.NULL:
            raise _message_error("Can't allocate buffer")
        try:
            store = lib.SSL_CTX_get_cert_store(self._ssl_ctx)
            loaded = 0
            while True:
                if filetype == lib.SSL_FILETYPE_ASN1:
                    cert = lib.d2i_X509_bio(bio, ffi.NULL)
                else:
                    cert = lib.PEM_read_bio_X509(bio, ffi.NULL, ffi.NULL, ffi.NULL)
                if cert == ffi.NULL:
                    break
                added = lib.X509_STORE_add_cert(store, cert)
                lib.X509_free(cert)
                if not added:
                    code = lib.ERR_peek_last_error()
                    if (lib.ERR_GET_LIB(code) == lib.ERR_LIB_X509
                            and lib.ERR_GET_REASON(code) == lib.X509_R_CERT_ALREADY_IN_HASH_TABLE):
                        lib.ERR_clear_error()  # a duplicate is not an error
                    else:
                        break
                loaded += 1
        finally:
            lib.BIO_free(bio)
        code = lib.ERR_peek_last_error()
        library, reason = lib.ERR_GET_LIB(code), lib.ERR_GET_REASON(code)
        if loaded == 0:
            raise _message_error("no start line: cadata does not contain a certificate"
                                 if filetype == lib.SSL_FILETYPE_PEM else
                                 "not enough data: cadata does not contain a certificate")
        if filetype == lib.SSL_FILETYPE_ASN1 and library == lib.ERR_LIB_ASN1 and reason == lib.ASN1_R_HEADER_TOO_LONG:
            lib.ERR_clear_error()  # the end of the DER data
        elif filetype == lib.SSL_FILETYPE_PEM and library == lib.ERR_LIB_PEM and reason == lib.PEM_R_NO_START_LINE:
            lib.ERR_clear_error()  # no further PEM block
        elif code != 0:
            raise _library_error()

    def set_default_verify_paths(self) -> None:
        # load_default_certs() (inherited from ssl.py) ends here too.
        lib.ERR_clear_error()
        if not lib.SSL_CTX_set_default_verify_paths(self._ssl_ctx):
            raise _library_error()

    def _store_certificates(self):
        """(certificate, is a CA) for each certificate object in the trust store."""
        objects = lib.X509_STORE_get0_objects(lib.SSL_CTX_get_cert_store(self._ssl_ctx))
        for index in range(lib.sk_X509_OBJECT_num(objects)):
            entry = lib.sk_X509_OBJECT_value(objects, index)
            if lib.X509_OBJECT_get_type(entry) == lib.X509_LU_X509:
                cert = lib.X509_OBJECT_get0_X509(entry)
                yield cert, bool(lib.X509_check_ca(cert))

    def cert_store_stats(self) -> dict:
        objects = lib.X509_STORE_get0_objects(lib.SSL_CTX_get_cert_store(self._ssl_ctx))
        crl = sum(1 for index in range(lib.sk_X509_OBJECT_num(objects))
                  if lib.X509_OBJECT_get_type(lib.sk_X509_OBJECT_value(objects, index)) == lib.X509_LU_CRL)
        certificates = list(self._store_certificates())
        return {"x509": len(certificates), "crl": crl,
                "x509_ca": sum(1 for _, is_ca in certificates if is_ca)}

    def get_ca_certs(self, binary_form: bool = False) -> list:
        ders = [_certificate_der(cert) for cert, is_ca in self._store_certificates() if is_ca]
        if binary_form:
            return ders
        from .certificate import decode_certificate
        return [decode_certificate(der) for der in ders]

    def load_dh_params(self, path: str) -> None:
        os.fspath(path)  # the TypeError CPython's fopen wrapper raises for a non-path
        with open(path, "rb") as params_file:  # OSError with the filename, as CPython
            data = params_file.read()
        lib.ERR_clear_error()
        buffer = ffi.from_buffer(data)
        bio = lib.BIO_new_mem_buf(buffer, len(data))
        if bio == ffi.NULL:
            raise _library_error()
        try:
            dh = lib.PEM_read_bio_DHparams(bio, ffi.NULL, ffi.NULL, ffi.NULL)
        finally:
            lib.BIO_free(bio)
        if dh == ffi.NULL:
            raise _library_error()
        try:
            if not lib.SSL_CTX_set_tmp_dh(self._ssl_ctx, dh):
                raise _library_error()
        finally:
            lib.DH_free(dh)


def _certificate_der(cert) -> bytes:
    length = lib.i2d_X509(cert, ffi.NULL)
    if length < 0:
        raise _library_error()
    buffer = ffi.new("unsigned char[]", length)
    cursor = ffi.new("unsigned char **", buffer)
    if lib.i2d_X509(cert, cursor) != length:
        raise _library_error()
    return bytes(ffi.buffer(buffer, length))
