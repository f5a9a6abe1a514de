"""A post-handshake engine that is only the TLS 1.3 key schedule: KeyUpdate without a TLS library.

A kernel session needs an engine for the messages that follow the handshake (session.
PostHandshakeEngine). Where no TLS library is left to judge them (the handshake agent handed over the
traffic secrets and went its way; a library whose SSL object cannot be driven after the handoff),
``KeyScheduleEngine`` does what needs no more than the secrets:

- KeyUpdate, both ways: the next traffic secret (RFC 8446 7.2) and the kernel's next keys from it;
  our own KeyUpdate message, written here, with the send keys that follow it;
- NewSessionTicket: accepted and dropped (there is no session store to put it in: resumption needs
  an engine that keeps sessions);
- everything that needs the handshake's private key or transcript (a post-handshake
  CertificateRequest to answer, or one to send) is refused: the message fails the connection with
  the unexpected_message alert, the request raises, each saying why.

TLS 1.2 has no post-handshake messages but the refused renegotiation (control.py), so the engine
holds no secret there.
"""
from __future__ import annotations

import ssl

from . import errors, keys, records
from .handshake import Handoff, KeyUpdateRecord
from .keys import Direction, TrafficKeys
from .records import Alert, AlertDescription, AlertLevel, ContentType, HandshakeType

__all__ = ["KeyScheduleEngine"]


class KeyScheduleEngine:
    """session.PostHandshakeEngine from ``handoff`` and its TLS 1.3 traffic secrets. ``reason`` says
    why nothing more is available (in the errors it raises)."""

    def __init__(self, handoff: Handoff, reason: str = "no TLS engine is left after the handoff") -> None:
        if handoff.version == keys.TLS_1_3_VERSION and (handoff.tx_secret is None or handoff.rx_secret is None):
            raise ValueError("a TLS 1.3 key schedule needs both traffic secrets")
        self._handoff = handoff
        self._reason = reason
        self._secrets = {Direction.RX: handoff.rx_secret, Direction.TX: handoff.tx_secret}
        self._read_keys = handoff.rx
        self.tickets_dropped = 0

    def handoff(self) -> Handoff:
        return self._handoff

    def detach_from_socket(self, handoff: Handoff, *, tx: bool) -> None:
        """Nothing was ever on the socket."""

    @property
    def in_handshake(self) -> bool:
        return False

    @property
    def read_keys(self) -> TrafficKeys:
        return self._read_keys

    def _next_keys(self, direction: Direction) -> TrafficKeys:
        handoff = self._handoff
        secret = keys.tls13_next_secret(self._secrets[direction], handoff.hash_name)
        self._secrets[direction] = secret
        return keys.tls13_traffic_keys(secret, handoff.cipher, handoff.hash_name, 0)

    def feed(self, content_type: int, payload: bytes) -> list[tuple[int, bytes]]:
        if content_type == ContentType.HANDSHAKE and payload[:1] == bytes([HandshakeType.new_session_ticket]):
            self.tickets_dropped += 1
            return []
        exc = errors.local_protocol_error(
            "UNEXPECTED_MESSAGE", f"a post-handshake message that needs the handshake's secrets arrived, but "
                                  f"{self._reason}")
        exc.ktls_outgoing = [(ContentType.ALERT,
                              Alert(AlertLevel.FATAL, AlertDescription.unexpected_message).pack())]
        raise exc

    def feed_key_update(self, message: bytes) -> list[tuple[int, bytes]]:
        """The peer's KeyUpdate: the next receive keys (``read_keys``). A requested update of ours
        is the sender's to write (no answer here)."""
        self._read_keys = self._next_keys(Direction.RX)
        return []

    def key_update_records(self, request_peer: bool) -> list[tuple[int, bytes]]:
        record = KeyUpdateRecord((ContentType.HANDSHAKE, records.key_update_message(request_peer)))
        record.next_keys = self._next_keys(Direction.TX)
        return [record]

    def emit(self) -> list[tuple[int, bytes]]:
        return []

    def verify_client_post_handshake(self) -> None:
        raise ssl.SSLError(f"post-handshake authentication needs the handshake's private key and transcript, "
                           f"but {self._reason}")

    def shutdown_step(self) -> int:
        raise ValueError(f"nothing can send outside the kernel: {self._reason}")

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None:
        """No session to mark as shut down properly."""

    def forget_session(self) -> None:
        """No session to forget."""
