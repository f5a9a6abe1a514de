"""A raw TLS 1.2 / 1.3 endpoint whose every step is explicit, so that a test can subvert any of them.

Our own code, on top of ktls_ossl.records (record and handshake framing), ktls_ossl.keys (TLS 1.2 PRF
and key block, TLS 1.3 HKDF-Expand-Label, AEAD nonces) and ``cryptography`` (X25519 ECDHE, ECDSA
signatures, AEAD). One cipher per version is enough for the security cases:
ECDHE-ECDSA-AES128-GCM-SHA256 (0xC02B) for TLS 1.2, TLS_AES_128_GCM_SHA256 (0x1301) for TLS 1.3,
X25519 for the key exchange and ecdsa_secp256r1_sha256 for signatures.

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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
CIPHER = KernelCipher.AES_GCM_128
HASH = "sha256"
HASH_LEN = 32
X25519 = 0x001D
SECP256R1 = 0x0017  # offered (not used) so that a TLS 1.2 server may use its P-256 ECDSA key
ECDSA_SECP256R1_SHA256 = 0x0403
RSA_PSS_RSAE_SHA256 = 0x0804

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_SUPPORTED_VERSIONS = 0x002B
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


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _derive_secret(secret: bytes, label: str, transcript: bytes) -> bytes:
    return keys.hkdf_expand_label(secret, label, hashlib.sha256(transcript).digest(), HASH_LEN, HASH)


def _tls13_finished(secret: bytes, transcript: bytes) -> bytes:
    finished_key = keys.hkdf_expand_label(secret, "finished", b"", HASH_LEN, HASH)
    return hmac.new(finished_key, hashlib.sha256(transcript).digest(), hashlib.sha256).digest()


class Protector:
    """AEAD protection of one direction, with knobs to produce records the peer must refuse."""

    def __init__(self, traffic: TrafficKeys, label: str = ""):
        self.keys = traffic
        self.seq = traffic.seq
        self.label = label
        self._aead = AESGCM(traffic.key)

    @property
    def tls13(self) -> bool:
        return self.keys.version == TLS_1_3_VERSION

    def seal(self, content_type: int, payload: bytes, *, header_version: int = TLS_1_2_VERSION,
             padding: int = 0, tamper_tag: bool = False) -> bytes:
        seq = self.seq
        self.seq += 1
        if self.tls13:
            inner = payload + bytes([content_type]) + bytes(padding)
            header = struct.pack(">BHH", ContentType.APPLICATION_DATA, header_version, len(inner) + 16)
            body = self._aead.encrypt(keys.record_nonce(self.keys, seq), inner, header)
        else:
            explicit = struct.pack(">Q", seq)
            aad = struct.pack(">QBHH", seq, content_type, header_version, len(payload))
            body = explicit + self._aead.encrypt(keys.record_nonce(self.keys, seq, explicit), payload, aad)
            header = struct.pack(">BHH", content_type, header_version, len(body))
        if tamper_tag:
            body = body[:-1] + bytes([body[-1] ^ 0x01])
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
            explicit, ciphertext = body[:8], body[8:]
            aad = struct.pack(">QBHH", seq, header.content_type, header.version, len(ciphertext) - 16)
            result = header.content_type, self._aead.decrypt(keys.record_nonce(self.keys, seq, explicit),
                                                             ciphertext, aad)
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

    @property
    def first_alert(self) -> str | None:
        return self.alerts[0] if self.alerts else None


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

    def __init__(self, sock: socket.socket, version: int, *, timeout: float = 10.0):
        if version not in (TLS_1_2_VERSION, TLS_1_3_VERSION):
            raise ValueError("TLS 1.2 or 1.3")
        self.sock = sock
        self.version = version
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
                        max_fragment: int = MAX_PLAINTEXT, empty_before: int = 0, **tamper) -> bytes:
        """One handshake message, in one record or as ``fragments`` (see ``fragment``), after
        ``empty_before`` zero-length handshake records."""
        message = build_handshake(msg_type, body)
        if transcript:
            self.transcript += message
        for _ in range(empty_before):
            self.queue_record(ContentType.HANDSHAKE, b"", **tamper)
        self.queue_handshake_bytes(message, fragments=fragments, max_fragment=max_fragment, **tamper)
        return message

    def queue_handshake_bytes(self, data: bytes, *, fragments=None, max_fragment: int = MAX_PLAINTEXT,
                              **tamper) -> None:
        """Handshake-layer bytes as they are (several messages in one record, or a message's
        head only), cut into records; the transcript is not touched."""
        for part in fragment(data, fragments, max_fragment):
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
        self.secrets[name] = keys.tls13_next_secret(self.secrets[name], HASH)
        self.write = Protector(keys.tls13_traffic_keys(self.secrets[name], CIPHER, HASH), name)

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
        buffered = self._handshake_buffer
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
            elif content_type == ContentType.APPLICATION_DATA:
                observed.data += payload
            elif content_type == ContentType.HANDSHAKE:
                buffered += payload
                messages, buffered = split_handshake_messages(buffered)
                for message in messages:
                    observed.handshake.append(message.msg_type)
                    if message.msg_type == HandshakeType.key_update and self.tls13:
                        name = "client_ap" if self.is_server else "server_ap"
                        self.secrets[name] = keys.tls13_next_secret(self.secrets[name], HASH)
                        self.read = Protector(keys.tls13_traffic_keys(self.secrets[name], CIPHER, HASH), name)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- key schedules ----------------------------------------------------------------------------

    def _tls12_master(self) -> None:
        self.master = keys.tls12_prf(self.shared, b"master secret", self.client_random + self.server_random,
                                     48, HASH)
        self._block = keys.tls12_key_block(self.master, self.client_random, self.server_random, CIPHER, HASH)

    def _tls12_protector(self, ours: bool) -> Protector:
        client = (self._block.client_write_key, self._block.client_write_iv, "client")
        server = (self._block.server_write_key, self._block.server_write_iv, "server")
        key, iv, label = server if ours == self.is_server else client
        return Protector(keys.tls12_traffic_keys(key, iv, CIPHER, 0), label)

    def tls12_verify_data(self, server: bool) -> bytes:
        label = b"server finished" if server else b"client finished"
        return keys.tls12_prf(self.master, label, hashlib.sha256(self.transcript).digest(), 12, HASH)

    def _tls13_handshake_secrets(self) -> None:
        early = _hkdf_extract(bytes(HASH_LEN), bytes(HASH_LEN))
        derived = _derive_secret(early, "derived", b"")
        handshake = _hkdf_extract(derived, self.shared)
        self.secrets["client_hs"] = _derive_secret(handshake, "c hs traffic", self.transcript)
        self.secrets["server_hs"] = _derive_secret(handshake, "s hs traffic", self.transcript)
        self._master13 = _hkdf_extract(_derive_secret(handshake, "derived", b""), bytes(HASH_LEN))

    def _tls13_application_secrets(self) -> None:
        """From the transcript through the server's Finished."""
        self.secrets["client_ap"] = _derive_secret(self._master13, "c ap traffic", self.transcript)
        self.secrets["server_ap"] = _derive_secret(self._master13, "s ap traffic", self.transcript)

    def _tls13_protector(self, name: str) -> Protector:
        return Protector(keys.tls13_traffic_keys(self.secrets[name], CIPHER, HASH), name)

    def finished_body(self, verify_data: bytes | None = None) -> bytes:
        if verify_data is not None:
            return verify_data
        if self.tls13:
            name = "server_hs" if self.is_server else "client_hs"
            return _tls13_finished(self.secrets[name], self.transcript)
        return self.tls12_verify_data(server=self.is_server)

    def _check_peer_finished(self, body: bytes, expected: bytes) -> None:
        if not hmac.compare_digest(body, expected):
            raise PeerError("the other side's Finished does not verify")


class HostileServer(Endpoint):
    """The server role, against our client."""

    is_server = True

    def __init__(self, sock, version, *, cert, key, timeout: float = 10.0):
        super().__init__(sock, version, timeout=timeout)
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
        wanted = TLS13_SUITE if self.tls13 else TLS12_SUITE
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
            suite = TLS13_SUITE
            session_id = self.session_id
        else:
            extensions = (_extension(EXT_RENEGOTIATION_INFO, b"\x00")
                          + _extension(EXT_EC_POINT_FORMATS, b"\x01\x00"))
            suite = TLS12_SUITE
            session_id = b""
        body = (struct.pack(">H", TLS_1_2_VERSION) + self.server_random + _u8(session_id)
                + struct.pack(">HB", suite, 0) + _u16(extensions))
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
            content = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + hashlib.sha256(self.transcript).digest()
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
            expected = _tls13_finished(self.secrets["client_hs"], self.transcript)
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


class HostileClient(Endpoint):
    """The client role, against our server."""

    is_server = False

    def __init__(self, sock, version, *, server_name: str = "localhost", timeout: float = 10.0):
        super().__init__(sock, version, timeout=timeout)
        self.server_name = server_name.encode("ascii")

    def client_hello(self) -> bytes:
        self.client_random = os.urandom(32)
        public = self.ecdhe.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        sni = _extension(EXT_SERVER_NAME, _u16(b"\x00" + _u16(self.server_name)))
        extensions = (sni + _extension(EXT_SUPPORTED_GROUPS, _u16(struct.pack(">HH", X25519, SECP256R1)))
                      + _extension(EXT_SIGNATURE_ALGORITHMS,
                                   _u16(struct.pack(">HH", ECDSA_SECP256R1_SHA256, RSA_PSS_RSAE_SHA256))))
        if self.tls13:
            suites = struct.pack(">H", TLS13_SUITE)
            session_id = os.urandom(32)  # middlebox compatibility mode, as OpenSSL does
            extensions += (_extension(EXT_SUPPORTED_VERSIONS, _u8(struct.pack(">H", TLS_1_3_VERSION)))
                           + _extension(EXT_KEY_SHARE, _u16(struct.pack(">H", X25519) + _u16(public))))
        else:
            suites = struct.pack(">HH", TLS12_SUITE, SCSV_RENEGOTIATION)
            session_id = b""
            extensions += _extension(EXT_EC_POINT_FORMATS, b"\x01\x00")
        body = (struct.pack(">H", TLS_1_2_VERSION) + self.client_random + _u8(session_id) + _u16(suites)
                + b"\x01\x00" + _u16(extensions))
        return build_handshake(HandshakeType.client_hello, body)

    def queue_client_hello(self) -> None:
        message = self.client_hello()
        self.transcript += message
        self.queue_record(ContentType.HANDSHAKE, message)

    def recv_server_hello(self) -> None:
        reader = _Reader(self.recv_handshake(HandshakeType.server_hello))
        reader.take(2)
        self.server_random = reader.take(32)
        reader.vector(1)
        suite = reader.number(2)
        reader.take(1)
        extensions = reader.extensions()
        if suite != (TLS13_SUITE if self.tls13 else TLS12_SUITE):
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
            expected = _tls13_finished(self.secrets["server_hs"], self.transcript)
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


def hostile_endpoint(role: str, sock, version: int, *, cert=None, key=None, timeout: float = 10.0) -> Endpoint:
    """``role`` is the hostile side's: "server" (against our client) or "client" (against our server)."""
    if role == "server":
        return HostileServer(sock, version, cert=cert, key=key, timeout=timeout)
    return HostileClient(sock, version, timeout=timeout)
