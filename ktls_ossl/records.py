"""TLS records, alerts and handshake headers: pure parsing and building, plus AEAD record
protection in user space (used to check the kernel against published vectors, by the hostile-peer
test endpoint, and for re-protecting post-handshake messages for OpenSSL).
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from .keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher, TrafficKeys, record_nonce

HEADER_SIZE = 5
HANDSHAKE_HEADER_SIZE = 4  # msg_type (1) and length (3)
MAX_PLAINTEXT = 1 << 14
# RFC 8446 5.2: TLSCiphertext.length must not exceed 2^14 + 256.
MAX_CIPHERTEXT_TLS13 = MAX_PLAINTEXT + 256
# RFC 5246 6.2.3: 2^14 + 2048.
MAX_CIPHERTEXT_TLS12 = MAX_PLAINTEXT + 2048
TLS12_EXPLICIT_NONCE = 8


class ContentType(enum.IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class AlertLevel(enum.IntEnum):
    WARNING = 1
    FATAL = 2


class AlertDescription(enum.IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    no_renegotiation = 100
    missing_extension = 109
    unsupported_extension = 110
    unrecognized_name = 112
    bad_certificate_status_response = 113
    unknown_psk_identity = 115
    certificate_required = 116
    no_application_protocol = 120


class HandshakeType(enum.IntEnum):
    hello_request = 0
    client_hello = 1
    server_hello = 2
    new_session_ticket = 4
    end_of_early_data = 5
    encrypted_extensions = 8
    certificate = 11
    server_key_exchange = 12
    certificate_request = 13
    server_hello_done = 14
    certificate_verify = 15
    client_key_exchange = 16
    finished = 20
    key_update = 24
    message_hash = 254


class RecordFormatError(ValueError):
    """Bytes that are not a well-formed TLS record, alert or handshake message."""


@dataclass(frozen=True)
class RecordHeader:
    content_type: int
    version: int
    length: int

    def pack(self) -> bytes:
        return struct.pack(">BHH", self.content_type, self.version, self.length)


def parse_header(data: bytes) -> RecordHeader:
    if len(data) < HEADER_SIZE:
        raise RecordFormatError(f"a record header has {HEADER_SIZE} bytes, got {len(data)}")
    content_type, version, length = struct.unpack_from(">BHH", data)
    return RecordHeader(content_type, version, length)


def build_record(content_type: int, payload: bytes, version: int = TLS_1_2_VERSION) -> bytes:
    """A plaintext record (or an already-protected one, given its ciphertext as payload)."""
    if len(payload) > 0xFFFF:
        raise RecordFormatError("record payload longer than 65535 bytes")
    return RecordHeader(content_type, version, len(payload)).pack() + payload


def split_records(data: bytes) -> tuple[list[tuple[RecordHeader, bytes]], bytes]:
    """Whole records at the front of ``data`` and the incomplete rest."""
    records = []
    offset = 0
    while len(data) - offset >= HEADER_SIZE:
        header = parse_header(data[offset:])
        end = offset + HEADER_SIZE + header.length
        if end > len(data):
            break
        records.append((header, data[offset + HEADER_SIZE:end]))
        offset = end
    return records, data[offset:]


@dataclass(frozen=True)
class Alert:
    level: int
    description: int

    @property
    def is_close_notify(self) -> bool:
        return self.description == AlertDescription.close_notify

    @property
    def is_fatal(self) -> bool:
        return self.level == AlertLevel.FATAL

    def pack(self) -> bytes:
        return bytes([self.level, self.description])

    @property
    def description_name(self) -> str:
        try:
            return AlertDescription(self.description).name
        except ValueError:
            return f"alert_{self.description}"


def parse_alert(payload: bytes) -> Alert:
    if len(payload) != 2:
        raise RecordFormatError(f"an alert has 2 bytes, got {len(payload)}")
    return Alert(payload[0], payload[1])


@dataclass(frozen=True)
class HandshakeMessage:
    msg_type: int
    body: bytes

    def pack(self) -> bytes:
        return build_handshake(self.msg_type, self.body)


def build_handshake(msg_type: int, body: bytes) -> bytes:
    if len(body) >= 1 << 24:
        raise RecordFormatError("handshake message longer than 2^24 - 1 bytes")
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def split_handshake_messages(data: bytes) -> tuple[list[HandshakeMessage], bytes]:
    """Whole handshake messages at the front of ``data`` (which may span records) and the rest."""
    messages = []
    offset = 0
    while len(data) - offset >= 4:
        length = int.from_bytes(data[offset + 1:offset + 4], "big")
        end = offset + 4 + length
        if end > len(data):
            break
        messages.append(HandshakeMessage(data[offset], data[offset + 4:end]))
        offset = end
    return messages, data[offset:]


def key_update_message(update_requested: bool) -> bytes:
    """A TLS 1.3 KeyUpdate handshake message (RFC 8446 4.6.3)."""
    return build_handshake(HandshakeType.key_update, bytes([1 if update_requested else 0]))


# --- AEAD record protection ------------------------------------------------------------------------

def _aead(keys: TrafficKeys):
    if keys.cipher in (KernelCipher.AES_GCM_128, KernelCipher.AES_GCM_256):
        return AESGCM(keys.key)
    if keys.cipher is KernelCipher.AES_CCM_128:
        return AESCCM(keys.key, tag_length=16)
    return ChaCha20Poly1305(keys.key)


class RecordProtection:
    """One direction's record protection (seal or open), counting sequence numbers from keys.seq.

    TLS 1.3 (RFC 8446 5.2-5.3): inner plaintext = content || type || zeros, outer type 23,
    nonce = write_iv XOR seq, AAD = the record header. TLS 1.2 AEAD (RFC 5246 6.2.3.3, RFC 5288):
    GCM/CCM carry an 8-byte explicit nonce (here the sequence number, as OpenSSL and the kernel
    do); ChaCha20 (RFC 7905) uses write_iv XOR seq; AAD = seq || type || version || length.
    """

    def __init__(self, keys: TrafficKeys):
        self.keys = keys
        self.seq = keys.seq
        self._aead = _aead(keys)

    @property
    def _explicit_nonce(self) -> bool:
        return self.keys.version == TLS_1_2_VERSION and self.keys.cipher is not KernelCipher.CHACHA20_POLY1305

    def seal(self, content_type: int, payload: bytes, padding: int = 0) -> bytes:
        """A complete protected record carrying ``payload`` of ``content_type``."""
        seq = self._next_seq()
        if self.keys.version == TLS_1_3_VERSION:
            inner = payload + bytes([content_type]) + bytes(padding)
            length = len(inner) + self.keys.cipher.tag_size
            header = RecordHeader(ContentType.APPLICATION_DATA, TLS_1_2_VERSION, length).pack()
            return header + self._aead.encrypt(record_nonce(self.keys, seq), inner, header)
        aad = struct.pack(">QBHH", seq, content_type, TLS_1_2_VERSION, len(payload))
        if self._explicit_nonce:
            explicit = struct.pack(">Q", seq)
            body = explicit + self._aead.encrypt(record_nonce(self.keys, seq, explicit), payload, aad)
        else:
            body = self._aead.encrypt(record_nonce(self.keys, seq), payload, aad)
        return build_record(content_type, body)

    def open(self, record: bytes) -> tuple[int, bytes]:
        """(content_type, plaintext) of one complete protected record; InvalidTag if forged."""
        header = parse_header(record)
        body = record[HEADER_SIZE:HEADER_SIZE + header.length]
        if len(body) != header.length:
            raise RecordFormatError("truncated record")
        seq = self._next_seq()
        if self.keys.version == TLS_1_3_VERSION:
            inner = self._aead.decrypt(record_nonce(self.keys, seq), body, record[:HEADER_SIZE])
            stripped = inner.rstrip(b"\x00")
            if not stripped:
                raise RecordFormatError("TLS 1.3 record without a content type")
            return stripped[-1], stripped[:-1]
        tag = self.keys.cipher.tag_size
        if self._explicit_nonce:
            explicit, ciphertext = body[:TLS12_EXPLICIT_NONCE], body[TLS12_EXPLICIT_NONCE:]
            nonce = record_nonce(self.keys, seq, explicit)
        else:
            ciphertext, nonce = body, record_nonce(self.keys, seq)
        if len(ciphertext) < tag:
            raise RecordFormatError("record shorter than its authentication tag")
        aad = struct.pack(">QBHH", seq, header.content_type, TLS_1_2_VERSION, len(ciphertext) - tag)
        return header.content_type, self._aead.decrypt(nonce, ciphertext, aad)

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq


__all__ = [
    "Alert",
    "AlertDescription",
    "AlertLevel",
    "ContentType",
    "HandshakeMessage",
    "HandshakeType",
    "InvalidTag",
    "RecordFormatError",
    "RecordHeader",
    "RecordProtection",
    "build_handshake",
    "build_record",
    "key_update_message",
    "parse_alert",
    "parse_header",
    "split_handshake_messages",
    "split_records",
]
