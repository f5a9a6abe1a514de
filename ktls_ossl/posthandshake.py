"""OpenSSL after the handoff: the session's post-handshake engine (session.PostHandshakeEngine).

Once the kernel holds the record layer, OpenSSL's SSL object still judges every post-handshake
message (tickets, KeyUpdate, post-handshake authentication) and writes the answers, but it no longer
touches the socket: it reads from and writes to memory BIOs, and this class translates between its
view of the record layer and the kernel's (see ``detach_from_socket``).
"""
from __future__ import annotations

from . import errors, keys, records
from ._ossl import ffi, lib
from .handshake import Handoff, Handshake, KeyUpdateRecord, memory_bio
from .keys import Direction, TrafficKeys
from .records import ContentType


class OpenSSLPostHandshake:
    """``handshake``'s SSL object as the session's engine after the handoff."""

    def __init__(self, handshake: Handshake) -> None:
        self.handshake = handshake
        self.ssl = handshake.ssl
        self._handoff: Handoff | None = None
        self._openssl_read_state: records.RecordProtection | None = None
        self._openssl_write_state: records.RecordProtection | None = None

    # --- what the session asks of the handshake itself ------------------------------------------

    def handoff(self) -> Handoff:
        return self.handshake.handoff()

    @property
    def in_handshake(self) -> bool:
        return self.handshake.in_handshake

    def verify_client_post_handshake(self) -> None:
        self.handshake.verify_client_post_handshake()

    def shutdown_step(self) -> int:
        return self.handshake.shutdown_step()

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None:
        self.handshake.note_close_notify(sent=sent, received=received)

    def forget_session(self) -> None:
        self.handshake.forget_session()

    # --- OpenSSL's record layer, mirrored -------------------------------------------------------------

    def detach_from_socket(self, handoff: Handoff, *, tx: bool) -> None:
        """The kernel took over: OpenSSL must never touch the fd again (for TX only when the kernel
        took TX too). It gets memory BIOs, through which post-handshake messages reach it.

        OpenSSL still believes it owns the record layer, so a message is given to it protected
        under OpenSSL's own current read keys and sequence number (it has seen none of the records
        the kernel decrypted since), and what it writes is unprotected with its own write state
        before the kernel sends it. These two RecordProtection objects mirror OpenSSL's state.
        """
        lib.SSL_set0_rbio(self.ssl, memory_bio())
        self._openssl_read_state = records.RecordProtection(handoff.rx)
        self._openssl_write_state = None
        # TLS 1.3: OpenSSL's traffic secrets as it holds them (KeyUpdates move them, and the
        # Finished of a post-handshake authentication is computed from them), and the part of a
        # handshake message it wrote that a later record continues.
        self._handoff = handoff
        self._openssl_secrets = {Direction.RX: handoff.rx_secret, Direction.TX: handoff.tx_secret}
        self._written_handshake = b""
        if tx:
            lib.SSL_set0_wbio(self.ssl, memory_bio())
            self._openssl_write_state = records.RecordProtection(handoff.tx)

    def _next_openssl_state(self, direction: Direction) -> records.RecordProtection:
        """OpenSSL's record protection for ``direction`` after a KeyUpdate (RFC 8446 7.2)."""
        handoff = self._handoff
        secret = keys.tls13_next_secret(self._openssl_secrets[direction], handoff.hash_name)
        self._openssl_secrets[direction] = secret
        return records.RecordProtection(keys.tls13_traffic_keys(secret, handoff.cipher, handoff.hash_name, 0))

    def feed_key_update(self, message: bytes) -> list[tuple[int, bytes]]:
        """The peer's KeyUpdate goes to OpenSSL, whose view of the peer's traffic secret must move
        with the kernel's: a later post-handshake authentication computes the client's Finished
        from it. Returns what OpenSSL answers (see feed); the kernel's next receive key is then
        ``read_keys``."""
        answer = self.feed(ContentType.HANDSHAKE, message)
        self._openssl_read_state = self._next_openssl_state(Direction.RX)
        return answer

    @property
    def read_keys(self) -> TrafficKeys:
        """The keys OpenSSL reads with now (after the handshake: the peer's current traffic keys)."""
        return self._openssl_read_state.keys

    def key_update_records(self, request_peer: bool) -> list[tuple[int, bytes]]:
        """Our KeyUpdate, written by OpenSSL (so that its own send secret moves with the kernel's)
        and returned for the kernel to send, as drain_output returns records."""
        self.handshake.key_update(request_peer)
        return self.drain_output()

    def feed(self, content_type: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Give OpenSSL one post-handshake record's plaintext; return what it answers, as
        (content type, plaintext) records for the kernel to send. OpenSSL's verdict is final: a
        rejected message raises OpenSSL's error (after its alert has been collected for sending,
        available as ``exc.ktls_outgoing``)."""
        # A message larger than one record (a big certificate chain or ticket) is given in records
        # of at most 2^14 bytes, as a peer may have sent it: OpenSSL refuses longer records.
        rbio = lib.SSL_get_rbio(self.ssl)
        for start in range(0, max(len(payload), 1), records.MAX_PLAINTEXT):
            record = self._openssl_read_state.seal(content_type, payload[start:start + records.MAX_PLAINTEXT])
            lib.BIO_write(rbio, record, len(record))
        lib.ERR_clear_error()
        scratch = ffi.new("unsigned char[1]")
        count = ffi.new("size_t *")
        result = lib.SSL_read_ex(self.ssl, scratch, 1, count)
        if result == 1:
            raise errors.local_protocol_error("UNEXPECTED_RECORD", "OpenSSL produced application data "
                                              "from a post-handshake message")
        return self._answer(result)

    def emit(self) -> list[tuple[int, bytes]]:
        """Let OpenSSL write what it has queued (e.g. a CertificateRequest) and return it."""
        lib.ERR_clear_error()
        return self._answer(lib.SSL_do_handshake(self.ssl))

    def _answer(self, result: int) -> list[tuple[int, bytes]]:
        """What OpenSSL wrote after a call that ended in ``result``; its error, if it failed, with
        the alert it queued attached as ``ktls_outgoing`` so that the alert still goes out."""
        if result != 1:
            try:
                self.handshake.wants_or_raise(result)
            except BaseException as exc:
                exc.ktls_outgoing = self.drain_output()
                raise
        return self.drain_output()

    def drain_output(self) -> list[tuple[int, bytes]]:
        """Records OpenSSL wrote to its memory BIO, unprotected with OpenSSL's write state."""
        if self._openssl_write_state is None:
            return []  # OpenSSL writes to the socket itself (TX not in the kernel)
        written = self.handshake.take_outgoing()
        if not written:
            return []
        whole, rest = records.split_records(written)
        if rest:
            raise errors.local_protocol_error("LENGTH_MISMATCH", "OpenSSL wrote a partial record")
        opened = []
        for header, body in whole:
            content_type, payload = self._openssl_write_state.open(header.pack() + body)
            if content_type == ContentType.HANDSHAKE and self._handoff.tx_secret is not None:
                # After a KeyUpdate of its own, OpenSSL protects what follows under its next key.
                messages, self._written_handshake = records.split_handshake_messages(self._written_handshake + payload)
                if any(message.msg_type == records.HandshakeType.key_update for message in messages):
                    self._openssl_write_state = self._next_openssl_state(Direction.TX)
                    record = KeyUpdateRecord((content_type, payload))
                    record.next_keys = self._openssl_write_state.keys
                    opened.append(record)
                    continue
            opened.append((content_type, payload))
        return opened
