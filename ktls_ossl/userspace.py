"""The record layer where OpenSSL keeps it: on the socket, in user space.

A connection's record layer is decided once, when the handshake completes: the kernel's
(session.KernelSession) or OpenSSL's (``OpenSSLRecordLayer``: Policy.USERSPACE, Policy.AFTER_CCS,
a connection the kernel could not take, and the sending direction of one whose TX the kernel
could not take). Both offer the same I/O methods, each taking the caller's waiter, so a front
calls one of them and never asks again which it is.
"""
from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from .handshake import WANT_READ

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from .after_ccs import OpenSSLOffloadWatch
    from .handshake import Handshake
    from .session import Waiter

__all__ = ["OpenSSLRecordLayer"]


class OpenSSLRecordLayer:
    """OpenSSL's SSL object on the socket carries the records. ``check_open()`` raises where the
    owner closed the socket meanwhile (a failure then is that, not OpenSSL's error);
    ``offload`` watches OpenSSL's own kTLS (Policy.AFTER_CCS); ``rx_reason`` says why the kernel
    does not carry reception."""

    tickets_received = 0  # OpenSSL takes tickets itself here: the session counts what it relays
    failure = None  # OpenSSL fails its own later calls
    key_updates = 0
    key_limit_reached = False

    def __init__(self, handshake: Handshake, *, check_open: Callable[[], None],
                 offload: OpenSSLOffloadWatch | None, rx_reason: str | None) -> None:
        self._handshake = handshake
        self._check_open = check_open
        self._offload = offload
        self._rx_reason = rx_reason

    def raise_if_failed(self) -> None:
        """OpenSSL fails its own later calls: nothing to add."""

    @property
    def pending(self) -> int:
        return self._handshake.pending()

    def read_into(self, view: memoryview, nbytes: int, waiter: Waiter) -> int:
        """SSL_read_ex into ``view``; 0 once the peer's close_notify came and ours was not sent
        (CPython's ssl then reads b"")."""
        while True:
            try:
                count = self._handshake.read_into(view, nbytes)
            except ssl.SSLZeroReturnError:
                if self._handshake.received_shutdown_only():
                    return 0
                raise
            except Exception:
                self._check_open()  # the socket closed under the call: that is the error
                raise
            if count >= 0:
                return count
            waiter.wait(-count)

    def recv_record(self, bufsize: int, waiter: Waiter) -> tuple[int, bytes]:
        raise ValueError(f"recv_record needs the kernel to carry the receive direction ({self._rx_reason})")

    def write(self, data: ReadableBuffer, waiter: Waiter) -> int:
        if self._offload is not None:
            self._offload.check_send()
        while True:
            try:
                count = self._handshake.write(data)
            except Exception:
                self._check_open()
                raise
            if count >= 0:
                return count
            waiter.wait(-count)

    def prepare_sendfile(self) -> Callable[[int, int, int], int] | None:
        """OpenSSL's SSL_sendfile where its own kTLS sends (Policy.AFTER_CCS), else None: the
        caller sends the file through write()."""
        if self._offload is None or not self._offload.tx:
            return None
        self._offload.check_send()
        return self._handshake.sendfile

    def key_update(self, request_peer: bool = False) -> None:
        if self._offload is not None:
            self._offload.check_key_update()
        self._handshake.key_update(request_peer)

    def request_client_certificate(self) -> None:
        self._handshake.verify_client_post_handshake()

    def shutdown(self, waiter: Waiter) -> None:
        """SSL_shutdown until both close_notify are through (CPython's unwrap)."""
        zeros = 0
        while True:
            result = self._handshake.shutdown_step()
            if result > 0:
                return
            if result == 0:
                zeros += 1
                if zeros > 1:
                    return
                continue
            waiter.wait(-result, "read" if -result == WANT_READ else "write")
