"""What each hostile case must produce, written down by hand (the behaviour specification).

``path`` is who judged the records after the handshake: "kernel" (ktls_ossl's kernel read path and
control-record handler: Policy.AFTER_FINISHED with RX in the kernel) or "openssl" (OpenSSL's own
record layer: Policy.AFTER_CCS, with or without its kTLS, or any connection without kernel TLS).
Handshake-phase cases are always judged by OpenSSL. ``TOLERATED`` marks input the RFCs allow: the
data behind it must then be delivered, and no error raised.

An entry is one outcome, or a dict chosen by: the TLS version; "rekey" / "no-rekey" (whether the
kernel can install TLS 1.3 keys again, Linux 6.14+); "ktls-rx" / "no-ktls-rx" (on the "openssl"
path: whether OpenSSL's own kTLS holds the receive side, as Policy.AFTER_CCS does for TLS 1.2 where
the kernel has tls; the kernel then hides what OpenSSL would have seen, e.g. empty records).
"""
from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass

from ktls_ossl import KTLSRecordError, KTLSRekeyUnsupportedError, kernel

from .cases import TLS12, TLS13


@dataclass(frozen=True)
class Expect:
    type: type
    reason: str | None = None  # ssl.SSLError.reason (None: the error has none)
    message: str | None = None  # a part of str(error)

    def check(self, error: BaseException | None) -> None:
        assert error is not None, f"expected {self}, but nothing was raised"
        assert type(error) is self.type, f"expected {self.type.__name__}, got {type(error).__name__}: {error}"
        if issubclass(self.type, ssl.SSLError):
            assert getattr(error, "reason", None) == self.reason, f"expected reason {self.reason}: {error}"
        if self.message is not None:
            assert self.message in str(error), f"expected {self.message!r} in {error}"


TOLERATED = "tolerated"
# A TCP reset under SSL_read_ex, as CPython reports it: SSLEOFError without a reason up to 3.12,
# the errno (ConnectionResetError) from 3.13 (measured side by side in tests/test_connection_end.py).
RESET_READ = (Expect(ssl.SSLEOFError, None, "EOF occurred in violation of protocol") if sys.version_info < (3, 13)
              else Expect(ConnectionResetError, message="Connection reset by peer"))
TIMEOUT = Expect(TimeoutError, message="The handshake operation timed out")
EOF_MESSAGE = "EOF occurred in violation of protocol"


def _ssl(reason: str, message: str | None = None) -> Expect:
    return Expect(ssl.SSLError, reason, message)


# Legal framing that OpenSSL accepts (issue 11): the data behind it must be delivered.
FRAMING_TOLERATED = (
    "finished_in_2_records", "finished_in_4_records", "empty_record_before_finished",
    "session_ticket_20k", "session_ticket_max", "certificate_request_20k", "certificate_request_60k",
    "ticket_fragment_starting_with_24", "empty_application_data_x32",
)
# A legitimate KeyUpdate: a kernel that cannot rekey (before 6.14) ends the connection there.
KEY_UPDATE_NEEDS_REKEY = {"rekey": TOLERATED,
                          "no-rekey": Expect(KTLSRekeyUnsupportedError, "KEY_UPDATE_UNSUPPORTED", "6.14")}

HANDSHAKE = {
    "app_data_before_finished": {TLS12: _ssl("DATA_BETWEEN_CCS_AND_FINISHED"), TLS13: _ssl("UNEXPECTED_RECORD")},
    "finished_wrong": _ssl("DIGEST_CHECK_FAILED", "digest check failed"),
    "finished_truncated": _ssl("BAD_DIGEST_LENGTH", "bad digest length"),
    "finished_never_sent": TIMEOUT,
    "early_ccs": _ssl("UNEXPECTED_MESSAGE", "unexpected message"),
    "garbage_server_hello": _ssl("WRONG_VERSION_NUMBER", "wrong version number"),
    "stall_mid_handshake": TIMEOUT,
}

KERNEL = {
    "record_too_long": Expect(KTLSRecordError, "ENCRYPTED_LENGTH_TOO_LONG", "EMSGSIZE"),
    "record_bad_version": Expect(KTLSRecordError, "WRONG_VERSION_NUMBER", "EINVAL"),
    "bad_auth_tag": Expect(KTLSRecordError, "DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "EBADMSG"),
    # The kernel drops a partial record at EOF: only the missing close_notify tells. Reported as
    # OpenSSL 3 (and so CPython) reports a TCP EOF without close_notify.
    "truncated_record_fin": Expect(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING", EOF_MESSAGE),
    # OpenSSL's record-layer rules (issue 12): its reasons, per version.
    "empty_change_cipher_spec": {TLS12: _ssl("CCS_RECEIVED_EARLY", "ChangeCipherSpec after the handshake"),
                                 TLS13: _ssl("BAD_RECORD_TYPE", "record of content type 20 under TLS 1.3")},
    "empty_alert": {TLS12: _ssl("INVALID_ALERT", "alert record of 0 bytes"),
                    TLS13: _ssl("BAD_LENGTH", "empty alert record")},
    "empty_handshake": {TLS12: TOLERATED, TLS13: _ssl("BAD_LENGTH", "empty handshake record")},
    "empty_application_data": TOLERATED,
    "ccs_after_handshake": {TLS12: _ssl("CCS_RECEIVED_EARLY", "ChangeCipherSpec after the handshake"),
                            TLS13: _ssl("BAD_RECORD_TYPE", "record of content type 20 under TLS 1.3")},
    "unknown_content_type": {TLS12: _ssl("UNEXPECTED_RECORD", "record of unknown content type 99"),
                             TLS13: _ssl("BAD_RECORD_TYPE", "record of content type 99 under TLS 1.3")},
    "hello_request": {TLS12: TOLERATED,  # answered with a no_renegotiation warning
                      TLS13: _ssl("UNEXPECTED_MESSAGE", "unexpected post-handshake hello_request")},
    "warning_alert_flood": _ssl("TOO_MANY_WARN_ALERTS", "more than 4 warning alerts in a row"),
    "key_update_flood": KEY_UPDATE_NEEDS_REKEY,
    "garbage_session_ticket": {TLS12: _ssl("UNEXPECTED_MESSAGE", "unexpected post-handshake new_session_ticket"),
                               TLS13: _ssl("LENGTH_MISMATCH", "length mismatch")},
    # A reset reads as OpenSSL (and so CPython) reports it under SSL_read_ex (issue 13).
    "tcp_rst_mid_record": RESET_READ,
    # Framing (issue 11): what OpenSSL does in user space (Policy.USERSPACE), the kernel path must do.
    **{name: TOLERATED for name in FRAMING_TOLERATED},
    "key_update_in_2_records": KEY_UPDATE_NEEDS_REKEY,
    "key_update_in_5_records": KEY_UPDATE_NEEDS_REKEY,
    # A KeyUpdate must end its record: refused before any key would change, so also where the kernel
    # cannot rekey.
    "key_update_not_at_record_end": _ssl("NOT_ON_RECORD_BOUNDARY"),
    "two_key_updates_in_one_record": _ssl("NOT_ON_RECORD_BOUNDARY"),
    "data_inside_fragmented_ticket": _ssl("UNEXPECTED_RECORD"),
    # OpenSSL's reason where the data arrives before the message's 4-byte header is complete.
    "data_inside_fragmented_key_update": _ssl("MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA"),
    # TLS 1.2: a fatal alert (OpenSSL's reason code for alert 0 has no name), not an EOF.
    "fatal_close_notify": Expect(ssl.SSLError, None),
    "close_notify_unknown_level": _ssl("UNKNOWN_ALERT_TYPE"),
    # The kernel consumes empty data records inside recvmsg and never shows them one by one, so
    # OpenSSL's limit on a run of them (RECORD_TOO_SMALL) cannot apply (the same holds for OpenSSL's
    # own kTLS below). They cost the kernel a decryption each, like a 1-byte record, and never wake
    # the application: the busy loop OpenSSL's limit prevents does not exist here.
    "empty_application_data_x33": TOLERATED,
    "empty_application_data_x1000": TOLERATED,
}

OPENSSL = {
    "record_too_long": {TLS12: _ssl("PACKET_LENGTH_TOO_LONG"), TLS13: _ssl("ENCRYPTED_LENGTH_TOO_LONG")},
    "record_bad_version": _ssl("WRONG_VERSION_NUMBER"),
    "bad_auth_tag": _ssl("DECRYPTION_FAILED_OR_BAD_RECORD_MAC"),
    "truncated_record_fin": Expect(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING", EOF_MESSAGE),
    "empty_change_cipher_spec": {TLS12: _ssl("CCS_RECEIVED_EARLY"), TLS13: _ssl("BAD_RECORD_TYPE")},
    "empty_alert": {TLS12: _ssl("INVALID_ALERT"), TLS13: _ssl("BAD_LENGTH")},
    "empty_handshake": {TLS12: TOLERATED, TLS13: _ssl("BAD_LENGTH")},
    "empty_application_data": TOLERATED,
    "ccs_after_handshake": {TLS12: _ssl("CCS_RECEIVED_EARLY"), TLS13: _ssl("BAD_RECORD_TYPE")},
    "unknown_content_type": {TLS12: _ssl("UNEXPECTED_RECORD"), TLS13: _ssl("BAD_RECORD_TYPE")},
    # TLS 1.2: OpenSSL refuses renegotiation under its kTLS, and renegotiates without it (as CPython).
    "hello_request": {TLS12: TOLERATED, TLS13: _ssl("UNEXPECTED_MESSAGE")},
    "warning_alert_flood": _ssl("TOO_MANY_WARN_ALERTS", "too many warn alerts"),
    "key_update_flood": TOLERATED,
    "garbage_session_ticket": {TLS12: _ssl("UNEXPECTED_MESSAGE"), TLS13: _ssl("LENGTH_MISMATCH")},
    # OpenSSL reports a reset under SSL_read_ex as SSL_ERROR_SYSCALL; CPython's words for it.
    "tcp_rst_mid_record": RESET_READ,
    **{name: TOLERATED for name in FRAMING_TOLERATED},
    "key_update_in_2_records": TOLERATED,
    "key_update_in_5_records": TOLERATED,
    "key_update_not_at_record_end": _ssl("NOT_ON_RECORD_BOUNDARY", "not on record boundary"),
    "two_key_updates_in_one_record": _ssl("NOT_ON_RECORD_BOUNDARY", "not on record boundary"),
    "data_inside_fragmented_ticket": _ssl("UNEXPECTED_RECORD", "unexpected record"),
    "data_inside_fragmented_key_update": _ssl("MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA",
                                              "mixed handshake and non handshake data"),
    "fatal_close_notify": Expect(ssl.SSLError, None),
    "close_notify_unknown_level": _ssl("UNKNOWN_ALERT_TYPE", "unknown alert type"),
    # OpenSSL's own kTLS cannot count them either: the kernel skips empty data records without a
    # trace in what recvmsg returns (seen on 6.1 and 7.2).
    "empty_application_data_x33": {"no-ktls-rx": _ssl("RECORD_TOO_SMALL", "record too small"),
                                   "ktls-rx": TOLERATED},
    "empty_application_data_x1000": {"no-ktls-rx": _ssl("RECORD_TOO_SMALL", "record too small"),
                                     "ktls-rx": TOLERATED},
}


def expected(case: str, version: int, path: str, *, rekey: bool, openssl_ktls_rx: bool | None = None):
    """The Expect (or TOLERATED) for one case run. ``openssl_ktls_rx``: whether OpenSSL's own kTLS
    held the receive side (None: assumed for the "openssl" path with TLS 1.2 where the kernel has
    tls, which is Policy.AFTER_CCS there; OpenSSL 3.0 never offloads TLS 1.3 reception)."""
    if case in HANDSHAKE:
        entry = HANDSHAKE[case]
    elif path == "kernel":
        entry = KERNEL[case]
    else:
        entry = OPENSSL[case]
    if isinstance(entry, dict) and version in entry:
        entry = entry[version]
    if isinstance(entry, dict) and "rekey" in entry:
        entry = entry["rekey" if rekey else "no-rekey"]
    if isinstance(entry, dict) and "ktls-rx" in entry:
        if openssl_ktls_rx is None:
            openssl_ktls_rx = path == "openssl" and version == TLS12 and kernel.probe().ulp_available
        entry = entry["ktls-rx" if openssl_ktls_rx else "no-ktls-rx"]
    return entry
