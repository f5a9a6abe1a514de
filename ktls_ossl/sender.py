"""The sending half of a kTLS session: what goes out through the kernel, and the send key's life.

Application data goes to the kernel as it comes. Records of the session's own (alerts, the
engine's answers to post-handshake messages, KeyUpdates) wait in a queue and go out, in order,
before anything else is sent or read. The send key changes right behind the record that carries
our KeyUpdate, under the TX lock, so the peer never sees a record under the wrong key; and before
the current key has protected too many records (RFC 8446 5.5) a KeyUpdate goes out on its own, or,
where the kernel cannot rekey, sending stops at the AEAD limit.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket as _socket
import ssl
import threading
from typing import TYPE_CHECKING, Callable

from . import errors, kernel, keys
from .errors import KernelTLSError, KTLSRekeyUnsupportedError
from .handshake import WANT_WRITE, Handoff, KeyUpdateRecord
from .keys import Direction
from .records import Alert, AlertDescription, AlertLevel, ContentType

if TYPE_CHECKING:
    from .session import PostHandshakeEngine, Waiter

MAX_RECORD = kernel.MAX_RECORD_PLAINTEXT
CLOSE_NOTIFY = Alert(AlertLevel.WARNING, AlertDescription.close_notify).pack()


class KernelSender:
    """What a KernelSession sends (see the module doc). ``terminate(exc, event)`` ends the session
    when the kernel refuses our next send key (the peer already has the KeyUpdate)."""

    def __init__(self, fd: int, handoff: Handoff, *, tx_in_kernel: bool, post_handshake: PostHandshakeEngine,
                 engine_lock, rekeys: bool, key_update_after: int | None, waiter_for: Callable[[str], Waiter],
                 check_open: Callable[[], None], event: Callable[[str], None],
                 terminate: Callable[[BaseException, str], BaseException]) -> None:
        self.fd = fd
        self.handoff = handoff
        self.tx_in_kernel = tx_in_kernel
        self.post_handshake = post_handshake
        self._engine_lock = engine_lock  # every call into the engine: the reader uses it too
        self._waiter_for = waiter_for
        self._check_open = check_open
        self._event = event
        self._terminate = terminate
        # Records of our own that could not go out yet: (content type, payload, then) in order;
        # ``then`` runs once the record is out (the TX key change behind a KeyUpdate). Nothing
        # else is read or written before they are out, which bounds them to one record's answers
        # (a list: it is short, and an empty deque costs every connection most of a kilobyte).
        self.outgoing: list = []
        self._outgoing_lock = threading.Lock()
        self.key_lock = threading.RLock()
        # Where the TX key can change (TLS 1.3 on a kernel that rekeys), every record the kernel
        # sends for us goes out under this lock, so that no data record can slip between a
        # KeyUpdate message and the key change that must follow it. Elsewhere it is a no-op: an
        # uncontended lock still costs a clock read per send.
        self._tx_lock = threading.RLock() if rekeys else contextlib.nullcontext()
        self.key_updates = 0
        self.key_limit_reached = False
        self._key_update_after = key_update_after or keys.DEFAULT_KEY_UPDATE_RECORDS[handoff.cipher]
        # An upper bound of the records sent under the current TX key (each send closes at least
        # one record, and one per 16 KiB), refreshed from the kernel's rec_seq near limits.
        self._tx_records_bound = handoff.tx.seq

    # --- records of our own -----------------------------------------------------------------------

    def queue_alert(self, alert: Alert) -> None:
        if self.tx_in_kernel:
            self.outgoing.append((ContentType.ALERT, alert.pack(), None))
            self._event(f"alert sent: {alert.description_name}")

    def send_final_alert(self, alert: Alert) -> None:
        """The fatal alert of a failing session: sent if it fits now, never waited for (the
        error the caller gets is what matters)."""
        self.queue_alert(alert)
        self.flush("read", best_effort=True)

    def queue_close_notify(self) -> None:
        self.outgoing.append((ContentType.ALERT, CLOSE_NOTIFY, None))

    def queue_own_records(self, answer) -> bool:
        """Queue records the engine wrote for the kernel to send. The TX key changes right behind
        a KeyUpdate among them: the change runs as that record's ``then``, under the TX lock, so
        no record goes out between the two. Returns whether there was a KeyUpdate."""
        key_update = False
        for record in answer:
            then = None
            if isinstance(record, KeyUpdateRecord):
                then = functools.partial(self._next_tx_key, record.next_keys, record.update_requested)
                key_update = True
            self.outgoing.append((*record, then))
        return key_update

    def flush(self, operation: str, *, best_effort: bool = False) -> None:
        """Send the records of our own that wait, in order, before anything else is sent or read.
        A waiting caller waits for room; for one that waits for readiness itself what cannot go out
        stays queued and SSLWantWriteError says so. ``best_effort``: send what fits now and never
        raise (an alert on a failing session)."""
        if not self.outgoing:
            return
        with self._tx_lock, self._outgoing_lock, self._waiter_for(operation) as waiter:
            while self.outgoing:
                content_type, payload, then = self.outgoing[0]
                try:
                    sent = kernel.send_record(self.fd, content_type, payload, _socket.MSG_DONTWAIT)
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
                    self.outgoing[0] = (content_type, payload[sent:], then)
                    continue
                del self.outgoing[0]
                if then is not None:
                    then()

    # --- the send key --------------------------------------------------------------------------------

    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move the kernel's send key to the next one. On a socket
        that is full it stays queued, with its key change, until the next send."""
        if self.handoff.version != keys.TLS_1_3_VERSION:
            raise ValueError("KeyUpdate exists in TLS 1.3 only")
        if not kernel.probe().rekey_supported:
            raise KTLSRekeyUnsupportedError(
                0, f"kernel {kernel.probe().kernel_release} cannot replace TLS 1.3 keys "
                   "(needs Linux 6.14+); nothing was sent", "KEY_UPDATE_UNSUPPORTED")
        with self.key_lock:
            self.update_tx_keys(request_peer)
            self._flush_queued_key_update()

    def update_tx_keys(self, request_peer: bool) -> None:
        """Our KeyUpdate, written by the engine, goes out, and the TX key changes right behind it."""
        with self._engine_lock:
            records = self.post_handshake.key_update_records(request_peer)
        self.queue_own_records(records)

    def _next_tx_key(self, next_keys: keys.TrafficKeys, request_peer: bool) -> None:
        try:
            kernel.rekey(self.fd, Direction.TX, next_keys)
        except (KernelTLSError, OSError) as exc:
            # The peer has the KeyUpdate and reads with the next key from here on: nothing sent
            # under the old key could be read, so the session ends here, for good.
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
        self._tx_records_bound = kernel.read_crypto_info(self.fd, Direction.TX).seq
        if self._tx_records_bound < self._key_update_after:
            return
        if self.handoff.version == keys.TLS_1_3_VERSION and kernel.probe().rekey_supported:
            with self.key_lock:
                self.update_tx_keys(request_peer=False)
                self._flush_queued_key_update()
            return
        if not self.key_limit_reached:
            self.key_limit_reached = True
            self._event(f"{self._tx_records_bound} records under one key and the kernel cannot "
                        "update keys: close this connection soon")

    def _flush_queued_key_update(self) -> None:
        """A KeyUpdate we start goes out now where it can; on a socket that is full it stays
        queued (as OpenSSL's SSL_key_update) and goes out, with its key change, before the next
        record is sent."""
        try:
            self.flush("write")
        except ssl.SSLWantWriteError:
            pass

    def check_key_limit(self) -> None:
        if self.key_limit_reached and self._tx_records_bound >= keys.AEAD_RECORD_LIMITS[self.handoff.cipher]:
            raise errors.KTLSKeyLimitError(
                0, f"{self._tx_records_bound} records were sent under one key, the limit of "
                   f"{self.handoff.cipher.display_name} (RFC 8446 5.5), and this kernel cannot update "
                   "keys; nothing more is sent on this connection", "KEY_USAGE_LIMIT")

    # --- application data ------------------------------------------------------------------------------

    def write(self, data, waiter: Waiter) -> int:
        """Bytes of ``data`` the kernel took (records of our own that wait go out first). The
        system call's OSError is the caller's to translate."""
        if self.key_limit_reached:
            self.check_key_limit()
        while True:
            try:
                with self._tx_lock:
                    if self.outgoing:  # records of our own go out first, at every attempt
                        self.flush("write")
                    sent = os.write(self.fd, data)
                break
            except BlockingIOError:
                waiter.wait(WANT_WRITE)
        self._count_sent(sent // MAX_RECORD + 1)
        return sent

    def prepare_sendfile(self) -> None:
        """Before a sendfile: the AEAD limit holds, and records of our own are out."""
        self.check_key_limit()
        self.flush("write")

    def sendfile_chunk(self, fileno: int, offset: int, size: int) -> int:
        """os.sendfile into the kernel's TLS: bytes sent, or -WANT_WRITE (OSError: the caller's)."""
        try:
            with self._tx_lock:
                sent = os.sendfile(self.fd, fileno, offset, size)
        except BlockingIOError:
            return -WANT_WRITE
        self._count_sent(sent // MAX_RECORD + 1)
        return sent
