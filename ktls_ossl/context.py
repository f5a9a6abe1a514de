"""SSLContext: the ssl.SSLContext interface over ktls_ossl's own OpenSSL SSL_CTX.

``SSLContext`` subclasses ``ssl.SSLContext`` so that ``isinstance`` checks and type hints keep
working, but CPython's C-level context underneath is never configured and never used: every
property and method that touches TLS settings is overridden here and goes to ``self._ssl_ctx``, an
SSL_CTX of the system libssl created through the cffi extension. The connections that
``wrap_socket`` creates (``KTLSSocket``) take their SSL objects from that SSL_CTX.

Defaults, validation and errors follow CPython 3.11's ``Modules/_ssl.c`` and ``Lib/ssl.py``: the same
options, cipher string, verify mode and flags, the same exception types and messages. Errors from
OpenSSL carry the same ``library``/``reason`` and the same text; only the location tag at the end
differs ("(ktls_ossl)" instead of "(_ssl.c:NNNN)").

On top of ssl.SSLContext: ``ktls_policy``, ``require_ktls``, ``control_record_callback``,
``set_ciphersuites`` (TLS 1.3 suites) and ``set_groups`` (key exchange groups).
"""
from __future__ import annotations

import os
import ssl
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import _ssl

from ._ossl import ffi, lib
from .context_callbacks import _KEYLOG_LOCK, CallbackSettings, select_alpn_protocol
from .context_certificates import CertificateSettings
from .cpython_args import (
    _INT_MAX,
    _UINT64_MASK,
    _UINT_MASK,
    _as_long,
    _as_uint64,
    _library_error,
    _message_error,
    _OPTIONS_ARE_UINT64,
    _ssl_error,
)
from .handshake import Policy
from .socket import Connection, KTLSSocket

if TYPE_CHECKING:
    # typeshed's names for buffers and paths exist only for type checkers; the annotations that
    # use them are never evaluated at run time (postponed by the __future__ import).
    from _typeshed import ReadableBuffer, StrOrBytesPath

__all__ = ["SSLContext", "create_default_context", "select_alpn_protocol"]

_PROTOCOL_METHODS = {
    ssl.PROTOCOL_TLS_CLIENT: lib.TLS_client_method,
    ssl.PROTOCOL_TLS_SERVER: lib.TLS_server_method,
    ssl.PROTOCOL_TLS: lib.TLS_method,
}
# CPython builds these with TLSv1_method() & co.; a TLS_method() context pinned to the one
# version behaves the same (and reports its limits as CPython's does, see minimum_version).
_FIXED_VERSION_PROTOCOLS = {
    getattr(ssl, name): version
    for name, version in (("PROTOCOL_TLSv1", lib.TLS1_VERSION),
                          ("PROTOCOL_TLSv1_1", lib.TLS1_1_VERSION),
                          ("PROTOCOL_TLSv1_2", lib.TLS1_2_VERSION))
    if hasattr(ssl, name)
}

_DEFAULT_CIPHERS = getattr(
    _ssl, "_DEFAULT_CIPHERS",
    "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM")
# CPython passes sizeof("Python"): the terminating NUL is part of its session id context.
_SESSION_ID_CONTEXT = b"Python\0"

# CPython 3.11.7 on OpenSSL 3: OP_ALL without DONT_INSERT_EMPTY_FRAGMENTS and LEGACY_SERVER_CONNECT,
# plus its minimal security flags (the test compares the result with CPython's).
_DEFAULT_OPTIONS = (
    (lib.SSL_OP_ALL & ~lib.SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS & ~lib.SSL_OP_LEGACY_SERVER_CONNECT)
    | lib.SSL_OP_NO_SSLv2 | lib.SSL_OP_NO_SSLv3 | lib.SSL_OP_NO_COMPRESSION
    | lib.SSL_OP_CIPHER_SERVER_PREFERENCE | lib.SSL_OP_SINGLE_DH_USE | lib.SSL_OP_SINGLE_ECDH_USE
)
# CPython sets RELEASE_BUFFERS on its SSL_CTX and ACCEPT_MOVING_WRITE_BUFFER | AUTO_RETRY on each
# SSL; setting all three here gives every SSL made from this context the same modes.
_DEFAULT_MODES = lib.SSL_MODE_RELEASE_BUFFERS | lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | lib.SSL_MODE_AUTO_RETRY

_DEPRECATED_OPTIONS = (lib.SSL_OP_NO_SSLv2 | lib.SSL_OP_NO_SSLv3 | lib.SSL_OP_NO_TLSv1
                       | lib.SSL_OP_NO_TLSv1_1 | lib.SSL_OP_NO_TLSv1_2 | lib.SSL_OP_NO_TLSv1_3)
_DEPRECATED_VERSIONS = {
    ssl.TLSVersion.SSLv3: "ssl.TLSVersion.SSLv3 is deprecated",
    ssl.TLSVersion.TLSv1: "ssl.TLSVersion.TLSv1 is deprecated",
    ssl.TLSVersion.TLSv1_1: "ssl.TLSVersion.TLSv1_1 is deprecated",
}
_ACCEPTED_VERSIONS = {ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.MAXIMUM_SUPPORTED,
                      ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, *_DEPRECATED_VERSIONS}
_MINIMUM_AVAILABLE = lib.TLS1_VERSION  # this OpenSSL has no SSLv3 (see ssl.HAS_SSLv3)
_MAXIMUM_AVAILABLE = lib.TLS1_3_VERSION

# set_ecdh_curve() before CPython 3.11 goes through an EC_KEY (see there).
_ECDH_CURVE_IS_EC_KEY = sys.version_info < (3, 11)
_NOT_EC_KEY_GROUPS = {lib.OBJ_sn2nid(name) for name in (b"X25519", b"X448", b"ffdhe2048", b"ffdhe3072",
                                                         b"ffdhe4096", b"ffdhe6144", b"ffdhe8192")} - {lib.NID_undef}
_EC_R_UNKNOWN_GROUP = 129  # <openssl/ecerr.h>

class SSLContext(CertificateSettings, CallbackSettings, ssl.SSLContext):
    """ssl.SSLContext over ktls_ossl's own SSL_CTX; ``wrap_socket`` returns a KTLSSocket."""

    sslsocket_class = KTLSSocket

    def __new__(cls, protocol=None, *args, **kwargs):
        if protocol is None:
            warnings.warn("ssl.SSLContext() without protocol argument is deprecated.",
                          category=DeprecationWarning, stacklevel=2)
            protocol = ssl.PROTOCOL_TLS
        # This is all ssl.SSLContext.__new__ does after the None check. Calling the C constructor
        # from here (one frame less) makes its own checks and deprecation warnings
        # ("ssl.PROTOCOL_TLS is deprecated", "invalid or unsupported protocol version") point at our
        # caller, as CPython's do. The C context it builds is never configured or used.
        self = _ssl._SSLContext.__new__(cls, protocol)
        self._init_ssl_ctx(int(protocol))
        # asyncio's own loops would take this context and then fail each connection (memory BIOs):
        # from now on they refuse it at the call (ktls_ossl/asyncio/loop.py).
        from .asyncio.loop import guard_stock_loops
        guard_stock_loops()
        return self

    def _init_ssl_ctx(self, protocol: int) -> None:
        fixed_version = _FIXED_VERSION_PROTOCOLS.get(protocol)
        method = _PROTOCOL_METHODS.get(protocol, lib.TLS_method if fixed_version else None)
        if method is None:
            raise ValueError(f"invalid or unsupported protocol version {protocol}")
        lib.ERR_clear_error()
        pointer = lib.SSL_CTX_new(method())
        if pointer == ffi.NULL:
            raise _library_error()
        self._ssl_ctx = ffi.gc(pointer, lib.SSL_CTX_free)
        self._protocol = protocol
        self._fixed_version = fixed_version
        self._handle = ffi.new_handle(self)
        lib.SSL_CTX_set_app_data(self._ssl_ctx, self._handle)

        # State CPython keeps beside its SSL_CTX.
        self._check_hostname = protocol == ssl.PROTOCOL_TLS_CLIENT
        self._post_handshake_auth = False
        self._hostflags = lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
        self._sni_callback = None
        self._alpn_protocols: bytes | None = None
        self._alpn_buffer = None
        self._keylog_filename = None
        self._keylog_file = None
        self._msg_callback_wrapper = None
        self._password_lock = threading.Lock()
        # ktls_ossl's own knobs.
        self._ktls_policy = Policy.AFTER_FINISHED
        self._require_ktls = False
        self._control_record_callback = None
        self._key_update_records = None
        with _KEYLOG_LOCK:
            self._install_keylog_callback()

        self._set_verify(ssl.CERT_REQUIRED if self._check_hostname else ssl.CERT_NONE)
        lib.SSL_CTX_set_options(self._ssl_ctx, _DEFAULT_OPTIONS)
        if lib.SSL_CTX_set_cipher_list(self._ssl_ctx, _DEFAULT_CIPHERS.encode("ascii")) != 1:
            lib.ERR_clear_error()
            raise ssl.SSLError("No cipher can be selected.")
        if fixed_version is not None:
            ok = (lib.SSL_CTX_set_min_proto_version(self._ssl_ctx, fixed_version)
                  and lib.SSL_CTX_set_max_proto_version(self._ssl_ctx, fixed_version))
        else:
            ok = lib.SSL_CTX_set_min_proto_version(self._ssl_ctx, lib.TLS1_2_VERSION)
        if not ok:
            lib.ERR_clear_error()
            raise ValueError(f"Failed to set minimum protocol 0x{fixed_version or lib.TLS1_2_VERSION:x}")
        lib.SSL_CTX_set_mode(self._ssl_ctx, _DEFAULT_MODES)
        lib.SSL_CTX_set_session_id_context(self._ssl_ctx, _SESSION_ID_CONTEXT, len(_SESSION_ID_CONTEXT))
        params = lib.SSL_CTX_get0_param(self._ssl_ctx)
        lib.X509_VERIFY_PARAM_set_flags(params, lib.X509_V_FLAG_TRUSTED_FIRST)
        lib.X509_VERIFY_PARAM_set_hostflags(params, self._hostflags)
        lib.SSL_CTX_set_post_handshake_auth(self._ssl_ctx, 0)

    # --- ktls_ossl's own settings ---------------------------------------------------------------

    @property
    def ktls_policy(self) -> Policy:
        """When traffic keys go to the kernel (handshake.Policy; its value strings are accepted)."""
        return self._ktls_policy

    @ktls_policy.setter
    def ktls_policy(self, value: Policy | str) -> None:
        if isinstance(value, Policy):
            policy = value
        elif isinstance(value, str):
            policy = Policy(value)  # ValueError for an unknown name
        else:
            raise TypeError(f"ktls_policy must be a ktls_ossl Policy or its value string, "
                            f"not {type(value).__name__}")
        with _KEYLOG_LOCK:
            self._ktls_policy = policy
            self._install_keylog_callback()

    @property
    def require_ktls(self) -> bool:
        """True: a connection the kernel cannot carry fails instead of staying in OpenSSL."""
        return self._require_ktls

    @require_ktls.setter
    def require_ktls(self, value: bool) -> None:
        # A strict bool: a security switch should not turn on (or off) through a stray truthy value.
        if not isinstance(value, bool):
            raise TypeError(f"require_ktls must be a bool, not {type(value).__name__}")
        self._require_ktls = value

    @property
    def key_update_records(self) -> int | None:
        """Send a TLS 1.3 KeyUpdate after this many records under one key (None: the cipher's
        default, well under the AEAD limits of RFC 8446 section 5.5; see ktls_ossl.keys)."""
        return self._key_update_records

    @key_update_records.setter
    def key_update_records(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError("key_update_records must be a positive int or None")
        self._key_update_records = value

    @property
    def control_record_callback(self) -> Callable[[KTLSSocket, int, bytes], object] | None:
        """Called by the socket layer for each non-data record the kernel hands up (or None)."""
        return self._control_record_callback

    @control_record_callback.setter
    def control_record_callback(
            self, callback: Callable[[KTLSSocket, int, bytes], object] | None) -> None:
        if callback is not None and not callable(callback):
            raise TypeError("control_record_callback must be callable or None")
        self._control_record_callback = callback

    def set_ciphersuites(self, ciphersuites: str) -> None:
        """The TLS 1.3 cipher suites, in OpenSSL's syntax ("TLS_AES_256_GCM_SHA384:...")."""
        if not isinstance(ciphersuites, str):
            raise TypeError(f"set_ciphersuites() argument must be str, not {type(ciphersuites).__name__}")
        if "\0" in ciphersuites:
            raise ValueError("embedded null character")
        lib.ERR_clear_error()
        if lib.SSL_CTX_set_ciphersuites(self._ssl_ctx, ciphersuites.encode("utf-8")) != 1:
            raise _library_error()

    # --- protocol versions, options, ciphers ---------------------------------------------------

    @property
    def protocol(self) -> ssl._SSLMethod:
        return ssl._SSLMethod(self._protocol)

    @property
    def options(self) -> ssl.Options:
        # CPython returns the uint64 as a C long, so with bit 63 set ssl.Options gets a negative
        # number (and maps it the way enum does); convert the same way to read the same.
        value = lib.SSL_CTX_get_options(self._ssl_ctx)
        if _OPTIONS_ARE_UINT64:  # 3.12+: an unsigned 64-bit int both ways
            return ssl.Options(value)
        return ssl.Options(value - (1 << 64) if value >> 63 else value)

    @options.setter
    def options(self, value: int) -> None:
        if _OPTIONS_ARE_UINT64:
            new_options = _as_uint64(value)
        else:
            new_options = _as_long(value) & _UINT64_MASK  # CPython reads a C long into a uint64_t
        current = lib.SSL_CTX_get_options(self._ssl_ctx)
        clear = current & ~new_options & _UINT64_MASK
        add = ~current & new_options & _UINT64_MASK
        if add & _DEPRECATED_OPTIONS:
            warnings.warn("ssl.OP_NO_SSL*/ssl.OP_NO_TLS* options are deprecated",
                          DeprecationWarning, stacklevel=2)
        if clear:
            lib.SSL_CTX_clear_options(self._ssl_ctx, clear)
        if add:
            lib.SSL_CTX_set_options(self._ssl_ctx, add)

    def _set_version_limit(self, value, maximum: bool) -> None:
        version = _as_long(value)
        if version > _INT_MAX:
            raise OverflowError("Option is too long")
        if self._protocol not in (ssl.PROTOCOL_TLS, ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS_SERVER):
            raise ValueError("The context's protocol doesn't support modification of "
                             "highest and lowest version.")
        if version not in _ACCEPTED_VERSIONS:
            raise ValueError(f"Unsupported TLS/SSL version 0x{version & _UINT_MASK:x}")
        if version in _DEPRECATED_VERSIONS:
            # stacklevel 3: past this helper and the property setter, to the assignment.
            warnings.warn(_DEPRECATED_VERSIONS[version], DeprecationWarning, stacklevel=3)
        if maximum:
            limit = {ssl.TLSVersion.MAXIMUM_SUPPORTED: 0,
                     ssl.TLSVersion.MINIMUM_SUPPORTED: _MINIMUM_AVAILABLE}.get(version, version)
            ok = lib.SSL_CTX_set_max_proto_version(self._ssl_ctx, limit)
        else:
            limit = {ssl.TLSVersion.MINIMUM_SUPPORTED: 0,
                     ssl.TLSVersion.MAXIMUM_SUPPORTED: _MAXIMUM_AVAILABLE}.get(version, version)
            ok = lib.SSL_CTX_set_min_proto_version(self._ssl_ctx, limit)
        if not ok:
            lib.ERR_clear_error()
            raise ValueError(f"Unsupported protocol version 0x{limit & _UINT_MASK:x}")

    @property
    def minimum_version(self) -> ssl.TLSVersion:
        if self._fixed_version is not None:
            return ssl.TLSVersion.MINIMUM_SUPPORTED  # what CPython's TLSv1_2_method() context reports
        version = lib.SSL_CTX_get_min_proto_version(self._ssl_ctx)
        return ssl.TLSVersion(version or ssl.TLSVersion.MINIMUM_SUPPORTED)

    @minimum_version.setter
    def minimum_version(self, value: int) -> None:
        if value == ssl.TLSVersion.SSLv3:  # as ssl.py does, before the C setter runs
            self.options &= ~ssl.Options.OP_NO_SSLv3
        self._set_version_limit(value, maximum=False)

    @property
    def maximum_version(self) -> ssl.TLSVersion:
        if self._fixed_version is not None:
            return ssl.TLSVersion.MAXIMUM_SUPPORTED
        version = lib.SSL_CTX_get_max_proto_version(self._ssl_ctx)
        return ssl.TLSVersion(version or ssl.TLSVersion.MAXIMUM_SUPPORTED)

    @maximum_version.setter
    def maximum_version(self, value: int) -> None:
        self._set_version_limit(value, maximum=True)

    @property
    def num_tickets(self) -> int:
        return lib.SSL_CTX_get_num_tickets(self._ssl_ctx)

    @num_tickets.setter
    def num_tickets(self, value: int) -> None:
        count = _as_long(value)
        if count < 0:
            raise ValueError("value must be non-negative")
        if self._protocol != ssl.PROTOCOL_TLS_SERVER:
            raise ValueError("SSLContext is not a server context.")
        if lib.SSL_CTX_set_num_tickets(self._ssl_ctx, count) != 1:
            raise ValueError("failed to set num tickets.")

    _READ_ONLY_SECURITY_LEVEL = "attribute 'security_level' of '_ssl._SSLContext' objects is not writable"

    @property
    def security_level(self) -> int:
        return lib.SSL_CTX_get_security_level(self._ssl_ctx)

    @security_level.setter
    def security_level(self, value: int) -> None:
        raise AttributeError(self._READ_ONLY_SECURITY_LEVEL)

    @security_level.deleter
    def security_level(self) -> None:
        raise AttributeError(self._READ_ONLY_SECURITY_LEVEL)

    def set_ciphers(self, cipherlist: str) -> None:
        if not isinstance(cipherlist, str):
            raise TypeError(f"set_ciphers() argument must be str, not {type(cipherlist).__name__}")
        if "\0" in cipherlist:
            raise ValueError("embedded null character")
        if lib.SSL_CTX_set_cipher_list(self._ssl_ctx, cipherlist.encode("utf-8")) != 1:
            lib.ERR_clear_error()
            raise ssl.SSLError("No cipher can be selected.")

    def get_ciphers(self) -> list[dict]:
        # As CPython: the ciphers an SSL made from this context would offer (TLS 1.3 suites first).
        connection = lib.SSL_new(self._ssl_ctx)
        if connection == ffi.NULL:
            raise _library_error()
        try:
            ciphers = lib.SSL_get_ciphers(connection)
            return [_cipher_to_dict(lib.sk_SSL_CIPHER_value(ciphers, index))
                    for index in range(lib.sk_SSL_CIPHER_num(ciphers))]
        finally:
            lib.SSL_free(connection)

    def set_ecdh_curve(self, name: str) -> None:
        encoded = os.fsencode(name)
        if b"\0" in encoded:
            raise ValueError("embedded null byte")
        nid = lib.OBJ_sn2nid(encoded)
        if nid == lib.NID_undef:
            lib.ERR_clear_error()
            raise ValueError(f"unknown elliptic curve name {name!r}")
        groups = ffi.new("int[1]", [nid])
        if _ECDH_CURVE_IS_EC_KEY:
            # CPython 3.10 builds an EC_KEY for the curve (EC_KEY_new_by_curve_name), so a name that
            # is not an elliptic curve (SHA256), or a group that is not an EC_KEY curve (X25519,
            # X448, FFDHE), raises OpenSSL's EC UNKNOWN_GROUP; the SSL_CTX_set_tmp_ecdh() after it
            # is unchecked. (A builtin curve that is no TLS group, e.g. secp112r1, is ignored there
            # and refused here.)
            if nid in _NOT_EC_KEY_GROUPS or not lib.SSL_CTX_set1_groups(self._ssl_ctx, groups, 1):
                lib.ERR_clear_error()
                raise _ssl_error(_EC_R_UNKNOWN_GROUP, "unknown group", "EC", "UNKNOWN_GROUP")
            return
        if not lib.SSL_CTX_set1_groups(self._ssl_ctx, groups, 1):
            raise _library_error()

    def set_groups(self, groups: str, /) -> None:
        """The key exchange groups this context offers or accepts, in OpenSSL's list format
        ("X25519:secp256r1:ffdhe2048"; SSL_CTX_set1_groups_list). A ktls_ossl extension, named and
        shaped after the set_groups() that CPython adds in 3.15 (gh-136306); CPython 3.11-3.14 has
        only set_ecdh_curve(), one group at a time. FFDHE groups make TLS 1.3 finite-field DH
        possible; TLS 1.2 DHE takes its parameters from load_dh_params().

        An unknown group (or an empty list) raises ssl.SSLError("unrecognized group"), with no
        library or reason: OpenSSL 3.0 does not always queue an error for this.
        """
        if not isinstance(groups, str):
            got = "None" if groups is None else type(groups).__name__  # as _PyArg_BadArgument
            raise TypeError(f"set_groups() argument must be str, not {got}")
        if "\0" in groups:
            raise ValueError("embedded null character")
        lib.ERR_clear_error()
        if lib.SSL_CTX_set1_groups_list(self._ssl_ctx, groups.encode("utf-8")) != 1:
            raise _message_error("unrecognized group")

    def session_stats(self) -> dict:
        ctx = self._ssl_ctx
        return {
            "number": lib.SSL_CTX_sess_number(ctx),
            "connect": lib.SSL_CTX_sess_connect(ctx),
            "connect_good": lib.SSL_CTX_sess_connect_good(ctx),
            "connect_renegotiate": lib.SSL_CTX_sess_connect_renegotiate(ctx),
            "accept": lib.SSL_CTX_sess_accept(ctx),
            "accept_good": lib.SSL_CTX_sess_accept_good(ctx),
            "accept_renegotiate": lib.SSL_CTX_sess_accept_renegotiate(ctx),
            "hits": lib.SSL_CTX_sess_hits(ctx),
            "misses": lib.SSL_CTX_sess_misses(ctx),
            "timeouts": lib.SSL_CTX_sess_timeouts(ctx),
            "cache_full": lib.SSL_CTX_sess_cache_full(ctx),
        }

    # --- wrapping -------------------------------------------------------------------------------

    # wrap_socket() is inherited: ssl.py calls self.sslsocket_class._create(..., context=self).

    def wrap_bio(
            self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
            server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None,
    ) -> NoReturn:
        raise NotImplementedError(
            "ktls_ossl.SSLContext cannot wrap memory BIOs: kernel TLS needs a connected socket. "
            "For asyncio use ktls_ossl.asyncio (open_connection, start_server, or a loop from "
            "ktls_ossl.asyncio.new_event_loop()); use ssl.SSLContext for SSLObject/MemoryBIO.")

    # Members newer CPythons add that would configure CPython's hidden, unused SSL_CTX: refused.
    def set_psk_client_callback(
            self, callback: Callable[[str | None], tuple[str | None, bytes]] | None) -> NoReturn:
        """CPython 3.13's TLS-PSK client callback: not supported by ktls_ossl."""
        raise NotImplementedError("ktls_ossl.SSLContext does not support set_psk_client_callback() "
                                  "(TLS-PSK); use ssl.SSLContext for pre-shared keys")

    def set_psk_server_callback(
            self, callback: Callable[[str | None], bytes] | None, identity_hint: str | None = None,
    ) -> NoReturn:
        """CPython 3.13's TLS-PSK server callback: not supported by ktls_ossl."""
        raise NotImplementedError("ktls_ossl.SSLContext does not support set_psk_server_callback() "
                                  "(TLS-PSK); use ssl.SSLContext for pre-shared keys")

    def _wrap_bio(self, *args, **kwargs):
        # CPython's C entry point; its context is never configured, so refuse instead of
        # handing out an SSLObject with CPython's default settings.
        raise NotImplementedError("ktls_ossl.SSLContext cannot wrap memory BIOs")

    def _wrap_socket(self, sock, server_side, server_hostname=None, *, owner=None, session=None):
        """CPython's C entry point, with its signature: ssl.SSLSocket._create() calls it to get
        the object it keeps in ``_sslobj``. Here that is the socket layer's Connection on our
        SSL_CTX, never CPython's _ssl._SSLSocket. As CPython's newPySSLSocket, a context made for
        one role refuses a socket of the other, before anything else is set up."""
        if server_side and self._protocol == ssl.PROTOCOL_TLS_CLIENT:
            raise _message_error("Cannot create a server socket with a PROTOCOL_TLS_CLIENT context")
        if not server_side and self._protocol == ssl.PROTOCOL_TLS_SERVER:
            raise _message_error("Cannot create a client socket with a PROTOCOL_TLS_SERVER context")
        return Connection(self, sock, bool(server_side), server_hostname, owner=owner, session=session)


def _cipher_to_dict(cipher) -> dict:
    """CPython's cipher_to_dict()."""
    def text(pointer):
        return ffi.string(pointer).decode("utf-8") if pointer != ffi.NULL else None

    def long_name(nid):
        return text(lib.OBJ_nid2ln(nid)) if nid != lib.NID_undef else None

    description = ffi.new("char[512]")
    lib.SSL_CIPHER_description(cipher, description, 511)
    description_text = ffi.string(description).decode("utf-8")
    if len(description_text) > 1 and description_text.endswith("\n"):
        description_text = description_text[:-1]
    alg_bits = ffi.new("int *")
    strength_bits = lib.SSL_CIPHER_get_bits(cipher, alg_bits)
    return {
        "id": lib.SSL_CIPHER_get_id(cipher),
        "name": text(lib.SSL_CIPHER_get_name(cipher)),
        "protocol": text(lib.SSL_CIPHER_get_version(cipher)),
        "description": description_text,
        "strength_bits": strength_bits,
        "alg_bits": alg_bits[0],
        "aead": bool(lib.SSL_CIPHER_is_aead(cipher)),
        "symmetric": long_name(lib.SSL_CIPHER_get_cipher_nid(cipher)),
        "digest": long_name(lib.SSL_CIPHER_get_digest_nid(cipher)),
        "kea": long_name(lib.SSL_CIPHER_get_kx_nid(cipher)),
        "auth": long_name(lib.SSL_CIPHER_get_auth_nid(cipher)),
    }



# What ssl.create_default_context() may set beyond a fresh SSLContext, in an order that is valid to
# assign (check_hostname before verify_mode).
_DEFAULT_CONTEXT_SETTINGS = ("options", "verify_flags", "minimum_version", "maximum_version",
                             "post_handshake_auth", "hostname_checks_common_name", "check_hostname",
                             "verify_mode")
_STDLIB_DEFAULTS: dict = {}


def _stdlib_default_settings(purpose) -> list:
    """The settings in which this Python's ssl.create_default_context(purpose) differs from a fresh
    ssl.SSLContext of the same protocol; computed once per purpose (it loads the default CAs once,
    and opens SSLKEYLOGFILE as the context made next does: the key log header is written once)."""
    key = purpose.nid
    if key not in _STDLIB_DEFAULTS:
        stdlib = ssl.create_default_context(purpose)
        fresh = ssl.SSLContext(stdlib.protocol)
        _STDLIB_DEFAULTS[key] = [(name, getattr(stdlib, name)) for name in _DEFAULT_CONTEXT_SETTINGS
                                 if getattr(stdlib, name) != getattr(fresh, name)]
    return _STDLIB_DEFAULTS[key]


def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: StrOrBytesPath | None = None,
        capath: StrOrBytesPath | None = None, cadata: str | ReadableBuffer | None = None,
) -> SSLContext:
    """ssl.create_default_context(), building a ktls_ossl SSLContext (same settings, step by step)."""
    if not isinstance(purpose, ssl._ASN1Object):
        raise TypeError(purpose)
    if purpose == ssl.Purpose.SERVER_AUTH:
        context = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
    elif purpose == ssl.Purpose.CLIENT_AUTH:
        context = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    else:
        raise ValueError(purpose)
    # Whatever else this Python's own create_default_context() sets (3.13: VERIFY_X509_STRICT and
    # VERIFY_X509_PARTIAL_CHAIN), read from it at run time rather than hard-coded per version.
    for name, value in _stdlib_default_settings(purpose):
        setattr(context, name, value)
    if cafile or capath or cadata:
        context.load_verify_locations(cafile, capath, cadata)
    elif context.verify_mode != ssl.CERT_NONE:
        # No explicit CA: the system's, as CPython loads them (may silently load nothing).
        context.load_default_certs(purpose)
    keylogfile = os.environ.get("SSLKEYLOGFILE")
    if keylogfile and not sys.flags.ignore_environment:
        context.keylog_filename = keylogfile
    return context
