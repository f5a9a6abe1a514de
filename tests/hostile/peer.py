"""A raw TLS 1.2 / 1.3 endpoint whose every step is explicit, so that a test can subvert any of them.

Our own code, on top of ktls_ossl.records (record and handshake framing), ktls_ossl.keys (TLS 1.2 PRF
and key block, TLS 1.3 HKDF-Expand-Label, AEAD nonces) and ``cryptography`` (X25519 ECDHE, ECDSA
signatures, AEAD). The cipher is a parameter (``cipher=``, a ktls_ossl.keys.KernelCipher; the
default AES-128-GCM is what the security cases use): each of the kernel's four ciphers with one suite
per version (SUITES: ECDHE-ECDSA for TLS 1.2, with SHA-384 for AES-256-GCM in both versions), X25519
for the key exchange and ecdsa_secp256r1_sha256 for signatures.

A script drives one connection step by step:

    peer = HostileServer(sock, TLS_1_2_VERSION, cert=..., key=...)
    peer.recv_client_hello(); peer.queue_server_hello(); peer.queue_server_flight(); peer.flush()
    peer.recv_peer_finished()
    peer.queue_ccs(); peer.queue_finished(verify_data=bytes(12)); peer.flush()   # a wrong Finished
    observed = peer.drain()       # what our side answered (alerts, data) and how it ended

Records are queued and sent together by ``flush()``, so that what must arrive in one TCP segment
(a Finished and the record behind it) does. ``drain()`` reads until EOF, RST or its timeout and
decrypts what it can, which tells a test which alert our side sent and whether anything else left.

Framing is a knob too: a handshake message may be split over several records (``fragments=``: a
count of equal parts or a list of leading fragment sizes; every record carries at most
``max_fragment`` bytes, 2^14 unless told), preceded by empty handshake records (``empty_before=``),
or several messages may share one record (``queue_handshake_bytes``). ``complete(**finished)``
passes such options to the Finished of an otherwise honest handshake.

Records may be damaged on purpose (``Protector.seal`` knobs, passed through ``queue_record``):
a byte of the AEAD output flipped (``flip=``, ``tamper_tag=``), the body cut short
(``body_length=``), another header type or version (``outer_type=``, ``header_version=``), TLS 1.3
padding (``padding=``) or a whole inner plaintext of one's choosing (``inner=``).
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import select
import socket
import struct
import termios
import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ktls_ossl import keys
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher, TrafficKeys
from ktls_ossl.records import (
    HEADER_SIZE,
    MAX_PLAINTEXT,
    AlertDescription,
    ContentType,
    HandshakeType,
    build_handshake,
    parse_header,
    split_handshake_messages,
)

TLS12_SUITE = 0xC02B  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
TLS13_SUITE = 0x1301  # TLS_AES_128_GCM_SHA256
CIPHER = KernelCipher.AES_GCM_128  # the default cipher
HASH = "sha256"
HASH_LEN = 32


@dataclass(frozen=True)
class Suite:
    """One kernel cipher's suites: IANA codes per version and the hash of the suite (HKDF and
    transcript in TLS 1.3, PRF and transcript in TLS 1.2)."""

    tls12: int
    tls13: int
    hash: str

    @property
    def hash_len(self) -> int:
        return keys.hash_length(self.hash)


SUITES = {
    # ECDHE-ECDSA-AES128-GCM-SHA256, TLS_AES_128_GCM_SHA256
    KernelCipher.AES_GCM_128: Suite(0xC02B, 0x1301, "sha256"),
    # ECDHE-ECDSA-AES256-GCM-SHA384, TLS_AES_256_GCM_SHA384
    KernelCipher.AES_GCM_256: Suite(0xC02C, 0x1302, "sha384"),
    # ECDHE-ECDSA-CHACHA20-POLY1305 (RFC 7905: no explicit nonce), TLS_CHACHA20_POLY1305_SHA256
    KernelCipher.CHACHA20_POLY1305: Suite(0xCCA9, 0x1303, "sha256"),
    # ECDHE-ECDSA-AES128-CCM (RFC 7251, 16-byte tag), TLS_AES_128_CCM_SHA256
    KernelCipher.AES_CCM_128: Suite(0xC0AC, 0x1304, "sha256"),
}

X25519 = 0x001D
SECP256R1 = 0x0017  # offered (not used) so that a TLS 1.2 server may use its P-256 ECDSA key
ECDSA_SECP256R1_SHA256 = 0x0403
RSA_PSS_RSAE_SHA256 = 0x0804

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_POST_HANDSHAKE_AUTH = 0x0031
EXT_KEY_SHARE = 0x0033
EXT_UNASSIGNED = 0xFAFA  # a GREASE value (RFC 8701): an extension every receiver must ignore
EXT_RENEGOTIATION_INFO = 0xFF01
SCSV_RENEGOTIATION = 0x00FF

CCS_RECORD = bytes([ContentType.CHANGE_CIPHER_SPEC]) + struct.pack(">HH", TLS_1_2_VERSION, 1) + b"\x01"


class PeerError(Exception):
    """The hostile endpoint could not go on (our side closed, timed out, or sent nonsense)."""


def _u8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _u16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _u24(data: bytes) -> bytes:
    return len(data).to_bytes(3, "big") + data


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack(">H", kind) + _u16(body)


def fragment(data: bytes, fragments=None, max_fragment: int = MAX_PLAINTEXT) -> list[bytes]:
    """``data`` cut into record payloads: ``fragments`` is None (as few as ``max_fragment``
    allows), a count of near-equal parts, or the sizes of the leading parts (the rest is the last
    part); every part is then cut again where it exceeds ``max_fragment``."""
    if fragments is None:
        parts = [data]
    elif isinstance(fragments, int):
        if not 1 <= fragments <= max(len(data), 1):
            raise ValueError(f"cannot cut {len(data)} bytes into {fragments} non-empty fragments")
        size, extra = divmod(len(data), fragments)
        parts, offset = [], 0
        for index in range(fragments):
            end = offset + size + (1 if index < extra else 0)
            parts.append(data[offset:end])
            offset = end
    else:
        parts, offset = [], 0
        for size in fragments:
            if size < 1 or offset + size > len(data):
                raise ValueError(f"fragment sizes {list(fragments)} do not fit {len(data)} bytes")
            parts.append(data[offset:offset + size])
            offset += size
        if offset < len(data):
            parts.append(data[offset:])
    cut = []
    for part in parts:
        cut += [part[i:i + max_fragment] for i in range(0, len(part), max_fragment)] or [b""]
    return cut


def new_session_ticket_body(ticket: bytes, *, nonce: bytes = b"\x00", lifetime: int = 7200,
                            age_add: int = 0, extensions: bytes = b"") -> bytes:
    """A TLS 1.3 NewSessionTicket body (RFC 8446 4.6.1): lifetime, age_add, nonce<0..255>,
    ticket<1..2^16-1>, extensions<0..2^16-2>."""
    return struct.pack(">II", lifetime, age_add) + _u8(nonce) + _u16(ticket) + _u16(extensions)


def certificate_request_body(size: int | None = None, *, context: bytes = b"\x01") -> bytes:
    """A TLS 1.3 CertificateRequest body (RFC 8446 4.3.2): certificate_request_context<0..255> and
    extensions<2..2^16-1> with signature_algorithms (mandatory) and, to reach ``size`` bytes in
    all, an unassigned (GREASE) extension of zeros, which the receiver must ignore. A post-handshake
    request needs a non-empty context."""
    signature_algorithms = _extension(EXT_SIGNATURE_ALGORITHMS,
                                      _u16(struct.pack(">HH", ECDSA_SECP256R1_SHA256, RSA_PSS_RSAE_SHA256)))
    minimal = _u8(context) + _u16(signature_algorithms)
    if size is None or size == len(minimal):
        return minimal
    padding = size - len(minimal) - 4
    if padding < 0:
        raise ValueError(f"a CertificateRequest has at least {len(minimal) + 4} bytes with padding")
    body = _u8(context) + _u16(signature_algorithms + _extension(EXT_UNASSIGNED, bytes(padding)))
    assert len(body) == size
    return body


class _Reader:
    """Cursor over a handshake message body."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise PeerError("handshake message shorter than its fields")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))

    def extensions(self) -> dict[int, bytes]:
        if self.offset >= len(self.data):
            return {}
        block = _Reader(self.vector(2))
        found = {}
        while block.offset < len(block.data):
            kind = block.number(2)
            found[kind] = block.vector(2)
        return found


def _digest(transcript: bytes, hash_name: str = HASH) -> bytes:
    return hashlib.new(hash_name, transcript).digest()


def _hkdf_extract(salt: bytes, ikm: bytes, hash_name: str = HASH) -> bytes:
    return hmac.new(salt, ikm, hash_name).digest()


def _derive_secret(secret: bytes, label: str, transcript: bytes, hash_name: str = HASH) -> bytes:
    return keys.hkdf_expand_label(secret, label, _digest(transcript, hash_name), keys.hash_length(hash_name),
                                  hash_name)


def _tls13_finished(secret: bytes, transcript: bytes, hash_name: str = HASH) -> bytes:
    finished_key = keys.hkdf_expand_label(secret, "finished", b"", keys.hash_length(hash_name), hash_name)
    return hmac.new(finished_key, _digest(transcript, hash_name), hash_name).digest()


def _aead(traffic: TrafficKeys):
    if traffic.cipher is KernelCipher.AES_CCM_128:
        return AESCCM(traffic.key, tag_length=16)
    if traffic.cipher is KernelCipher.CHACHA20_POLY1305:
        return ChaCha20Poly1305(traffic.key)
    return AESGCM(traffic.key)


class Protector:
    """AEAD protection of one direction, with knobs to produce records the peer must refuse."""

    def __init__(self, traffic: TrafficKeys, label: str = ""):
        self.keys = traffic
        self.seq = traffic.seq
        self.label = label
        self._aead = _aead(traffic)
        self.tag_size = traffic.cipher.tag_size

    @property
    def tls13(self) -> bool:
        return self.keys.version == TLS_1_3_VERSION

    @property
    def explicit_nonce(self) -> int:
        """Bytes of explicit nonce in front of each record's AEAD output: 8 for TLS 1.2 GCM and
        CCM, none for TLS 1.3 and for TLS 1.2 ChaCha20-Poly1305 (RFC 7905)."""
        return 0 if self.tls13 or self.keys.cipher is KernelCipher.CHACHA20_POLY1305 else 8

    def seal(self, content_type: int, payload: bytes, *, header_version: int = TLS_1_2_VERSION,
             padding: int = 0, tamper_tag: bool = False, flip: int | None = None,
             body_length: int | None = None, outer_type: int | None = None,
             inner: bytes | None = None) -> bytes:
        """One protected record. Knobs: ``header_version`` (in the header, and so in the AAD);
        ``padding`` (TLS 1.3 zeros after the type); ``inner`` (TLS 1.3: the whole inner plaintext,
        replacing payload, type and padding); ``outer_type`` (the header's type, also in the AAD:
        TLS 1.3's outer type, TLS 1.2's type); ``flip`` (the byte at this index of the AEAD output,
        ciphertext and tag, counted as a Python index, is inverted after sealing; ``tamper_tag``
        is flip=-1 with one bit); ``body_length`` (the record body, explicit nonce included, cut to
        this many bytes after sealing, the header's length with it)."""
        seq = self.seq
        self.seq += 1
        if self.tls13:
            if inner is None:
                inner = payload + bytes([content_type]) + bytes(padding)
            kind = ContentType.APPLICATION_DATA if outer_type is None else outer_type
            header = struct.pack(">BHH", kind, header_version, len(inner) + self.tag_size)
            body = self._aead.encrypt(keys.record_nonce(self.keys, seq), inner, header)
        else:
            kind = content_type if outer_type is None else outer_type
            aad = struct.pack(">QBHH", seq, kind, header_version, len(payload))
            if self.explicit_nonce:
                explicit = struct.pack(">Q", seq)
                body = explicit + self._aead.encrypt(keys.record_nonce(self.keys, seq, explicit), payload, aad)
            else:
                body = self._aead.encrypt(keys.record_nonce(self.keys, seq), payload, aad)
            header = struct.pack(">BHH", kind, header_version, len(body))
        if tamper_tag:
            body = body[:-1] + bytes([body[-1] ^ 0x01])
        if flip is not None:
            sealed = bytearray(body[self.explicit_nonce:])
            sealed[flip] ^= 0xFF
            body = body[:self.explicit_nonce] + bytes(sealed)
        if body_length is not None:
            body = body[:body_length]
            header = header[:3] + struct.pack(">H", len(body))
        return header + body

    def open(self, record: bytes, seq: int | None = None) -> tuple[int, bytes]:
        header = parse_header(record)
        body = record[HEADER_SIZE:HEADER_SIZE + header.length]
        seq = self.seq if seq is None else seq
        if self.tls13:
            inner = self._aead.decrypt(keys.record_nonce(self.keys, seq), body, record[:HEADER_SIZE])
            stripped = inner.rstrip(b"\x00")
            if not stripped:
                raise PeerError("TLS 1.3 record without a content type")
            result = stripped[-1], stripped[:-1]
        else:
            explicit, ciphertext = body[:self.explicit_nonce], body[self.explicit_nonce:]
            if len(ciphertext) < self.tag_size:
                raise PeerError("record shorter than its authentication tag")
            aad = struct.pack(">QBHH", seq, header.content_type, header.version, len(ciphertext) - self.tag_size)
            nonce = keys.record_nonce(self.keys, seq, explicit) if explicit else keys.record_nonce(self.keys, seq)
            result = header.content_type, self._aead.decrypt(nonce, ciphertext, aad)
        self.seq = seq + 1
        return result

    def try_open(self, record: bytes, lookahead: int = 4) -> tuple[int, bytes] | None:
        """Open a record whose sequence number may be a few ahead (records we never saw)."""
        for seq in range(self.seq, self.seq + lookahead):
            try:
                return self.open(record, seq)
            except (InvalidTag, ValueError, PeerError):
                continue
        return None


@dataclass
class Observed:
    """What the hostile endpoint saw from our side after its script ended."""

    alerts: list[str] = field(default_factory=list)  # e.g. "fatal decrypt_error"
    data: bytes = b""  # application data our side sent
    handshake: list[int] = field(default_factory=list)  # handshake message types (post-script)
    unreadable: int = 0  # records it could not decrypt
    end: str = ""  # "eof", "reset" or "timeout"
    # Everything above in the order it arrived, as ("alert", text), ("handshake", type) or
    # ("data", size); post-handshake messages the script itself read (recv_app) come first.
    sequence: list[tuple[str, object]] = field(default_factory=list)

    @property
    def first_alert(self) -> str | None:
        return self.alerts[0] if self.alerts else None

    def handshake_before_alert(self, msg_type: int) -> int:
        """How many handshake messages of ``msg_type`` arrived before the first alert (all of
        them when there was no alert)."""
        count = 0
        for kind, value in self.sequence:
            if kind == "alert":
                break
            count += kind == "handshake" and value == msg_type
        return count


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in the socket's send queue that the other side has not acknowledged (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _alert_text(payload: bytes) -> str:
    if len(payload) != 2:
        return f"malformed({payload.hex()})"
    level = {1: "warning", 2: "fatal"}.get(payload[0], f"level{payload[0]}")
    try:
        name = AlertDescription(payload[1]).name
    except ValueError:
        name = f"alert_{payload[1]}"
    return f"{level} {name}"


class Endpoint:
    """State shared by both roles: socket, record I/O, transcript, keys."""

    is_server = False

    def __init__(self, sock: socket.socket, version: int, *, cipher: KernelCipher = CIPHER,
                 timeout: float = 10.0):
        if version not in (TLS_1_2_VERSION, TLS_1_3_VERSION):
            raise ValueError("TLS 1.2 or 1.3")
        self.sock = sock
        self.version = version
        self.cipher = KernelCipher(cipher)
        suite = SUITES[self.cipher]
        self.suite = suite.tls13 if version == TLS_1_3_VERSION else suite.tls12
        self.hash, self.hash_len = suite.hash, suite.hash_len
        # The largest handshake fragment this endpoint writes (1: every handshake message in
        # one-byte records, ClientHello included).
        self.max_fragment = MAX_PLAINTEXT
        self.sock.settimeout(timeout)
        self.transcript = b""
        self._inbox = b""
        self._handshake_buffer = b""
        self._out = bytearray()
        self.read: Protector | None = None
        self.write: Protector | None = None
        self.candidates: list[Protector] = []  # read keys our side may use to send an alert
        self.client_random = self.server_random = b""
        self.ecdhe = X25519PrivateKey.generate()
        self.shared = b""
        self.master = b""
        self.secrets: dict[str, bytes] = {}
        self.messages: list[int] = []  # handshake message types received, in order
        self._post_buffer = b""  # post-handshake handshake bytes not yet a whole message
        # ("handshake", type) for each post-handshake message recv_app() met (NewSessionTicket...)
        self.post_handshake: list[tuple[str, object]] = []
        # Post-handshake CertificateRequest messages recv_app() met, whole (header and body).
        self.certificate_requests: list[bytes] = []

    @property
    def tls13(self) -> bool:
        return self.version == TLS_1_3_VERSION

    # --- raw I/O ----------------------------------------------------------------------------------

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise PeerError("timed out waiting for the other side") from None
        except ConnectionResetError:
            raise PeerError("connection reset by the other side") from None
        if not chunk:
            raise PeerError("the other side closed the connection")
        self._inbox += chunk

    def read_raw_record(self) -> bytes:
        while len(self._inbox) < HEADER_SIZE:
            self._fill()
        header = parse_header(self._inbox)
        while len(self._inbox) < HEADER_SIZE + header.length:
            self._fill()
        size = HEADER_SIZE + header.length
        record, self._inbox = self._inbox[:size], self._inbox[size:]
        return record

    def recv_record(self) -> tuple[int, bytes]:
        """The next record, decrypted under the current read keys. In TLS 1.3 a plaintext
        ChangeCipherSpec (middlebox compatibility) is returned as is."""
        record = self.read_raw_record()
        header = parse_header(record)
        if self.read is None or header.content_type in (ContentType.CHANGE_CIPHER_SPEC,):
            return header.content_type, record[HEADER_SIZE:]
        if header.content_type == ContentType.ALERT and self.tls13 and header.length == 2:
            return header.content_type, record[HEADER_SIZE:]  # a plaintext alert in TLS 1.3
        try:
            return self.read.open(record)
        except InvalidTag:
            raise PeerError("could not authenticate a record from the other side") from None

    def recv_handshake(self, expected: int) -> bytes:
        """The next handshake message's body (the message is added to the transcript)."""
        while True:
            messages, _ = split_handshake_messages(self._handshake_buffer)
            if messages:
                message = messages[0]
                size = 4 + len(message.body)
                self._handshake_buffer = self._handshake_buffer[size:]
                self.messages.append(message.msg_type)
                if message.msg_type != expected:
                    raise PeerError(f"expected handshake message {expected}, got {message.msg_type}")
                self.transcript += message.pack()
                return message.body
            content_type, payload = self.recv_record()
            if content_type == ContentType.HANDSHAKE:
                self._handshake_buffer += payload
            elif content_type == ContentType.CHANGE_CIPHER_SPEC and self.tls13:
                continue
            elif content_type == ContentType.ALERT:
                raise PeerError(f"the other side sent alert {_alert_text(payload)}")
            else:
                raise PeerError(f"unexpected record type {content_type} during the handshake")

    def recv_ccs(self) -> None:
        content_type, payload = self.recv_record()
        if content_type == ContentType.ALERT:
            raise PeerError(f"the other side sent alert {_alert_text(payload)}")
        if content_type != ContentType.CHANGE_CIPHER_SPEC or payload != b"\x01":
            raise PeerError(f"expected ChangeCipherSpec, got record type {content_type}")

    def queue_raw(self, data: bytes) -> None:
        self._out += data

    def queue_record(self, content_type: int, payload: bytes, **tamper) -> None:
        """A record under the current write keys (plaintext before there are any)."""
        if self.write is None:
            version = tamper.get("header_version", TLS_1_2_VERSION)
            self._out += struct.pack(">BHH", content_type, version, len(payload)) + payload
        else:
            self._out += self.write.seal(content_type, payload, **tamper)

    def queue_handshake(self, msg_type: int, body: bytes, *, transcript: bool = True, fragments=None,
                        max_fragment: int | None = None, empty_before: int = 0, **tamper) -> bytes:
        """One handshake message, in one record or as ``fragments`` (see ``fragment``), after
        ``empty_before`` zero-length handshake records (``max_fragment``: this endpoint's
        ``max_fragment`` unless told)."""
        if max_fragment is None:
            max_fragment = self.max_fragment
        message = build_handshake(msg_type, body)
        if transcript:
            self.transcript += message
        for _ in range(empty_before):
            self.queue_record(ContentType.HANDSHAKE, b"", **tamper)
        self.queue_handshake_bytes(message, fragments=fragments, max_fragment=max_fragment, **tamper)
        return message

    def queue_handshake_bytes(self, data: bytes, *, fragments=None, max_fragment: int | None = None,
                              **tamper) -> None:
        """Handshake-layer bytes as they are (several messages in one record, or a message's
        head only), cut into records; the transcript is not touched."""
        for part in fragment(data, fragments, self.max_fragment if max_fragment is None else max_fragment):
            self.queue_record(ContentType.HANDSHAKE, part, **tamper)

    def queue_ccs(self) -> None:
        """A plaintext ChangeCipherSpec; in TLS 1.2 our next records use the new write keys."""
        self._out += CCS_RECORD
        if not self.tls13:
            self.write = self._tls12_protector(ours=True)

    def flush(self) -> None:
        if self._out:
            self.sock.sendall(bytes(self._out))
            self._out.clear()

    # --- application phase ------------------------------------------------------------------------

    def recv_app(self, expected: bytes) -> None:
        """Read until application data arrives (skipping post-handshake messages) and check it."""
        received = b""
        while len(received) < len(expected):
            content_type, payload = self.recv_record()
            if content_type == ContentType.APPLICATION_DATA:
                received += payload
            elif content_type == ContentType.ALERT:
                raise PeerError(f"the other side sent alert {_alert_text(payload)}")
            elif content_type == ContentType.HANDSHAKE:
                for message in self._post_handshake(payload):
                    self.post_handshake.append(("handshake", message.msg_type))
                    if message.msg_type == HandshakeType.certificate_request:
                        self.certificate_requests.append(message.pack())
        if received != expected:
            raise PeerError(f"expected {expected!r} from the other side, got {received!r}")

    def send_app(self, data: bytes, **tamper) -> None:
        self.queue_record(ContentType.APPLICATION_DATA, data, **tamper)
        self.flush()

    def queue_alert(self, level: int, description: int) -> None:
        """An alert of any level (1 warning, 2 fatal, anything else is no level at all)."""
        self.queue_record(ContentType.ALERT, bytes([level, description]))

    def send_alert(self, level: int, description: int) -> None:
        self.queue_alert(level, description)
        self.flush()

    def close_notify(self) -> None:
        self.send_alert(1, AlertDescription.close_notify)

    def key_update(self, requested: bool = False, **framing) -> None:
        """Queue a KeyUpdate (``framing``: see queue_handshake) and move our write direction to the
        next secret (TLS 1.3)."""
        self.queue_handshake(HandshakeType.key_update, b"\x01" if requested else b"\x00", transcript=False,
                             **framing)
        self.next_write_key()

    def next_write_key(self) -> None:
        """Our write direction moves to the next TLS 1.3 application secret (after a KeyUpdate)."""
        name = "server_ap" if self.is_server else "client_ap"
        self.secrets[name] = keys.tls13_next_secret(self.secrets[name], self.hash)
        self.write = self._tls13_protector(name)

    def _next_read_key(self) -> None:
        """The other side's write direction moved to its next TLS 1.3 application secret."""
        name = "client_ap" if self.is_server else "server_ap"
        self.secrets[name] = keys.tls13_next_secret(self.secrets[name], self.hash)
        self.read = self._tls13_protector(name)

    def _post_handshake(self, payload: bytes) -> list:
        """The whole post-handshake messages that ``payload`` (a handshake record's) completes;
        a TLS 1.3 KeyUpdate moves the read keys at once."""
        # Bytes left over from the handshake (a message in the Finished's record) come first.
        self._post_buffer += self._handshake_buffer + payload
        self._handshake_buffer = b""
        messages, self._post_buffer = split_handshake_messages(self._post_buffer)
        for message in messages:
            if message.msg_type == HandshakeType.key_update and self.tls13:
                self._next_read_key()
        return messages

    def shutdown_write(self) -> None:
        """TCP FIN (no close_notify)."""
        self.flush()
        self.sock.shutdown(socket.SHUT_WR)

    def wait_delivered(self, timeout: float) -> None:
        """Flush, then wait until the other side's TCP has acknowledged every byte (the send queue,
        SIOCOUTQ, is empty): on loopback the bytes are then in its receive queue. Orders what was
        sent before whatever this endpoint does next (an RST), without guessing with a sleep."""
        self.flush()
        poller = select.poll()
        deadline = time.monotonic() + timeout
        while _unacknowledged(self.sock) > 0:
            if time.monotonic() > deadline:
                raise PeerError("the other side's TCP did not acknowledge what was sent")
            poller.poll(1)  # an acknowledgement wakes nothing we can wait on: look again in 1 ms

    def reset(self) -> None:
        """TCP RST: close with a zero linger time."""
        self.flush()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def drain(self, timeout: float = 10.0) -> Observed:
        """Read what our side sends until it closes; decrypt and classify it."""
        observed = Observed()
        if self.sock.fileno() == -1:
            observed.end = "closed by the script"
            return observed
        self.sock.settimeout(timeout)
        observed.sequence = list(self.post_handshake)
        while True:
            try:
                record = self.read_raw_record()
            except PeerError as exc:
                text = str(exc)
                observed.end = ("timeout" if "timed out" in text else
                                "reset" if "reset" in text else "eof")
                if self._inbox:
                    observed.end += f" (with {len(self._inbox)} bytes of an incomplete record)"
                return observed
            header = parse_header(record)
            if header.content_type == ContentType.CHANGE_CIPHER_SPEC:
                continue
            opened = None
            if header.content_type == ContentType.ALERT and header.length == 2:
                opened = (ContentType.ALERT, record[HEADER_SIZE:])  # plaintext alert
            else:
                for protector in [p for p in (self.read, *self.candidates) if p is not None]:
                    opened = protector.try_open(record)
                    if opened is not None:
                        break
            if opened is None:
                observed.unreadable += 1
                continue
            content_type, payload = opened
            if content_type == ContentType.ALERT:
                observed.alerts.append(_alert_text(payload))
                observed.sequence.append(("alert", _alert_text(payload)))
            elif content_type == ContentType.APPLICATION_DATA:
                observed.data += payload
                observed.sequence.append(("data", len(payload)))
            elif content_type == ContentType.HANDSHAKE:
                for message in self._post_handshake(payload):
                    observed.handshake.append(message.msg_type)
                    observed.sequence.append(("handshake", message.msg_type))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- key schedules ----------------------------------------------------------------------------

    def _tls12_master(self) -> None:
        self.master = keys.tls12_prf(self.shared, b"master secret", self.client_random + self.server_random,
                                     48, self.hash)
        self._block = keys.tls12_key_block(self.master, self.client_random, self.server_random, self.cipher,
                                           self.hash)

    def _tls12_protector(self, ours: bool) -> Protector:
        client = (self._block.client_write_key, self._block.client_write_iv, "client")
        server = (self._block.server_write_key, self._block.server_write_iv, "server")
        key, iv, label = server if ours == self.is_server else client
        return Protector(keys.tls12_traffic_keys(key, iv, self.cipher, 0), label)

    def tls12_verify_data(self, server: bool) -> bytes:
        label = b"server finished" if server else b"client finished"
        return keys.tls12_prf(self.master, label, _digest(self.transcript, self.hash), 12, self.hash)

    def _tls13_handshake_secrets(self) -> None:
        h = self.hash
        early = _hkdf_extract(bytes(self.hash_len), bytes(self.hash_len), h)
        derived = _derive_secret(early, "derived", b"", h)
        handshake = _hkdf_extract(derived, self.shared, h)
        self.secrets["client_hs"] = _derive_secret(handshake, "c hs traffic", self.transcript, h)
        self.secrets["server_hs"] = _derive_secret(handshake, "s hs traffic", self.transcript, h)
        self._master13 = _hkdf_extract(_derive_secret(handshake, "derived", b"", h), bytes(self.hash_len), h)

    def _tls13_application_secrets(self) -> None:
        """From the transcript through the server's Finished."""
        self.secrets["client_ap"] = _derive_secret(self._master13, "c ap traffic", self.transcript, self.hash)
        self.secrets["server_ap"] = _derive_secret(self._master13, "s ap traffic", self.transcript, self.hash)

    def _tls13_protector(self, name: str) -> Protector:
        return Protector(keys.tls13_traffic_keys(self.secrets[name], self.cipher, self.hash), name)

    def finished_body(self, verify_data: bytes | None = None) -> bytes:
        if verify_data is not None:
            return verify_data
        if self.tls13:
            name = "server_hs" if self.is_server else "client_hs"
            return _tls13_finished(self.secrets[name], self.transcript, self.hash)
        return self.tls12_verify_data(server=self.is_server)

    def _check_peer_finished(self, body: bytes, expected: bytes) -> None:
        if not hmac.compare_digest(body, expected):
            raise PeerError("the other side's Finished does not verify")


class HostileServer(Endpoint):
    """The server role, against our client."""

    is_server = True

    def __init__(self, sock, version, *, cert, key, cipher: KernelCipher = CIPHER, timeout: float = 10.0):
        super().__init__(sock, version, cipher=cipher, timeout=timeout)
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.key = key
        self.session_id = b""

    def recv_client_hello(self) -> dict[int, bytes]:
        body = self.recv_handshake(HandshakeType.client_hello)
        reader = _Reader(body)
        reader.take(2)
        self.client_random = reader.take(32)
        self.session_id = reader.vector(1)
        suites = reader.vector(2)
        reader.vector(1)
        extensions = reader.extensions()
        wanted = self.suite
        if struct.pack(">H", wanted) not in [suites[i:i + 2] for i in range(0, len(suites), 2)]:
            raise PeerError(f"the client did not offer suite 0x{wanted:04x}")
        client_share = None
        if self.tls13:
            shares = _Reader(extensions.get(EXT_KEY_SHARE, b"\x00\x00"))
            entries = _Reader(shares.vector(2))
            while entries.offset < len(entries.data):
                group, exchange = entries.number(2), entries.vector(2)
                if group == X25519:
                    client_share = exchange
            if client_share is None:
                raise PeerError("the client sent no X25519 key share")
            self.shared = self.ecdhe.exchange(X25519PublicKey.from_public_bytes(client_share))
        return extensions

    def _public(self) -> bytes:
        return self.ecdhe.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def queue_server_hello(self) -> None:
        self.server_random = os.urandom(32)
        if self.tls13:
            extensions = (_extension(EXT_SUPPORTED_VERSIONS, struct.pack(">H", TLS_1_3_VERSION))
                          + _extension(EXT_KEY_SHARE, struct.pack(">H", X25519) + _u16(self._public())))
            session_id = self.session_id
        else:
            extensions = (_extension(EXT_RENEGOTIATION_INFO, b"\x00")
                          + _extension(EXT_EC_POINT_FORMATS, b"\x01\x00"))
            session_id = b""
        body = (struct.pack(">H", TLS_1_2_VERSION) + self.server_random + _u8(session_id)
                + struct.pack(">HB", self.suite, 0) + _u16(extensions))
        self.queue_handshake(HandshakeType.server_hello, body)
        if self.tls13:
            self._tls13_handshake_secrets()

    def queue_server_flight(self) -> None:
        """TLS 1.2: Certificate, ServerKeyExchange, ServerHelloDone. TLS 1.3: (compatibility CCS),
        EncryptedExtensions, Certificate, CertificateVerify -- everything but the Finished."""
        if self.tls13:
            self.queue_raw(CCS_RECORD)
            self.write = self._tls13_protector("server_hs")
            self.read = self._tls13_protector("client_hs")
            self.queue_handshake(HandshakeType.encrypted_extensions, _u16(b""))
            self.queue_handshake(HandshakeType.certificate, _u8(b"") + _u24(_u24(self.cert_der) + _u16(b"")))
            content = (b" " * 64 + b"TLS 1.3, server CertificateVerify\x00"
                       + _digest(self.transcript, self.hash))
            signature = self.key.sign(content, ec.ECDSA(hashes.SHA256()))
            self.queue_handshake(HandshakeType.certificate_verify,
                                 struct.pack(">H", ECDSA_SECP256R1_SHA256) + _u16(signature))
            return
        self.queue_handshake(HandshakeType.certificate, _u24(_u24(self.cert_der)))
        params = struct.pack(">BH", 3, X25519) + _u8(self._public())
        signature = self.key.sign(self.client_random + self.server_random + params, ec.ECDSA(hashes.SHA256()))
        self.queue_handshake(HandshakeType.server_key_exchange,
                             params + struct.pack(">H", ECDSA_SECP256R1_SHA256) + _u16(signature))
        self.queue_handshake(HandshakeType.server_hello_done, b"")

    def start(self) -> None:
        self.recv_client_hello()
        self.queue_server_hello()
        self.queue_server_flight()
        self.flush()

    def queue_finished(self, verify_data: bytes | None = None, *, raw_body: bytes | None = None,
                       **framing) -> None:
        """Our Finished (``verify_data`` replaces the correct value; ``raw_body`` replaces the whole
        message body, header length included; ``framing``: see queue_handshake). TLS 1.3: our
        write side then moves to the application keys."""
        body = raw_body if raw_body is not None else self.finished_body(verify_data)
        self.queue_handshake(HandshakeType.finished, body, **framing)
        if self.tls13:
            self._tls13_application_secrets()
            self.write = self._tls13_protector("server_ap")
            self.candidates = [self._tls13_protector("client_ap")]

    def recv_peer_finished(self) -> None:
        if self.tls13:
            expected = _tls13_finished(self.secrets["client_hs"], self.transcript, self.hash)
            self._check_peer_finished(self.recv_handshake(HandshakeType.finished), expected)
            self.read = self._tls13_protector("client_ap")
            self.candidates = []
            return
        exchange = _Reader(self.recv_handshake(HandshakeType.client_key_exchange)).vector(1)
        self.shared = self.ecdhe.exchange(X25519PublicKey.from_public_bytes(exchange))
        self._tls12_master()
        self.recv_ccs()
        self.read = self._tls12_protector(ours=False)
        expected = self.tls12_verify_data(server=False)
        self._check_peer_finished(self.recv_handshake(HandshakeType.finished), expected)

    def complete(self, **finished) -> None:
        """An honest handshake (``finished``: framing of our Finished, see queue_handshake)."""
        self.start()
        if self.tls13:
            self.queue_finished(**finished)
            self.flush()
            self.recv_peer_finished()
        else:
            self.recv_peer_finished()
            self.queue_ccs()
            self.queue_finished(**finished)
            self.flush()


    # --- TLS 1.3 post-handshake client authentication (RFC 8446 4.6.2) ------------------------------

    def queue_certificate_request(self, context: bytes = b"\x01") -> None:
        """A post-handshake CertificateRequest; its Handshake Context is the handshake's transcript
        (through the client's Finished) plus this message."""
        message = self.queue_handshake(HandshakeType.certificate_request,
                                       certificate_request_body(context=context), transcript=False)
        self._pha_transcript = self.transcript + message
        self._pha_context = context

    def recv_client_authentication(self) -> x509.Certificate:
        """Read the client's Certificate, CertificateVerify and Finished (skipping application
        data), check the signature with the certificate's key and the Finished with the client's
        current application secret (after any KeyUpdate: RFC 8446 4.4). On failure a fatal
        alert goes out before PeerError."""
        transcript = self._pha_transcript
        found = []
        while len(found) < 3:
            content_type, payload = self.recv_record()
            if content_type == ContentType.ALERT:
                raise PeerError(f"the other side sent alert {_alert_text(payload)}")
            if content_type != ContentType.HANDSHAKE:
                continue
            for message in self._post_handshake(payload):
                if message.msg_type == HandshakeType.key_update:
                    continue
                found.append(message)
        certificate, verify, finished = found
        try:
            if [m.msg_type for m in found] != [HandshakeType.certificate, HandshakeType.certificate_verify,
                                                HandshakeType.finished]:
                raise PeerError(f"client authentication: got messages {[m.msg_type for m in found]}")
            reader = _Reader(certificate.body)
            if reader.vector(1) != self._pha_context:
                raise PeerError("client authentication: wrong certificate_request_context")
            entries = _Reader(reader.vector(3))
            if not entries.data:
                raise PeerError("client authentication: no certificate")
            cert = x509.load_der_x509_certificate(entries.vector(3))
            transcript += certificate.pack()
            reader = _Reader(verify.body)
            if reader.number(2) != ECDSA_SECP256R1_SHA256:
                raise PeerError("client authentication: unexpected signature scheme")
            content = b" " * 64 + b"TLS 1.3, client CertificateVerify\x00" + _digest(transcript, self.hash)
            try:
                cert.public_key().verify(reader.vector(2), content, ec.ECDSA(hashes.SHA256()))
            except Exception:
                raise PeerError("client authentication: the CertificateVerify signature does not verify") from None
            transcript += verify.pack()
            expected = _tls13_finished(self.secrets["client_ap"], transcript, self.hash)
            if not hmac.compare_digest(finished.body, expected):
                raise PeerError("client authentication: the Finished does not verify under the client's "
                                "current application secret")
        except PeerError:
            self.send_alert(2, AlertDescription.decrypt_error)
            raise
        return cert


class HostileClient(Endpoint):
    """The client role, against our server."""

    is_server = False

    def __init__(self, sock, version, *, server_name: str = "localhost", cert=None, key=None,
                 post_handshake_auth: bool = False, cipher: KernelCipher = CIPHER, timeout: float = 10.0):
        super().__init__(sock, version, cipher=cipher, timeout=timeout)
        self.server_name = server_name.encode("ascii")
        # A client certificate (cryptography objects, a P-256 key) for post-handshake
        # authentication, offered in the ClientHello when post_handshake_auth (TLS 1.3).
        self.cert_der = cert.public_bytes(serialization.Encoding.DER) if cert is not None else None
        self.key = key
        self.post_handshake_auth = post_handshake_auth

    def client_hello(self) -> bytes:
        self.client_random = os.urandom(32)
        public = self.ecdhe.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        sni = _extension(EXT_SERVER_NAME, _u16(b"\x00" + _u16(self.server_name)))
        extensions = (sni + _extension(EXT_SUPPORTED_GROUPS, _u16(struct.pack(">HH", X25519, SECP256R1)))
                      + _extension(EXT_SIGNATURE_ALGORITHMS,
                                   _u16(struct.pack(">HH", ECDSA_SECP256R1_SHA256, RSA_PSS_RSAE_SHA256))))
        if self.tls13:
            suites = struct.pack(">H", self.suite)
            session_id = os.urandom(32)  # middlebox compatibility mode, as OpenSSL does
            extensions += (_extension(EXT_SUPPORTED_VERSIONS, _u8(struct.pack(">H", TLS_1_3_VERSION)))
                           + _extension(EXT_KEY_SHARE, _u16(struct.pack(">H", X25519) + _u16(public))))
            if self.post_handshake_auth:
                extensions += _extension(EXT_POST_HANDSHAKE_AUTH, b"")
        else:
            suites = struct.pack(">HH", self.suite, SCSV_RENEGOTIATION)
            session_id = b""
            extensions += _extension(EXT_EC_POINT_FORMATS, b"\x01\x00")
        body = (struct.pack(">H", TLS_1_2_VERSION) + self.client_random + _u8(session_id) + _u16(suites)
                + b"\x01\x00" + _u16(extensions))
        return build_handshake(HandshakeType.client_hello, body)

    def queue_client_hello(self) -> None:
        message = self.client_hello()
        self.transcript += message
        self.queue_handshake_bytes(message)

    def recv_server_hello(self) -> None:
        reader = _Reader(self.recv_handshake(HandshakeType.server_hello))
        reader.take(2)
        self.server_random = reader.take(32)
        reader.vector(1)
        suite = reader.number(2)
        reader.take(1)
        extensions = reader.extensions()
        if suite != self.suite:
            raise PeerError(f"the server chose suite 0x{suite:04x}")
        if self.tls13:
            share = _Reader(extensions[EXT_KEY_SHARE])
            if share.number(2) != X25519:
                raise PeerError("the server chose another group")
            self.shared = self.ecdhe.exchange(X25519PublicKey.from_public_bytes(share.vector(2)))
            self._tls13_handshake_secrets()
            self.read = self._tls13_protector("server_hs")

    def recv_server_flight(self) -> None:
        """TLS 1.2: through ServerHelloDone. TLS 1.3: through the server's Finished (verified)."""
        if self.tls13:
            self.recv_handshake(HandshakeType.encrypted_extensions)
            self.recv_handshake(HandshakeType.certificate)
            self.recv_handshake(HandshakeType.certificate_verify)
            expected = _tls13_finished(self.secrets["server_hs"], self.transcript, self.hash)
            self._check_peer_finished(self.recv_handshake(HandshakeType.finished), expected)
            self._tls13_application_secrets()
            # The server writes under its application keys from now on (tickets, alerts).
            self.read = self._tls13_protector("server_ap")
            return
        self.recv_handshake(HandshakeType.certificate)
        params = _Reader(self.recv_handshake(HandshakeType.server_key_exchange))
        if params.number(1) != 3 or params.number(2) != X25519:
            raise PeerError("the server chose another group")
        self.shared = self.ecdhe.exchange(X25519PublicKey.from_public_bytes(params.vector(1)))
        self.recv_handshake(HandshakeType.server_hello_done)
        self._tls12_master()

    def start(self) -> None:
        self.queue_client_hello()
        self.flush()
        self.recv_server_hello()
        self.recv_server_flight()

    def queue_key_exchange(self) -> None:
        """TLS 1.2 ClientKeyExchange."""
        public = self.ecdhe.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.queue_handshake(HandshakeType.client_key_exchange, _u8(public))

    def queue_ccs(self) -> None:
        super().queue_ccs()
        if self.tls13:
            self.write = self._tls13_protector("client_hs")

    def queue_finished(self, verify_data: bytes | None = None, *, raw_body: bytes | None = None,
                       **framing) -> None:
        if self.tls13 and (self.write is None or self.write.label != "client_hs"):
            self.write = self._tls13_protector("client_hs")
        body = raw_body if raw_body is not None else self.finished_body(verify_data)
        self.queue_handshake(HandshakeType.finished, body, **framing)
        if self.tls13:
            self.write = self._tls13_protector("client_ap")

    def answer_certificate_request(self, request: bytes) -> None:
        """Queue Certificate, CertificateVerify and Finished for a post-handshake CertificateRequest
        (``request``: the whole message), keyed as RFC 8446 4.4 says: the Finished with the client's
        current application traffic secret, after any KeyUpdate."""
        if self.cert_der is None:
            raise PeerError("a CertificateRequest, and this client has no certificate")
        context = _Reader(request[4:]).vector(1)
        transcript = self.transcript + request
        transcript += self.queue_handshake(HandshakeType.certificate,
                                           _u8(context) + _u24(_u24(self.cert_der) + _u16(b"")), transcript=False)
        content = b" " * 64 + b"TLS 1.3, client CertificateVerify\x00" + _digest(transcript, self.hash)
        signature = self.key.sign(content, ec.ECDSA(hashes.SHA256()))
        transcript += self.queue_handshake(HandshakeType.certificate_verify,
                                           struct.pack(">H", ECDSA_SECP256R1_SHA256) + _u16(signature),
                                           transcript=False)
        self.queue_handshake(HandshakeType.finished, _tls13_finished(self.secrets["client_ap"], transcript, self.hash),
                             transcript=False)

    def recv_peer_finished(self) -> None:
        if self.tls13:
            return  # received and verified in recv_server_flight
        self.recv_ccs()
        self.read = self._tls12_protector(ours=False)
        expected = self.tls12_verify_data(server=True)
        self._check_peer_finished(self.recv_handshake(HandshakeType.finished), expected)

    def complete(self, **finished) -> None:
        """An honest handshake (``finished``: framing of our Finished, see queue_handshake)."""
        self.start()
        if not self.tls13:
            self.queue_key_exchange()
        self.queue_ccs()
        self.queue_finished(**finished)
        self.flush()
        self.recv_peer_finished()


def hostile_endpoint(role: str, sock, version: int, *, cert=None, key=None, cipher: KernelCipher = CIPHER,
                     timeout: float = 10.0, **options) -> Endpoint:
    """``role`` is the hostile side's: "server" (against our client) or "client" (against our
    server). ``cert``/``key``: the server's, or the client's for post-handshake authentication;
    ``options``: more HostileClient settings (post_handshake_auth)."""
    if role == "server":
        return HostileServer(sock, version, cert=cert, key=key, cipher=cipher, timeout=timeout, **options)
    return HostileClient(sock, version, cert=cert, key=key, cipher=cipher, timeout=timeout, **options)
