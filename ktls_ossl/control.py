"""The control-record handler: (record type, payload) in, decisions out. Pure logic, no sockets.

Once the kernel owns the record layer, every record that is not application data comes back to
user space through the TLS_GET_RECORD_TYPE cmsg. Each one gets exactly one defined outcome here;
socket.py carries the decisions out. The rules follow RFC 8446 (TLS 1.3), RFC 5246/5746 (TLS 1.2)
and what OpenSSL does for the same input in user space, including its reason names, so that a
kTLS connection fails the way a user-space one would.
"""
from __future__ import annotations

import enum
import errno
from dataclasses import dataclass, field

from .keys import TLS_1_3_VERSION
from .records import (
    Alert,
    AlertDescription,
    AlertLevel,
    HANDSHAKE_HEADER_SIZE,
    ContentType,
    HandshakeMessage,
    HandshakeType,
    split_handshake_messages,
)

# Warning alerts tolerated in a row without data: OpenSSL fails on the 5th (its MAX_WARN_ALERT_COUNT
# of 5 counts the failing one), so 4 pass.
MAX_CONSECUTIVE_WARNING_ALERTS = 4
# Largest post-handshake handshake message we buffer (OpenSSL's default max_cert_list is 100 KiB;
# a NewSessionTicket or CertificateRequest is far smaller).
MAX_HANDSHAKE_MESSAGE = 100 * 1024
# Empty records tolerated in a row: OpenSSL's MAX_EMPTY_RECORDS (it fails at the 33rd).
MAX_EMPTY_RECORDS = 32


class Action(enum.Enum):
    CLOSE = "close_notify: orderly end of the peer's data"
    IGNORE = "tolerated: nothing to do"
    PEER_ALERT = "the peer sent a fatal alert: fail without answering"
    FAIL = "protocol violation: send the fatal alert and fail"
    REFUSE_RENEGOTIATION = "renegotiation attempt: answer with a no_renegotiation warning"
    SESSION_TICKET = "TLS 1.3 NewSessionTicket"
    KEY_UPDATE = "TLS 1.3 KeyUpdate: install the next receive key"
    CERTIFICATE_REQUEST = "TLS 1.3 post-handshake CertificateRequest: to OpenSSL, which answers"
    CLIENT_AUTHENTICATION = "TLS 1.3 client's answer to our CertificateRequest: to OpenSSL to verify"


@dataclass(frozen=True)
class Decision:
    action: Action
    alert: Alert | None = None  # the alert to send (FAIL, REFUSE_RENEGOTIATION) or received (PEER_ALERT)
    reason: str | None = None  # OpenSSL's reason name for the failure
    message: str | None = None  # human-readable cause
    handshake: HandshakeMessage | None = None  # the message for SESSION_TICKET, KEY_UPDATE, ...

    @property
    def update_requested(self) -> bool:
        return self.action is Action.KEY_UPDATE and self.handshake.body == b"\x01"


def _fail(description: AlertDescription, reason: str, message: str) -> Decision:
    return Decision(Action.FAIL, Alert(AlertLevel.FATAL, description), reason, message)


@dataclass
class ControlState:
    """What the decisions depend on, per connection; ``decide`` updates it."""

    version: int
    server_side: bool
    post_handshake_auth: bool = False  # a client that offered post_handshake_auth
    # Server side of post-handshake authentication: None, "requested" (CertificateRequest sent) or
    # "in_progress" (the client's answer has begun; the connection is unverified until it ends).
    client_auth: str | None = None
    warning_alerts: int = 0
    empty_records: int = 0  # TLS 1.2: empty control records in a row
    handshake_buffer: bytes = b""
    records: dict = field(default_factory=dict)  # content type -> count, for introspection

    @property
    def tls13(self) -> bool:
        return self.version == TLS_1_3_VERSION

    def saw_application_data(self) -> None:
        """Data resets OpenSSL's count of consecutive warning alerts."""
        self.warning_alerts = 0


def interleaving_violation(state: ControlState) -> Decision | None:
    """RFC 8446 5.1 / RFC 5246 6.2.1: a handshake message split over records may not be interleaved
    with other record types. Application data arriving mid-message is refused, not delivered.
    OpenSSL names it by how far the message got: inside its 4-byte header, MIXED_HANDSHAKE_AND_
    NON_HANDSHAKE_DATA; inside its body, UNEXPECTED_RECORD."""
    if not state.handshake_buffer:
        return None
    if len(state.handshake_buffer) < HANDSHAKE_HEADER_SIZE:
        return _fail(AlertDescription.unexpected_message, "MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA",
                     "record of another type inside the header of a fragmented handshake message")
    return _fail(AlertDescription.unexpected_message, "UNEXPECTED_RECORD",
                 "record of another type inside a fragmented handshake message")


def data_refused(state: ControlState) -> Decision | None:
    """Application data may not be delivered while a post-handshake handshake message is
    incomplete or the client's post-handshake authentication has begun but not been accepted."""
    violation = interleaving_violation(state)
    if violation:
        return violation
    if state.client_auth == "in_progress":
        return _fail(AlertDescription.unexpected_message, "UNEXPECTED_RECORD",
                     "application data inside the client's post-handshake authentication")
    return None


def decide(state: ControlState, content_type: int, payload: bytes) -> list[Decision]:
    """The decisions for one non-data record, in order. Stops at the first failure."""
    state.records[content_type] = state.records.get(content_type, 0) + 1
    refused = _record_layer_refusal(state, content_type, payload)
    if refused:
        return [refused]
    if content_type == ContentType.HANDSHAKE:
        return _decide_handshake(state, payload)
    violation = interleaving_violation(state)
    if violation:
        return [violation]
    if content_type == ContentType.ALERT:
        return [_decide_alert(state, payload)]
    if content_type == ContentType.CHANGE_CIPHER_SPEC:
        # OpenSSL's TLS 1.2 reads a ChangeCipherSpec it did not expect as one that came too early.
        return [_fail(AlertDescription.unexpected_message, "CCS_RECEIVED_EARLY",
                      "ChangeCipherSpec after the handshake")]
    if content_type == ContentType.APPLICATION_DATA:
        refused = data_refused(state)
        if refused:
            return [refused]
        state.saw_application_data()
        return []
    return [_fail(AlertDescription.unexpected_message, "UNEXPECTED_RECORD",
                  f"record of unknown content type {content_type}")]


def _record_layer_refusal(state: ControlState, content_type: int, payload: bytes) -> Decision | None:
    """What OpenSSL's record layer refuses before the record's content is looked at.

    TLS 1.3 (RFC 8446 5.1, 5.4): under application keys only data, alerts and handshake messages
    may come, and never as an empty record except data (OpenSSL: BAD_RECORD_TYPE, BAD_LENGTH).
    TLS 1.2: empty records are legal; OpenSSL passes them on and fails the connection at the
    33rd in a row (RECORD_TOO_SMALL). Empty application-data records never get here (the kernel
    consumes them), so only the empty control records of a run are counted."""
    if state.tls13:
        if content_type not in (ContentType.APPLICATION_DATA, ContentType.ALERT, ContentType.HANDSHAKE):
            return _fail(AlertDescription.unexpected_message, "BAD_RECORD_TYPE",
                         f"record of content type {content_type} under TLS 1.3 application keys")
        if not payload and content_type != ContentType.APPLICATION_DATA:
            return _fail(AlertDescription.unexpected_message, "BAD_LENGTH",
                         f"empty {_content_name(content_type)} record")
        return None
    if payload:
        state.empty_records = 0
        return None
    state.empty_records += 1
    if state.empty_records > MAX_EMPTY_RECORDS:
        return _fail(AlertDescription.unexpected_message, "RECORD_TOO_SMALL",
                     f"more than {MAX_EMPTY_RECORDS} empty records in a row")
    return None


def _content_name(content_type: int) -> str:
    try:
        return ContentType(content_type).name.lower()
    except ValueError:
        return f"content type {content_type}"


def _decide_alert(state: ControlState, payload: bytes) -> Decision:
    if len(payload) != 2:
        return _fail(AlertDescription.unexpected_message, "INVALID_ALERT",
                     f"alert record of {len(payload)} bytes (an alert has 2)")
    alert = Alert(payload[0], payload[1])
    # The order of these rules is OpenSSL's (3.x, ssl3_read_bytes), level and version together:
    # in TLS 1.3 the level carries no meaning (RFC 8446 6: close_notify and user_canceled are the
    # only non-error alerts, whatever level they claim); in TLS 1.2 a fatal close_notify is a
    # fatal alert and an unknown level is an illegal_parameter.
    tls13 = state.tls13
    user_canceled = alert.description == AlertDescription.user_canceled
    if alert.level == AlertLevel.WARNING or (tls13 and user_canceled):
        state.warning_alerts += 1
        if state.warning_alerts > MAX_CONSECUTIVE_WARNING_ALERTS:
            return _fail(AlertDescription.unexpected_message, "TOO_MANY_WARN_ALERTS",
                         f"more than {MAX_CONSECUTIVE_WARNING_ALERTS} warning alerts in a row")
    if tls13 and user_canceled:
        return Decision(Action.IGNORE, alert, message="alert user_canceled tolerated")
    if alert.description == AlertDescription.close_notify and (tls13 or alert.level == AlertLevel.WARNING):
        return Decision(Action.CLOSE, alert)
    if alert.level == AlertLevel.FATAL or tls13:
        return Decision(Action.PEER_ALERT, alert, message=f"peer sent {alert.description_name}")
    if alert.description == AlertDescription.no_renegotiation:
        # We never ask to renegotiate, so a refusal means the peer is confused (OpenSSL: same).
        return _fail(AlertDescription.handshake_failure, "NO_RENEGOTIATION",
                     "peer sent no_renegotiation although no renegotiation was requested")
    if alert.level == AlertLevel.WARNING:
        return Decision(Action.IGNORE, alert, message=f"warning alert {alert.description_name} tolerated")
    return _fail(AlertDescription.illegal_parameter, "UNKNOWN_ALERT_TYPE",
                 f"alert with unknown level {alert.level}")


def _decide_handshake(state: ControlState, payload: bytes) -> list[Decision]:
    if not payload:  # TLS 1.2 (TLS 1.3 refused it above): nothing to add to a message
        return [Decision(Action.IGNORE, message="empty handshake record")]
    state.handshake_buffer += payload
    messages, state.handshake_buffer = split_handshake_messages(state.handshake_buffer)
    if len(state.handshake_buffer) >= 4:
        announced = int.from_bytes(state.handshake_buffer[1:4], "big")
        if announced > MAX_HANDSHAKE_MESSAGE:
            state.handshake_buffer = b""
            return [_fail(AlertDescription.illegal_parameter, "EXCESSIVE_MESSAGE_SIZE",
                          f"post-handshake message of {announced} bytes")]
    decisions = []
    for index, message in enumerate(messages):
        if (state.tls13 and message.msg_type == HandshakeType.key_update
                and (index + 1 < len(messages) or state.handshake_buffer)):
            # RFC 8446 5.1: the key changes right after a KeyUpdate, so nothing may follow it in
            # its record (OpenSSL: NOT_ON_RECORD_BOUNDARY). It may be fragmented over records.
            decision = _fail(AlertDescription.unexpected_message, "NOT_ON_RECORD_BOUNDARY",
                             "KeyUpdate not at the end of its record")
        else:
            decision = _decide_message(state, message)
        decisions.append(decision)
        if decision.action is Action.FAIL:
            state.handshake_buffer = b""
            break
    return decisions


def _decide_message(state: ControlState, message: HandshakeMessage) -> Decision:
    kind = message.msg_type
    if state.tls13:
        if kind == HandshakeType.new_session_ticket and not state.server_side:
            return Decision(Action.SESSION_TICKET, handshake=message)
        if kind == HandshakeType.key_update:
            if message.body not in (b"\x00", b"\x01"):
                return _fail(AlertDescription.decode_error if len(message.body) != 1
                             else AlertDescription.illegal_parameter,
                             "BAD_KEY_UPDATE", "malformed KeyUpdate")
            return Decision(Action.KEY_UPDATE, handshake=message)
        if kind == HandshakeType.certificate_request and not state.server_side and state.post_handshake_auth:
            return Decision(Action.CERTIFICATE_REQUEST, handshake=message)
        if state.server_side and state.client_auth is not None and kind in (
                HandshakeType.certificate, HandshakeType.certificate_verify, HandshakeType.finished):
            state.client_auth = "in_progress"
            return Decision(Action.CLIENT_AUTHENTICATION, handshake=message)
    else:
        if kind == HandshakeType.hello_request and not state.server_side:
            if message.body:
                return _fail(AlertDescription.decode_error, "BAD_LENGTH", "HelloRequest with a body")
            return Decision(Action.REFUSE_RENEGOTIATION,
                            Alert(AlertLevel.WARNING, AlertDescription.no_renegotiation),
                            message="server asked to renegotiate (HelloRequest); refused",
                            handshake=message)
        if kind == HandshakeType.client_hello and state.server_side:
            return Decision(Action.REFUSE_RENEGOTIATION,
                            Alert(AlertLevel.WARNING, AlertDescription.no_renegotiation),
                            message="client tried to renegotiate (ClientHello); refused",
                            handshake=message)
    name = _message_name(kind)
    return _fail(AlertDescription.unexpected_message, "UNEXPECTED_MESSAGE",
                 f"unexpected post-handshake {name} from the {'client' if state.server_side else 'server'}")


def _message_name(kind: int) -> str:
    try:
        return HandshakeType(kind).name
    except ValueError:
        return f"handshake message type {kind}"


def alert_for_refused_record(version: int, err: int, *, decrypting: bool = False,
                             authenticated: bool = False) -> Alert:
    """The fatal alert for a received record the kernel refused with ``err``: the one OpenSSL 3.0
    sends in user space for the same record (measured: tests/security/test_conformance.py).

    The kernel's errno, and where it was found, is all there is to go on (the refused bytes stay in
    its queue):
    - EBADMSG while ``decrypting``: authentication failed (bad_record_mac); or, with
      ``authenticated``, a TLS 1.3 record that authenticated but whose inner plaintext has no
      content type (all zeros), which OpenSSL answers with unexpected_message.
    - EBADMSG from the record parser: shorter than the cipher's overhead. OpenSSL answers
      bad_record_mac in TLS 1.3, and internal_error in TLS 1.2 (its decryption routine refuses
      the record before any MAC is checked).
    - EMSGSIZE: longer than the protocol allows (record_overflow).
    - EINVAL: a record header whose version is not {3, 3}: decode_error in TLS 1.3
      (legacy_record_version), protocol_version in TLS 1.2.
    Anything else is not the peer's doing as far as we can tell: internal_error.
    """
    tls13 = version == TLS_1_3_VERSION
    if err == errno.EBADMSG and decrypting:
        description = (AlertDescription.unexpected_message if authenticated and tls13
                       else AlertDescription.bad_record_mac)
    elif err == errno.EBADMSG:
        description = AlertDescription.bad_record_mac if tls13 else AlertDescription.internal_error
    elif err == errno.EMSGSIZE:
        description = AlertDescription.record_overflow
    elif err == errno.EINVAL:
        description = AlertDescription.decode_error if tls13 else AlertDescription.protocol_version
    else:
        description = AlertDescription.internal_error
    return Alert(AlertLevel.FATAL, description)
