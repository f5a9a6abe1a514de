"""The engine's side of pyOpenSSL: a pyOpenSSL connection on memory BIOs as a handshake source, as a
post-handshake engine after the handoff, and as the record layer where the kernel cannot carry one.

pyOpenSSL runs cryptography's bundled OpenSSL, a different build from the system OpenSSL the rest of
ktls_ossl uses (built without kTLS, with its own structure layouts), so its ``SSL*`` never reaches
this project's C code: everything here goes through pyOpenSSL's public methods, called on the
``OpenSSL.SSL.Connection`` class so that a subclass (the front, ktls_ossl.pyopenssl.Connection) can
give its users other meanings for the same names.

- ``PyOpenSSLEngine`` is pump.HandshakeEngine over ``bio_write``/``do_handshake``/``bio_read``, and
  makes the ``Handoff`` from what pyOpenSSL reports publicly: TLS 1.3 traffic secrets from keylog
  lines (``SecretLog``), TLS 1.2's master secret and randoms, and the sequence numbers the pump
  counted on the wire (pump.RecordPump.sequence_numbers).
- ``PyOpenSSLPostHandshake`` is the session's post-handshake engine: KeyUpdate from the traffic
  secrets (keyschedule.KeyScheduleEngine), each NewSessionTicket re-protected under the keys
  pyOpenSSL still reads with (it saw nothing after its handshake) and fed to it, so its session
  resumes; close_notify noted in it, so OpenSSL keeps that session.
- ``PyOpenSSLRecordLayer`` is pyOpenSSL carrying the records itself, fed from and flushed to the
  socket, with the kernel session's I/O methods.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

try:
    from OpenSSL import SSL
except ImportError as exc:  # an optional dependency: say which, and how to get it
    raise ImportError("ktls_ossl's pyOpenSSL front needs pyOpenSSL: pip install 'ktls_ossl[pyopenssl]'") from exc

from . import errors, keys
from .handshake import WANT_READ, WANT_WRITE, Handoff, HandoffUnavailable, standard_suite_name
from .keys import TLS_1_2_VERSION, TLS_1_3_VERSION
from .keyschedule import KeyScheduleEngine
from .records import ContentType, HandshakeType, RecordProtection, split_records

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from .pump import NoWaitSocket, RecordPump

__all__ = ["PyOpenSSLEngine", "PyOpenSSLPostHandshake", "PyOpenSSLRecordLayer", "SecretLog", "take_outgoing"]

_CHUNK = 1 << 16  # what one user-space write hands pyOpenSSL: bounds the ciphertext queued here


class SecretLog:
    """The TLS 1.3 application traffic secrets of one connection, from its keylog lines."""

    _LABELS = {b"CLIENT_TRAFFIC_SECRET_0": "client", b"SERVER_TRAFFIC_SECRET_0": "server"}

    def __init__(self) -> None:
        self.client: bytes | None = None
        self.server: bytes | None = None

    def add(self, line: bytes) -> None:
        fields = line.split()
        side = self._LABELS.get(fields[0]) if len(fields) == 3 else None
        if side is not None:
            setattr(self, side, bytes.fromhex(fields[2].decode("ascii")))

    def forget(self) -> None:
        self.client = self.server = None


# --- the handshake ----------------------------------------------------------------------------------

class PyOpenSSLEngine:
    """pump.HandshakeEngine over a pyOpenSSL connection on memory BIOs, and the Handoff of its
    completed handshake (see the module doc for where each part comes from)."""

    def __init__(self, connection: SSL.Connection, secrets: SecretLog, *, server_side: bool) -> None:
        self._connection = connection
        self._secrets = secrets
        self._server_side = server_side

    def give_incoming(self, data: bytes) -> None:
        SSL.Connection.bio_write(self._connection, data)

    def give_incoming_eof(self) -> None:
        SSL.Connection.bio_shutdown(self._connection)

    def take_outgoing(self) -> bytes:
        return take_outgoing(self._connection)

    def advance(self) -> bool:
        try:
            SSL.Connection.do_handshake(self._connection)
        except SSL.WantReadError:
            return False
        return True

    def handoff(self, pump: RecordPump) -> Handoff:
        """Exact keys and sequence numbers per direction (HandoffUnavailable with the reason)."""
        connection = self._connection
        version = SSL.Connection.get_protocol_version(connection)
        if version not in (TLS_1_2_VERSION, TLS_1_3_VERSION):
            raise HandoffUnavailable(f"protocol {SSL.Connection.get_protocol_version_name(connection)} has no "
                                     f"kernel TLS support")
        name = SSL.Connection.get_cipher_name(connection)
        suite = standard_suite_name(name)
        if suite is None:
            raise HandoffUnavailable(f"cipher suite {name} is unknown to the system's OpenSSL")
        try:
            cipher = keys.kernel_cipher_for_suite(suite)
        except keys.UnsupportedCipher as exc:
            raise HandoffUnavailable(str(exc)) from None
        hash_name = keys.hash_name_for_suite(suite)
        try:
            tx_seq, rx_seq = pump.sequence_numbers(version, server_side=self._server_side)
        except ValueError as exc:
            raise HandoffUnavailable(str(exc)) from None
        if version == TLS_1_3_VERSION:
            secrets = self._secrets
            tx_secret, rx_secret = ((secrets.server, secrets.client) if self._server_side
                                    else (secrets.client, secrets.server))
            secrets.forget()
            if tx_secret is None or rx_secret is None:
                raise HandoffUnavailable("pyOpenSSL's keylog callback did not report the TLS 1.3 traffic secrets "
                                         "(was the context's keylog callback replaced without "
                                         "ktls_ossl.pyopenssl.prepare_context?)")
            return Handoff.from_tls13_secrets(cipher, suite, hash_name, tx_secret=tx_secret, rx_secret=rx_secret,
                                              tx_seq=tx_seq, rx_seq=rx_seq)
        tx, rx = keys.tls12_connection_keys(
            SSL.Connection.master_key(connection), SSL.Connection.client_random(connection),
            SSL.Connection.server_random(connection), cipher, hash_name,
            server_side=self._server_side, tx_seq=tx_seq, rx_seq=rx_seq)
        return Handoff(version, cipher, suite, hash_name, tx, rx)


def take_outgoing(connection: SSL.Connection) -> bytes:
    """Everything pyOpenSSL wrote into its outgoing memory BIO."""
    chunks = []
    while True:
        try:
            chunks.append(SSL.Connection.bio_read(connection, _CHUNK))
        except SSL.WantReadError:
            return b"".join(chunks)


# --- after the handoff -----------------------------------------------------------------------------

class PyOpenSSLPostHandshake(KeyScheduleEngine):
    """session.PostHandshakeEngine for a pyOpenSSL connection whose records the kernel carries:
    KeyUpdate from the traffic secrets (KeyScheduleEngine); each NewSessionTicket re-protected under
    the keys pyOpenSSL still reads with and fed to it, so that its session can be resumed."""

    def __init__(self, connection: SSL.Connection, handoff: Handoff) -> None:
        super().__init__(handoff, "pyOpenSSL has no API for post-handshake authentication")
        self._connection = connection
        # pyOpenSSL's own view of the connection: it read and wrote nothing after its handshake, so
        # its keys and sequence numbers are the handoff's, whatever the kernel has moved to since.
        self._into_pyopenssl = RecordProtection(handoff.rx)
        self._from_pyopenssl = RecordProtection(handoff.tx)

    def feed(self, content_type: int, payload: bytes) -> list[tuple[int, bytes]]:
        if (self._handoff.version == TLS_1_3_VERSION and content_type == ContentType.HANDSHAKE
                and payload[:1] == bytes([HandshakeType.new_session_ticket])):
            return self._feed_ticket(payload)
        return super().feed(content_type, payload)

    def _feed_ticket(self, message: bytes) -> list[tuple[int, bytes]]:
        connection = self._connection
        SSL.Connection.bio_write(connection, self._into_pyopenssl.seal(ContentType.HANDSHAKE, message))
        try:
            SSL.Connection.recv(connection, 1)
        except SSL.WantReadError:
            pass  # the ticket was taken, and nothing else is there
        except SSL.Error as exc:
            failure = errors.local_protocol_error("BAD_TICKET", f"pyOpenSSL refused the peer's session ticket: {exc}")
            failure.ktls_outgoing = self._written_by_pyopenssl()  # its alert, for the kernel to send
            raise failure from None
        else:
            raise errors.local_protocol_error("INTERNAL_ERROR", "pyOpenSSL returned data for a session ticket")
        return self._written_by_pyopenssl()

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None:
        """close_notify crossed in the kernel: pyOpenSSL's SSL object is told (SSL_set_shutdown),
        so that OpenSSL keeps the session resumable when the object is freed (it drops the
        session of a connection that did not shut down properly)."""
        flags = (SSL.SENT_SHUTDOWN if sent else 0) | (SSL.RECEIVED_SHUTDOWN if received else 0)
        connection = self._connection
        SSL.Connection.set_shutdown(connection, SSL.Connection.get_shutdown(connection) | flags)

    def _written_by_pyopenssl(self) -> list[tuple[int, bytes]]:
        """What pyOpenSSL wrote (an alert), as records for the kernel to send: opened with the keys
        pyOpenSSL writes with."""
        whole, _ = split_records(take_outgoing(self._connection))
        return [self._from_pyopenssl.open(header.pack() + body) for header, body in whole]


class PyOpenSSLRecordLayer:
    """pyOpenSSL carries the records (the kernel could not, or the policy said no), with the same
    I/O methods as the kernel's session (userspace.OpenSSLRecordLayer's), each with the caller's
    waiter. Its SSL object is either on memory BIOs behind ``view`` (the handshake ran through the
    pump, and only then did it turn out that the kernel cannot take the connection), fed from and
    flushed to the socket here, or (``view`` None) on the socket itself, reading and writing there
    as pyOpenSSL does without ktls_ossl (the kernel was known not to take it before the handshake).

    ``check_open()`` raises where the owner closed the socket meanwhile (a failure then is that, not
    pyOpenSSL's); ``waiter_for(operation)`` makes the waiter of a call that has none of its own."""

    tickets_received = 0
    key_updates = 0
    key_limit_reached = False
    failure = None  # pyOpenSSL fails its own later calls

    def __init__(self, connection: SSL.Connection, view: NoWaitSocket | None, *, rx_reason: str | None,
                 check_open: Callable[[], None], waiter_for: Callable[[str], Any]) -> None:
        self._connection = connection
        self._view = view
        self._rx_reason = rx_reason
        self._check_open = check_open
        self._waiter_for = waiter_for
        self._unsent = b""  # ciphertext pyOpenSSL wrote that the socket has not taken yet
        # One write hands pyOpenSSL at most this much on memory BIOs, bounding what waits in
        # _unsent; on the socket, OpenSSL writes it all itself.
        self._write_limit = _CHUNK if view is not None else None

    def raise_if_failed(self) -> None:
        """pyOpenSSL fails its own later calls."""

    @property
    def pending(self) -> int:
        return SSL.Connection.pending(self._connection)

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    @property
    def sent_close(self) -> bool:
        return bool(SSL.Connection.get_shutdown(self._connection) & SSL.SENT_SHUTDOWN)

    @property
    def peer_closed(self) -> bool:
        return bool(SSL.Connection.get_shutdown(self._connection) & SSL.RECEIVED_SHUTDOWN)

    def _flush(self, waiter, *, wait: bool = True) -> bool:
        """Send what pyOpenSSL wrote into its memory BIO; with ``wait`` until it is all gone. True
        when nothing is left."""
        if self._view is None:
            return True  # on the socket, pyOpenSSL sent it itself
        self._unsent += take_outgoing(self._connection)
        while self._unsent:
            try:
                sent = self._view.send(self._unsent)
            except BlockingIOError:
                if not wait:
                    return False
                waiter.wait(WANT_WRITE)
                continue
            self._unsent = self._unsent[sent:]
        return True

    def _last_words(self) -> None:
        """After pyOpenSSL failed: its alert goes out if the socket takes it now."""
        try:
            self._flush(None, wait=False)
        except OSError:
            pass

    def _receive(self) -> bool:
        """Give pyOpenSSL's memory BIO what the socket holds (EOF as EOF): False when nothing
        arrived (or pyOpenSSL reads the socket itself)."""
        if self._view is None:
            return False
        try:
            data = self._view.recv(_CHUNK)
        except BlockingIOError:
            return False
        if data:
            SSL.Connection.bio_write(self._connection, data)
        else:
            SSL.Connection.bio_shutdown(self._connection)
        return True

    def _call(self, operation: Callable[[], Any], waiter) -> Any:
        """``operation`` on pyOpenSSL until it does not want the socket (waiting with ``waiter``).
        A failure sends its alert, and a closed socket is the error."""
        while True:
            try:
                return operation()
            except SSL.WantReadError:
                self._flush(waiter, wait=False)  # what pyOpenSSL wrote first (a KeyUpdate of its own)
                if not self._receive():
                    waiter.wait(WANT_READ)
            except SSL.WantWriteError:  # on the socket only
                waiter.wait(WANT_WRITE)
            except SSL.ZeroReturnError:
                raise
            except Exception as exc:
                self._check_open()
                if isinstance(exc, SSL.Error):
                    self._last_words()
                raise

    def handshake(self, waiter) -> None:
        """pyOpenSSL's handshake on the socket itself."""
        self._call(lambda: SSL.Connection.do_handshake(self._connection), waiter)

    def read_into(self, view: memoryview, nbytes: int, waiter) -> int:
        """0 once the peer's close_notify came (the front raises ZeroReturnError)."""
        try:
            count = self._call(lambda: SSL.Connection.recv_into(self._connection, view, nbytes), waiter)
        except SSL.ZeroReturnError:
            return 0
        self._flush(waiter, wait=False)
        return count

    def recv_record(self, bufsize: int, waiter) -> tuple[int, bytes]:
        raise ValueError(f"recv_record needs the kernel to carry the receive direction ({self._rx_reason})")

    def write(self, data: ReadableBuffer, waiter) -> int:
        if not self._flush(waiter, wait=not waiter.nonblocking):
            waiter.wait(WANT_WRITE)  # older records still wait for the socket: nothing new is taken
        chunk = memoryview(data)[:self._write_limit]
        count = self._call(lambda: SSL.Connection.send(self._connection, chunk), waiter)
        self._flush(waiter, wait=not waiter.nonblocking)  # the rest goes with the next call
        return count

    def prepare_sendfile(self) -> None:
        return None  # the front sends the file through write()

    def key_update(self, request_peer: bool = False) -> None:
        raise ValueError("pyOpenSSL has no KeyUpdate API: where it carries the records, it cannot send one")

    def request_client_certificate(self) -> None:
        raise ValueError("pyOpenSSL has no API for post-handshake authentication")

    def send_close_notify(self) -> None:
        """Our close_notify (SSL_shutdown's first step)."""
        with self._waiter_for("write") as waiter:
            while True:
                try:
                    SSL.Connection.shutdown(self._connection)
                except SSL.WantReadError:
                    pass  # sent; the peer's has not come
                except SSL.WantWriteError:  # a full socket: SSL_shutdown again once writable
                    waiter.wait(WANT_WRITE)
                    continue
                except SSL.Error:
                    self._check_open()
                    raise
                break
            self._flush(waiter)

    def shutdown(self, waiter) -> None:
        """close_notify both ways (the whole exchange); data still arriving is discarded."""
        self.send_close_notify()
        scratch = memoryview(bytearray(_CHUNK))
        while self.read_into(scratch, _CHUNK, waiter):
            pass
