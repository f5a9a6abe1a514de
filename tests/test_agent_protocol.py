"""The agent protocol's encoding (ktls_ossl/agent_protocol.py): pure, with hand-built packets as the
oracle, and every malformed input a ProtocolError."""
from __future__ import annotations

import json
import ssl
import struct

import pytest

from ktls_ossl import agent_protocol as protocol
from ktls_ossl.agent_protocol import Message, ProtocolError
from ktls_ossl.errors import KTLSAgentError, KTLSRecordError
from ktls_ossl.handshake import Handoff, KeyUpdateRecord
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher, TrafficKeys

GCM = KernelCipher.AES_GCM_128


def keys(seq=7, version=TLS_1_3_VERSION):
    return TrafficKeys(version, GCM, bytes(range(16)), bytes(range(8)), bytes(range(4)), seq)


def packet(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return b"KTA1" + struct.pack(">I", len(raw)) + raw + payload


def test_a_message_is_magic_length_json_and_payload():
    encoded = protocol.encode("feed", {"content_type": 22}, b"\x01\x02")
    magic, length = struct.unpack(">4sI", encoded[:8])
    assert magic == b"KTA1"
    assert json.loads(encoded[8:8 + length]) == {"content_type": 22, "kind": "feed"}
    assert encoded[8 + length:] == b"\x01\x02"
    assert protocol.decode(encoded) == Message("feed", {"content_type": 22}, b"\x01\x02")


@pytest.mark.parametrize("raw, why", [
    (b"", "shorter"),
    (b"KTA", "shorter"),
    (b"XXXX" + struct.pack(">I", 2) + b"{}", "magic"),
    (b"KTA1" + struct.pack(">I", 100) + b"{}", "header length"),
    (b"KTA1" + struct.pack(">I", protocol.MAX_HEADER + 1) + b"{}", "header length"),
    (b"KTA1" + struct.pack(">I", 5) + b"{nope", "not JSON"),
    (b"KTA1" + struct.pack(">I", 2) + b"\xff\xfe", "not JSON"),
    (packet([1, 2]), "object"),
    (packet({"no": "kind"}), "object"),
    (packet({"kind": 5}), "object"),
    (b"KTA1" + struct.pack(">I", 2) + b"{}" + bytes(protocol.MAX_PACKET), "exceeds"),
    (packet({"kind": "x", "deep": json.loads("[" * 50 + "]" * 50)}), None),  # deep but fine
])
def test_malformed_packets_are_protocol_errors(raw, why):
    if why is None:
        assert protocol.decode(raw).kind == "x"
        return
    with pytest.raises(ProtocolError, match=why):
        protocol.decode(raw)


def test_a_pathologically_nested_header_is_a_protocol_error_not_a_crash():
    raw = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ProtocolError):
        protocol.decode(b"KTA1" + struct.pack(">I", len(raw)) + raw)


def test_fields_are_typed():
    message = Message("handshake", {"mode": "fd", "count": 3, "flag": True})
    assert message.get("mode", str) == "fd"
    assert message.get("missing", str, None) is None
    with pytest.raises(ProtocolError, match="missing"):
        message.get("missing", str)
    with pytest.raises(ProtocolError, match="wrong type"):
        message.get("mode", int)
    with pytest.raises(ProtocolError, match="wrong type"):
        message.get("flag", int)  # a bool is no number here
    assert message.get("flag", bool) is True


def test_records_round_trip_with_their_key_update_keys():
    update = KeyUpdateRecord((22, b"\x18\x00\x00\x01\x00"))
    update.next_keys = keys(0)
    payload, fields = protocol.encode_records([(21, b"\x01\x00"), update, (22, b"")])
    assert payload == b"\x15\x00\x00\x00\x02\x01\x00" + b"\x16\x00\x00\x00\x05\x18\x00\x00\x01\x00" + b"\x16\x00\x00\x00\x00"
    decoded = protocol.decode_records(protocol.decode(protocol.encode("answer", fields, payload)))
    assert decoded == [(21, b"\x01\x00"), (22, b"\x18\x00\x00\x01\x00"), (22, b"")]
    assert isinstance(decoded[1], KeyUpdateRecord) and decoded[1].next_keys == keys(0)
    assert not isinstance(decoded[0], KeyUpdateRecord)


@pytest.mark.parametrize("payload, fields", [
    (b"\x16\x00\x00", {}),  # inside a record header
    (b"\x16\x00\x00\x00\x05\x01", {}),  # inside a record
    (b"\x16\x00\x00\x00\x00", {"key_update": {"index": 1, "next_keys": {}}}),  # no such record
    (b"\x16\x00\x00\x00\x00", {"key_update": {"index": True, "next_keys": {}}}),
    (b"\x16\x00\x00\x00\x00", {"key_update": {"index": 0, "next_keys": {"version": 772}}}),
])
def test_broken_record_lists_are_protocol_errors(payload, fields):
    with pytest.raises(ProtocolError):
        protocol.decode_records(Message("answer", fields, payload))


def test_a_handoff_crosses_without_its_secrets_unless_asked():
    handoff = Handoff(TLS_1_3_VERSION, GCM, "TLS_AES_128_GCM_SHA256", "sha256", keys(1), keys(2),
                      b"t" * 32, b"r" * 32)
    plain = protocol.handoff_from_fields(json.loads(json.dumps(protocol.handoff_to_fields(handoff))))
    assert (plain.tx, plain.rx, plain.suite, plain.hash_name) == (handoff.tx, handoff.rx, handoff.suite, "sha256")
    assert plain.tx_secret is None and plain.rx_secret is None
    assert "t" * 8 not in json.dumps(protocol.handoff_to_fields(handoff))
    full = protocol.handoff_from_fields(protocol.handoff_to_fields(handoff, with_secrets=True))
    assert full == handoff


@pytest.mark.parametrize("mutate", [
    lambda f: f.pop("tx"),
    lambda f: f.update(cipher=9999),
    lambda f: f["rx"].update(key="zz"),
    lambda f: f["rx"].update(key="00"),  # wrong length for the cipher
    lambda f: f["rx"].update(seq=-1),
    lambda f: f["rx"].update(version=TLS_1_2_VERSION),  # the directions disagree
    lambda f: f.update(suite=5),
])
def test_a_broken_handoff_is_a_protocol_error(mutate):
    fields = protocol.handoff_to_fields(Handoff(TLS_1_3_VERSION, GCM, "TLS_AES_128_GCM_SHA256", "sha256",
                                                keys(1), keys(2)))
    mutate(fields)
    with pytest.raises(ProtocolError):
        protocol.handoff_from_fields(fields)


def test_errors_cross_with_their_type_and_attributes():
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verify.library, verify.reason, verify.verify_code, verify.verify_message = "SSL", "CERTIFICATE_VERIFY_FAILED", 20, "x"
    back = protocol.error_from_fields(protocol.error_to_fields(verify))
    assert type(back) is ssl.SSLCertVerificationError
    assert (back.errno, str(back), back.library, back.reason, back.verify_code) == (
        1, str(verify), "SSL", "CERTIFICATE_VERIFY_FAILED", 20)
    record = KTLSRecordError(74, "the kernel refused a record", "BAD_RECORD")
    back = protocol.error_from_fields(protocol.error_to_fields(record))
    assert type(back) is KTLSRecordError and str(back) == str(record) and back.reason == "BAD_RECORD"
    back = protocol.error_from_fields(protocol.error_to_fields(TimeoutError("The handshake operation timed out")))
    assert type(back) is TimeoutError and str(back) == "The handshake operation timed out"
    back = protocol.error_from_fields(protocol.error_to_fields(ConnectionResetError(104, "reset")))
    assert type(back) is ConnectionResetError and back.errno == 104


def test_an_unlisted_exception_crosses_as_an_agent_failure():
    back = protocol.error_from_fields(protocol.error_to_fields(KeyError("internal")))
    assert type(back) is KTLSAgentError and back.reason == "AGENT_FAILED" and "KeyError" in str(back)


@pytest.mark.parametrize("fields", [
    None, {}, {"type": "SystemExit"}, {"type": "KeyboardInterrupt", "errno": 0, "text": ""},
    {"type": "SSLError", "errno": "1"}, {"type": "SSLError", "errno": 1, "text": 5},
    {"type": "KTLSRecordError", "errno": 1, "message": "m"},  # no reason
    {"type": "SSLError", "errno": 1, "text": "t", "reason": ["list"]},
])
def test_an_error_that_may_not_cross_is_a_protocol_error(fields):
    with pytest.raises(ProtocolError):
        protocol.error_from_fields(fields)


def test_keys_can_cross_without_their_material():
    fields = protocol.keys_to_fields(keys(9), material=False)
    assert set(fields) == {"version", "cipher", "seq"}
    withheld = protocol.keys_from_fields(fields)
    assert (withheld.version, withheld.cipher, withheld.seq) == (TLS_1_3_VERSION, GCM, 9)
    assert withheld.key == bytes(16) and withheld.iv == bytes(8) and withheld.salt == bytes(4)
    handoff = Handoff(TLS_1_3_VERSION, GCM, "TLS_AES_128_GCM_SHA256", "sha256", keys(1), keys(2))
    text = json.dumps(protocol.handoff_to_fields(handoff, with_keys=False))
    assert bytes(range(16)).hex() not in text
