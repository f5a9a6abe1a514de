"""The record-exact pump: a TLS handshake driven over a non-blocking socket one record at a time.

Theory of operation
-------------------
The kernel can take over a connection's record layer only if every record after the handshake is
still in the socket's receive queue when TLS_RX goes in: the kernel decrypts from the queue, and a
byte that user space already read cannot go back. OpenSSL on the fd keeps that true with read-ahead
off. An engine that works on memory buffers (OpenSSL through memory BIOs, pyOpenSSL's
``bio_write``/``bio_read``, an agent at the other end of a pipe) reads nothing itself, so the pump
does the reading, and reads exactly one record at a time: the 5-byte header, then exactly the length
it announces, never a byte more. Each whole record goes to the engine; once the engine says the
handshake is complete, the pump stops reading, so the next record (the peer's first data, a
session ticket) is still in the kernel's queue. What the engine writes is sent as it comes;
a failure still sends what the engine wrote last (its alert) when the socket takes it at once.

The pump only frames: it judges nothing. Bytes go to the engine as they arrive (a header as soon as
it is whole), so a malformed header or an oversized record fails in OpenSSL with OpenSSL's error,
exactly when it would on the fd; the pump itself holds at most one 5-byte header.
It counts records per direction from the wire (``records_received``/``records_sent``): an account of
what crossed, independent of the engine's own counters. For an engine that reports no record counts
of its own (pyOpenSSL), the sequence numbers of the keys after the handshake come from the same
account: records since each direction's last ChangeCipherSpec (TLS 1.2's new epoch), and the records
the engine wrote in the step that completed the handshake (a TLS 1.3 server's tickets).

Every call works on a non-blocking socket and returns WANT_READ or WANT_WRITE where it would block,
so an event loop drives it; ``step()`` returns 0 once the handshake is complete and everything the
engine wrote has been sent.
"""
from __future__ import annotations

import enum
import os
import socket
from typing import TYPE_CHECKING, Protocol

from . import errors, keys, records
from .handshake import WANT_READ, WANT_WRITE, Handoff, Handshake

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from .context import SSLContext
    from .handshake import Session

__all__ = ["HandshakeEngine", "NoWaitSocket", "OpenSSLEngine", "PumpState", "RecordPump", "WANT_READ", "WANT_WRITE"]


class HandshakeEngine(Protocol):
    """What the pump drives: a TLS engine that reads from and writes to memory."""

    def give_incoming(self, data: bytes) -> None:
        """Bytes from the peer (never past the end of the record they belong to)."""

    def give_incoming_eof(self) -> None:
        """The peer ended TCP."""

    def take_outgoing(self) -> bytes:
        """What the engine wrote for the peer since the last call."""

    def advance(self) -> bool:
        """Run the handshake as far as the input allows: True once it is complete. Raises the
        engine's error when the handshake fails (what it wrote, e.g. an alert, is still taken)."""


class OpenSSLEngine:
    """The project's own OpenSSL handshake (ktls_ossl.handshake.Handshake) on memory BIOs."""

    def __init__(self, context: SSLContext, *, server_side: bool, server_hostname: str | None = None,
                 session: Session | None = None) -> None:
        from .handshake import Policy  # the only policy with memory BIOs: keys after Finished
        self.handshake = Handshake(context, None, server_side=server_side, server_hostname=server_hostname,
                                   policy=Policy.AFTER_FINISHED, session=session)

    def give_incoming(self, data: bytes) -> None:
        self.handshake.give_incoming(data)

    def give_incoming_eof(self) -> None:
        self.handshake.give_incoming_eof()

    def take_outgoing(self) -> bytes:
        return self.handshake.take_outgoing()

    def advance(self) -> bool:
        return self.handshake.step() == 0

    def handoff(self) -> Handoff:
        """Exact keys and sequence numbers per direction (HandoffUnavailable with the reason)."""
        return self.handshake.handoff()


class NoWaitSocket:
    """The pump's view of a socket that others use in blocking mode: every call non-blocking
    (MSG_DONTWAIT), whatever the socket's own mode, on a copy of the descriptor (the socket object
    keeps its timeout)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self.type = self._sock.type

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size, socket.MSG_DONTWAIT)

    def send(self, data: ReadableBuffer) -> int:
        return self._sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)

    def close(self) -> None:
        self._sock.close()


class PumpState(enum.Enum):
    HANDSHAKING = "handshaking"
    FLUSHING = "handshake complete, sending what it wrote last"
    DONE = "handshake complete and sent; the socket's queue holds everything after it"
    FAILED = "failed"  # final: the error was raised once and is raised again


class RecordPump:
    """Drives ``engine``'s handshake over ``sock`` (non-blocking), one record at a time."""

    def __init__(self, sock: socket.socket, engine: HandshakeEngine):
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("the record pump needs a stream socket")
        self.sock = sock
        self.engine = engine
        self.state = PumpState.HANDSHAKING
        self.records_received = 0
        self.records_sent = 0
        # Records since the last ChangeCipherSpec record in each direction (None: none crossed yet).
        self.received_after_change_cipher_spec: int | None = None
        self.sent_after_change_cipher_spec: int | None = None
        self.sent_in_completing_step = 0  # records the engine wrote in the step that completed it
        # The record being read: its header (kept to learn the body's length), then its body.
        self._header = bytearray()
        self._header_missing = records.HEADER_SIZE
        self._body_missing = 0
        self._unsent = b""
        self._sent_partial = bytearray()  # the sent stream's incomplete record, for the count
        self._failure: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.state is PumpState.DONE

    def sequence_numbers(self, version: int, *, server_side: bool) -> tuple[int, int]:
        """(TX, RX) sequence numbers of the first records under the traffic keys after the
        completed handshake, from the wire alone, for an engine that counts no records itself.

        TLS 1.2: the new epoch starts after each direction's ChangeCipherSpec (its Finished is
        record 0 there, possibly with records before it). TLS 1.3: the pump stopped reading at the
        record that completed the handshake (the peer's Finished, under the handshake keys), so
        nothing was received under the application keys; a client's completing flight is all under
        the handshake keys, and what a server wrote in its completing step, after the client's
        Finished, is under the application keys (its tickets). Raises ValueError where the wire
        holds no such account (no ChangeCipherSpec crossed in TLS 1.2)."""
        if not self.done:
            raise ValueError("the handshake is not complete")
        if version == keys.TLS_1_3_VERSION:
            return (self.sent_in_completing_step if server_side else 0), 0
        if self.sent_after_change_cipher_spec is None or self.received_after_change_cipher_spec is None:
            raise ValueError("no ChangeCipherSpec crossed in both directions")
        return self.sent_after_change_cipher_spec, self.received_after_change_cipher_spec

    def step(self) -> int:
        """Advance as far as the socket allows: 0 when done, else WANT_READ or WANT_WRITE."""
        if self.state is PumpState.FAILED:
            raise self._failure
        try:
            return self._step()
        except BaseException as exc:
            self.state = PumpState.FAILED
            self._failure = exc
            self._send_last_words()
            raise

    def _step(self) -> int:
        while True:
            if not self._flush():
                return WANT_WRITE
            if self.state is PumpState.FLUSHING:
                self.state = PumpState.DONE
            if self.state is PumpState.DONE:
                return 0
            complete = self.engine.advance()
            sent_before = self.records_sent
            self._queue(self.engine.take_outgoing())
            if complete:
                self.sent_in_completing_step = self.records_sent - sent_before
                self.state = PumpState.FLUSHING
                continue
            if self._unsent:
                continue  # send first: the peer may wait for it before it sends more
            chunk = self._read_within_record()
            if chunk is None:
                return WANT_READ
            self.engine.give_incoming(chunk)

    def _read_within_record(self) -> bytes | None:
        """The next bytes of the current record, never past its end: up to the end of its
        header, then up to the end of the length the header gives (None: nothing has arrived).
        They go to the engine as they come, as OpenSSL on the fd reads them: it judges a header
        as soon as it has one."""
        if self._header_missing:
            chunk = self._recv(self._header_missing)
            if chunk is None:
                return None
            self._header += chunk
            self._header_missing -= len(chunk)
            if not self._header_missing:
                self._body_missing = records.parse_header(bytes(self._header)).length
                if not self._body_missing:
                    self._record_read()
            return chunk
        chunk = self._recv(self._body_missing)
        if chunk is None:
            return None
        self._body_missing -= len(chunk)
        if not self._body_missing:
            self._record_read()
        return chunk

    def _record_read(self) -> None:
        self.records_received += 1
        if self._header[0] == records.ContentType.CHANGE_CIPHER_SPEC:
            self.received_after_change_cipher_spec = 0
        elif self.received_after_change_cipher_spec is not None:
            self.received_after_change_cipher_spec += 1
        self._header.clear()
        self._header_missing = records.HEADER_SIZE

    def _recv(self, size: int) -> bytes | None:
        try:
            chunk = self.sock.recv(size)
        except BlockingIOError:
            return None
        if not chunk:
            # TCP EOF: OpenSSL's verdict (an unexpected EOF in the handshake), as on the fd.
            self.engine.give_incoming_eof()
            self.engine.advance()
            raise errors.unexpected_eof_error()  # for an engine that did not raise
        return chunk

    def _queue(self, data: bytes) -> None:
        if not data:
            return
        self._unsent += data
        self._sent_partial += data
        whole, rest = records.split_records(bytes(self._sent_partial))
        self.records_sent += len(whole)
        for header, _ in whole:
            if header.content_type == records.ContentType.CHANGE_CIPHER_SPEC:
                self.sent_after_change_cipher_spec = 0
            elif self.sent_after_change_cipher_spec is not None:
                self.sent_after_change_cipher_spec += 1
        self._sent_partial = bytearray(rest)

    def _flush(self) -> bool:
        """Send what is queued: True when nothing is left."""
        while self._unsent:
            try:
                sent = self.sock.send(self._unsent)
            except BlockingIOError:
                return False
            self._unsent = self._unsent[sent:]
        return True

    def _send_last_words(self) -> None:
        """After a failure: what the engine wrote (its alert) goes out if the socket takes it now."""
        try:
            self._queue(self.engine.take_outgoing())
            self._flush()
        except OSError:
            pass
