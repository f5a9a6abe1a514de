"""KTLSSocket: the ssl.SSLSocket interface over a kernel TLS (or OpenSSL) connection.

ssl.SSLSocket keeps all TLS work in ``self._sslobj`` (CPython's _ssl._SSLSocket) and is otherwise
plain Python. KTLSSocket inherits that Python and puts a ``Connection`` in ``_sslobj``: the same
methods (do_handshake, read, write, shutdown, getpeercert, ...), but after the handshake the data
path is the kernel. Blocking, timeout and non-blocking behaviour match CPython's: the socket's
timeout bounds each call, non-blocking calls raise SSLWantReadError/SSLWantWriteError.

Lifetime across threads: ktls_ossl/lifetime.py (every call that touches the fd or the SSL object
is a user of the connection's ``ConnectionLifetime``).

Readiness
---------
Waiting never spins. Some kernels (6.1 among them) report a kTLS socket readable as soon as TCP
holds any byte of the next record, while recvmsg waits for the whole record
(EAGAIN): after such a wake-up the reader waits on an edge-triggered epoll, which wakes only when
more data arrives. And on kernels that rekey, a recvmsg that returned data may have stopped at a
KeyUpdate the kernel already decrypted and parked; the kernel then reports nothing readable until
it is taken, so after a read on a non-blocking socket (whose caller waits for readiness itself)
the reader takes parked control records at once (peeking, so that no data is taken out of the
kernel that a readiness-driven caller would not be told about).
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import os
import select
import socket as _socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import cpython_callbacks, errors, kernel, keys, records
from .errors import (
    KernelTLSError,
    KTLSUnavailableError,
    KTLSUnwrappedError,
)
from .after_ccs import OpenSSLOffloadWatch
from .lifetime import ConnectionLifetime, LifeState
from .userspace import OpenSSLRecordLayer
from .handshake import WANT_READ, Handshake, HandoffUnavailable, Policy, Session
from .posthandshake import OpenSSLPostHandshake
from .session import KernelSession, SessionState, hand_over
from .tlsinfo import TLSInfo
from .kernel import Direction
from .records import ContentType

if TYPE_CHECKING:
    # typeshed's names (as its ssl.pyi and socket.pyi use them) exist only for type checkers; the
    # annotations that use them are never evaluated at run time (postponed by the __future__ import).
    from _typeshed import ReadableBuffer, WriteableBuffer
    from socket import _Address, _RetAddress, _SendableFile

MAX_RECORD = kernel.MAX_RECORD_PLAINTEXT


@dataclass(frozen=True)
class KTLSStatus:
    """Where the record layer of a connection runs, per direction, and why not in the kernel."""

    policy: Policy
    tx: bool
    rx: bool
    tx_reason: str | None = None
    rx_reason: str | None = None
    cipher: str | None = None
    version: str | None = None
    kernel_release: str = os.uname().release
    # TLS 1.3 under kTLS: whether this kernel can replace keys (KeyUpdate), how often it did,
    # and whether the TX key reached the proactive update threshold without a way to update.
    rekey_supported: bool | None = None
    key_updates: int = 0
    key_limit_reached: bool = False

    @property
    def active(self) -> bool:
        """Both directions in the kernel."""
        return self.tx and self.rx

    def __str__(self) -> str:
        if self.tx == self.rx and self.tx_reason == self.rx_reason:
            where = "tx+rx=kernel" if self.tx else f"tx+rx=userspace ({self.tx_reason})"
        else:
            where = ", ".join(f"{name}=kernel" if on else f"{name}=userspace ({reason})"
                              for name, on, reason in (("tx", self.tx, self.tx_reason),
                                                       ("rx", self.rx, self.rx_reason)))
        return (f"kTLS[{self.policy.value}] {where}, {self.version or '-'} {self.cipher or '-'}, "
                f"kernel {self.kernel_release}")


def _timed_out(operation: str) -> TimeoutError:
    return TimeoutError(f"The {operation} operation timed out")


def _guarded(method):
    """Run ``method`` as a user of the connection's fd and OpenSSL object (ktls_ossl/lifetime.py)."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        life = self._life
        life.enter()
        try:
            return method(self, *args, **kwargs)
        except (ssl.SSLError, ConnectionError) as exc:
            if not isinstance(exc, _NOT_FAILURES):
                life.ended_in_error = True  # close() lingers (ConnectionLifetime.linger)
            raise
        finally:
            life.leave()
    return guarded


def _reports(info_method: str, name: str | None = None):
    """A method of _ssl._SSLSocket that reports a fact of the connection: TLSInfo's method of that
    name (or ``info_method``), called as a user of the connection."""
    def method(self, *args, **kwargs):
        return getattr(self._info, info_method)(*args, **kwargs)
    method.__name__ = name or info_method
    method.__qualname__ = f"Connection.{method.__name__}"
    return _guarded(method)


# SSLErrors that do not end the connection: it waits for the fd, or the peer closed in order.
_NOT_FAILURES = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError)


class ConnectionState(enum.Enum):
    """Where a connection is (``KTLSSocket.ktls_state``). The record layer, kernel or OpenSSL, is
    decided once, when the handshake completes; FAILED and CLOSED are final."""
    HANDSHAKING = "handshaking"
    KERNEL = "the kernel carries the record layer (RX, and TX unless the status says why not)"
    OPENSSL = "OpenSSL carries the record layer (the policy, or the kernel could not take it)"
    CLOSING = "shutdown() (unwrap) began: our close_notify is sent or on its way"
    CLOSED = "the socket was closed or unwrapped: every TLS call raises OSError EBADF"
    FAILED = "a fatal error ended the connection: every later call raises an error"


class _Waiter:
    """The waits of one call: until the fd is ready as OpenSSL or the kernel asked, within the
    socket's timeout (counted from the call's first wait), without spinning.

    poll() while the kernel has given no reason to distrust it; once it reported readable and the
    kernel then had nothing to read (a partial record on some kernels), an edge-triggered epoll
    that wakes only when something new arrives. On a non-blocking socket a wait is
    SSLWantReadError/SSLWantWriteError; ``operation`` names the call in TimeoutError's message, as
    CPython's does (a read that must first write times out as a read). Every wait ends by checking
    that the socket was not closed meanwhile.
    """

    __slots__ = ("_connection", "_operation", "_deadline", "_poller", "_polled_for", "_epoll", "_woke_for_read")

    _UNSET = object()

    def __init__(self, connection: "Connection", operation: str):
        self._connection = connection
        self._operation = operation
        self._deadline = _Waiter._UNSET
        self._poller = None
        self._polled_for = 0
        self._epoll = None
        self._woke_for_read = False

    def __enter__(self) -> "_Waiter":
        return self

    @property
    def nonblocking(self) -> bool:
        """The caller waits for readiness itself (a non-blocking socket)."""
        return self._connection.owner.gettimeout() == 0.0

    def __exit__(self, *exc_info) -> None:
        if self._epoll is not None:
            self._epoll.close()

    def wait(self, want: int, operation: str | None = None) -> None:
        """Returns when the fd may be ready (the caller retries). ``operation`` overrides the
        call's name in TimeoutError's message for this wait."""
        connection = self._connection
        if self._deadline is _Waiter._UNSET:
            timeout = connection.owner.gettimeout()
            if timeout == 0.0:
                raise errors.want_read_error() if want == WANT_READ else errors.want_write_error()
            self._deadline = None if timeout is None else time.monotonic() + timeout
        if want == WANT_READ and self._woke_for_read and self._epoll is None:
            # Woken, and yet nothing to read: from now on wait for new arrivals only. Registering
            # absorbs the current readiness, which may include a real arrival: retry once first.
            self._epoll = select.epoll(1)
            self._epoll.register(connection._fd, select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP)
            self._epoll.poll(0)
            self._woke_for_read = False
            connection._check_open()
            return
        events = select.POLLIN if want == WANT_READ else select.POLLOUT
        while True:
            if self._deadline is None:
                remaining = None
            else:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise _timed_out(operation or self._operation)
            if want == WANT_READ and self._epoll is not None:
                woke = bool(self._epoll.poll(-1 if remaining is None else max(remaining, 0.001)))
            else:
                if self._polled_for != events:
                    self._poller = select.poll()
                    self._poller.register(connection._fd, events)
                    self._polled_for = events
                woke = bool(self._poller.poll(None if remaining is None else max(1, int(remaining * 1000))))
            if woke:
                self._woke_for_read = want == WANT_READ
                connection._check_open()
                return


class Connection:
    """The TLS connection behind a KTLSSocket (what ssl.SSLSocket calls ``_sslobj``)."""

    def __init__(self, context, sock, server_side: bool, server_hostname, owner=None, session=None):
        self._context = context
        self._owner = weakref.ref(owner if owner is not None else sock)
        self._fd = sock.fileno()
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.policy = context.ktls_policy
        self._handshake = Handshake(context, self._fd, server_side=server_side,
                                    server_hostname=server_hostname, policy=self.policy,
                                    hooks=cpython_callbacks.hooks_for(self), session=session)
        self.events = self._handshake.events
        self._info = TLSInfo(self._handshake)
        self._lock = threading.RLock()
        self._life = ConnectionLifetime(self._fd, free=self._handshake.release, event=self._event)
        # HANDSHAKING, then KERNEL or OPENSSL (or FAILED), then CLOSING: what ``state`` reports
        # while the lifetime is open and no fatal error ended the connection.
        self._stage = ConnectionState.HANDSHAKING
        self._status = KTLSStatus(self.policy, False, False, "handshake not done", "handshake not done")
        self._handoff = None
        # The kernel's record layer once it holds the RX keys (session.KernelSession).
        self._session: KernelSession | None = None
        self._failure: BaseException | None = None  # ConnectionState.FAILED: the handshake's error
        self._delivered_any = False
        # Policy.AFTER_CCS: what OpenSSL's own kTLS put in the kernel, and whether it can still send.
        self._offload = OpenSSLOffloadWatch(self._handshake, self._event) if self.policy is Policy.AFTER_CCS else None
        observe = weakref.WeakMethod(self._observe_handshake)
        self._handshake.observers.append(lambda *args: observe() and observe()(*args))
        # The record layer per direction: OpenSSL's on the socket until the handoff decides, once,
        # whether the kernel's session takes reception (and sending, where it can).
        self._openssl_io = OpenSSLRecordLayer(self._handshake, check_open=self._check_open,
                                              offload=self._offload, rx_reason="handshake not done")
        self._rx: KernelSession | OpenSSLRecordLayer = self._openssl_io
        self._tx: KernelSession | OpenSSLRecordLayer = self._openssl_io

    # --- lifetime (ktls_ossl/lifetime.py) --------------------------------------------------------

    def _check_open(self) -> None:
        """Raise if the socket was closed while this call was waiting or working."""
        self._life.check_open()

    @property
    def state(self) -> ConnectionState:
        if self._life.state is not LifeState.OPEN:
            return ConnectionState.CLOSED
        if (self._stage is ConnectionState.FAILED or self._life.ended_in_error
                or (self._session is not None and self._session.state is SessionState.FAILED)):
            return ConnectionState.FAILED
        return self._stage

    def release(self, close_fd=None) -> None:
        """The socket is closed (or unwrapped): ConnectionLifetime.release, with the socket's
        timeout bounding the linger of a connection that failed."""
        owner = self._owner()
        self._life.release(close_fd, timeout=owner.gettimeout() if owner is not None else None)

    # --- plumbing ----------------------------------------------------------------------------

    @property
    def owner(self):
        sock = self._owner()
        if sock is None:
            raise ValueError("the socket of this TLS connection is gone")
        return sock

    def _event(self, what: str) -> None:
        self._handshake.record_event("ktls", what)

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
            if self._stage in (ConnectionState.KERNEL, ConnectionState.OPENSSL, ConnectionState.CLOSING):
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
            self._handshake.raise_application_error()  # what _msg_callback raised, as CPython

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
            self._session = hand_over(
                self._fd, OpenSSLPostHandshake(self._handshake), event=self._event, server_side=self.server_side,
                post_handshake_auth=bool(self._context.post_handshake_auth),
                key_update_after=self._context.key_update_records,
                waiter_for=lambda operation: _Waiter(self, operation), check_open=self._check_open,
                on_control_record=self._on_control_record)
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
    def tickets_received(self) -> int:
        return self._rx.tickets_received

    @property
    def key_updates(self) -> int:
        return self._rx.key_updates

    @property
    def key_limit_reached(self) -> bool:
        return self._rx.key_limit_reached

    @property
    def status(self) -> KTLSStatus:
        if not (self.key_updates or self.key_limit_reached):
            return self._status
        return dataclasses.replace(self._status, key_updates=self.key_updates,
                                   key_limit_reached=self.key_limit_reached)

    @property
    def _tx_kernel(self) -> bool:
        """The kernel sends for this connection (its session holds the TX keys)."""
        return self._session is not None and self._session.tx_in_kernel

    def _ensure_handshake(self) -> None:
        if self._stage is ConnectionState.HANDSHAKING or self._stage is ConnectionState.FAILED:
            self.do_handshake()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._rx.raise_if_failed()

    def _on_control_record(self, content_type: int, payload: bytes) -> None:
        """The context's control_record_callback sees each control record first (its errors are
        reported, never raised: the built-in handling must run)."""
        callback = self._context.control_record_callback
        if callback is not None:
            try:
                callback(self.owner, content_type, payload)
            except Exception as exc:
                errors.report_callback_error(exc, callback, "Exception ignored in control_record_callback")
            self._check_open()  # the callback may have closed the socket

    # --- reading ---------------------------------------------------------------------------------

    @_guarded
    def read(self, len=1024, buffer=None):
        if buffer is None:
            if len < 0:
                raise ValueError("size should not be negative")
            target = bytearray(len)
            count = self._read_into(memoryview(target), len)
            return bytes(target[:count])
        view = memoryview(buffer).cast("B")
        if len <= 0 or len > view.nbytes:
            len = view.nbytes
        return self._read_into(view, len)

    def _read_into(self, view, nbytes: int) -> int:
        if nbytes == 0:
            return 0
        self._ensure_handshake()
        self._raise_if_failed()
        with _Waiter(self, "read") as waiter:
            count = self._rx.read_into(view, nbytes, waiter)
        if count and not self._delivered_any:
            self._delivered_any = True
            self._event(f"first application data delivered ({count} bytes)")
        self._handshake.raise_application_error()  # what _msg_callback raised, as CPython
        return count

    # --- key updates, records ----------------------------------------------------------------------

    @_guarded
    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move our sending direction to the next key."""
        self._ensure_handshake()
        self._raise_if_failed()
        with self._lock:
            if self._handshake.protocol_version != keys.TLS_1_3_VERSION:
                raise ValueError("KeyUpdate exists in TLS 1.3 only")
            self._tx.key_update(request_peer)

    @_guarded
    def recv_record(self, bufsize: int = MAX_RECORD):
        """The next record as (content_type, payload). A non-data record gets its built-in
        handling too (keys move, tickets reach OpenSSL, close_notify ends the data) before it is
        returned, so the connection stays consistent, and application data behind an unfinished
        post-handshake message is refused as recv() refuses it. A record that fails the
        connection (a fatal alert, a protocol violation) raises instead."""
        self._ensure_handshake()
        self._raise_if_failed()
        with _Waiter(self, "read") as waiter:
            return self._rx.recv_record(bufsize, waiter)

    # --- writing ---------------------------------------------------------------------------------

    @_guarded
    def write(self, data) -> int:
        self._ensure_handshake()
        self._raise_if_failed()
        with _Waiter(self, "write") as waiter:
            count = self._tx.write(data, waiter)
        self._handshake.raise_application_error()  # what _msg_callback raised, as CPython
        return count

    @_guarded
    def sendfile(self, file, offset: int, count):
        """Bytes sent through the kernel path, or None when this connection cannot sendfile."""
        self._ensure_handshake()
        self._raise_if_failed()
        try:
            fileno = file.fileno()
        except (AttributeError, OSError):  # not a real file (io.UnsupportedOperation is an OSError)
            return None
        send_chunk = self._tx.prepare_sendfile()
        if send_chunk is None:
            return None  # KTLSSocket sends the file through write()
        return _send_file(_Waiter(self, "write"), file, fileno, offset, count, send_chunk)

    @_guarded
    def pending(self) -> int:
        return self._rx.pending

    # --- shutdown ----------------------------------------------------------------------------------

    @_guarded
    def shutdown(self):
        """Send close_notify and wait for the peer's (CPython's unwrap); returns the socket."""
        sock = self.owner
        if self._stage in (ConnectionState.KERNEL, ConnectionState.OPENSSL):
            self._stage = ConnectionState.CLOSING
        with _Waiter(self, "read") as waiter:
            self._rx.shutdown(waiter)
        return sock

    # --- information (what _ssl._SSLSocket offers: TLSInfo's answers) -----------------------------

    version = _reports("version")
    cipher = _reports("cipher")
    shared_ciphers = _reports("shared_ciphers")
    compression = _reports("compression")
    selected_alpn_protocol = _reports("selected_alpn_protocol")
    get_channel_binding = _reports("channel_binding", "get_channel_binding")
    getpeercert = _reports("peer_certificate", "getpeercert")
    get_verified_chain = _reports("verified_chain", "get_verified_chain")
    get_unverified_chain = _reports("unverified_chain", "get_unverified_chain")

    @_guarded
    def verify_client_post_handshake(self):
        """Ask the client for a certificate now (TLS 1.3). Under kTLS the CertificateRequest goes
        out at once; the client's answer is checked by OpenSSL when it arrives, and no data that
        follows it is delivered before OpenSSL has accepted it."""
        with self._lock:
            self._rx.request_client_certificate()

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

    @property
    def context(self):
        return self._context

    @context.setter
    @_guarded
    def context(self, value):
        self._handshake.set_context(value)
        self._context = value


def _send_file(waiter: _Waiter, file, fileno: int, offset: int, count, send_chunk) -> int:
    """socket.sendfile's contract over ``send_chunk(fileno, offset, size)`` (bytes, or -WANT_*):
    from ``offset``, ``count`` bytes or to the end of the file; the file position ends after
    the last byte sent; the socket's timeout bounds each wait."""
    size = os.fstat(fileno).st_size - offset
    if count is not None:
        size = min(size, count)
    total = 0
    try:
        with waiter:
            while total < size:
                sent = send_chunk(fileno, offset + total, min(size - total, 1 << 30))
                if sent < 0:
                    waiter.wait(-sent)
                    continue
                if sent == 0:
                    break  # the file ended early
                total += sent
    finally:
        if total:
            file.seek(offset + total)
    return total


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
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return super().sendall(data, flags)

    def sendto(self, data: ReadableBuffer, flags_or_addr: int | _Address,
               addr: _Address | None = None) -> int:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        if addr is None:
            return super().sendto(data, flags_or_addr)
        return super().sendto(data, flags_or_addr, addr)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return super().recv(buflen, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return super().recv_into(buffer, nbytes, flags)

    def recvfrom(self, buflen: int = 1024, flags: int = 0) -> tuple[bytes, _RetAddress]:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return super().recvfrom(buflen, flags)

    def recvfrom_into(self, buffer: WriteableBuffer, nbytes: int | None = None,
                      flags: int = 0) -> tuple[int, _RetAddress]:
        if self._sslobj is None:
            self._refuse_plaintext_under_kernel_keys()
        return super().recvfrom_into(buffer, nbytes, flags)

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
