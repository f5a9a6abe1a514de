"""What a KTLSSocket's ``_sslobj`` does whatever ran the handshake: ``RecordConnection``.

ssl.SSLSocket keeps all TLS work in ``self._sslobj`` (CPython's _ssl._SSLSocket). In ktls_ossl that
object is a RecordConnection: its lifetime across threads (ktls_ossl/lifetime.py), the record layer
per direction (the kernel's KernelSession, or OpenSSL's on the socket: decided once, at the
handoff), reads, writes, sendfile, KeyUpdate, shutdown, the connection's state and its kTLS status.
A subclass runs the handshake and reports what it negotiated: socket.Connection runs OpenSSL on
the socket in this process, agent.AgentConnection has the handshake agent run it.

Blocking, timeout and non-blocking behaviour match CPython's: the socket's timeout bounds each
call, non-blocking calls raise SSLWantReadError/SSLWantWriteError.

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
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import errors, kernel, keys
from .handshake import WANT_READ, Policy
from .lifetime import ConnectionLifetime, LifeState, guard
from .session import SessionState

if TYPE_CHECKING:
    from .audit import AuditTrail
    from .session import KernelSession
    from .userspace import OpenSSLRecordLayer

__all__ = ["BeforeHandshake", "ConnectionState", "KTLSStatus", "RecordConnection"]

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


def _note_failure(connection: "RecordConnection", exc: BaseException) -> None:
    if isinstance(exc, (ssl.SSLError, ConnectionError)) and not isinstance(exc, _NOT_FAILURES):
        connection._life.ended_in_error = True  # close() lingers (ConnectionLifetime.linger)


# A method run as a user of the connection's fd and OpenSSL object (ktls_ossl/lifetime.py).
_guarded = functools.partial(guard, on_error=_note_failure)


def _reports(info_method: str, name: str | None = None):
    """A method of _ssl._SSLSocket that reports a fact of the connection: TLSInfo's method of that
    name (or ``info_method``), called as a user of the connection."""
    def method(self, *args, **kwargs):
        return getattr(self._info, info_method)(*args, **kwargs)
    method.__name__ = name or info_method
    method.__qualname__ = f"RecordConnection.{method.__name__}"
    return _guarded(method)


@functools.lru_cache(maxsize=None)
def _before_handshake_status(policy: Policy) -> KTLSStatus:
    """Every connection's status until its handshake, one per policy (it is immutable)."""
    return KTLSStatus(policy, False, False, "handshake not done", "handshake not done")


def _waiter_of(connection: Callable[[], "RecordConnection | None"], operation: str) -> "_Waiter":
    return _Waiter(connection(), operation)


def _on_control_record_of(connection: Callable[[], "RecordConnection | None"], content_type: int,
                          payload: bytes) -> None:
    alive = connection()
    if alive is not None:
        alive._on_control_record(content_type, payload)


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


# The stages in which the handshake is done and data calls go straight to the record layer. A
# tuple: ``in`` finds a member by identity, where a set would call the enum's hash (Python code).
_DATA_STAGES = (ConnectionState.KERNEL, ConnectionState.OPENSSL, ConnectionState.CLOSING)


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

    __slots__ = ("_connection", "_operation", "_state")

    def __init__(self, connection: "RecordConnection", operation: str):
        # Made for every read and write, used by few: the state of the waits comes with the first.
        self._connection = connection
        self._operation = operation
        self._state: _WaitState | None = None

    def __enter__(self) -> "_Waiter":
        return self

    @property
    def nonblocking(self) -> bool:
        """The caller waits for readiness itself (a non-blocking socket)."""
        return self._connection.owner.gettimeout() == 0.0

    def __exit__(self, *exc_info) -> None:
        if self._state is not None and self._state.epoll is not None:
            self._state.epoll.close()

    def wait(self, want: int, operation: str | None = None) -> None:
        """Returns when the fd may be ready (the caller retries). ``operation`` overrides the
        call's name in TimeoutError's message for this wait."""
        connection = self._connection
        state = self._state
        if state is None:
            timeout = connection.owner.gettimeout()
            if timeout == 0.0:
                raise errors.want_read_error() if want == WANT_READ else errors.want_write_error()
            state = self._state = _WaitState(None if timeout is None else time.monotonic() + timeout)
        if want == WANT_READ and state.woke_for_read and state.epoll is None:
            # Woken, and yet nothing to read: from now on wait for new arrivals only. Registering
            # absorbs the current readiness, which may include a real arrival: retry once first.
            state.epoll = select.epoll(1)
            state.epoll.register(connection._fd, select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP)
            state.epoll.poll(0)
            state.woke_for_read = False
            connection._check_open()
            return
        events = select.POLLIN if want == WANT_READ else select.POLLOUT
        while True:
            if state.deadline is None:
                remaining = None
            else:
                remaining = state.deadline - time.monotonic()
                if remaining <= 0:
                    raise _timed_out(operation or self._operation)
            if want == WANT_READ and state.epoll is not None:
                woke = bool(state.epoll.poll(-1 if remaining is None else max(remaining, 0.001)))
            else:
                if state.polled_for != events:
                    state.poller = select.poll()
                    state.poller.register(connection._fd, events)
                    state.polled_for = events
                woke = bool(state.poller.poll(None if remaining is None else max(1, int(remaining * 1000))))
            if woke:
                state.woke_for_read = want == WANT_READ
                connection._check_open()
                return


class _WaitState:
    """The waits of one call so far: its deadline (None: no timeout), the poll object and what it
    polls for, the edge-triggered epoll once a wake-up found nothing to read."""

    __slots__ = ("deadline", "poller", "polled_for", "epoll", "woke_for_read")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.poller = None
        self.polled_for = 0
        self.epoll = None
        self.woke_for_read = False


class BeforeHandshake:
    """The record layer of a connection whose subclass makes it at the handshake, until then:
    nothing pending, nothing to shut down."""

    tickets_received = key_updates = 0
    key_limit_reached = False
    pending = 0
    failure = None

    def raise_if_failed(self) -> None:
        pass

    def shutdown(self, waiter) -> None:
        raise ValueError("the handshake has not run: there is no TLS connection to shut down")


class RecordConnection:
    """See the module doc. ``events``/``record_event``: the connection's audit trail and how to add
    to it; ``free``: releases the handshake's state when the last user leaves."""

    def __init__(self, context, sock, server_side: bool, server_hostname, owner, *, policy: Policy,
                 events: AuditTrail, record_event: Callable[[str, str], None], free: Callable[[], None]) -> None:
        self._context = context
        self._owner = weakref.ref(owner if owner is not None else sock)
        self._fd = sock.fileno()
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.policy = policy
        self.events = events
        self._record_event = record_event
        self._lock = threading.RLock()
        # The callables handed to the layers below hold no reference to this connection (the
        # lifetime's, the audit trail's), or only a weak one: a closed connection is then freed
        # by reference counting, not left with its objects for the cyclic garbage collector.
        self._event = functools.partial(record_event, "ktls")
        self._life = ConnectionLifetime(self._fd, free=free, event=self._event)
        self._check_open = self._life.check_open  # raises if the socket was closed meanwhile
        # HANDSHAKING, then KERNEL or OPENSSL (or FAILED), then CLOSING: what ``state`` reports
        # while the lifetime is open and no fatal error ended the connection.
        self._stage = ConnectionState.HANDSHAKING
        self._status = _before_handshake_status(policy)
        self._handoff = None
        # The kernel's record layer once it holds the RX keys (session.KernelSession).
        self._session: KernelSession | None = None
        self._failure: BaseException | None = None  # ConnectionState.FAILED: the handshake's error
        self._delivered_any = False
        # The record layer per direction, set by the subclass: before the handshake, whatever
        # answers pending() and shutdown() there; after it, decided once.
        self._rx: KernelSession | OpenSSLRecordLayer | Any = None
        self._tx: KernelSession | OpenSSLRecordLayer | Any = None

    # --- what a subclass provides ----------------------------------------------------------------

    def do_handshake(self) -> None:
        raise NotImplementedError

    def _negotiated_version(self) -> int:
        """The protocol version number (TLS_1_2_VERSION, TLS_1_3_VERSION, ...)."""
        raise NotImplementedError

    # Whether _raise_deferred has anything to do: the data calls call it only then.
    _defers_errors = False

    def _raise_deferred(self) -> None:
        """After a call that succeeded: an error a callback raised during it, where the front
        raises those then (CPython's _msg_callback)."""

    # ``_info``: what the connection reports about itself (tlsinfo.TLSInfo's methods), set by the
    # subclass.

    # --- lifetime (ktls_ossl/lifetime.py) --------------------------------------------------------

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

    @property
    def owner(self):
        sock = self._owner()
        if sock is None:
            raise ValueError("the socket of this TLS connection is gone")
        return sock

    # --- state and status ------------------------------------------------------------------------

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

    def _check_usable(self) -> None:
        """Before a call on the record layer: the handshake runs first where it has not, and what
        failed the connection is raised again. (The data calls test the stage and the layer's
        ``failure`` first, and call this only where they do not pass.)"""
        if self._stage is ConnectionState.HANDSHAKING or self._stage is ConnectionState.FAILED:
            self.do_handshake()
        if self._failure is not None:
            raise self._failure
        self._rx.raise_if_failed()

    def _on_control_record(self, content_type: int, payload: bytes) -> None:
        """The context's control_record_callback sees each control record first (its errors are
        reported, never raised: the built-in handling must run)."""
        callback = self._context.control_record_callback
        if callback is not None:
            try:
                callback(self._callback_subject, content_type, payload)
            except Exception as exc:
                errors.report_callback_error(exc, callback, "Exception ignored in control_record_callback")
            self._check_open()  # the callback may have closed the socket

    @property
    def _callback_subject(self):
        """What the application's callbacks are handed as the connection: the socket."""
        return self.owner

    def _session_options(self) -> dict[str, Any]:
        """KernelSession's options for this connection (hand_over's ``session_options``)."""
        return dict(server_side=self.server_side, post_handshake_auth=bool(self._context.post_handshake_auth),
                    key_update_after=self._context.key_update_records,
                    waiter_for=self._waiter_factory(), check_open=self._check_open,
                    on_control_record=functools.partial(_on_control_record_of, weakref.ref(self)))

    def _waiter_factory(self) -> Callable[[str], "_Waiter"]:
        """``waiter_for(operation)`` for a layer below, which lives inside this connection: it
        refers to the connection weakly (see __init__)."""
        return functools.partial(_waiter_of, weakref.ref(self))

    # --- reading ---------------------------------------------------------------------------------

    @_guarded
    def read(self, len=1024, buffer=None):
        if buffer is None:
            if len < 0:
                raise ValueError("size should not be negative")
            target = bytearray(len)
            count = self._read_into(memoryview(target), len)
            return bytes(memoryview(target)[:count])
        view = memoryview(buffer).cast("B")
        if len <= 0 or len > view.nbytes:
            len = view.nbytes
        return self._read_into(view, len)

    def _read_into(self, view, nbytes: int) -> int:
        if nbytes == 0:
            return 0
        rx = self._rx
        if self._stage not in _DATA_STAGES or rx.failure is not None:
            self._check_usable()
            rx = self._rx
        with _Waiter(self, "read") as waiter:
            count = rx.read_into(view, nbytes, waiter)
        if not self._delivered_any and count:
            self._delivered_any = True
            self._event(f"first application data delivered ({count} bytes)")
        if self._defers_errors:
            self._raise_deferred()
        return count

    # --- key updates, records ----------------------------------------------------------------------

    @_guarded
    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move our sending direction to the next key."""
        self._check_usable()
        with self._lock:
            if self._negotiated_version() != keys.TLS_1_3_VERSION:
                raise ValueError("KeyUpdate exists in TLS 1.3 only")
            self._tx.key_update(request_peer)

    @_guarded
    def recv_record(self, bufsize: int = MAX_RECORD):
        """The next record as (content_type, payload). A non-data record gets its built-in
        handling too (keys move, tickets reach the handshake engine, close_notify ends the data)
        before it is returned, so the connection stays consistent, and application data behind an
        unfinished post-handshake message is refused as recv() refuses it. A record that fails the
        connection (a fatal alert, a protocol violation) raises instead."""
        self._check_usable()
        with _Waiter(self, "read") as waiter:
            return self._rx.recv_record(bufsize, waiter)

    # --- writing ---------------------------------------------------------------------------------

    @_guarded
    def write(self, data) -> int:
        tx = self._tx
        if self._stage not in _DATA_STAGES or self._rx.failure is not None:
            self._check_usable()
            tx = self._tx
        with _Waiter(self, "write") as waiter:
            count = tx.write(data, waiter)
        if self._defers_errors:
            self._raise_deferred()
        return count

    @_guarded
    def sendfile(self, file, offset: int, count):
        """Bytes sent through the kernel path, or None when this connection cannot sendfile."""
        self._check_usable()
        try:
            fileno = file.fileno()
        except (AttributeError, OSError):  # not a real file (io.UnsupportedOperation is an OSError)
            return None
        send_chunk = self._tx.prepare_sendfile()
        if send_chunk is None:
            return None  # KTLSSocket sends the file through write()
        return _send_file(_Waiter(self, "write"), file, fileno, offset, count, send_chunk)

    @_guarded
    def sendfile_chunk(self, fileno: int, offset: int, size: int) -> int | None:
        """One step of a sendfile that an event loop drives (it waits for writability itself):
        bytes the kernel took from the file (0 at its end), SSLWantWriteError when the socket is
        full, None where this connection cannot sendfile (its caller writes the bytes instead)."""
        self._check_usable()
        send_chunk = self._tx.prepare_sendfile()
        if send_chunk is None:
            return None
        sent = send_chunk(fileno, offset, size)
        if sent < 0:
            raise errors.want_write_error()
        return sent

    @_guarded
    def pending(self) -> int:
        return self._rx.pending

    # --- shutdown and post-handshake authentication ------------------------------------------------

    @_guarded
    def shutdown(self):
        """Send close_notify and wait for the peer's (CPython's unwrap); returns the socket."""
        sock = self.owner
        if self._stage in (ConnectionState.KERNEL, ConnectionState.OPENSSL):
            self._stage = ConnectionState.CLOSING
        with _Waiter(self, "read") as waiter:
            self._rx.shutdown(waiter)
        return sock

    @_guarded
    def verify_client_post_handshake(self):
        """Ask the client for a certificate now (TLS 1.3). Under kTLS the CertificateRequest goes
        out at once; the client's answer is checked by the handshake engine when it arrives, and
        no data that follows it is delivered before the engine has accepted it."""
        with self._lock:
            self._rx.request_client_certificate()

    @property
    def context(self):
        return self._context

    # --- information (what _ssl._SSLSocket offers: the subclass's ``_info``, a tlsinfo.TLSInfo) ---

    version = _reports("version")
    cipher = _reports("cipher")
    shared_ciphers = _reports("shared_ciphers")
    compression = _reports("compression")
    selected_alpn_protocol = _reports("selected_alpn_protocol")
    get_channel_binding = _reports("channel_binding", "get_channel_binding")
    getpeercert = _reports("peer_certificate", "getpeercert")
    get_verified_chain = _reports("verified_chain", "get_verified_chain")
    get_unverified_chain = _reports("unverified_chain", "get_unverified_chain")


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
