"""The ssl drop-in's callbacks from inside a handshake, with CPython's semantics.

The engine's Handshake never calls up into a front: it calls the ``HandshakeHooks`` it was handed.
For KTLSSocket those hooks are made here, and turn the engine's plain calls into what CPython's
_ssl does for ``SSLContext._msg_callback`` (_PySSL_msg_callback) and ``SSLContext.sni_callback``
(_servername_callback): the socket as first argument, the context current at the time (an SNI
callback may switch it), ssl.py's enum conversions, and exceptions reported or re-raised where
CPython reports or re-raises them.
"""
from __future__ import annotations

import operator
import ssl
import weakref
from typing import TYPE_CHECKING

from . import errors
from ._ossl import ffi, lib
from .handshake import HandshakeHooks

if TYPE_CHECKING:
    from .socket import Connection

_CHANGE_CIPHER_SPEC = lib.SSL3_RT_CHANGE_CIPHER_SPEC
_HANDSHAKE = lib.SSL3_RT_HANDSHAKE
_ALERT = lib.SSL3_RT_ALERT
_HEADER = lib.SSL3_RT_HEADER
_INNER_CONTENT_TYPE = lib.SSL3_RT_INNER_CONTENT_TYPE
_CPYTHON_CHANGE_CIPHER_SPEC_MSG = 0x0101  # CPython's stand-in message type for a ChangeCipherSpec
_LONG_BITS = 8 * ffi.sizeof("long")
_LONG_MIN, _LONG_MAX = -(1 << (_LONG_BITS - 1)), (1 << (_LONG_BITS - 1)) - 1


class MessageCallback:
    """ssl.SSLContext._msg_callback's wrapper: OpenSSL's numbers as ssl's enums where they have a
    member, left as ints where not."""

    def __init__(self, user_function):
        self.user_function = user_function

    @staticmethod
    def _member(enum_type, value):
        try:
            return enum_type(value)
        except ValueError:
            return value

    def __call__(self, conn, direction, version, content_type, msg_type, data):
        version = self._member(ssl.TLSVersion, version)
        content_type = self._member(ssl._TLSContentType, content_type)
        if content_type == ssl._TLSContentType.HEADER:
            message_types = ssl._TLSContentType
        elif content_type == ssl._TLSContentType.ALERT:
            message_types = ssl._TLSAlertType
        else:
            message_types = ssl._TLSMessageType
        msg_type = self._member(message_types, msg_type)
        return self.user_function(conn, direction, version, content_type, msg_type, data)


def hooks_for(connection: Connection) -> HandshakeHooks:
    """The hooks of a KTLSSocket's handshake. Messages are forwarded only when the context had a
    _msg_callback when the connection was made (as CPython sets SSL_set_msg_callback then); they go
    to the callback of the context current when they happen. The connection is held weakly: the
    handshake it owns must not keep it alive."""
    connection_ref = weakref.ref(connection)

    def message(sent: bool, version: int, content_type: int, data: bytes) -> None:
        _to_message_callback(connection_ref(), sent, version, content_type, data)

    def servername(raw_name: bytes | None) -> int | None:
        return _to_sni_callback(connection_ref(), raw_name)

    forward_messages = connection.context._msg_callback_wrapper is not None
    return HandshakeHooks(message=message if forward_messages else None, servername=servername)


def _parties(connection: Connection | None):
    """(socket, context) of a connection whose socket still exists, else None."""
    if connection is None:
        return None
    sock = connection._owner()
    return None if sock is None else (sock, connection.context)


def _to_message_callback(connection: Connection | None, sent: bool, version: int, content_type: int,
                         data: bytes) -> None:
    """As CPython's _PySSL_msg_callback: the socket, "read"/"write", the version (for a record
    header, the header's own), the content type, the message type as CPython derives it, the
    bytes. What the callback raises, the handshake raises once its operation has ended."""
    parties = _parties(connection)
    if parties is None:
        return
    sock, context = parties
    wrapper = context._msg_callback_wrapper
    if wrapper is None:
        return
    if content_type == _HEADER and len(data) >= 3:
        version = _signed_char(data[1]) << 8 | _signed_char(data[2])
    wrapper(sock, "write" if sent else "read", version, content_type, _cpython_msg_type(content_type, data), data)


def _to_sni_callback(connection: Connection | None, raw_name: bytes | None) -> int | None:
    """As CPython's _servername_callback: the name as sent (an A-label, bpo-28414); the callback's
    exception or unusable answer reported through sys.unraisablehook, never raised: the handshake
    then fails with OpenSSL's CALLBACK_FAILED and the alert CPython sends (handshake_failure for an
    exception, internal_error for what is no C long, else the number returned). None: go on."""
    parties = _parties(connection)
    if parties is None:
        return None
    sock, context = parties
    callback = context.sni_callback
    if callback is None:
        return None
    server_name = None
    if raw_name is not None:
        try:
            server_name = raw_name.decode("ascii")
        except UnicodeDecodeError as exc:
            errors.report_callback_error(exc, raw_name, None)
            return lib.SSL_AD_INTERNAL_ERROR
    try:
        result = callback(sock, server_name, context)
    except BaseException as exc:
        errors.report_callback_error(exc, callback, None)
        return lib.SSL_AD_HANDSHAKE_FAILURE
    if result is None:
        return None
    try:
        value = operator.index(result)  # PyLong_AsLong: __index__, a C long
        if not _LONG_MIN <= value <= _LONG_MAX:
            raise OverflowError("Python int too large to convert to C long")
    except Exception as exc:
        errors.report_callback_error(exc, result, None)
        return lib.SSL_AD_INTERNAL_ERROR
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)  # (int) of the long


def _signed_char(byte: int) -> int:
    return byte - 256 if byte > 127 else byte  # CPython reads the buffer as (signed) char


def _cpython_msg_type(content_type: int, data: bytes) -> int:
    """The message type CPython's _PySSL_msg_callback derives from OpenSSL's report."""
    if content_type == _CHANGE_CIPHER_SPEC:
        return _CPYTHON_CHANGE_CIPHER_SPEC_MSG
    if content_type == _ALERT:
        return _signed_char(data[1]) if len(data) > 1 else -1
    if content_type in (_HANDSHAKE, _HEADER, _INNER_CONTENT_TYPE):
        return _signed_char(data[0]) if data else -1
    return -1
