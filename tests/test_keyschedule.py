"""keyschedule.KeyScheduleEngine: a post-handshake engine that is only the TLS 1.3 key schedule.

The expected keys come from RFC 8446 section 7.2/7.3 as ktls_ossl.keys computes them (checked against
RFC 8448's vectors in tests/test_keys.py); the messages are written out byte by byte from RFC 8446 4.6.3.
"""
from __future__ import annotations

import ssl

import pytest

from ktls_ossl import keys
from ktls_ossl.handshake import Handoff, KeyUpdateRecord
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher
from ktls_ossl.keyschedule import KeyScheduleEngine

CIPHER = KernelCipher.AES_GCM_256
HASH = "sha384"
TX_SECRET, RX_SECRET = bytes(range(48)), bytes(range(100, 148))


def handoff(version=TLS_1_3_VERSION):
    secrets = (TX_SECRET, RX_SECRET) if version == TLS_1_3_VERSION else (None, None)
    tx = keys.tls13_traffic_keys(TX_SECRET, CIPHER, HASH, 5)
    rx = keys.tls13_traffic_keys(RX_SECRET, CIPHER, HASH, 3)
    if version == TLS_1_2_VERSION:
        tx = keys.TrafficKeys(version, CIPHER, tx.key, tx.iv, tx.salt, 5)
        rx = keys.TrafficKeys(version, CIPHER, rx.key, rx.iv, rx.salt, 3)
    return Handoff(version, CIPHER, "TLS_AES_256_GCM_SHA384", HASH, tx, rx, *secrets)


def test_a_peer_key_update_moves_the_receive_keys_along_the_schedule():
    engine = KeyScheduleEngine(handoff())
    assert engine.read_keys == handoff().rx
    assert engine.feed_key_update(b"\x18\x00\x00\x01\x01") == []  # our update is the sender's to write
    first = keys.tls13_next_secret(RX_SECRET, HASH)
    assert engine.read_keys == keys.tls13_traffic_keys(first, CIPHER, HASH, 0)
    engine.feed_key_update(b"\x18\x00\x00\x01\x00")
    assert engine.read_keys == keys.tls13_traffic_keys(keys.tls13_next_secret(first, HASH), CIPHER, HASH, 0)


@pytest.mark.parametrize("request_peer, last_byte", [(False, 0), (True, 1)])
def test_our_key_update_is_the_message_and_the_next_send_keys(request_peer, last_byte):
    engine = KeyScheduleEngine(handoff())
    [record] = engine.key_update_records(request_peer)
    assert tuple(record) == (22, bytes([24, 0, 0, 1, last_byte]))
    assert isinstance(record, KeyUpdateRecord) and record.update_requested is request_peer
    assert record.next_keys == keys.tls13_traffic_keys(keys.tls13_next_secret(TX_SECRET, HASH), CIPHER, HASH, 0)
    [second] = engine.key_update_records(False)
    assert second.next_keys != record.next_keys


def test_tickets_are_dropped_and_what_needs_the_handshake_is_refused():
    engine = KeyScheduleEngine(handoff(), "the agent went its way")
    assert engine.feed(22, bytes([4, 0, 0, 1, 0])) == []
    assert engine.tickets_dropped == 1
    with pytest.raises(ssl.SSLError, match="the agent went its way") as info:
        engine.feed(22, bytes([13, 0, 0, 4, 0, 0, 0, 0]))  # a post-handshake CertificateRequest
    assert info.value.reason == "UNEXPECTED_MESSAGE"
    assert info.value.ktls_outgoing == [(21, bytes([2, 10]))]  # fatal unexpected_message
    with pytest.raises(ssl.SSLError, match="private key"):
        engine.verify_client_post_handshake()
    assert engine.emit() == [] and engine.in_handshake is False


def test_tls13_without_its_secrets_is_refused_and_tls12_needs_none():
    plain = handoff()
    with pytest.raises(ValueError, match="traffic secrets"):
        KeyScheduleEngine(Handoff(plain.version, plain.cipher, plain.suite, plain.hash_name, plain.tx, plain.rx))
    assert KeyScheduleEngine(handoff(TLS_1_2_VERSION)).handoff().version == TLS_1_2_VERSION
