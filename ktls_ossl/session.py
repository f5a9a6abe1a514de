"""The kTLS session: one connection's record layer in the kernel, after the handoff.

A ``KernelSession`` owns a TCP socket from the moment the kernel holds its receive keys (and, where
it can, its send keys). It is front-neutral: the drop-in ``KTLSSocket`` uses it, and so can an
event loop, a pyOpenSSL connection or the handshake agent, each with its own way of waiting.

Theory of operation
-------------------
Data records are the kernel's: ``read_into`` receives into the caller's buffer where a record
would be delivered anyway, ``write`` and ``sendfile_chunk`` hand bytes to the kernel. Every other
record the kernel surfaces (recvmsg with its record-type cmsg) is a *control record*, and
``control.decide`` says what it means; the session carries the decision out:

- post-handshake handshake messages (tickets, KeyUpdate, post-handshake authentication) go to the
  ``post_handshake`` engine (``PostHandshakeEngine``: OpenSSL's SSL object through
  ktls_ossl.handshake.Handshake today), whose verdict is final and whose answers the kernel
  sends; after such a message, application data is refused until the engine accepted it;
- a KeyUpdate moves the kernel's receive key to the engine's next one, and our own KeyUpdate (when
  asked, or proactively before the AEAD limit of RFC 8446 5.5) changes the send key right behind
  the record that carries it, under the TX lock, so no record goes out under the wrong key;
- close_notify ends the data; a fatal alert, a refused record or a protocol violation ends the
  session for good (``failure``), after the alert OpenSSL would send in user space.

Waiting is the caller's: every method that may block takes a *waiter* (``Waiter``), whose
``wait(want)`` returns when the socket may be ready or raises (SSLWantReadError/SSLWantWriteError
for a non-blocking caller, TimeoutError for a timeout). ``NonBlockingWaiter`` is the waiter of an
event loop: every would-block becomes the want error at once, and the caller waits for readiness
and calls again; nothing is lost in between (records of its own wait in the session's KernelSender).
"""
from __future__ import annotations

import enum
import errno
import functools
import socket as _socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Protocol

from . import control, errors, kernel, keys
from .control import Action, ControlState
from .errors import KernelTLSError, KTLSKeyExpiredError, KTLSRecordError
from .handshake import WANT_READ, Handoff, HandoffUnavailable
from .keys import Direction
from .records import ContentType
from .relay import PostHandshakeRelay
from .sender import KernelSender

MAX_RECORD = kernel.MAX_RECORD_PLAINTEXT

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["KernelSession", "NonBlockingWaiter", "PostHandshakeEngine", "SessionState", "Waiter", "hand_over",
           "install_keys"]


class Waiter(Protocol):
    """How a call waits for the socket (see the module doc)."""

    nonblocking: bool  # the caller waits for readiness itself (an event loop, a non-blocking socket)

    def wait(self, want: int, operation: str | None = None) -> None:
        """Return when the socket may be ready for ``want`` (WANT_READ/WANT_WRITE), or raise."""

    def __enter__(self) -> "Waiter": ...

    def __exit__(self, *exc_info) -> None: ...


class NonBlockingWaiter:
    """The waiter of a caller that waits for readiness itself: every wait is the want error."""

    nonblocking = True

    def __init__(self, operation: str = "") -> None:
        self.operation = operation

    def wait(self, want: int, operation: str | None = None) -> None:
        raise errors.want_read_error() if want == WANT_READ else errors.want_write_error()

    def __enter__(self) -> "NonBlockingWaiter":
        return self

    def __exit__(self, *exc_info) -> None:
        pass


class PostHandshakeEngine(Protocol):
    """The handshake engine that judges post-handshake messages after the handoff and writes
    the answers (ktls_ossl.handshake.Handshake, detached from the socket). Records it returns
    are (content type, plaintext) for the kernel to send; a KeyUpdate of its own comes as a
    KeyUpdateRecord that carries the next send keys."""

    in_handshake: bool  # inside a post-handshake exchange that has not completed

    def feed(self, content_type: int, payload: bytes) -> list[tuple[int, bytes]]: ...

    def feed_key_update(self, message: bytes) -> list[tuple[int, bytes]]: ...

    @property
    def read_keys(self) -> keys.TrafficKeys: ...

    def key_update_records(self, request_peer: bool) -> list[tuple[int, bytes]]: ...

    def emit(self) -> list[tuple[int, bytes]]: ...

    def verify_client_post_handshake(self) -> None: ...

    def handoff(self) -> Handoff:
        """Exact keys and sequence numbers per direction, once the peer's Finished is verified
        (HandoffUnavailable with the reason where the kernel cannot take over)."""

    def detach_from_socket(self, handoff: Handoff, *, tx: bool) -> None:
        """The kernel took the record layer (RX, and TX where ``tx``): the engine must not touch
        the socket again in those directions."""

    def shutdown_step(self) -> int: ...

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None: ...

    def forget_session(self) -> None: ...


class SessionState(enum.Enum):
    OPEN = "open"
    PEER_CLOSED = "the peer's close_notify was received: no more data"
    FAILED = "failed"  # final: every later call raises the failure again


class _TcpEnd(enum.Enum):
    """What this session has reported of TCP's end, as a user-space connection reads it."""
    OPEN = "open"
    EOF_REPORTED = "a read reported TCP EOF without close_notify"
    # A read or write reported a reset (or the broken pipe after one). The kernel's TLS layer does
    # not report it as TCP would after that (7.x repeats ECONNRESET; after EPIPE a write may even
    # succeed into the void), so from here the session answers as TCP does in user space:
    # reads find EOF, writes get EPIPE.
    RESET_REPORTED = "a read or write reported a TCP reset"


def _no_check() -> None:
    pass


def install_keys(fd: int, engine: PostHandshakeEngine, *,
                 event: Callable[[str], None] = lambda text: None) -> tuple[Handoff, str | None]:
    """Put the keys of ``engine``'s completed handshake (``engine.handoff()``) into the kernel on
    ``fd``, and move the engine off the socket. Returns the handoff and why TX stayed with the
    engine (None where the kernel took it).

    RX goes in first: with RX in the kernel and TX in the engine the connection still works; the
    other way round the engine would answer post-handshake messages with stale write state. Raises
    HandoffUnavailable (the kernel lacks the ULP or the cipher) or KernelTLSError (the kernel
    refused the RX key) while nothing is in the kernel yet, so the caller can go on in user space."""
    report = kernel.probe()
    if not report.ulp_available:
        raise HandoffUnavailable(report.ulp_message)
    handoff = engine.handoff()
    rx_reason = report.unavailable_reason(handoff.version, handoff.cipher, Direction.RX)
    if rx_reason:
        raise HandoffUnavailable(rx_reason)
    tx_reason = report.unavailable_reason(handoff.version, handoff.cipher, Direction.TX)
    kernel.attach_ulp(fd)
    kernel.install(fd, Direction.RX, handoff.rx)
    event(f"RX installed in the kernel at record {handoff.rx.seq}")
    if tx_reason is None:
        try:
            kernel.install(fd, Direction.TX, handoff.tx)
            event(f"TX installed in the kernel at record {handoff.tx.seq}")
        except KernelTLSError as exc:
            tx_reason = exc.message
    engine.detach_from_socket(handoff, tx=tx_reason is None)
    return handoff, tx_reason


def hand_over(fd: int, engine: PostHandshakeEngine, *, event: Callable[[str], None] = lambda text: None,
              **session_options: Any) -> KernelSession:
    """``install_keys``, then the session that owns the socket from here (``session_options``:
    KernelSession's); its ``tx_reason`` says why TX stayed with the engine, if it did."""
    handoff, tx_reason = install_keys(fd, engine, event=event)
    session = KernelSession(fd, handoff, tx_in_kernel=tx_reason is None, post_handshake=engine, event=event,
                            **session_options)
    session.tx_reason = tx_reason
    return session


_per_thread = threading.local()


def _terminate_of(session: Callable[[], "KernelSession | None"], exc: BaseException, event: str) -> BaseException:
    alive = session()
    return alive._terminate(exc, event) if alive is not None else exc


def _scratch_buffer() -> bytearray:
    """A record-sized buffer for the reads that cannot go straight into the caller's (a short
    read, a control record, a peek), one per thread. Its bytes are copied out before the call
    returns or runs a callback, so every session of the thread can use it, and an idle connection
    holds none (each held 16 KiB before)."""
    buffer = getattr(_per_thread, "scratch", None)
    if buffer is None:
        buffer = _per_thread.scratch = bytearray(MAX_RECORD)
    return buffer


class KernelSession:
    """One connection's record layer in the kernel (see the module doc).

    ``fd``: the TCP socket, whose RX keys (and TX keys where ``tx_in_kernel``) the kernel holds as
    ``handoff`` gave them. ``waiter_for(operation)`` makes the waiter of one call for the session's
    own waits (flushing its queued records). ``check_open()`` raises where the owner closed the
    socket meanwhile; ``event(text)`` records to the audit trail; ``on_control_record(type,
    payload)`` sees each control record before its built-in handling.
    """

    def __init__(self, fd: int, handoff: Handoff, *, tx_in_kernel: bool, post_handshake: PostHandshakeEngine,
                 server_side: bool, post_handshake_auth: bool = False, key_update_after: int | None = None,
                 waiter_for: Callable[[str], Waiter] = NonBlockingWaiter,
                 check_open: Callable[[], None] = _no_check, event: Callable[[str], None] = lambda text: None,
                 on_control_record: Callable[[int, bytes], None] | None = None) -> None:
        self.fd = fd
        self.handoff = handoff
        self.tx_in_kernel = tx_in_kernel
        self.tx_reason: str | None = None  # why TX stayed with the engine (hand_over)
        self.post_handshake = post_handshake
        self._waiter_for = waiter_for
        self._check_open = check_open
        self._event = event
        self._on_control_record = on_control_record
        self.state = SessionState.OPEN
        self.failure: BaseException | None = None
        self._tcp_end = _TcpEnd.OPEN
        self._connection_error: ConnectionError | None = None  # a reset that a peek took
        self._control = ControlState(handoff.version, server_side, post_handshake_auth=post_handshake_auth)
        self._leftover = b""
        self.sent_close = False
        # TLS 1.3 on a kernel that rekeys (KeyUpdates move the kernel's keys); the kernel may then
        # park a decrypted KeyUpdate behind data.
        self.rekeys = rekeys = handoff.version == keys.TLS_1_3_VERSION and bool(kernel.probe().rekey_supported)
        self._records_may_park = rekeys
        # The engine is one object (OpenSSL's SSL) that the reading and the sending thread both use:
        # every call into it is made under this lock.
        self.engine_lock = threading.RLock()
        # How the sender and the relay end the session: through a weak reference, so that the
        # three are freed with the connection, not by the cyclic garbage collector.
        terminate = functools.partial(_terminate_of, weakref.ref(self))
        self.sender = KernelSender(
            fd, handoff, tx_in_kernel=tx_in_kernel, post_handshake=post_handshake, engine_lock=self.engine_lock,
            rekeys=rekeys, key_update_after=key_update_after, waiter_for=waiter_for, check_open=check_open,
            event=event, terminate=terminate)
        self.relay = PostHandshakeRelay(fd, post_handshake, self.sender, lock=self.engine_lock,
                                        control_state=self._control, terminate=terminate,
                                        check_open=check_open, event=event)
        # What tells a failed tag from a TLS 1.3 record without a content type (_record_refused).
        self._decrypt_errors_at_handoff = (kernel.decrypt_error_count()
                                           if handoff.version == keys.TLS_1_3_VERSION else None)
        self.tickets_received = 0

    # --- state ----------------------------------------------------------------------------------

    @property
    def peer_closed(self) -> bool:
        return self.state is SessionState.PEER_CLOSED

    @property
    def pending(self) -> int:
        """Decrypted bytes held for the next read."""
        return len(self._leftover)

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            if self._tcp_end is not _TcpEnd.OPEN:
                # OpenSSL, failed by an EOF without close_notify, fails later reads and writes
                # with SSL_ERROR_SYSCALL and nothing queued: CPython's SSLEOFError without a reason.
                raise errors.eof_error()
            raise self.failure

    def _terminate(self, exc: BaseException, event: str) -> BaseException:
        """The session is over because of ``exc``: every later call raises it again, and its TLS
        session may not be resumed. Returns ``exc`` for the caller to raise."""
        self.failure = exc
        self.state = SessionState.FAILED
        self._event(event)
        self.relay.forget_session()
        return exc

    # --- reading ---------------------------------------------------------------------------------

    def read_into(self, view: memoryview, nbytes: int, waiter: Waiter) -> int:
        """Up to ``nbytes`` of application data into ``view``; 0 once the peer's close_notify came."""
        if self._leftover:
            count = min(nbytes, len(self._leftover))
            view[:count] = self._leftover[:count]
            self._leftover = self._leftover[count:]
            return count
        if self.sender.outgoing:
            self.sender.flush("read")
        while True:
            if self.state is SessionState.PEER_CLOSED:
                return 0
            # Straight into the caller's buffer only where a data record would be delivered:
            # data that is about to be refused must not reach application memory.
            direct = nbytes >= MAX_RECORD and control.data_refused(self._control) is None
            target = view[:nbytes] if direct else _scratch_buffer()
            record = self._receive(target, waiter)
            count = self._take_record(record, target, direct, view, nbytes)
            if count is None:
                continue
            if self._records_may_park and waiter.nonblocking:
                self.take_parked_records()
            return count

    def recv_record(self, bufsize: int, waiter: Waiter) -> tuple[int, bytes]:
        """The next record as (content_type, payload), a non-data record after its built-in
        handling (keys move, tickets reach the engine, close_notify ends the data); data behind an
        unfinished post-handshake message is refused as read_into refuses it."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return ContentType.APPLICATION_DATA, data
        self.sender.flush("read")
        buffer = bytearray(max(bufsize, MAX_RECORD))  # a control record is always taken whole
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

    def _receive(self, target, waiter: Waiter) -> kernel.ReceivedRecord:
        """One recvmsg from the kernel into ``target`` (data, or one control record), waiting as
        ``waiter`` allows. What the kernel refuses ends the session."""
        while True:
            self._check_open()
            if self._connection_error is not None:
                exc, self._connection_error = self._connection_error, None
                return self._connection_ended(exc)
            if self._tcp_end is _TcpEnd.RESET_REPORTED:
                return kernel.ReceivedRecord(0, 0, 0)  # TCP's reads after a reported reset: EOF
            try:
                return kernel.recv_record_into(self.fd, target)
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
        failure = errors.syscall_error(0, exc.errno)
        failure.tcp_errno = exc.errno  # what TCP said, for a front whose library reports the errno itself
        raise failure from None

    def _take_record(self, record, target, direct: bool, view, nbytes: int) -> int | None:
        """What one received record means for a read: the byte count delivered into ``view``
        (``direct``: ``target`` is the caller's view, else the scratch buffer), or None where the
        read goes on (a control record was handled, an empty record)."""
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
            if direct:
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

    def take_parked_records(self) -> None:
        """After a read by a caller that waits for readiness itself: control records the kernel
        decrypted and holds (a KeyUpdate that stopped the read) are handled now, since the kernel
        reports nothing readable while it holds one. (A blocking read takes them at its next
        call.) A 1-byte peek tells what comes next; data stays in the kernel. A failure is kept
        for the next call: the data just read is the caller's."""
        scratch = _scratch_buffer()
        while self.state is SessionState.OPEN:
            try:
                peeked = kernel.recv_record_into(self.fd, memoryview(scratch)[:1],
                                                 _socket.MSG_DONTWAIT | _socket.MSG_PEEK)
                if peeked.content_type != ContentType.HANDSHAKE:
                    return  # data, an alert, EOF: readiness reports them, the next read takes them
                record = kernel.recv_record_into(self.fd, scratch, _socket.MSG_DONTWAIT)
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
                if self.failure is None:
                    self.failure = exc
                    self.state = SessionState.FAILED
                # The caller learns it at its next read; shutting reception down makes the socket
                # readable, so that a caller waiting for readiness makes that read.
                kernel.shutdown(self.fd, _socket.SHUT_RD)
                return

    def _record_refused(self, exc: KTLSRecordError) -> KTLSRecordError:
        """The kernel refused a received record: the session is over. The peer gets the fatal
        alert OpenSSL sends for that record in user space, behind everything sent before it; the
        kernel's pending error is taken first, or it would refuse the alert too (see
        kernel.take_pending_error). Returns the exception for the caller to raise."""
        version = self.handoff.version
        authenticated = False
        # A failed decryption leaves its error pending; the record parser's errors do not.
        decrypting = kernel.take_pending_error(self.fd) == errno.EBADMSG
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
        self.sender.send_final_alert(alert)
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
        current = kernel.read_crypto_info(self.fd, Direction.RX)
        kernel.rekey(self.fd, Direction.RX, current)
        self._event(f"kernel paused at a record that did not end a KeyUpdate: RX resumed under the "
                    f"current key at record {current.seq}")
        return True

    # --- control records --------------------------------------------------------------------------

    def _handle_control(self, content_type: int, payload: bytes) -> None:
        """One non-data record: the owner's hook sees it first, then the built-in action always
        runs (a hook cannot stop a key change or drop a ticket). What the action sends goes out
        before this returns, or stays queued for a caller that waits for readiness itself."""
        self._event(f"control record type={content_type} length={len(payload)}")
        if self._on_control_record is not None:
            self._on_control_record(content_type, payload)
        for decision in control.decide(self._control, content_type, payload):
            self._carry_out(decision)
        self.sender.flush("read")

    def _carry_out(self, decision: control.Decision) -> None:
        action = decision.action
        if action is Action.CLOSE:
            self.state = SessionState.PEER_CLOSED
            self.relay.note_close_notify(received=True)
            self._event("close_notify received")
        elif action is Action.IGNORE:
            self._event(decision.message or "ignored")
        elif action is Action.PEER_ALERT:
            raise self._terminate(errors.peer_alert_error(decision.alert.description),
                                  f"fatal alert received: {decision.alert.description_name}")
        elif action is Action.FAIL:
            self._fail(decision)
        elif action is Action.REFUSE_RENEGOTIATION:
            self.sender.queue_alert(decision.alert)
            self._event(decision.message)
        elif action is Action.SESSION_TICKET:
            self.relay.feed(decision)
            self.tickets_received += 1
            self._event("NewSessionTicket accepted by OpenSSL")
        elif action is Action.KEY_UPDATE:
            self.relay.peer_key_update(decision)
        elif action is Action.CERTIFICATE_REQUEST:
            self.relay.feed(decision)
            self._event("post-handshake CertificateRequest answered by OpenSSL")
        elif action is Action.CLIENT_AUTHENTICATION:
            self.relay.client_authentication(decision)

    def _fail(self, decision: control.Decision):
        if decision.alert is not None:
            self.sender.send_final_alert(decision.alert)
        raise self._terminate(errors.local_protocol_error(decision.reason, decision.message),
                              f"connection failed: {decision.reason}: {decision.message}")

    def request_client_certificate(self) -> None:
        """A post-handshake CertificateRequest (TLS 1.3, server side): PostHandshakeRelay's."""
        self.relay.request_client_certificate()

    # --- key updates -------------------------------------------------------------------------------

    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move the kernel's send key to the next one (see
        KernelSender.key_update)."""
        self.sender.key_update(request_peer)

    @property
    def key_updates(self) -> int:
        return self.sender.key_updates

    @property
    def key_limit_reached(self) -> bool:
        return self.sender.key_limit_reached

    # --- writing ---------------------------------------------------------------------------------

    def write(self, data: ReadableBuffer, waiter: Waiter) -> int:
        """Bytes of ``data`` the kernel took (records of our own that wait go out first)."""
        if self._tcp_end is _TcpEnd.RESET_REPORTED:
            self._check_not_reset()
        try:
            return self.sender.write(data, waiter)
        except OSError as exc:
            raise self._write_failed(exc) from None

    def prepare_sendfile(self) -> Callable[[int, int, int], int]:
        """Before a sendfile: the AEAD limit holds, and records of our own are out. Returns the
        function that sends each chunk (sendfile_chunk)."""
        self.sender.prepare_sendfile()
        return self.sendfile_chunk

    def sendfile_chunk(self, fileno: int, offset: int, size: int) -> int:
        """os.sendfile into the kernel's TLS: bytes sent, or -WANT_WRITE."""
        self._check_not_reset()
        try:
            return self.sender.sendfile_chunk(fileno, offset, size)
        except OSError as exc:
            raise self._write_failed(exc) from None

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
        if self.peer_closed:
            return errors.zero_return_error()
        return errors.syscall_error(0, error)

    # --- closing ---------------------------------------------------------------------------------

    def send_close_notify(self) -> None:
        """Send our close_notify, once (SSL_shutdown's first step). A caller that waits for
        readiness itself may be told SSLWantWriteError: the close_notify stays queued, once, and
        goes out when it calls again."""
        if not self.sent_close:
            if self.tx_in_kernel:
                self.sender.queue_close_notify()
            else:
                self.relay.shutdown_step()  # the engine sends on the socket itself
            self.sent_close = True
            self.relay.note_close_notify(sent=True)
            self._event("close_notify sent")
        if self.tx_in_kernel:
            self.sender.flush("write")

    def shutdown(self, waiter: Waiter) -> None:
        """Send close_notify (once) and read until the peer's; data still arriving is discarded,
        as OpenSSL does."""
        self.send_close_notify()
        scratch = _scratch_buffer()
        while not self.peer_closed:
            record = self._receive(scratch, waiter)
            if record.content_type == 0 and record.length == 0:
                raise self._terminate(errors.unexpected_eof_error(), "TCP EOF without close_notify")
            if record.content_type == ContentType.APPLICATION_DATA:
                continue  # data in flight while closing is discarded, as OpenSSL does
            self._handle_control(record.content_type, bytes(scratch[: record.length]))
