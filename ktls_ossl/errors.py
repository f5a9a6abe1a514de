"""Exceptions: OpenSSL's error queue as CPython's ssl exceptions, and kernel TLS failures.

OpenSSL errors become exactly the ssl.SSLError subclasses CPython raises, with the same
``library`` and ``reason`` names (from tables generated out of OpenSSL's headers at build time, as
CPython generates its own, on every Python version) and the same message layout, so code written
against ``ssl`` keeps working. Kernel failures are ssl.SSLError subclasses
too, with library "KTLS", the OS errno, and a message that says what to do.
"""
from __future__ import annotations

import errno as errno_module
import os
import ssl
import _ssl
import sys
import traceback
import types

from ._ossl import ffi, lib

LOCATION = "(ktls_ossl)"

# OpenSSL loads libssl's error texts at its first SSL_CTX_new; an error rendered before that (a
# peer alert in a process that has made no context yet) would read "unknown error" otherwise.
lib.OPENSSL_init_ssl(lib.OPENSSL_INIT_LOAD_SSL_STRINGS | lib.OPENSSL_INIT_LOAD_CRYPTO_STRINGS, ffi.NULL)


def _name_table(read, key) -> dict:
    """{key(entry): name} from one of the extension's tables (cffi_build/openssl/errnames.py)."""
    count = ffi.new("size_t *")
    entries = read(count)
    return {key(entry): ffi.string(entry.name).decode("ascii") for entry in (entries[i] for i in range(count[0]))}


# {lib code: name} and {(lib code, reason code): name}, the names CPython gives SSLError.library and
# .reason, generated from the OpenSSL headers the extension was built with.
_LIB_NAMES = _name_table(lib.ktls_err_lib_names, lambda entry: entry.lib)
_REASON_NAMES = _name_table(lib.ktls_err_reason_names, lambda entry: (entry.lib, entry.reason))


def _as_this_python_names(generated: dict, cpython: dict | None) -> dict:
    """Our names, limited to the ones the running CPython gives: its table was generated from the
    OpenSSL of its own build, and a reason it has no name for renders as "[SSL] ..." there (such
    as TLSV1_ALERT_NO_APPLICATION_PROTOCOL on 3.11), so it must here too. Python 3.10 and 3.11 tell
    (_ssl's tables); 3.12+ do not, and the generated names stand."""
    if not cpython:
        return generated
    return {key: name for key, name in generated.items() if key in cpython}


_REASON_NAMES = _as_this_python_names(_REASON_NAMES, getattr(_ssl, "err_codes_to_names", None))

# {(library name, reason name): (lib code, reason code)}: the way back from a CPython-style exception
# to OpenSSL's error (another front words it in its own library's terms, see reason_code).
_REASON_CODES = {(_LIB_NAMES.get(lib_code), name): (lib_code, reason_code)
                 for (lib_code, reason_code), name in _REASON_NAMES.items()}


def reason_code(library: str | None, reason: str | None) -> tuple[int, int] | None:
    """(lib code, reason code) of the OpenSSL error CPython names ``library``/``reason``."""
    return _REASON_CODES.get((library, reason))


SSL_R_CERTIFICATE_VERIFY_FAILED = 134
SSL_R_UNEXPECTED_EOF_WHILE_READING = 294
SSL_R_ALERT_BASE = 1000  # OpenSSL reports a received alert N as reason 1000 + N


def _text(pointer) -> str | None:
    if pointer == ffi.NULL:
        return None
    return ffi.string(pointer).decode("utf-8", "replace")


def error_names(code: int) -> tuple[str | None, str | None]:
    """(library, reason) names for a packed OpenSSL error code, as CPython names them."""
    lib_code = lib.ERR_GET_LIB(code)
    reason_code = lib.ERR_GET_REASON(code)
    return _LIB_NAMES.get(lib_code), _REASON_NAMES.get((lib_code, reason_code))


def _make(exc_type, code: int, message: str, library, reason, **attributes):
    if library and reason:
        text = f"[{library}: {reason}] {message} {LOCATION}"
    elif library:
        text = f"[{library}] {message} {LOCATION}"
    else:
        text = f"{message} {LOCATION}"
    exc = exc_type(int(code), text)
    exc.library = library
    exc.reason = reason
    for name, value in attributes.items():
        setattr(exc, name, value)
    return exc


def verify_message(verify_code: int, hostname: str | None = None) -> str:
    """CPython's wording of a certificate verification failure."""
    if verify_code == lib.X509_V_ERR_HOSTNAME_MISMATCH and hostname is not None:
        return f"Hostname mismatch, certificate is not valid for {hostname!r}."
    if verify_code == lib.X509_V_ERR_IP_ADDRESS_MISMATCH and hostname is not None:
        return f"IP address mismatch, certificate is not valid for {hostname!r}."
    return _text(lib.X509_verify_cert_error_string(verify_code)) or f"error {verify_code}"


def pop_error_code() -> int:
    """The error CPython would report (the last one queued), leaving the queue empty."""
    code = lib.ERR_peek_last_error()
    lib.ERR_clear_error()
    return code


def ssl_error_from_code(code: int, *, verify_result: int | None = None, hostname: str | None = None,
                        default_message: str = "A failure in the SSL library occurred") -> ssl.SSLError:
    """The exception CPython raises for SSL_ERROR_SSL with ``code`` at the top of the queue."""
    if code == 0:
        return _make(ssl.SSLError, ssl.SSL_ERROR_SSL, default_message, None, None)
    library, reason = error_names(code)
    # CPython's wording where OpenSSL has no text for the reason (e.g. a received fatal close_notify,
    # reason 1000): "unknown error"; "A failure in the SSL library occurred" is for no code at all.
    message = _text(lib.ERR_reason_error_string(code)) or "unknown error"
    lib_code, reason_code = lib.ERR_GET_LIB(code), lib.ERR_GET_REASON(code)
    if lib_code == lib.ERR_LIB_SSL and reason_code == SSL_R_CERTIFICATE_VERIFY_FAILED:
        verify_code = verify_result if verify_result is not None else 0
        detail = verify_message(verify_code, hostname)
        return _make(
            ssl.SSLCertVerificationError, ssl.SSL_ERROR_SSL, f"{message}: {detail}", library, reason,
            verify_code=verify_code, verify_message=detail,
        )
    if lib_code == lib.ERR_LIB_SSL and reason_code == SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return _make(ssl.SSLEOFError, ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol", library, reason)
    return _make(ssl.SSLError, ssl.SSL_ERROR_SSL, message, library, reason)


def for_failed_call(code: int, result: int, saved_errno: int = 0, *, verify_result: int,
                    hostname: str | None) -> BaseException:
    """What CPython raises when an SSL_* call failed and SSL_get_error said ``code``: ``result`` is
    the call's return value, ``saved_errno`` errno right after it, ``verify_result`` and
    ``hostname`` name a certificate verification failure."""
    if code == lib.SSL_ERROR_ZERO_RETURN:
        lib.ERR_clear_error()
        return zero_return_error()
    if code == lib.SSL_ERROR_SYSCALL:
        top = pop_error_code()
        if top:
            return ssl_error_from_code(top)
        return syscall_error(result, saved_errno)
    if code == lib.SSL_ERROR_WANT_X509_LOOKUP:
        lib.ERR_clear_error()
        exc = ssl.SSLError(code, "The operation did not complete (X509 lookup)")
        exc.library = exc.reason = None
        return exc
    return ssl_error_from_code(pop_error_code(), verify_result=verify_result, hostname=hostname)


def eof_error() -> ssl.SSLEOFError:
    return _make(ssl.SSLEOFError, ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol", None, None)


# How CPython reports SSL_ERROR_SYSCALL with OpenSSL's queue empty after SSL_read_ex/SSL_write_ex
# (which return 0 on failure): up to 3.12 a return of 0 reads as EOF, whatever errno says, so a
# reset or a broken pipe is SSLEOFError without a reason; 3.13 raises the errno (ConnectionResetError,
# BrokenPipeError) where there is one. Measured side by side in tests/test_connection_end.py.
_ERRNO_OVER_ZERO_RETURN = sys.version_info >= (3, 13)


def syscall_error(result: int, saved_errno: int) -> BaseException:
    """The exception for an OpenSSL call that failed with SSL_ERROR_SYSCALL and no queued error:
    ``result`` is what the call returned (0 for the *_ex calls, -1 for handshake and shutdown),
    ``saved_errno`` errno right after it. Kernel TLS reads and writes take the *_ex view."""
    if saved_errno and (result != 0 or _ERRNO_OVER_ZERO_RETURN):
        return OSError(saved_errno, os.strerror(saved_errno))  # its subclass, as CPython's
    if result == 0:
        return eof_error()
    return ssl_error_from_code(0, default_message="Some I/O error occurred")


def unexpected_eof_error() -> ssl.SSLEOFError:
    """TCP EOF without close_notify, as OpenSSL 3 reports it (SSL_R_UNEXPECTED_EOF_WHILE_READING)
    and CPython words it: what a user-space connection raises for the same event."""
    return _make(ssl.SSLEOFError, ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol", "SSL",
                 _REASON_NAMES.get((lib.ERR_LIB_SSL, SSL_R_UNEXPECTED_EOF_WHILE_READING), "UNEXPECTED_EOF_WHILE_READING"))


def zero_return_error() -> ssl.SSLZeroReturnError:
    return _make(ssl.SSLZeroReturnError, ssl.SSL_ERROR_ZERO_RETURN,
                 "TLS/SSL connection has been closed (EOF)", None, None)


def want_read_error() -> ssl.SSLWantReadError:
    return _make(ssl.SSLWantReadError, ssl.SSL_ERROR_WANT_READ, "The operation did not complete (read)", None, None)


def want_write_error() -> ssl.SSLWantWriteError:
    return _make(ssl.SSLWantWriteError, ssl.SSL_ERROR_WANT_WRITE, "The operation did not complete (write)", None, None)


def peer_alert_error(description: int) -> ssl.SSLError:
    """A fatal alert the peer sent, as a user-space connection raises it: OpenSSL queues reason
    1000 + description (SSL_AD_REASON_OFFSET), which CPython names and words from its tables
    (e.g. "sslv3 alert handshake failure"; a fatal close_notify has no name and no text)."""
    return ssl_error_from_code((lib.ERR_LIB_SSL << 23) | (SSL_R_ALERT_BASE + description))


def local_protocol_error(reason: str, message: str) -> ssl.SSLError:
    """A protocol violation we detected ourselves (e.g. a record type that may not appear)."""
    return _make(ssl.SSLError, ssl.SSL_ERROR_SSL, message, "SSL", reason)


# --- Kernel TLS ---------------------------------------------------------------------------------

class KernelTLSError(ssl.SSLError):
    """A kernel TLS operation failed. ``errno`` is the OS error (0 where no system call failed),
    ``reason`` a stable name, ``message`` the plain sentence (what happened, what to do) that the
    rendered text wraps: "[KTLS: reason] message (ENAME: strerror)", without the errno part for 0."""

    library = "KTLS"

    def __init__(self, errno: int, message: str, reason: str):
        text = f"[KTLS: {reason}] {message}"
        if errno:
            name = errno_module.errorcode.get(errno, str(errno))
            text += f" ({name}: {os.strerror(errno)})"
        super().__init__(errno, text)
        self.library = "KTLS"
        self.reason = reason
        self.message = message


class KTLSUnavailableError(KernelTLSError):
    """The tls ULP cannot be attached (module missing, socket not connected, ...)."""


class KTLSCipherUnavailableError(KernelTLSError):
    """The kernel refused the keys for this version and cipher."""


class KTLSRekeyUnsupportedError(KernelTLSError):
    """The kernel cannot replace keys on a live socket (TLS 1.3 rekey needs Linux 6.14+)."""


class KTLSRecordError(KernelTLSError):
    """The kernel rejected a received record; the connection cannot continue."""


class KTLSKeyExpiredError(KernelTLSError):
    """The peer's KeyUpdate paused reception until the next key is installed (EKEYEXPIRED)."""


class KTLSUnwrappedError(KernelTLSError):
    """unwrap() ended TLS on a socket whose record layer is the kernel's, which cannot take its
    keys off a socket again: sending or receiving plaintext there is impossible."""


class KTLSKeyLimitError(KernelTLSError):
    """Sending more would exceed the AEAD usage limit of the current key, and the kernel cannot
    update keys (RFC 8446 section 5.5): close the connection and open a new one."""


# --- Exceptions raised by the application's callbacks ----------------------------------------------

def report_callback_error(exc: BaseException, callback, message: str | None) -> None:
    """Report an exception that a callback raised where nobody can catch it, as CPython reports
    those of its own callbacks: through ``sys.unraisablehook``. Python code cannot build the
    hook's UnraisableHookArgs, so a hook the application installed gets an object with the same
    attributes, and the default hook's output is written as the default hook writes it.
    ``message`` None is PyErr_WriteUnraisable(callback)'s: the hook gets err_msg None and the
    default hook writes "Exception ignored in"."""
    hook = sys.unraisablehook
    if hook is sys.__unraisablehook__:
        print(f"{message or 'Exception ignored in'}: {callback!r}", file=sys.stderr)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return
    hook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                               err_msg=message, object=callback))


class KTLSAgentError(KernelTLSError):
    """The handshake agent (ktls_ossl.agent) could not be used: unreachable (AGENT_UNREACHABLE),
    refused this process (AGENT_REFUSED), at a limit (AGENT_BUSY), gone mid-conversation
    (AGENT_GONE) or answering outside the protocol (AGENT_PROTOCOL)."""
