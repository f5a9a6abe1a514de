"""control.py: every non-data record has one defined outcome (pure decisions, no sockets)."""
import errno

import pytest

from .test_errnames import _header_ssl_reasons
from ktls_ossl import control
from ktls_ossl.control import Action, ControlState
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION
from ktls_ossl.records import AlertDescription, ContentType, build_handshake, key_update_message


def client(version=TLS_1_3_VERSION, **kwargs):
    return ControlState(version, server_side=False, **kwargs)


def server(version=TLS_1_3_VERSION, **kwargs):
    return ControlState(version, server_side=True, **kwargs)


def only(decisions):
    assert len(decisions) == 1, decisions
    return decisions[0]


def test_every_failure_reason_is_an_openssl_name():
    """The reasons surface as ssl.SSLError.reason: they must be OpenSSL's SSL reason names (which
    of them CPython names on each version: tests/test_errnames.py)."""
    known = set(_header_ssl_reasons().values())
    import inspect
    source = inspect.getsource(control)
    import re
    reasons = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', source))
    assert reasons and reasons <= known, reasons - known


# What OpenSSL 3.0.19 in user space (Policy.USERSPACE, a client of the hostile peer) did with each
# alert, measured: (version, alert bytes) -> the action, and the reason where it failed.
OPENSSL_ALERT_OUTCOMES = [
    (TLS_1_2_VERSION, b"\x01\x00", Action.CLOSE, None),
    (TLS_1_3_VERSION, b"\x01\x00", Action.CLOSE, None),
    (TLS_1_2_VERSION, b"\x02\x00", Action.PEER_ALERT, None),  # a fatal close_notify is a fatal alert
    (TLS_1_3_VERSION, b"\x02\x00", Action.CLOSE, None),  # in TLS 1.3 the level means nothing
    (TLS_1_2_VERSION, b"\x03\x00", Action.FAIL, "UNKNOWN_ALERT_TYPE"),
    (TLS_1_3_VERSION, b"\x03\x00", Action.CLOSE, None),
    (TLS_1_2_VERSION, b"\x03\x5a", Action.FAIL, "UNKNOWN_ALERT_TYPE"),
    (TLS_1_3_VERSION, b"\x03\x5a", Action.IGNORE, None),  # user_canceled at any level
    (TLS_1_2_VERSION, b"\x03\x28", Action.FAIL, "UNKNOWN_ALERT_TYPE"),
    (TLS_1_3_VERSION, b"\x03\x28", Action.PEER_ALERT, None),
]


@pytest.mark.parametrize("version, alert, action, reason", OPENSSL_ALERT_OUTCOMES)
def test_alert_levels_as_openssl_reads_them(version, alert, action, reason):
    decision = only(control.decide(client(version), ContentType.ALERT, alert))
    assert (decision.action, decision.reason) == (action, reason)
    if action is Action.FAIL:
        assert decision.alert.description == AlertDescription.illegal_parameter


@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION])
def test_fatal_alert_is_the_peers_error(version):
    decision = only(control.decide(client(version), ContentType.ALERT, b"\x02\x30"))
    assert decision.action is Action.PEER_ALERT
    assert decision.alert.description == AlertDescription.unknown_ca


def test_tls13_treats_warning_level_alerts_as_fatal():
    decision = only(control.decide(client(), ContentType.ALERT, b"\x01\x2a"))
    assert decision.action is Action.PEER_ALERT


def test_tls13_user_canceled_is_tolerated():
    assert only(control.decide(client(), ContentType.ALERT, b"\x01\x5a")).action is Action.IGNORE


def test_tls12_warnings_are_tolerated_up_to_openssls_limit():
    state = client(TLS_1_2_VERSION)
    for _ in range(control.MAX_CONSECUTIVE_WARNING_ALERTS):
        assert only(control.decide(state, ContentType.ALERT, b"\x01\x2a")).action is Action.IGNORE
    decision = only(control.decide(state, ContentType.ALERT, b"\x01\x2a"))
    assert (decision.action, decision.reason) == (Action.FAIL, "TOO_MANY_WARN_ALERTS")
    assert decision.alert.description == AlertDescription.unexpected_message


def test_tls12_data_resets_the_warning_count():
    state = client(TLS_1_2_VERSION)
    for _ in range(3 * control.MAX_CONSECUTIVE_WARNING_ALERTS):
        assert only(control.decide(state, ContentType.ALERT, b"\x01\x2a")).action is Action.IGNORE
        if state.warning_alerts == control.MAX_CONSECUTIVE_WARNING_ALERTS:
            state.saw_application_data()


def test_tls12_no_renegotiation_without_asking_is_a_failure():
    decision = only(control.decide(client(TLS_1_2_VERSION), ContentType.ALERT, b"\x01\x64"))
    assert (decision.action, decision.reason) == (Action.FAIL, "NO_RENEGOTIATION")
    assert decision.alert.description == AlertDescription.handshake_failure


@pytest.mark.parametrize("version, payload, reason", [
    (TLS_1_3_VERSION, b"\x02", "INVALID_ALERT"), (TLS_1_3_VERSION, b"\x02\x28\x00", "INVALID_ALERT"),
    (TLS_1_2_VERSION, b"\x07\x28", "UNKNOWN_ALERT_TYPE")])
def test_malformed_alerts(version, payload, reason):
    decision = only(control.decide(client(version), ContentType.ALERT, payload))
    assert (decision.action, decision.reason) == (Action.FAIL, reason)
    assert decision.alert.is_fatal


def test_tls13_session_tickets_reach_the_client_only():
    ticket = build_handshake(4, b"\x00\x00\x1c\x20" + bytes(20))
    decision = only(control.decide(client(), ContentType.HANDSHAKE, ticket))
    assert decision.action is Action.SESSION_TICKET and decision.handshake.body == ticket[4:]
    decision = only(control.decide(server(), ContentType.HANDSHAKE, ticket))
    assert (decision.action, decision.reason) == (Action.FAIL, "UNEXPECTED_MESSAGE")


@pytest.mark.parametrize("requested", [False, True])
def test_tls13_key_update(requested):
    decision = only(control.decide(server(), ContentType.HANDSHAKE, key_update_message(requested)))
    assert decision.action is Action.KEY_UPDATE and decision.update_requested is requested


@pytest.mark.parametrize("body", [b"", b"\x02", b"\x00\x00"])
def test_tls13_malformed_key_update(body):
    decision = only(control.decide(client(), ContentType.HANDSHAKE, build_handshake(24, body)))
    assert (decision.action, decision.reason) == (Action.FAIL, "BAD_KEY_UPDATE")


def test_several_messages_in_one_record_and_one_message_over_records():
    state = client()
    both = build_handshake(4, bytes(30)) + key_update_message(False)
    assert [d.action for d in control.decide(state, ContentType.HANDSHAKE, both)] == [
        Action.SESSION_TICKET, Action.KEY_UPDATE]
    ticket = build_handshake(4, bytes(100))
    assert control.decide(state, ContentType.HANDSHAKE, ticket[:50]) == []
    assert state.handshake_buffer == ticket[:50]
    assert only(control.decide(state, ContentType.HANDSHAKE, ticket[50:])).action is Action.SESSION_TICKET
    assert state.handshake_buffer == b""


@pytest.mark.parametrize("buffered, reason", [(1, "MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA"),
                                              (3, "MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA"),
                                              (4, "UNEXPECTED_RECORD"), (10, "UNEXPECTED_RECORD")])
def test_data_inside_a_fragmented_message_is_named_as_openssl_names_it(buffered, reason):
    """OpenSSL 3.0 in user space, measured with the hostile peer: data inside a handshake message's
    4-byte header is MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA, inside its body UNEXPECTED_RECORD."""
    state = client()
    assert control.decide(state, ContentType.HANDSHAKE, key_update_message(False)[:1] if buffered == 1 else
                          build_handshake(4, bytes(100))[:buffered]) == []
    decision = control.data_refused(state)
    assert (decision.action, decision.reason) == (Action.FAIL, reason)
    assert decision.alert.description == AlertDescription.unexpected_message


def test_data_inside_a_fragmented_handshake_message_is_refused():
    state = client()
    control.decide(state, ContentType.HANDSHAKE, build_handshake(4, bytes(100))[:10])
    decision = control.interleaving_violation(state)
    assert (decision.action, decision.reason) == (Action.FAIL, "UNEXPECTED_RECORD")
    decision = only(control.decide(state, ContentType.ALERT, b"\x01\x00"))
    assert decision.reason == "UNEXPECTED_RECORD"


def test_oversized_handshake_message_is_refused_before_buffering_it():
    decision = only(control.decide(client(), ContentType.HANDSHAKE, b"\x04\xff\xff\xff" + bytes(10)))
    assert (decision.action, decision.reason) == (Action.FAIL, "EXCESSIVE_MESSAGE_SIZE")


def test_tls13_certificate_request_needs_post_handshake_auth():
    request = build_handshake(13, b"\x00\x00\x00")
    assert only(control.decide(client(post_handshake_auth=True), ContentType.HANDSHAKE, request)).action \
        is Action.CERTIFICATE_REQUEST
    assert only(control.decide(client(), ContentType.HANDSHAKE, request)).reason == "UNEXPECTED_MESSAGE"


def test_tls12_renegotiation_attempts_are_refused_with_a_warning():
    decision = only(control.decide(client(TLS_1_2_VERSION), ContentType.HANDSHAKE, b"\x00\x00\x00\x00"))
    assert decision.action is Action.REFUSE_RENEGOTIATION
    assert (decision.alert.level, decision.alert.description) == (1, AlertDescription.no_renegotiation)
    hello = build_handshake(1, bytes(60))
    assert only(control.decide(server(TLS_1_2_VERSION), ContentType.HANDSHAKE, hello)).action \
        is Action.REFUSE_RENEGOTIATION
    assert only(control.decide(client(TLS_1_2_VERSION), ContentType.HANDSHAKE, hello)).reason == "UNEXPECTED_MESSAGE"
    assert only(control.decide(client(TLS_1_2_VERSION), ContentType.HANDSHAKE, b"\x00\x00\x00\x01\x00")).reason \
        == "BAD_LENGTH"


@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION])
@pytest.mark.parametrize("message", [2, 11, 15, 20, 99])
def test_other_post_handshake_messages_are_unexpected(version, message):
    decision = only(control.decide(client(version), ContentType.HANDSHAKE, build_handshake(message, b"x")))
    assert (decision.action, decision.reason) == (Action.FAIL, "UNEXPECTED_MESSAGE")
    assert decision.alert.description == AlertDescription.unexpected_message


@pytest.mark.parametrize("content_type, payload", [(ContentType.CHANGE_CIPHER_SPEC, b"\x01"), (24, b"hb"),
                                                    (99, b""), (ContentType.HANDSHAKE, b"")])
def test_other_records_fail_with_unexpected_message(content_type, payload):
    decision = only(control.decide(client(), content_type, payload))
    assert decision.action is Action.FAIL
    assert decision.alert.description == AlertDescription.unexpected_message


@pytest.mark.parametrize("record", [
    key_update_message(False) + build_handshake(4, bytes(30)),  # another message behind it
    key_update_message(False) + key_update_message(True),  # two KeyUpdates in one record
    key_update_message(False) + b"\x04\x00",  # the start of another message behind it
])
def test_tls13_key_update_must_end_its_record(record):
    """RFC 8446 5.1: the key changes right after a KeyUpdate, so it must end its record (OpenSSL:
    unexpected_message, NOT_ON_RECORD_BOUNDARY); nothing after it is acted on."""
    decision = only(control.decide(client(), ContentType.HANDSHAKE, record))
    assert (decision.action, decision.reason) == (Action.FAIL, "NOT_ON_RECORD_BOUNDARY")
    assert decision.alert.description == AlertDescription.unexpected_message


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_tls13_key_update_fragmented_over_records_is_legal(split):
    state = client()
    message = key_update_message(True)
    assert control.decide(state, ContentType.HANDSHAKE, message[:split]) == []
    decision = only(control.decide(state, ContentType.HANDSHAKE, message[split:]))
    assert decision.action is Action.KEY_UPDATE and decision.update_requested
    assert state.handshake_buffer == b""


# What OpenSSL 3.0.19 in user space did with each record after the handshake, measured against the
# hostile peer (tests/security, Policy.USERSPACE): (version, type, payload) -> reason and alert.
OPENSSL_RECORD_LAYER_OUTCOMES = [
    (TLS_1_2_VERSION, ContentType.CHANGE_CIPHER_SPEC, b"\x01", "CCS_RECEIVED_EARLY", "unexpected_message"),
    (TLS_1_2_VERSION, ContentType.CHANGE_CIPHER_SPEC, b"", "CCS_RECEIVED_EARLY", "unexpected_message"),
    (TLS_1_3_VERSION, ContentType.CHANGE_CIPHER_SPEC, b"\x01", "BAD_RECORD_TYPE", "unexpected_message"),
    (TLS_1_3_VERSION, 99, b"FORGED", "BAD_RECORD_TYPE", "unexpected_message"),
    (TLS_1_2_VERSION, 99, b"FORGED", "UNEXPECTED_RECORD", "unexpected_message"),
    (TLS_1_2_VERSION, ContentType.ALERT, b"", "INVALID_ALERT", "unexpected_message"),
    (TLS_1_3_VERSION, ContentType.ALERT, b"", "BAD_LENGTH", "unexpected_message"),
    (TLS_1_3_VERSION, ContentType.HANDSHAKE, b"", "BAD_LENGTH", "unexpected_message"),
]


@pytest.mark.parametrize("version, content_type, payload, reason, alert", OPENSSL_RECORD_LAYER_OUTCOMES)
@pytest.mark.parametrize("side", [client, server])
def test_record_layer_refusals_as_openssl_names_them(side, version, content_type, payload, reason, alert):
    decision = only(control.decide(side(version), content_type, payload))
    assert (decision.action, decision.reason, decision.alert.description_name) == (Action.FAIL, reason, alert)
    assert decision.alert.is_fatal


def test_tls12_empty_handshake_records_are_tolerated_up_to_openssls_limit():
    """OpenSSL passes 32 empty records in a row and fails at the 33rd (MAX_EMPTY_RECORDS); a
    non-empty record starts the count again."""
    state = client(TLS_1_2_VERSION)
    for _ in range(32):
        assert only(control.decide(state, ContentType.HANDSHAKE, b"")).action is Action.IGNORE
    decision = only(control.decide(state, ContentType.HANDSHAKE, b""))
    assert (decision.action, decision.reason) == (Action.FAIL, "RECORD_TOO_SMALL")
    state = client(TLS_1_2_VERSION)
    for _ in range(32):
        control.decide(state, ContentType.HANDSHAKE, b"")
    assert only(control.decide(state, ContentType.ALERT, b"\x01\x5a")).action is Action.IGNORE
    assert only(control.decide(state, ContentType.HANDSHAKE, b"")).action is Action.IGNORE


@pytest.mark.parametrize("version, err, decrypting, authenticated, alert", [
    # The alert OpenSSL 3.0.19 sent in user space for the same record (tests/security, measured).
    (TLS_1_2_VERSION, errno.EBADMSG, True, False, "bad_record_mac"),  # a forged tag
    (TLS_1_3_VERSION, errno.EBADMSG, True, False, "bad_record_mac"),
    (TLS_1_3_VERSION, errno.EBADMSG, True, True, "unexpected_message"),  # no content type (BAD_RECORD_TYPE)
    (TLS_1_2_VERSION, errno.EBADMSG, True, True, "bad_record_mac"),  # TLS 1.2 has no inner content type
    (TLS_1_3_VERSION, errno.EBADMSG, False, False, "bad_record_mac"),  # shorter than the tag
    (TLS_1_2_VERSION, errno.EBADMSG, False, False, "internal_error"),  # shorter than nonce and tag
    (TLS_1_2_VERSION, errno.EMSGSIZE, False, False, "record_overflow"),
    (TLS_1_3_VERSION, errno.EMSGSIZE, False, False, "record_overflow"),
    (TLS_1_2_VERSION, errno.EINVAL, False, False, "protocol_version"),  # header version 0x0301
    (TLS_1_3_VERSION, errno.EINVAL, False, False, "decode_error"),
    (TLS_1_3_VERSION, errno.ENOMEM, False, False, "internal_error"),
])
def test_alert_for_a_record_the_kernel_refused(version, err, decrypting, authenticated, alert):
    sent = control.alert_for_refused_record(version, err, decrypting=decrypting, authenticated=authenticated)
    assert sent.is_fatal and sent.description_name == alert
