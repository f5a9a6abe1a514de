"""KTLSSocket: the ssl.SSLSocket interface over a kernel TLS (or OpenSSL) connection.

ssl.SSLSocket keeps all TLS work in ``self._sslobj`` (CPython's _ssl._SSLSocket) and is otherwise
plain Python. KTLSSocket inherits that Python and puts a ``Connection`` (a
connection.RecordConnection) in ``_sslobj``: the same methods (do_handshake, read, write, shutdown,
getpeercert, ...), but after the handshake the data path is the kernel. Blocking, timeout and
non-blocking behaviour match CPython's (connection.py); the lifetime across threads is
ktls_ossl/lifetime.py's.
"""
from __future__ import annotations

import functools
import os
import socket as _socket
import ssl
import weakref
from typing import TYPE_CHECKING

from . import cpython_callbacks, kernel, records
from .after_ccs import OpenSSLOffloadWatch
from .connection import _DATA_STAGES, MAX_RECORD, ConnectionState, KTLSStatus, RecordConnection, _guarded, _Waiter
from .errors import KernelTLSError, KTLSUnavailableError, KTLSUnwrappedError
from .handshake import Handshake, HandoffUnavailable, Policy, Session
from .kernel import Direction
from .posthandshake import OpenSSLPostHandshake
from .records import ContentType
from .session import hand_over
from .tlsinfo import TLSInfo
from .userspace import OpenSSLRecordLayer

if TYPE_CHECKING:
    # typeshed's names (as its ssl.pyi and socket.pyi use them) exist only for type checkers; the
    # annotations that use them are never evaluated at run time (postponed by the __future__ import).
    from _typeshed import ReadableBuffer, WriteableBuffer
    from socket import _Address, _RetAddress, _SendableFile


class Connection(RecordConnection):
    """The TLS connection behind a KTLSSocket (what ssl.SSLSocket calls ``_sslobj``): OpenSSL runs
    the handshake on the socket in this process; the record layer is then the kernel's or, by
    policy or where the kernel cannot take it, OpenSSL's (connection.RecordConnection)."""

    def __init__(self, context, sock, server_side: bool, server_hostname, owner=None, session=None):
        self._context = context  # the handshake's hooks read it
        policy = context.ktls_policy
        self._handshake = Handshake(context, sock.fileno(), server_side=server_side,
                                    server_hostname=server_hostname, policy=policy,
                                    hooks=cpython_callbacks.hooks_for(self), session=session)
        super().__init__(context, sock, server_side, server_hostname, owner, policy=policy,
                         events=self._handshake.events, record_event=self._handshake.record_event,
                         free=self._handshake.release)
        self._info = TLSInfo(self._handshake)
        # CPython's _msg_callback: what it raises is raised once the call it ran in ends.
        self._defers_errors = self._handshake.hooks.message is not None
        # Policy.AFTER_CCS: what OpenSSL's own kTLS put in the kernel, and whether it can still send.
        self._offload = OpenSSLOffloadWatch(self._handshake, self._event) if policy is Policy.AFTER_CCS else None
        observe = weakref.WeakMethod(self._observe_handshake)
        self._handshake.observers.append(lambda *args: observe() and observe()(*args))
        # The record layer per direction: OpenSSL's on the socket until the handoff decides, once,
        # whether the kernel's session takes reception (and sending, where it can).
        self._openssl_io = OpenSSLRecordLayer(self._handshake, check_open=self._check_open,
                                              offload=self._offload, rx_reason="handshake not done")
        self._rx = self._tx = self._openssl_io

    def _negotiated_version(self) -> int:
        return self._handshake.protocol_version

    def _raise_deferred(self) -> None:
        self._handshake.raise_application_error()  # what _msg_callback raised, as CPython

    def _observe_handshake(self, write_p: int, content_type: int, data: bytes) -> None:
        """Called from inside OpenSSL's message callback: samples the kernel at the moments that
        matter for the audit trail (the peer's Finished, OpenSSL's own key installations)."""
        if self._offload is not None:
            self._offload.observe(write_p, content_type, data)
        if content_type != ContentType.HANDSHAKE or not data:
            return
        if data[0] == records.HandshakeType.finished and not write_p and self._stage is ConnectionState.HANDSHAKING:
            if self.policy is Policy.USERSPACE:
                rx = "none (policy USERSPACE)"
            else:
                decrypted = kernel.records_processed(self._fd, Direction.RX)
                rx = "none" if decrypted is None else \
                    f"installed, {decrypted} record(s) already decrypted by the kernel"
            self._event(f"peer Finished received (not yet verified); kernel RX key: {rx}")

    # --- handshake and handoff ------------------------------------------------------------------

    @_guarded
    def do_handshake(self) -> None:
        with self._lock:
            if self._stage in _DATA_STAGES:
                return
            self._check_required_before_handshake()
            if self._failure is not None:
                raise self._failure  # a failed handshake stays failed (not a stale errno later)
            self._event("handshake started")
            try:
                with _Waiter(self, "handshake") as waiter:
                    while True:
                        try:
                            want = self._handshake.step()
                        except Exception as exc:
                            self._check_open()  # the socket closed under the handshake: that is the error
                            self._failure, self._stage = exc, ConnectionState.FAILED
                            self._event(f"handshake failed: {exc}")
                            raise
                        if want == 0:
                            break
                        waiter.wait(want)
            except BaseException as exc:
                if self._offload is not None:
                    self._offload.sample()  # keys OpenSSL installed with no message since
                if isinstance(exc, TimeoutError):
                    self._event("handshake timed out")
                raise
            self._event("handshake complete: peer Finished verified")
            if self.policy is not Policy.AFTER_CCS:  # AFTER_CCS watches OpenSSL's KeyUpdates
                self._handshake.stop_counting()
            self._after_handshake()
            self._stage = ConnectionState.KERNEL if self._session is not None else ConnectionState.OPENSSL
            self._raise_deferred()

    def _check_required_before_handshake(self) -> None:
        if self._context.require_ktls and self.policy is not Policy.USERSPACE:
            report = kernel.probe()
            if not report.ulp_available:
                raise KTLSUnavailableError(report.ulp_errno or 0,
                                           f"require_ktls is set but {report.ulp_message}", "KTLS_REQUIRED")
        elif self._context.require_ktls:
            raise ValueError("require_ktls cannot be combined with ktls_policy=Policy.USERSPACE")

    def _after_handshake(self) -> None:
        version = self._handshake.version()
        cipher = self._info.cipher()
        cipher_name = cipher[0] if cipher else None
        if self.policy is Policy.USERSPACE:
            reason = "ktls_policy is USERSPACE"
            self._status = KTLSStatus(self.policy, False, False, reason, reason, cipher_name, version)
        elif self.policy is Policy.AFTER_CCS:
            self._offload.sample()
            tx, rx = self._offload.tx, self._offload.rx
            report = kernel.probe()
            missing = self._offload.missing_reason(None if report.ulp_available else report.ulp_message)
            self._status = KTLSStatus(self.policy, tx, rx, None if tx else missing, None if rx else missing,
                                      cipher_name, version)
            self._event(f"OpenSSL kTLS offload: tx={tx} rx={rx}")
        else:
            self._handoff_to_kernel(cipher_name, version)
        if self._context.require_ktls and not self._status.active:
            raise KTLSUnavailableError(
                0, f"require_ktls is set but kernel TLS is not carrying this connection: {self._status}",
                "KTLS_REQUIRED")

    def _handoff_to_kernel(self, cipher_name, version) -> None:
        sock = self.owner
        tx_reason = rx_reason = None
        try:
            if sock.family not in (_socket.AF_INET, _socket.AF_INET6) or sock.type != _socket.SOCK_STREAM:
                raise HandoffUnavailable("kernel TLS needs a TCP socket")
            self._session = hand_over(self._fd, OpenSSLPostHandshake(self._handshake), event=self._event,
                                      **self._session_options())
            handoff = self._handoff = self._session.handoff
            tx_reason = self._session.tx_reason
            cipher_label = f"{handoff.cipher.display_name} ({handoff.suite})"
        except (HandoffUnavailable, KernelTLSError) as exc:  # raised before any key is in the kernel
            tx_reason = rx_reason = getattr(exc, "message", None) or str(exc)
            cipher_label = cipher_name
            self._event(f"kernel handoff not possible: {exc}")
        rx_kernel = self._session is not None
        rekey = self._session.rekeys if rx_kernel else None
        if rx_kernel:
            self._rx = self._session
            if self._session.tx_in_kernel:
                self._tx = self._session
        self._openssl_io.rx_reason = rx_reason
        self._status = KTLSStatus(self.policy, self._tx_kernel, rx_kernel,
                                  None if self._tx_kernel else tx_reason,
                                  None if rx_kernel else rx_reason, cipher_label, version,
                                  rekey_supported=rekey)

    @property
    @_guarded
    def session(self):
        return self._handshake.get_session()

    @session.setter
    @_guarded
    def session(self, value):
        self._handshake.set_session(value)

    @property
    @_guarded
    def session_reused(self):
        return self._handshake.session_reused

    @RecordConnection.context.setter
    @_guarded
    def context(self, value):
        self._handshake.set_context(value)
        self._context = value


class KTLSSocket(ssl.SSLSocket):
    """ssl.SSLSocket whose record layer is the kernel once the handshake is verified.

    Created by ktls_ossl.SSLContext.wrap_socket. Everything ssl.SSLSocket offers works the same;
    in addition: ``ktls`` (where each direction runs, and why), ``ktls_events`` (the audit trail),
    ``recv_record`` (the next record, after its built-in handling) and ``key_update`` (TLS 1.3).
    """

    @property
    def ktls(self) -> KTLSStatus | None:
        connection = self._sslobj
        return connection.status if connection is not None else None

    @property
    def ktls_state(self) -> ConnectionState | None:
        """Where the connection is (ConnectionState); None before there is one (not connected)."""
        connection = self._sslobj or getattr(self, "_ktls_unwrapped", None)
        if connection is not None:
            return connection.state
        return ConnectionState.CLOSED if hasattr(self, "_ktls_trail") else None

    @property
    def ktls_events(self) -> list[tuple[str, str]]:
        """The audit trail, in order; still readable after close() and unwrap()."""
        connection = self._sslobj or getattr(self, "_ktls_unwrapped", None)
        if connection is not None:
            return list(connection.events)
        return list(getattr(self, "_ktls_trail", ()))

    def unwrap(self) -> _socket.socket:
        """As CPython's: the close_notify exchange, then the same socket for plaintext. Where the
        kernel carries a direction, it cannot take the TLS keys off the socket again (Linux has no
        way to remove the tls ULP or its keys): what is sent would still go out as TLS records and
        what arrives would still be decrypted, where the peer of a STARTTLS/ENDTLS exchange expects
        plaintext. So the returned socket refuses data calls with KTLSUnwrappedError instead of
        sending records where plaintext is expected; connections that go back to plaintext need
        ktls_policy=Policy.USERSPACE."""
        connection = self._sslobj
        result = super().unwrap()
        if connection is not None:
            connection._event("unwrapped: TLS ended, the TCP socket stays open")
            self._ktls_unwrapped = connection
            self._ktls_keys_stay = connection.status.tx or connection.status.rx
            connection.release()
        return result

    def _refuse_plaintext_under_kernel_keys(self) -> None:
        """Raise where unwrap() left the kernel's TLS keys on this socket (see unwrap)."""
        if getattr(self, "_ktls_keys_stay", False):
            raise KTLSUnwrappedError(
                0, "unwrap() ended TLS, but the kernel cannot take its TLS keys off a socket: plaintext "
                   "sent here would still go out encrypted, and what arrives would still be decrypted; "
                   "use ktls_policy=Policy.USERSPACE for connections that return to plaintext",
                "KTLS_CANNOT_UNWRAP")

    # The data calls of a socket without TLS (_sslobj None): refused after unwrap() where the
    # kernel keeps its keys; otherwise ssl.SSLSocket's.

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return ssl.SSLSocket.send(self, data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return ssl.SSLSocket.sendall(self, data, flags)

    def sendto(self, data: ReadableBuffer, flags_or_addr: int | _Address,
               addr: _Address | None = None) -> int:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        if addr is None:
            return ssl.SSLSocket.sendto(self, data, flags_or_addr)
        return ssl.SSLSocket.sendto(self, data, flags_or_addr, addr)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return ssl.SSLSocket.recv(self, buflen, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return ssl.SSLSocket.recv_into(self, buffer, nbytes, flags)

    def recvfrom(self, buflen: int = 1024, flags: int = 0) -> tuple[bytes, _RetAddress]:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return ssl.SSLSocket.recvfrom(self, buflen, flags)

    def recvfrom_into(self, buffer: WriteableBuffer, nbytes: int | None = None,
                      flags: int = 0) -> tuple[int, _RetAddress]:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return ssl.SSLSocket.recvfrom_into(self, buffer, nbytes, flags)

    def shutdown(self, how: int) -> None:
        """As CPython's: TLS ends for this object without close_notify, and the TCP connection is
        shut down in ``how``. The connection stays with the socket until close(), which frees it
        and, after a failure, still waits for the peer to receive what was sent (servers such as
        socketserver shut the write side down right before they close)."""
        connection = self._sslobj
        super().shutdown(how)
        if connection is not None:
            self._ktls_unwrapped = connection
            connection.release()

    def _real_close(self):
        connection = self._sslobj or getattr(self, "_ktls_unwrapped", None)
        if connection is None:
            super()._real_close()
            return
        connection._event("socket closed")
        self._ktls_trail = connection.events  # only the trail outlives the connection
        self._ktls_unwrapped = None
        self._sslobj = None
        # The connection closes the descriptor: now, or, while another thread's call is still
        # using it, when that call leaves (ktls_ossl/lifetime.py).
        fd = _socket.socket.detach(self)
        connection.release(close_fd=functools.partial(os.close, fd) if fd >= 0 else None)

    def recv_record(self, bufsize: int = MAX_RECORD) -> tuple[int, bytes]:
        self._checkClosed()
        if self._sslobj is None:
            raise ValueError("Read on closed or unwrapped SSL socket.")
        return self._sslobj.recv_record(bufsize)

    def key_update(self, request_peer: bool = False) -> None:
        if self._sslobj is None:
            raise ValueError("No SSL wrapper around " + str(self))
        self._sslobj.key_update(request_peer)

    def sendfile(self, file: _SendableFile, offset: int = 0, count: int | None = None) -> int:
        """With TX in the kernel this is os.sendfile: the kernel encrypts the file's pages."""
        if self._sslobj is not None:
            sent = self._sslobj.sendfile(file, offset, count)
            if sent is not None:
                return sent
            return self._sendfile_use_send(file, offset, count)
        self._refuse_plaintext_under_kernel_keys()
        return super().sendfile(file, offset, count)

    def sendfile_chunk(self, fileno: int, offset: int, size: int) -> int | None:
        """A non-blocking step of sendfile for callers that wait for readiness themselves (event
        loops): up to ``size`` bytes of the file ``fileno`` from ``offset``, encrypted by the
        kernel. Returns the bytes sent (0: the file ended), raises SSLWantWriteError when the
        socket is full, and returns None where the kernel does not send for this connection."""
        self._checkClosed()
        if self._sslobj is None:
            raise ValueError("No SSL wrapper around " + str(self))
        return self._sslobj.sendfile_chunk(fileno, offset, size)

    # Both give None while no TLS connection is attached (not yet connected, or unwrapped): a case
    # that typeshed's list[bytes] leaves out.
    def get_verified_chain(self) -> list[bytes] | None:
        """The verified chain, leaf first, as DER bytes."""
        self._checkClosed()
        return self._sslobj.get_verified_chain() if self._sslobj is not None else None

    def get_unverified_chain(self) -> list[bytes] | None:
        """The chain the peer sent, leaf first, as DER bytes."""
        self._checkClosed()
        return self._sslobj.get_unverified_chain() if self._sslobj is not None else None


__all__ = ["Connection", "KTLSSocket", "KTLSStatus", "Session"]
