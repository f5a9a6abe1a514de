"""KTLSSocket: the ssl.SSLSocket interface over a kernel TLS (or OpenSSL) connection.

ssl.SSLSocket keeps all TLS work in ``self._sslobj`` (CPython's _ssl._SSLSocket) and is otherwise
plain Python. KTLSSocket inherits that Python and puts a ``Connection`` in ``_sslobj``: the same
methods (do_handshake, read, write, shutdown, getpeercert, ...), but after the handshake the data
path is the kernel. Blocking, timeout and non-blocking behaviour match CPython's: the socket's
timeout bounds each call, non-blocking calls raise SSLWantReadError/SSLWantWriteError.

Theory of operation: lifetime across threads
--------------------------------------------
Any thread may close the socket while others are inside a call on it. Two things must then never
happen: OpenSSL's SSL object freed under a thread that is using it, and a system call on the fd
*number* after the socket was closed (the number is reused by the next socket the process opens,
and a stale reader would get another connection's data, decrypted with its keys). So every call
that touches the fd or the SSL object is a *user* of the Connection (``_guarded``). ``release()``,
called when the socket closes, marks the Connection released (a user that enters later gets
OSError EBADF, as CPython's ssl) and, while users are inside, takes over the fd from the socket
object instead of letting it be closed: it shuts the TCP connection down, which wakes every
blocked user, and the last user to leave frees the SSL object and closes the fd. Users check for
release after each wait, so a closed socket ends every call in progress with that OSError.

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

import collections
import contextlib
import dataclasses
import enum
import errno
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

from . import control, errors, kernel, keys, records
from ._ossl import ffi, lib
from .control import Action, ControlState
from .errors import (
    KernelTLSError,
    KTLSKeyExpiredError,
    KTLSRecordError,
    KTLSRekeyUnsupportedError,
    KTLSUnavailableError,
    KTLSUnwrappedError,
)
from .handshake import WANT_READ, WANT_WRITE, Handshake, HandoffUnavailable, KeyUpdateRecord, Policy, Session
from .kernel import Direction
from .records import Alert, AlertDescription, AlertLevel, ContentType

if TYPE_CHECKING:
    # typeshed's names (as its ssl.pyi and socket.pyi use them) exist only for type checkers; the
    # annotations that use them are never evaluated at run time (postponed by the __future__ import).
    from _typeshed import ReadableBuffer, WriteableBuffer
    from socket import _Address, _RetAddress, _SendableFile

MAX_RECORD = kernel.MAX_RECORD_PLAINTEXT
# The longest close() waits, after a failure, for the peer to acknowledge what we sent (_linger).
LINGER_AFTER_FAILURE = 2.0
CLOSE_NOTIFY = Alert(AlertLevel.WARNING, AlertDescription.close_notify).pack()


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


def _openssl_version() -> str:
    return ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)).decode("ascii")


def _timed_out(operation: str) -> TimeoutError:
    return TimeoutError(f"The {operation} operation timed out")


def _closed_error() -> OSError:
    """What a call gets when the socket was (or is being) closed by another thread: the EBADF
    that CPython's ssl gives once the descriptor is gone."""
    return OSError(errno.EBADF, f"{os.strerror(errno.EBADF)}: the socket was closed")


def _guarded(method):
    """Run ``method`` as a user of the connection's fd and OpenSSL object (see the module doc)."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        self._enter()
        try:
            return method(self, *args, **kwargs)
        except (ssl.SSLError, ConnectionError) as exc:
            if not isinstance(exc, _NOT_FAILURES):
                self._ended_in_error = True  # close() lingers (Connection._linger)
            raise
        finally:
            self._leave()
    return guarded


# SSLErrors that do not end the connection: it waits for the fd, or the peer closed in order.
_NOT_FAILURES = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError)


class _TcpEnd(enum.Enum):
    """What this connection has reported of TCP's end, as a user-space connection reads it."""
    OPEN = "open"
    EOF_REPORTED = "a read reported TCP EOF without close_notify"
    # A read or write reported a reset (or the broken pipe after one). The kernel's TLS layer does
    # not report it as TCP would after that (7.x repeats ECONNRESET; after EPIPE a write may even
    # succeed into the void), so from here the connection answers as TCP does in user space:
    # reads find EOF, writes get EPIPE.
    RESET_REPORTED = "a read or write reported a TCP reset"


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
                                    owner=owner, session=session)
        self.events = self._handshake.events
        self._lock = threading.RLock()
        # Lifetime (see the module doc): the calls inside (one item each: list.append and pop are
        # atomic, so entering and leaving take no lock, which costs a system call per call under
        # User-Mode Linux), whether the socket was closed, who closes the fd when the last call
        # leaves, and whether that was done (the rare paths take _life_lock).
        self._inside: list = []
        self._released = False
        self._close_fd = None
        self._ended_in_error = False
        self._linger_limit = 0.0
        self._freed = False
        self._life_lock = threading.Lock()
        # Records we send on our own (alerts, KeyUpdates, OpenSSL's post-handshake answers) that
        # could not go out yet on a non-blocking socket: (content type, payload, then) in order;
        # ``then`` runs once the record is out (the TX key change behind a KeyUpdate). Nothing
        # else is read or written before they are out, which bounds them to one record's answers.
        self._outgoing: collections.deque = collections.deque()
        self._outgoing_lock = threading.Lock()
        # TLS 1.3 on a kernel that rekeys: the kernel may park a decrypted KeyUpdate behind data.
        self._records_may_park = False
        # Where the TX key can change (TLS 1.3 on a kernel that rekeys), every record the kernel
        # sends for us goes out under this lock, so that no data record can slip between a
        # KeyUpdate message and the key change that must follow it. Elsewhere it is a no-op:
        # an uncontended lock still costs a clock read per send.
        self._tx_lock = contextlib.nullcontext()
        self._done = False
        self._status = KTLSStatus(self.policy, False, False, "handshake not done", "handshake not done")
        self._tx_kernel = self._rx_kernel = False
        self._handoff = None
        self._decrypt_errors_at_handoff: int | None = None
        self._control: ControlState | None = None
        self._leftover = b""
        self._scratch = None
        self._peer_closed = False
        self._sent_close = False
        self._failure: BaseException | None = None
        self._tcp_end = _TcpEnd.OPEN
        self._connection_error: ConnectionError | None = None  # a reset that a peek took (below)
        self.tickets_received = 0
        self._delivered_any = False
        # Policy.AFTER_CCS: what OpenSSL's own kTLS put in the kernel so far, and why sending is
        # impossible once OpenSSL moved its TLS 1.3 write key without the kernel (KeyUpdate).
        self._openssl_offload = (False, False)
        self._openssl_tx_stale: BaseException | None = None
        observe = weakref.WeakMethod(self._observe_handshake)
        self._handshake.observers.append(lambda *args: observe() and observe()(*args))
        if self.policy is Policy.AFTER_CCS:
            # Where OpenSSL's own kTLS installed keys shows at the first message after it did.
            self._handshake.watch_every_message()
        self.key_updates = 0
        self._key_update_after = None
        # An upper bound of the records sent under the current TX key (each send() closes at
        # least one record, and one per 16 KiB), refreshed from the kernel's rec_seq near limits.
        self._tx_records_bound = 0
        self.key_limit_reached = False

    # --- lifetime (see the module doc) ---------------------------------------------------------

    def _enter(self) -> None:
        # In first, then look: a release() that did not see this call has already marked the
        # connection released, and this call leaves again without touching anything.
        self._inside.append(None)
        if self._released:
            self._leave()
            raise _closed_error()

    def _leave(self) -> None:
        self._inside.pop()
        if self._released and not self._inside:
            self._free()

    def _check_open(self) -> None:
        """Raise if the socket was closed while this call was waiting or working."""
        if self._released:
            raise _closed_error()

    def release(self, close_fd=None) -> None:
        """The socket is closed (or unwrapped): no new call may start. OpenSSL's state goes now,
        not at the next garbage collection, unless a call is inside: then the last one frees it.
        ``close_fd`` closes the descriptor; where calls are inside it runs when the last one
        leaves, after their blocking system calls were ended by shutting the connection down."""
        if close_fd is not None:
            owner = self._owner()
            timeout = owner.gettimeout() if owner is not None else None
            self._linger_limit = LINGER_AFTER_FAILURE if timeout is None else min(timeout, LINGER_AFTER_FAILURE)
            self._close_fd = close_fd  # before released: whoever sees released sees it too
        self._released = True
        if not self._inside:
            self._free()
        elif close_fd is not None:
            self._wake_users()

    def _wake_users(self) -> None:
        """End the blocking waits and system calls of the calls inside (the socket is closing)."""
        self._shutdown(_socket.SHUT_RDWR)

    def _shutdown(self, how: int) -> None:
        """shutdown(2) on the connection's descriptor, which stays open (no socket object owns it
        here); a connection that is not connected any more has nothing to shut down."""
        try:
            sock = _socket.socket(fileno=self._fd)
        except OSError:
            return
        try:
            sock.shutdown(how)
        except OSError:
            pass
        finally:
            sock.detach()

    def _free(self) -> None:
        """Free OpenSSL's state and close the fd where asked: once each, whichever of release()
        and the last call leaving gets here (both may)."""
        with self._life_lock:
            free_ssl, self._freed = not self._freed, True
            close_fd, self._close_fd = self._close_fd, None
        if free_ssl:
            self._handshake.release()
        if close_fd is not None:
            if self._ended_in_error:
                self._linger()
            try:
                close_fd()
            except OSError:
                pass  # a socket's close() has nothing to report here that anyone could act on

    def _linger(self) -> None:
        """A connection that failed closes the way a user-space TLS stack's effectively does: the
        peer receives everything we sent (the tickets written after the handshake, the fatal
        alert), then a FIN.

        Linux answers close() with an RST, and drops whatever the peer has not acknowledged yet,
        when unread data is left in the receive queue; and a kTLS socket whose record layer failed
        cannot be drained (the kernel refuses to read past the record it refused, which itself
        stays queued). So where data is left unread, the write side is shut down first (FIN behind
        our data) and close() waits, for at most the socket's timeout or LINGER_AFTER_FAILURE,
        until the peer's TCP has acknowledged everything, FIN included; the RST that close() then
        sends loses nothing. A non-blocking socket never waits here."""
        fd = self._fd
        try:
            if kernel.unread_bytes(fd) == 0:
                return  # close() sends a FIN behind our data by itself
            self._shutdown(_socket.SHUT_WR)
            if self._linger_limit <= 0:
                return
            deadline = time.monotonic() + self._linger_limit
            poller = select.poll()
            poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
            delay = 0.0005
            while kernel.unacknowledged_bytes(fd) > 0:
                if any(events & (select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0)):
                    return  # reset by the peer: nothing more will be acknowledged
                if time.monotonic() >= deadline:
                    self._event("closed before the peer acknowledged everything sent")
                    return
                # An acknowledgement wakes nothing one could wait on: look again, less often.
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except OSError:
            return  # not a connected socket any more: close() has nothing to save

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
        if self.policy is Policy.AFTER_CCS:
            self._note_openssl_offload()
        if content_type != ContentType.HANDSHAKE or not data:
            return
        if data[0] == records.HandshakeType.finished and not write_p and not self._done:
            if self.policy is Policy.USERSPACE:
                rx = "none (policy USERSPACE)"
            else:
                decrypted = kernel.records_processed(self._fd, Direction.RX)
                rx = "none" if decrypted is None else \
                    f"installed, {decrypted} record(s) already decrypted by the kernel"
            self._event(f"peer Finished received (not yet verified); kernel RX key: {rx}")
        elif (data[0] == records.HandshakeType.key_update and self.policy is Policy.AFTER_CCS
              and self._openssl_offload[0] and self._openssl_tx_stale is None
              and (write_p or data[4:5] == b"\x01")):
            why = "OpenSSL sent a KeyUpdate" if write_p else "the peer requested a KeyUpdate"
            self._openssl_tx_stale = self._openssl_rekey_error(why)
            self._event(f"{why}; OpenSSL's kTLS cannot move the kernel's TX key: sending disabled")

    def _note_openssl_offload(self) -> None:
        """Where OpenSSL's own kTLS installed keys, as soon as the next message shows it."""
        tx, rx = self._handshake.openssl_offload()
        if tx and not self._openssl_offload[0]:
            self._event("TX installed in the kernel by OpenSSL")
        if rx and not self._openssl_offload[1]:
            self._event("RX installed in the kernel by OpenSSL")
        self._openssl_offload = (tx, rx)

    def _openssl_rekey_error(self, why: str, outcome: str = "so nothing more can be sent on this "
                             "connection") -> KTLSRekeyUnsupportedError:
        return KTLSRekeyUnsupportedError(
            0, f"{why}, but OpenSSL's own kernel TLS (Policy.AFTER_CCS, {_openssl_version()}) cannot "
               f"replace the kernel's TLS 1.3 send key, {outcome} (Policy.AFTER_FINISHED updates keys "
               "where the kernel can, Linux 6.14+)",
            "KEY_UPDATE_UNSUPPORTED")

    # --- handshake and handoff ------------------------------------------------------------------

    @_guarded
    def do_handshake(self) -> None:
        with self._lock:
            if self._done:
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
                            self._failure = exc
                            self._event(f"handshake failed: {exc}")
                            raise
                        if want == 0:
                            break
                        waiter.wait(want)
            except BaseException as exc:
                if self.policy is Policy.AFTER_CCS:
                    self._note_openssl_offload()  # keys OpenSSL installed with no message since
                if isinstance(exc, TimeoutError):
                    self._event("handshake timed out")
                raise
            self._event("handshake complete: peer Finished verified")
            if self.policy is not Policy.AFTER_CCS:  # AFTER_CCS watches OpenSSL's KeyUpdates
                self._handshake.stop_counting()
            self._after_handshake()
            self._done = True
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
        cipher = self._handshake.cipher()
        cipher_name = cipher[0] if cipher else None
        if self.policy is Policy.USERSPACE:
            reason = "ktls_policy is USERSPACE"
            self._status = KTLSStatus(self.policy, False, False, reason, reason, cipher_name, version)
        elif self.policy is Policy.AFTER_CCS:
            self._note_openssl_offload()
            tx, rx = self._openssl_offload
            report = kernel.probe()
            missing = (report.ulp_message if not report.ulp_available else
                       f"{_openssl_version()} kept this direction in user space (its kTLS covers less "
                       "than the kernel's, e.g. OpenSSL 3.0 never offloads TLS 1.3 reception)")
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
            report = kernel.probe()
            if not report.ulp_available:
                raise HandoffUnavailable(report.ulp_message)
            handoff = self._handshake.handoff()
            rx_reason = report.unavailable_reason(handoff.version, handoff.cipher, Direction.RX)
            if rx_reason:
                raise HandoffUnavailable(rx_reason)
            tx_reason = report.unavailable_reason(handoff.version, handoff.cipher, Direction.TX)
            kernel.attach_ulp(self._fd)
            # RX first: with RX in the kernel and TX in OpenSSL the connection still works; the
            # other way round OpenSSL would answer post-handshake messages with stale write state.
            kernel.install(self._fd, Direction.RX, handoff.rx)
            self._rx_kernel = True
            self._event(f"RX installed in the kernel at record {handoff.rx.seq}")
            if tx_reason is None:
                try:
                    kernel.install(self._fd, Direction.TX, handoff.tx)
                    self._tx_kernel = True
                    self._event(f"TX installed in the kernel at record {handoff.tx.seq}")
                except KernelTLSError as exc:
                    tx_reason = exc.message
            self._handshake.detach_from_socket(handoff, tx=self._tx_kernel)
            self._handoff = handoff
            self._key_update_after = (self._context.key_update_records
                                      or keys.DEFAULT_KEY_UPDATE_RECORDS[handoff.cipher])
            self._tx_records_bound = handoff.tx.seq
            self._control = ControlState(handoff.version, self.server_side,
                                         post_handshake_auth=bool(self._context.post_handshake_auth))
            if handoff.version == keys.TLS_1_3_VERSION:
                # What tells a failed tag from a record without a content type (_record_refused).
                self._decrypt_errors_at_handoff = kernel.decrypt_error_count()
            if handoff.version == keys.TLS_1_3_VERSION and report.rekey_supported:
                self._tx_lock = threading.RLock()
                self._records_may_park = True
            cipher_label = f"{handoff.cipher.display_name} ({handoff.suite})"
        except (HandoffUnavailable, KernelTLSError) as exc:
            if self._rx_kernel:
                raise  # the kernel holds RX keys: there is no going back to OpenSSL
            tx_reason = rx_reason = getattr(exc, "message", None) or str(exc)
            cipher_label = cipher_name
            self._event(f"kernel handoff not possible: {exc}")
        rekey = None
        if self._rx_kernel:
            rekey = self._handoff.version == keys.TLS_1_3_VERSION and bool(kernel.probe().rekey_supported)
        self._status = KTLSStatus(self.policy, self._tx_kernel, self._rx_kernel,
                                  None if self._tx_kernel else tx_reason,
                                  None if self._rx_kernel else rx_reason, cipher_label, version,
                                  rekey_supported=rekey)

    @property
    def status(self) -> KTLSStatus:
        if not (self.key_updates or self.key_limit_reached):
            return self._status
        return dataclasses.replace(self._status, key_updates=self.key_updates,
                                   key_limit_reached=self.key_limit_reached)

    def _ensure_handshake(self) -> None:
        if not self._done:
            self.do_handshake()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            if self._tcp_end is not _TcpEnd.OPEN:
                # OpenSSL, failed by an EOF without close_notify, fails later reads and writes
                # with SSL_ERROR_SYSCALL and nothing queued: CPython's SSLEOFError without a reason.
                raise errors.eof_error()
            raise self._failure

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
        if self._rx_kernel:
            count = self._kernel_read(view, nbytes)
        else:
            count = self._openssl_read(view, nbytes)
        if count and not self._delivered_any:
            self._delivered_any = True
            self._event(f"first application data delivered ({count} bytes)")
        self._handshake.raise_application_error()  # what _msg_callback raised, as CPython
        return count

    def _openssl_read(self, view, nbytes: int) -> int:
        with _Waiter(self, "read") as waiter:
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

    def _kernel_read(self, view, nbytes: int) -> int:
        if self._leftover:
            count = min(nbytes, len(self._leftover))
            view[:count] = self._leftover[:count]
            self._leftover = self._leftover[count:]
            return count
        self._flush_outgoing("read")
        with _Waiter(self, "read") as waiter:
            while True:
                if self._peer_closed:
                    return 0
                # Straight into the caller's buffer only where a data record would be delivered:
                # data that is about to be refused must not reach application memory.
                if nbytes >= MAX_RECORD and control.data_refused(self._control) is None:
                    target = view[:nbytes]
                else:
                    target = self._scratch_buffer()
                record = self._receive(target, waiter)
                count = self._take_record(record, target, view, nbytes)
                if count is None:
                    continue
                if self._records_may_park and self.owner.gettimeout() == 0.0:
                    self._take_parked_records()
                return count

    def _receive(self, target, waiter: _Waiter) -> kernel.ReceivedRecord:
        """One recvmsg from the kernel into ``target`` (data, or one control record), waiting as
        the call's ``waiter`` allows. What the kernel refuses ends the connection."""
        while True:
            self._check_open()
            if self._connection_error is not None:
                exc, self._connection_error = self._connection_error, None
                return self._connection_ended(exc)
            if self._tcp_end is _TcpEnd.RESET_REPORTED:
                return kernel.ReceivedRecord(0, 0, 0)  # TCP's reads after a reported reset: EOF
            try:
                return kernel.recv_record_into(self._fd, target)
            except BlockingIOError:
                waiter.wait(WANT_READ)
            except KTLSKeyExpiredError as exc:
                if not self._resume_under_current_key():
                    raise self._terminate(exc, f"kernel refused a record: {exc.reason}") from None
            except KTLSRecordError as exc:
                raise self._record_refused(exc) from None
            except ConnectionError as exc:
                self._check_open()
                return self._connection_ended(exc)

    def _connection_ended(self, exc: ConnectionError) -> kernel.ReceivedRecord:
        """The kernel's read failed because TCP ended with a reset: the result a read gets in
        user space, where CPython's ssl reads with OpenSSL (measured side by side, see
        tests/test_connection_end.py). The kernel reports a reset before any byte still queued
        that does not complete a record, so what came before the reset decides:

        - EPIPE: TCP takes a reset as EPIPE when the peer's FIN came first (CLOSE_WAIT). A
          user-space read sees that FIN (the receive queue is read before the error): TCP EOF
          without close_notify, returned here as the kernel returns EOF.
        - ECONNRESET and the like: a reset with no FIN before it. OpenSSL's read fails with
          SSL_ERROR_SYSCALL, which CPython reports as its SSL_read_ex failures
          (errors.syscall_error: SSLEOFError without a reason up to 3.12, ConnectionResetError on
          3.13), and OpenSSL is not failed by it: the next read finds TCP at its end
          (UNEXPECTED_EOF_WHILE_READING), as the kernel's next read returns EOF here.
        """
        self._tcp_end = _TcpEnd.RESET_REPORTED
        if isinstance(exc, BrokenPipeError):
            self._event("TCP reset after the peer's FIN: the FIN is the end")
            return kernel.ReceivedRecord(0, 0, 0)
        self._event(f"connection reset: {exc}")
        raise errors.syscall_error(0, exc.errno) from None

    def _write_failed(self, exc: OSError) -> BaseException:
        """A kernel TLS write (or sendfile) failed in the system call: what CPython raises where
        SSL_write_ex fails the same way in user space (a reset, a broken pipe: see
        errors.syscall_error); other OS errors as they are."""
        self._check_open()
        if isinstance(exc, ConnectionError):
            self._tcp_end = _TcpEnd.RESET_REPORTED
            self._event(f"write failed: {exc}")
            return self._write_error(exc.errno)
        return exc

    def _check_not_reset(self) -> None:
        """Writes after a reported reset fail as TCP's do then (EPIPE), in CPython's words."""
        if self._tcp_end is _TcpEnd.RESET_REPORTED:
            raise self._write_error(errno.EPIPE)

    def _write_error(self, error: int) -> BaseException:
        """SSL_write_ex failing in the system call: SSL_get_error calls that ZERO_RETURN once the
        peer's close_notify was read, SSL_ERROR_SYSCALL (errors.syscall_error) before."""
        if self._peer_closed:
            return errors.zero_return_error()
        return errors.syscall_error(0, error)

    def _scratch_buffer(self) -> bytearray:
        if self._scratch is None:  # only connections that do short reads pay for it
            self._scratch = bytearray(MAX_RECORD)
        return self._scratch

    def _take_record(self, record, target, view, nbytes: int) -> int | None:
        """What one received record means for a read: the byte count delivered into ``view``,
        or None where the read goes on (a control record was handled, an empty record)."""
        content_type = record.content_type
        if content_type == ContentType.APPLICATION_DATA:
            if record.length == 0:
                # Empty data records are legal. The kernel consumes them inside recvmsg without a
                # trace (a run of them surfaces at most once, as this zero-length read), so
                # OpenSSL's limit on a run of them cannot be applied here (see README).
                return None
            refused = control.data_refused(self._control)
            if refused:
                self._fail(refused)
            self._control.saw_application_data()
            if target is not self._scratch:
                return record.length
            count = min(nbytes, record.length)
            view[:count] = target[:count]
            self._leftover = bytes(target[count:record.length])
            return count
        if content_type == 0:
            if record.length == 0:
                self._check_open()  # our own shutdown at close looks like EOF
                if self._tcp_end is _TcpEnd.OPEN:
                    self._tcp_end = _TcpEnd.EOF_REPORTED
                raise self._terminate(errors.unexpected_eof_error(), "TCP EOF without close_notify")
            raise KernelTLSError(0, "the kernel returned data without a record type (no TLS receive key "
                                    "is installed on this socket): the connection cannot continue", "NO_RECORD_TYPE")
        self._handle_control(content_type, bytes(target[: record.length]))
        return None

    def _take_parked_records(self) -> None:
        """After a read on a non-blocking socket, whose caller waits for readiness itself: control
        records the kernel decrypted and holds (a KeyUpdate that stopped the read) are handled now,
        since the kernel reports nothing readable while it holds one. (A blocking read takes them
        at its next call.) A 1-byte peek tells what comes next; data stays in the kernel. A
        failure is kept for the next call: the data just read is the caller's."""
        scratch = self._scratch_buffer()
        while not self._peer_closed and self._failure is None:
            try:
                peeked = kernel.recv_record_into(self._fd, memoryview(scratch)[:1],
                                                 _socket.MSG_DONTWAIT | _socket.MSG_PEEK)
                if peeked.content_type != ContentType.HANDSHAKE:
                    return  # data, an alert, EOF: readiness reports them, the next read takes them
                record = kernel.recv_record_into(self._fd, scratch, _socket.MSG_DONTWAIT)
                self._handle_control(record.content_type, bytes(scratch[: record.length]))
            except BlockingIOError:
                return
            except ConnectionError as exc:
                # The peek took the kernel's error: the next read gets the outcome of a reset.
                self._connection_error = exc
                return
            except Exception as exc:
                if isinstance(exc, KTLSRecordError):
                    exc = self._record_refused(exc)
                if self._failure is None:
                    self._failure = exc
                # The caller learns it at its next read; shutting reception down makes the socket
                # readable, so that a caller waiting for readiness makes that read.
                self._shutdown(_socket.SHUT_RD)
                return

    def _record_refused(self, exc: KTLSRecordError) -> KTLSRecordError:
        """The kernel refused a received record: the connection is over. The peer gets the fatal
        alert OpenSSL sends for that record in user space, behind everything sent before it; the
        kernel's pending error is taken first, or it would refuse the alert too (see
        kernel.take_pending_error). Returns the exception for the caller to raise."""
        version = self._handoff.version
        authenticated = False
        # A failed decryption leaves its error pending; the record parser's errors do not.
        decrypting = kernel.take_pending_error(self._fd) == errno.EBADMSG
        if decrypting and version == keys.TLS_1_3_VERSION:
            # Decryption ran. A failed tag moved TlsDecryptError; a TLS 1.3 record that
            # authenticated but has no content type did not. The counter is the network
            # namespace's, so another connection's failure since our handoff makes the second
            # case look like the first (bad_record_mac); a failed tag never looks authenticated.
            before = self._decrypt_errors_at_handoff
            authenticated = before is not None and kernel.decrypt_error_count() == before
        if authenticated:
            exc = KTLSRecordError(exc.errno, "the peer sent a TLS 1.3 record that authenticated but has no "
                                             "content type (its inner plaintext is all zeros); the connection "
                                             "is unusable", exc.reason)
        alert = control.alert_for_refused_record(version, exc.errno, decrypting=decrypting,
                                                 authenticated=authenticated)
        self._terminate(exc, f"kernel refused a record: {exc.reason}")
        self._send_final_alert(alert)
        return exc

    def _resume_under_current_key(self) -> bool:
        """The kernel pauses reception after every handshake record that starts with byte 24 (the
        KeyUpdate type), expecting the next key. We install that key as soon as a complete KeyUpdate
        ends its record, so a pause we meet was not for one: the first fragment of a KeyUpdate,
        or a fragment of another message that happens to start with that byte. The records behind
        it are still under the current key, which goes back in at the kernel's next sequence
        number."""
        if not self._records_may_park:
            return False
        current = kernel.read_crypto_info(self._fd, Direction.RX)
        kernel.rekey(self._fd, Direction.RX, current)
        self._event(f"kernel paused at a record that did not end a KeyUpdate: RX resumed under the "
                    f"current key at record {current.seq}")
        return True

    # --- control records --------------------------------------------------------------------------

    def _handle_control(self, content_type: int, payload: bytes) -> None:
        """One non-data record: the application's callback sees it first, then the built-in
        action always runs (a callback cannot stop a key change or drop a ticket). What the
        action sends goes out before this returns, or stays queued on a non-blocking socket."""
        self._event(f"control record type={content_type} length={len(payload)}")
        callback = self._context.control_record_callback
        if callback is not None:
            try:
                callback(self.owner, content_type, payload)
            except Exception as exc:
                errors.report_callback_error(exc, callback, "Exception ignored in control_record_callback")
            self._check_open()  # the callback may have closed the socket
        for decision in control.decide(self._control, content_type, payload):
            self._carry_out(decision)
        self._flush_outgoing("read")

    def _carry_out(self, decision: control.Decision) -> None:
        action = decision.action
        if action is Action.CLOSE:
            self._peer_closed = True
            self._handshake.note_close_notify(received=True)
            self._event("close_notify received")
        elif action is Action.IGNORE:
            self._event(decision.message or "ignored")
        elif action is Action.PEER_ALERT:
            raise self._terminate(errors.peer_alert_error(decision.alert.description),
                                  f"fatal alert received: {decision.alert.description_name}")
        elif action is Action.FAIL:
            self._fail(decision)
        elif action is Action.REFUSE_RENEGOTIATION:
            self._queue_alert(decision.alert)
            self._event(decision.message)
        elif action is Action.SESSION_TICKET:
            self._to_openssl(decision)
            self.tickets_received += 1
            self._event("NewSessionTicket accepted by OpenSSL")
        elif action is Action.KEY_UPDATE:
            self._peer_key_update(decision)
        elif action is Action.CERTIFICATE_REQUEST:
            self._to_openssl(decision)
            self._event("post-handshake CertificateRequest answered by OpenSSL")
        elif action is Action.CLIENT_AUTHENTICATION:
            self._to_openssl(decision)
            if not self._handshake.in_handshake:
                self._control.client_auth = None
                self._event("client authenticated after the handshake")

    def _to_openssl(self, decision: control.Decision, *, key_update: bool = False) -> bool:
        """OpenSSL processes the message (it owns sessions, the key schedule and certificate
        checks); its answer goes out through the kernel. A rejection fails the connection (after
        OpenSSL's alert). Returns whether the answer holds a KeyUpdate of OpenSSL's."""
        message = decision.handshake.pack()
        try:
            if key_update:
                answer = self._handshake.feed_key_update(message)
            else:
                answer = self._handshake.feed(ContentType.HANDSHAKE, message)
        except BaseException as exc:
            self._check_open()
            self._queue_own_records(getattr(exc, "ktls_outgoing", []))
            self._flush_outgoing("read", best_effort=True)
            self._terminate(exc, f"OpenSSL rejected a post-handshake message: {exc}")
            raise
        return self._queue_own_records(answer)

    def _fail(self, decision: control.Decision):
        if decision.alert is not None:
            self._send_final_alert(decision.alert)
        raise self._terminate(errors.local_protocol_error(decision.reason, decision.message),
                              f"connection failed: {decision.reason}: {decision.message}")

    def _terminate(self, exc: BaseException, event: str) -> BaseException:
        """The connection is over because of ``exc``: every later call raises it again, and
        its session may not be resumed. Returns ``exc`` for the caller to raise."""
        self._failure = exc
        self._event(event)
        self._handshake.forget_session()
        return exc

    # --- records we send on our own --------------------------------------------------------------

    def _queue_alert(self, alert: Alert) -> None:
        if self._tx_kernel:
            self._outgoing.append((ContentType.ALERT, alert.pack(), None))
            self._event(f"alert sent: {alert.description_name}")

    def _send_final_alert(self, alert: Alert) -> None:
        """The fatal alert of a failing connection: sent if it fits now, never waited for (the
        error the caller gets is what matters)."""
        self._queue_alert(alert)
        self._flush_outgoing("read", best_effort=True)

    def _queue_own_records(self, answer) -> bool:
        """Queue records OpenSSL wrote for the kernel to send. The TX key changes right behind a
        KeyUpdate among them: the change runs as that record's ``then``, under the TX lock, so no
        record goes out between the two. Returns whether there was a KeyUpdate."""
        key_update = False
        for record in answer:
            then = None
            if isinstance(record, KeyUpdateRecord):
                then = functools.partial(self._next_tx_key, record.next_keys, record.update_requested)
                key_update = True
            self._outgoing.append((*record, then))
        return key_update

    def _flush_outgoing(self, operation: str, *, best_effort: bool = False) -> None:
        """Send the records of our own that wait, in order, before anything else is sent or read.
        Blocking and timeout sockets wait for room (the timeout bounds it, as for any call);
        on a non-blocking socket what cannot go out stays queued and SSLWantWriteError says so.
        ``best_effort``: send what fits now and never raise (an alert on a failing connection)."""
        if not self._outgoing:
            return
        with self._tx_lock, self._outgoing_lock, _Waiter(self, operation) as waiter:
            while self._outgoing:
                content_type, payload, then = self._outgoing[0]
                try:
                    sent = kernel.send_record(self._fd, content_type, payload, _socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if best_effort:
                        return
                    waiter.wait(WANT_WRITE)
                    continue
                except OSError:
                    if best_effort:
                        return
                    self._check_open()
                    raise
                if sent < len(payload):  # the rest goes out as a record of the same type
                    self._outgoing[0] = (content_type, payload[sent:], then)
                    continue
                self._outgoing.popleft()
                if then is not None:
                    then()

    # --- key updates -------------------------------------------------------------------------------

    def _peer_key_update(self, decision: control.Decision) -> None:
        if not kernel.probe().rekey_supported:
            error = KTLSRekeyUnsupportedError(
                0, f"the peer updated its TLS 1.3 keys (KeyUpdate) but kernel "
                   f"{kernel.probe().kernel_release} cannot install the next receive key "
                   "(TLS 1.3 rekey needs Linux 6.14+); the connection cannot continue",
                "KEY_UPDATE_UNSUPPORTED")
            self._terminate(error, "KeyUpdate received; this kernel cannot rekey")
            self._send_final_alert(Alert(AlertLevel.FATAL, AlertDescription.internal_error))
            raise error
        # OpenSSL owns the key schedule, in both directions, and the kernel's keys follow it (a
        # post-handshake authentication depends on OpenSSL's secrets): it learns of the peer's
        # KeyUpdate, the kernel gets the receive key OpenSSL moved to, and where the peer asks for
        # our update, OpenSSL writes it (at once, or when asked, depending on its version).
        answered = self._to_openssl(decision, key_update=True)
        try:
            kernel.rekey(self._fd, Direction.RX, self._handshake.read_keys)
        except KernelTLSError as exc:
            raise self._terminate(exc, f"KeyUpdate received; the kernel refused the next RX key: {exc}") from None
        self._event("KeyUpdate received: RX rekeyed")
        if decision.update_requested and not answered and self._tx_kernel:
            self._update_tx_keys(request_peer=False)

    def _update_tx_keys(self, request_peer: bool) -> None:
        """Our KeyUpdate, written by OpenSSL, goes out, and the TX key changes right behind it."""
        self._queue_own_records(self._handshake.key_update_records(request_peer))

    def _next_tx_key(self, next_keys: keys.TrafficKeys, request_peer: bool) -> None:
        try:
            kernel.rekey(self._fd, Direction.TX, next_keys)
        except (KernelTLSError, OSError) as exc:
            # The peer has the KeyUpdate and reads with the next key from here on: nothing sent
            # under the old key could be read, so the connection ends here, for good.
            reason = getattr(exc, "reason", None) or "KEY_UPDATE_FAILED"
            error = KernelTLSError(exc.errno or 0, "our KeyUpdate was sent but the kernel refused the "
                                   f"next send key ({getattr(exc, 'message', exc)}); the peer now "
                                   "expects that key, so nothing more can be sent on this connection",
                                   reason)
            raise self._terminate(error, f"KeyUpdate sent; the kernel refused the next TX key: {exc}") from None
        self._tx_records_bound = 0
        self.key_updates += 1
        self._event(f"KeyUpdate sent (update_requested={request_peer}): TX rekeyed")

    def _count_sent(self, records_bound: int) -> None:
        """Proactive key update (RFC 8446 5.5) before the current TX key has protected too many
        records; where the kernel cannot rekey, refuse to exceed the AEAD limit itself."""
        self._tx_records_bound += records_bound
        if self._tx_records_bound < self._key_update_after:
            return
        # The bound is loose; the kernel's rec_seq is exact.
        self._tx_records_bound = kernel.read_crypto_info(self._fd, Direction.TX).seq
        if self._tx_records_bound < self._key_update_after:
            return
        if self._handoff.version == keys.TLS_1_3_VERSION and kernel.probe().rekey_supported:
            with self._lock:
                self._update_tx_keys(request_peer=False)
                self._flush_queued_key_update()
            return
        if not self.key_limit_reached:
            self.key_limit_reached = True
            self._event(f"{self._tx_records_bound} records under one key and the kernel cannot "
                        "update keys: close this connection soon")

    def _flush_queued_key_update(self) -> None:
        """A KeyUpdate we start goes out now where it can; on a non-blocking socket that is full it
        stays queued (as OpenSSL's SSL_key_update) and goes out, with its key change, before the
        next record is sent."""
        try:
            self._flush_outgoing("write")
        except ssl.SSLWantWriteError:
            pass

    def _check_key_limit(self) -> None:
        if self.key_limit_reached and self._tx_records_bound >= keys.AEAD_RECORD_LIMITS[self._handoff.cipher]:
            raise errors.KTLSKeyLimitError(
                0, f"{self._tx_records_bound} records were sent under one key, the limit of "
                   f"{self._handoff.cipher.display_name} (RFC 8446 5.5), and this kernel cannot update "
                   "keys; nothing more is sent on this connection", "KEY_USAGE_LIMIT")

    @_guarded
    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move our sending direction to the next key."""
        self._ensure_handshake()
        self._raise_if_failed()
        with self._lock:
            if self._handshake.protocol_version != keys.TLS_1_3_VERSION:
                raise ValueError("KeyUpdate exists in TLS 1.3 only")
            if self.policy is Policy.AFTER_CCS and self._openssl_offload[0]:
                raise self._openssl_rekey_error("a KeyUpdate was asked for", "so nothing was sent")
            if not self._tx_kernel:
                self._handshake.key_update(request_peer)
                return
            if not kernel.probe().rekey_supported:
                raise KTLSRekeyUnsupportedError(
                    0, f"kernel {kernel.probe().kernel_release} cannot replace TLS 1.3 keys "
                       "(needs Linux 6.14+); nothing was sent", "KEY_UPDATE_UNSUPPORTED")
            self._update_tx_keys(request_peer)
            self._flush_queued_key_update()

    @_guarded
    def recv_record(self, bufsize: int = MAX_RECORD):
        """The next record as (content_type, payload). A non-data record gets its built-in
        handling too (keys move, tickets reach OpenSSL, close_notify ends the data) before it is
        returned, so the connection stays consistent, and application data behind an unfinished
        post-handshake message is refused as recv() refuses it. A record that fails the
        connection (a fatal alert, a protocol violation) raises instead."""
        self._ensure_handshake()
        self._raise_if_failed()
        if not self._rx_kernel:
            raise ValueError("recv_record needs the kernel to carry the receive direction "
                             f"({self._status.rx_reason})")
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return ContentType.APPLICATION_DATA, data
        self._flush_outgoing("read")
        buffer = bytearray(max(bufsize, MAX_RECORD))  # a control record is always taken whole
        with _Waiter(self, "read") as waiter:
            record = self._receive(buffer, waiter)
        payload = bytes(buffer[: record.length])
        if record.content_type == ContentType.APPLICATION_DATA:
            refused = control.data_refused(self._control)
            if refused:
                self._fail(refused)
            if record.length:
                self._control.saw_application_data()
        elif record.content_type != 0:
            self._handle_control(record.content_type, payload)
        return record.content_type, payload

    # --- writing ---------------------------------------------------------------------------------

    @_guarded
    def write(self, data) -> int:
        self._ensure_handshake()
        self._raise_if_failed()
        if self._openssl_tx_stale is not None:
            raise self._openssl_tx_stale
        if self._tx_kernel:
            count = self._kernel_write(data)
            self._handshake.raise_application_error()  # what _msg_callback raised, as CPython
            return count
        with _Waiter(self, "write") as waiter:
            while True:
                try:
                    count = self._handshake.write(data)
                except Exception:
                    self._check_open()
                    raise
                if count >= 0:
                    self._handshake.raise_application_error()
                    return count
                waiter.wait(-count)

    def _kernel_write(self, data) -> int:
        self._check_not_reset()
        self._check_key_limit()
        with _Waiter(self, "write") as waiter:
            while True:
                try:
                    with self._tx_lock:
                        if self._outgoing:  # records of our own go out first, at every attempt
                            self._flush_outgoing("write")
                        sent = os.write(self._fd, data)
                    break
                except BlockingIOError:
                    waiter.wait(WANT_WRITE)
                except OSError as exc:
                    raise self._write_failed(exc) from None
        self._count_sent(sent // MAX_RECORD + 1)
        return sent

    @_guarded
    def sendfile(self, file, offset: int, count):
        """Bytes sent through the kernel path, or None when this connection cannot sendfile."""
        self._ensure_handshake()
        self._raise_if_failed()
        try:
            fileno = file.fileno()
        except (AttributeError, OSError):  # not a real file (io.UnsupportedOperation is an OSError)
            return None
        if self._tx_kernel:
            self._check_key_limit()
            self._flush_outgoing("write")
            return self._sendfile_loop(file, fileno, offset, count, self._kernel_sendfile_chunk)
        if self.policy is Policy.AFTER_CCS and self._status.tx:
            if self._openssl_tx_stale is not None:
                raise self._openssl_tx_stale
            return self._sendfile_loop(file, fileno, offset, count, self._handshake.sendfile)
        return None

    def _kernel_sendfile_chunk(self, fileno: int, offset: int, size: int) -> int:
        """os.sendfile into the kernel's TLS: bytes sent, or -WANT_WRITE."""
        self._check_not_reset()
        try:
            with self._tx_lock:
                sent = os.sendfile(self._fd, fileno, offset, size)
        except BlockingIOError:
            return -WANT_WRITE
        except OSError as exc:
            raise self._write_failed(exc) from None
        self._count_sent(sent // MAX_RECORD + 1)
        return sent

    def _sendfile_loop(self, file, fileno: int, offset: int, count, send_chunk) -> int:
        """socket.sendfile's contract over ``send_chunk(fileno, offset, size)`` (bytes, or -WANT_*):
        from ``offset``, ``count`` bytes or to the end of the file; the file position ends after
        the last byte sent; the socket's timeout bounds each wait."""
        size = os.fstat(fileno).st_size - offset
        if count is not None:
            size = min(size, count)
        total = 0
        try:
            with _Waiter(self, "write") as waiter:
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

    @_guarded
    def pending(self) -> int:
        if self._rx_kernel:
            return len(self._leftover)
        return self._handshake.pending()

    # --- shutdown ----------------------------------------------------------------------------------

    @_guarded
    def shutdown(self):
        """Send close_notify and wait for the peer's (CPython's unwrap); returns the socket."""
        sock = self.owner
        if not (self._tx_kernel or self._rx_kernel):
            self._openssl_shutdown()
            return sock
        if not self._sent_close:
            if self._tx_kernel:
                self._outgoing.append((ContentType.ALERT, CLOSE_NOTIFY, None))
                self._flush_outgoing("write")
            else:
                self._handshake.shutdown_step()
            self._sent_close = True
            self._handshake.note_close_notify(sent=True)
            self._event("close_notify sent")
        scratch = self._scratch_buffer()
        with _Waiter(self, "read") as waiter:
            while not self._peer_closed:
                record = self._receive(scratch, waiter)
                if record.content_type == 0 and record.length == 0:
                    raise self._terminate(errors.unexpected_eof_error(), "TCP EOF without close_notify")
                if record.content_type == ContentType.APPLICATION_DATA:
                    continue  # data in flight while closing is discarded, as OpenSSL does
                self._handle_control(record.content_type, bytes(scratch[: record.length]))
        return sock

    def _openssl_shutdown(self) -> None:
        zeros = 0
        with _Waiter(self, "shutdown") as waiter:
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

    # --- information (what _ssl._SSLSocket offers) --------------------------------------------------

    @_guarded
    def version(self):
        return self._handshake.version()

    @_guarded
    def cipher(self):
        return self._handshake.cipher()

    @_guarded
    def shared_ciphers(self):
        return self._handshake.shared_ciphers()

    @_guarded
    def compression(self):
        return self._handshake.compression()

    @_guarded
    def selected_alpn_protocol(self):
        return self._handshake.selected_alpn_protocol()

    @_guarded
    def get_channel_binding(self, cb_type="tls-unique"):
        return self._handshake.channel_binding(cb_type)

    @_guarded
    def getpeercert(self, binary_form=False):
        if not self._handshake.is_finished:
            raise ValueError("handshake not done yet")
        der = self._handshake.peer_certificate_der()
        if der is None:
            return None
        if binary_form:
            return der
        if not self._handshake.verify_mode() & lib.SSL_VERIFY_PEER:
            return {}  # CPython: a certificate that was not verified is not decoded
        from .certificate import decode_certificate
        return decode_certificate(der)

    @_guarded
    def get_verified_chain(self):
        return self._handshake.verified_chain()

    @_guarded
    def get_unverified_chain(self):
        return self._handshake.unverified_chain()

    @_guarded
    def verify_client_post_handshake(self):
        """Ask the client for a certificate now (TLS 1.3). Under kTLS the CertificateRequest goes
        out at once; the client's answer is checked by OpenSSL when it arrives, and no data that
        follows it is delivered before OpenSSL has accepted it."""
        self._handshake.verify_client_post_handshake()
        if self._rx_kernel:
            with self._lock:
                if self._tx_kernel:
                    self._queue_own_records(self._handshake.emit())
                    self._flush_outgoing("write")
                else:
                    self._handshake.emit()
                self._control.client_auth = "requested"
                self._event("post-handshake CertificateRequest sent")

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
        # using it, when that call leaves (see the theory of operation above).
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
