"""The handshake agent's wire protocol: pure encoding and decoding, no I/O.

An application and the agent talk over a Unix ``SOCK_SEQPACKET`` socket, one message per packet
(the kernel keeps packet boundaries, so no framing of our own is needed beyond the header):

    packet  := MAGIC (4 bytes) | header length (u32, big-endian) | header | payload
    header  := a UTF-8 JSON object with a string "kind"
    payload := bytes (records, a certificate), meaning given by the kind

Every decoder here treats its input as hostile: a packet that is too long, a header that is not a
JSON object, a field of the wrong type, a record list that does not add up, an error type that is not
on the allow-list: each raises ``ProtocolError`` (a ValueError) and nothing else. Key material
travels as hex; a ``Handoff`` crosses without its TLS 1.3 traffic secrets unless asked (they would
give the application every later key of the connection).
"""
from __future__ import annotations

import json
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .handshake import Handoff, KeyUpdateRecord
from .keys import KernelCipher, TrafficKeys

__all__ = ["MAGIC", "MAX_PACKET", "Message", "ProtocolError", "decode", "encode"]

MAGIC = b"KTA1"
# The largest packet either side sends or accepts: a post-handshake answer may hold a certificate
# chain (a few records of up to 2^14 bytes). A Unix socket sends a packet only if it fits its send
# buffer, which is at most net.core.wmem_max (208 KiB by default) for an unprivileged process.
MAX_PACKET = 160 * 1024
_PREFIX = struct.Struct(">4sI")
_RECORD = struct.Struct(">BI")
MAX_HEADER = 64 * 1024


class ProtocolError(ValueError):
    """A packet that does not follow the agent protocol."""


@dataclass(frozen=True)
class Message:
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def get(self, name: str, expected: type | tuple[type, ...], default: Any = ...) -> Any:
        """Field ``name``, which must be of type ``expected``; ``default`` where it may be absent."""
        if name not in self.fields:
            if default is ...:
                raise ProtocolError(f"{self.kind}: field {name!r} is missing")
            return default
        value = self.fields[name]
        allowed = expected if isinstance(expected, tuple) else (expected,)
        # JSON's true is Python's True, an int too: a number field takes no boolean.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ProtocolError(f"{self.kind}: field {name!r} has the wrong type")
        return value


def encode(kind: str, fields: dict[str, Any] | None = None, payload: bytes = b"") -> bytes:
    header = dict(fields or {})
    header["kind"] = kind
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    packet = _PREFIX.pack(MAGIC, len(encoded)) + encoded + payload
    if len(encoded) > MAX_HEADER or len(packet) > MAX_PACKET:
        raise ProtocolError(f"{kind}: message of {len(packet)} bytes exceeds the protocol's limit")
    return packet


def decode(packet: bytes) -> Message:
    if len(packet) > MAX_PACKET:
        raise ProtocolError(f"packet of {len(packet)} bytes exceeds {MAX_PACKET}")
    if len(packet) < _PREFIX.size:
        raise ProtocolError("packet shorter than its prefix")
    magic, header_length = _PREFIX.unpack_from(packet)
    if magic != MAGIC:
        raise ProtocolError("not an agent protocol packet (bad magic)")
    if header_length > MAX_HEADER or _PREFIX.size + header_length > len(packet):
        raise ProtocolError("header length out of range")
    raw = packet[_PREFIX.size:_PREFIX.size + header_length]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ProtocolError("header is not an object with a string 'kind'")
    kind = header.pop("kind")
    return Message(kind, header, bytes(packet[_PREFIX.size + header_length:]))


# --- records ----------------------------------------------------------------------------------------

def encode_records(records: list[tuple[int, bytes]]) -> tuple[bytes, dict[str, Any]]:
    """(payload, fields) for records an engine wrote: the records themselves, and for a record that
    ends with a KeyUpdate of the engine's, its index and the send keys that follow it."""
    payload = b"".join(_RECORD.pack(content_type, len(data)) + bytes(data) for content_type, data in records)
    fields: dict[str, Any] = {}
    for index, record in enumerate(records):
        if isinstance(record, KeyUpdateRecord):
            fields["key_update"] = {"index": index, "next_keys": keys_to_fields(record.next_keys)}
    return payload, fields


def decode_records(message: Message) -> list[tuple[int, bytes]]:
    payload = message.payload
    records: list[tuple[int, bytes]] = []
    position = 0
    while position < len(payload):
        if position + _RECORD.size > len(payload):
            raise ProtocolError("record list ends inside a record header")
        content_type, length = _RECORD.unpack_from(payload, position)
        position += _RECORD.size
        if length > len(payload) - position:
            raise ProtocolError("record list ends inside a record")
        records.append((content_type, payload[position:position + length]))
        position += length
    key_update = message.get("key_update", dict, None)
    if key_update is not None:
        index = key_update.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(records):
            raise ProtocolError("key_update index out of range")
        record = KeyUpdateRecord(records[index])
        record.next_keys = keys_from_fields(key_update.get("next_keys"))
        records[index] = record
    return records


# --- keys and the handoff --------------------------------------------------------------------------

def keys_to_fields(traffic_keys: TrafficKeys, *, material: bool = True) -> dict[str, Any]:
    """Traffic keys as they cross; without ``material`` only what is not secret (version, cipher,
    the next sequence number): for a socket whose keys the agent installed itself."""
    fields = {"version": traffic_keys.version, "cipher": int(traffic_keys.cipher), "seq": traffic_keys.seq}
    if material:
        fields.update(key=traffic_keys.key.hex(), iv=traffic_keys.iv.hex(), salt=traffic_keys.salt.hex())
    return fields


def keys_from_fields(fields: Any) -> TrafficKeys:
    try:
        if not isinstance(fields, dict):
            raise TypeError("not an object")
        numbers = [fields[name] for name in ("version", "cipher", "seq")]
        if not all(isinstance(number, int) and not isinstance(number, bool) for number in numbers):
            raise TypeError("version, cipher and seq must be integers")
        cipher = KernelCipher(fields["cipher"])
        if not any(name in fields for name in ("key", "iv", "salt")):
            # Withheld (the agent installed them): zeros of the right sizes, never given to a kernel.
            return TrafficKeys(fields["version"], cipher, bytes(cipher.key_size), bytes(cipher.iv_size),
                               bytes(cipher.salt_size), fields["seq"])
        return TrafficKeys(fields["version"], cipher, bytes.fromhex(fields["key"]),
                           bytes.fromhex(fields["iv"]), bytes.fromhex(fields["salt"]), fields["seq"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"traffic keys: {exc}") from None


def handoff_to_fields(handoff: Handoff, *, with_keys: bool = True, with_secrets: bool = False) -> dict[str, Any]:
    fields = {"version": handoff.version, "cipher": int(handoff.cipher), "suite": handoff.suite,
              "hash_name": handoff.hash_name, "tx": keys_to_fields(handoff.tx, material=with_keys),
              "rx": keys_to_fields(handoff.rx, material=with_keys)}
    if with_secrets and handoff.tx_secret is not None:
        fields["tx_secret"], fields["rx_secret"] = handoff.tx_secret.hex(), handoff.rx_secret.hex()
    return fields


def handoff_from_fields(fields: Any) -> Handoff:
    if not isinstance(fields, dict):
        raise ProtocolError("handoff: not an object")
    try:
        version, suite, hash_name = fields["version"], fields["suite"], fields["hash_name"]
        if not (isinstance(suite, str) and isinstance(hash_name, str) and isinstance(version, int)):
            raise TypeError("version, suite and hash_name have the wrong types")
        secrets = [bytes.fromhex(fields[name]) if isinstance(fields.get(name), str) else None
                   for name in ("tx_secret", "rx_secret")]
        tx, rx = keys_from_fields(fields["tx"]), keys_from_fields(fields["rx"])
        cipher = KernelCipher(fields["cipher"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"handoff: {exc}") from None
    if not (tx.version == rx.version == version and tx.cipher == rx.cipher == cipher):
        raise ProtocolError("handoff: the directions disagree on version or cipher")
    return Handoff(version, cipher, suite, hash_name, tx, rx, *secrets)


# --- errors ------------------------------------------------------------------------------------------

# What may cross, by name: a peer never makes the other side construct an arbitrary type.
_SSL_ERRORS = {cls.__name__: cls for cls in (
    ssl.SSLError, ssl.SSLCertVerificationError, ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)}
_KERNEL_ERRORS = {cls.__name__: cls for cls in (
    errors.KernelTLSError, errors.KTLSUnavailableError, errors.KTLSCipherUnavailableError,
    errors.KTLSRekeyUnsupportedError, errors.KTLSRecordError, errors.KTLSAgentError)}
_OS_ERRORS = {cls.__name__: cls for cls in (
    OSError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError, TimeoutError)}


def error_to_fields(exc: BaseException) -> dict[str, Any]:
    """An exception as it may cross: its type (the nearest allowed one), errno, text and ssl
    attributes."""
    for cls in type(exc).__mro__:
        name = cls.__name__
        if _KERNEL_ERRORS.get(name) is cls:
            return {"type": name, "errno": exc.errno or 0, "message": exc.message, "reason": exc.reason}
        if _SSL_ERRORS.get(name) is cls:
            fields = {"type": name, "errno": exc.errno if isinstance(exc.errno, int) else 0,
                      "text": exc.strerror if isinstance(exc.strerror, str) else str(exc),
                      "library": getattr(exc, "library", None), "reason": getattr(exc, "reason", None)}
            if isinstance(exc, ssl.SSLCertVerificationError):
                fields["verify_code"] = exc.verify_code
                fields["verify_message"] = exc.verify_message
            return fields
        if _OS_ERRORS.get(name) is cls:
            return {"type": name, "errno": exc.errno or 0, "text": exc.strerror or str(exc)}
    return {"type": "KTLSAgentError", "errno": 0, "reason": "AGENT_FAILED",
            "message": f"the agent failed: {type(exc).__name__}: {exc}"}


def error_from_fields(fields: Any) -> BaseException:
    if not isinstance(fields, dict) or not isinstance(fields.get("type"), str):
        raise ProtocolError("error: not an object with a type")
    name, number = fields["type"], fields.get("errno", 0)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ProtocolError("error: errno is not an integer")
    text = fields.get("text", fields.get("message", ""))
    if not isinstance(text, str):
        raise ProtocolError("error: text is not a string")
    if name in _KERNEL_ERRORS:
        reason = fields.get("reason")
        if not isinstance(reason, str):
            raise ProtocolError("error: reason is not a string")
        return _KERNEL_ERRORS[name](number, text, reason)
    if name in _SSL_ERRORS:
        exc = _SSL_ERRORS[name](number, text)
        for attribute in ("library", "reason", "verify_code", "verify_message"):
            if attribute in fields:
                value = fields[attribute]
                if value is not None and not isinstance(value, (str, int)):
                    raise ProtocolError(f"error: {attribute} has the wrong type")
                setattr(exc, attribute, value)
        return exc
    if name in _OS_ERRORS:
        return _OS_ERRORS[name](number, text) if number else _OS_ERRORS[name](text)
    raise ProtocolError(f"error: type {name!r} may not cross")
