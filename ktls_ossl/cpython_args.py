"""The ssl drop-in's argument conversions and error objects, as CPython's _ssl.c makes them.

CPython parses property values with PyArg_Parse formats and raises OpenSSL's errors through
_setSSLError; these functions reproduce the accepted types, wrap-arounds, overflow messages and
exception attributes (library, reason, the text) that ktls_ossl's SSLContext must match.
"""
from __future__ import annotations

import operator
import os
import ssl
import sys

from . import errors
from ._ossl import ffi, lib

# --- C argument conversions -------------------------------------------------------------------
# CPython parses property values with PyArg_Parse formats; these reproduce the accepted types,
# the wrap-around and the overflow messages of each format used (Linux LP64: long is 64 bits).

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_BITS = 8 * ffi.sizeof("long")
_LONG_MIN, _LONG_MAX = -(1 << (_LONG_BITS - 1)), (1 << (_LONG_BITS - 1)) - 1
_ULONG_MASK = (1 << (8 * ffi.sizeof("unsigned long"))) - 1
_UINT_MASK = (1 << 32) - 1
_UINT64_MASK = (1 << 64) - 1


def _as_long(value) -> int:
    """PyArg format "l": any __index__ object, within C long."""
    number = operator.index(value)
    if not _LONG_MIN <= number <= _LONG_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return number


def _as_int(value) -> int:
    """PyArg format "i"."""
    number = _as_long(value)
    if number > _INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if number < _INT_MIN:
        raise OverflowError("signed integer is less than minimum")
    return number


def _as_unsigned_long_mask(value) -> int:
    """PyArg format "k": an int (no __index__), reduced modulo 2**64 without overflow checks."""
    if not isinstance(value, int):
        raise TypeError(f"argument must be int, not {type(value).__name__}")
    return value & _ULONG_MASK


# CPython 3.12 made SSLContext.options a uint64_t both ways: set with any int in
# [0, 2**64), read back unsigned; 3.10/3.11 go through a C long.
_OPTIONS_ARE_UINT64 = sys.version_info >= (3, 12)


def _as_uint64(value) -> int:
    """CPython 3.12+'s uint64 converter: an int (no __index__) in [0, 2**64)."""
    if not isinstance(value, int):
        raise TypeError(f"argument must be int, not {type(value).__name__}")
    if value < 0:
        raise OverflowError("can't convert negative int to unsigned")
    if value > _UINT64_MASK:
        raise OverflowError("int too big to convert")
    return int(value)  # a bool as its int (no "~ on bool" DeprecationWarning on 3.12+)


def _as_unsigned_int_mask(value) -> int:
    """PyArg format "I": any __index__ object, reduced modulo 2**32."""
    return operator.index(value) & _UINT_MASK


def _filesystem_path(value, what: str) -> bytes:
    """PyUnicode_FSConverter, with the TypeError CPython rewords for certfile/keyfile/cafile/capath."""
    try:
        path = os.fsencode(value)
    except TypeError:
        raise TypeError(f"{what} should be a valid filesystem path") from None
    if b"\0" in path:
        raise ValueError("embedded null byte")
    return path


# --- errors -------------------------------------------------------------------------------------

def _ssl_error(number: int, text: str, library: str | None, reason: str | None) -> ssl.SSLError:
    """An SSLError laid out as CPython's fill_and_set_sslerror() lays it out."""
    if library and reason:
        message = f"[{library}: {reason}] {text} {errors.LOCATION}"
    elif library:
        message = f"[{library}] {text} {errors.LOCATION}"
    else:
        message = f"{text} {errors.LOCATION}"
    exc = ssl.SSLError(number, message)
    exc.library = library
    exc.reason = reason
    return exc


def _library_error() -> ssl.SSLError:
    """What CPython's context methods raise when OpenSSL fails (_setSSLError): the last error in
    the queue, with its reason code as ``errno``; the queue is left empty.

    (errors.ssl_error_from_code is the connection-level variant, whose errno is SSL_ERROR_SSL.)
    """
    code = errors.pop_error_code()
    if code == 0:
        return _ssl_error(0, "unknown error", None, None)
    library, reason = errors.error_names(code)
    text = lib.ERR_reason_error_string(code)
    text = ffi.string(text).decode("utf-8", "replace") if text != ffi.NULL else "unknown error"
    return _ssl_error(lib.ERR_GET_REASON(code), text, library, reason)


def _message_error(text: str) -> ssl.SSLError:
    """_setSSLError with a fixed message: errno 0, no library; the queue is left empty."""
    lib.ERR_clear_error()
    return _ssl_error(0, text, None, None)


def _os_error(number: int) -> OSError:
    """PyErr_SetFromErrno: OSError(errno, strerror), which picks the subclass (FileNotFoundError, ...)."""
    lib.ERR_clear_error()
    return OSError(number, os.strerror(number))


# --- passwords ----------------------------------------------------------------------------------

def _password_bytes(value, type_error: str) -> bytes:
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        raise TypeError(type_error)
    if len(data) > _INT_MAX:
        raise ValueError(f"password cannot be longer than {_INT_MAX} bytes")
    return data


class _PasswordSource:
    """The password for one load_cert_chain() call, and the exception its callable raised."""

    def __init__(self, password):
        self.callable = password if callable(password) else None
        self.data = None if self.callable else _password_bytes(
            password, "password should be a string or callable")
        self.error: BaseException | None = None

    def fill(self, buffer, size: int) -> int:
        if self.error is not None:
            return -1  # OpenSSL may ask again after a failure; keep the first exception
        try:
            if self.callable is not None:
                data = _password_bytes(self.callable(), "password callback must return a string")
            else:
                data = self.data
            if len(data) > size:
                raise ValueError(f"password cannot be longer than {size} bytes")
            ffi.memmove(buffer, data, len(data))
            return len(data)
        except BaseException as exc:  # re-raised by load_cert_chain, as CPython does
            self.error = exc
            return -1


@ffi.def_extern()
def ktls_passwd_cb(buffer, size, rwflag, userdata):
    if userdata == ffi.NULL:
        return -1
    return ffi.from_handle(userdata).fill(buffer, size)


# --- ALPN ---------------------------------------------------------------------------------------
