"""records.py: parsing, building and AEAD protection against RFC 8448's records."""
import pytest

from ktls_ossl import keys, records
from ktls_ossl.keys import KernelCipher
from ktls_ossl.records import ContentType, RecordProtection

from . import vectors as v


def _rfc_keys(secret, seq):
    return keys.tls13_traffic_keys(secret, KernelCipher.AES_GCM_128, "sha256", seq)


def test_open_rfc8448_client_application_record():
    reader = RecordProtection(_rfc_keys(v.RFC8448_CLIENT_AP_TRAFFIC, 0))
    assert reader.open(v.RFC8448_CLIENT_APP_RECORD) == (ContentType.APPLICATION_DATA, v.RFC8448_APP_PAYLOAD)
    assert reader.open(v.RFC8448_CLIENT_ALERT_RECORD) == (ContentType.ALERT, v.RFC8448_CLOSE_NOTIFY)


def test_seal_reproduces_rfc8448_server_records_byte_for_byte():
    writer = RecordProtection(_rfc_keys(v.RFC8448_SERVER_AP_TRAFFIC, 1))
    assert writer.seal(ContentType.APPLICATION_DATA, v.RFC8448_APP_PAYLOAD) == v.RFC8448_SERVER_APP_RECORD
    assert writer.seal(ContentType.ALERT, v.RFC8448_CLOSE_NOTIFY) == v.RFC8448_SERVER_ALERT_RECORD


def test_wrong_sequence_number_fails_authentication():
    reader = RecordProtection(_rfc_keys(v.RFC8448_SERVER_AP_TRAFFIC, 0))
    with pytest.raises(records.InvalidTag):
        reader.open(v.RFC8448_SERVER_APP_RECORD)


@pytest.mark.parametrize("version", [keys.TLS_1_2_VERSION, keys.TLS_1_3_VERSION])
@pytest.mark.parametrize("cipher", list(KernelCipher))
def test_seal_open_round_trip_every_cipher(version, cipher):
    if version == keys.TLS_1_3_VERSION:
        traffic = keys.tls13_traffic_keys(bytes(range(32)), cipher, "sha256", 3)
    else:
        block = keys.tls12_key_block(bytes(48), b"c" * 32, b"s" * 32, cipher, "sha256")
        traffic = keys.tls12_traffic_keys(block.client_write_key, block.client_write_iv, cipher, 3)
    writer, reader = RecordProtection(traffic), RecordProtection(traffic)
    for content_type, payload in [(23, b"hello"), (21, b"\x01\x00"), (22, b""), (23, bytes(16384))]:
        record = writer.seal(content_type, payload)
        header = records.parse_header(record)
        outer = ContentType.APPLICATION_DATA if version == keys.TLS_1_3_VERSION else content_type
        assert header.content_type == outer and header.length == len(record) - 5
        assert reader.open(record) == (content_type, payload)
    assert writer.seq == reader.seq == 7


def test_tls13_padding_is_stripped():
    traffic = _rfc_keys(v.RFC8448_CLIENT_AP_TRAFFIC, 0)
    record = RecordProtection(traffic).seal(ContentType.HANDSHAKE, b"\x04\x00\x00\x00", padding=100)
    assert RecordProtection(traffic).open(record) == (ContentType.HANDSHAKE, b"\x04\x00\x00\x00")


def test_split_records_keeps_the_incomplete_tail():
    data = records.build_record(21, b"\x01\x00") + records.build_record(23, b"abc") + b"\x17\x03\x03\x00"
    whole, rest = records.split_records(data)
    assert [(h.content_type, p) for h, p in whole] == [(21, b"\x01\x00"), (23, b"abc")]
    assert rest == b"\x17\x03\x03\x00"


def test_alerts_and_handshake_messages():
    alert = records.parse_alert(b"\x02\x28")
    assert alert.is_fatal and alert.description_name == "handshake_failure" and not alert.is_close_notify
    assert records.parse_alert(b"\x01\x00").is_close_notify
    with pytest.raises(records.RecordFormatError, match="2 bytes"):
        records.parse_alert(b"\x01")
    key_update = records.key_update_message(True)
    assert key_update == b"\x18\x00\x00\x01\x01"
    messages, rest = records.split_handshake_messages(key_update + b"\x04\x00\x00\x02ab" + b"\x14\x00")
    assert [(m.msg_type, m.body) for m in messages] == [(24, b"\x01"), (4, b"ab")]
    assert rest == b"\x14\x00"
