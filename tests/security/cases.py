"""The hostile-peer cases: what the peer does, per phase, in the words of issue 5.

Each case is a script for tests.hostile (the peer's side). "Our role" is the role of ktls_ossl in
the connection: a case that subverts the server's messages runs against our client, and so on.
Record-phase cases start with an honest handshake and wait for ``READY`` from our side (so that our
side has finished its handoff to the kernel before anything hostile arrives), then send ``BEFORE``
(authentic data after a verified handshake, which our side may deliver), the attack, ``AFTER`` and
close_notify. ``AFTER`` is authentic too, so it may be delivered only where the attack was
legitimate input (tolerated); ``FORGED`` never.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Callable

from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION
from ktls_ossl.records import ContentType, HandshakeType, build_handshake

from ..hostile.peer import CCS_RECORD, Endpoint, certificate_request_body, fragment, new_session_ticket_body
from ..timing import scaled

READY = b"READY:our side finished its handshake;"
BEFORE = b"BEFORE:authentic data after a verified handshake;"
AFTER = b"AFTER:authentic data behind the attack;"
FORGED = b"FORGED:data that must never reach the application"
# Deterministic garbage for "garbage instead of a ServerHello".
GARBAGE = random.Random(20180730).randbytes(200)

TLS12, TLS13 = TLS_1_2_VERSION, TLS_1_3_VERSION
PEER_ACK_TIMEOUT = scaled(5)  # for our TCP to acknowledge what the peer sent
KEY_UPDATE_FLOOD = 40  # more than OpenSSL's 32 consecutive KeyUpdates
WARNING_ALERT_FLOOD = 10
# OpenSSL tolerates 32 zero-length records in a row (its MAX_EMPTY_RECORDS) and refuses the 33rd.
EMPTY_RECORD_COUNTS = (32, 33, 1000)


@dataclass
class Control:
    """Shared between the test and the peer's thread."""

    release: threading.Event = field(default_factory=threading.Event)  # ends a stall


@dataclass(frozen=True)
class Case:
    name: str
    title: str  # the row label in docs/SECURITY.md
    phase: str  # "handshake" or "record"
    script: Callable[[Endpoint, Control], None]
    our_roles: tuple[str, ...] = ("client", "server")
    versions: tuple[int, ...] = (TLS12, TLS13)
    # Cases where the peer goes silent: our socket timeout, which must fire.
    stall: bool = False
    # Attributes our side's context gets before the connection, as (name, value) pairs (e.g. a
    # client that offers post-handshake authentication, for a post-handshake CertificateRequest).
    settings: tuple = ()
    # A legitimate TLS 1.3 KeyUpdate reaches our side: a kernel that cannot rekey (before Linux
    # 6.14) must end the connection there, where OpenSSL in user space goes on.
    needs_rekey: bool = False


CASES: list[Case] = []


def case(name, title, phase, **options):
    def register(function):
        CASES.append(Case(name, title, phase, function, **options))
        return function
    return register


# --- handshake phase ---------------------------------------------------------------------------------
#
# Each script ends with FORGED queued behind the subverted message in the same TCP segment: a kernel
# that already holds receive keys decrypts it, whatever OpenSSL decides about the handshake.

def _flight_up_to_finished(peer: Endpoint) -> None:
    """Everything an honest peer sends before its Finished (and what it must read first)."""
    if peer.is_server:
        peer.recv_client_hello()
        peer.queue_server_hello()
        peer.queue_server_flight()
        if not peer.tls13:
            peer.flush()
            peer.recv_peer_finished()  # the client's CKE, CCS and Finished
            peer.queue_ccs()
    else:
        peer.start()
        if not peer.tls13:
            peer.queue_key_exchange()
        peer.queue_ccs()


def _finished_then_forged(peer: Endpoint, **finished) -> None:
    peer.queue_finished(**finished)
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED)
    peer.flush()


@case("app_data_before_finished", "application data after ChangeCipherSpec, before Finished", "handshake")
def _app_data_before_finished(peer, control):
    # TLS 1.2: under the new keys right after CCS. TLS 1.3: under the handshake keys, before Finished.
    _flight_up_to_finished(peer)
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED)
    peer.queue_finished()
    peer.flush()


@case("finished_wrong", "Finished with a wrong verify_data", "handshake")
def _finished_wrong(peer, control):
    _flight_up_to_finished(peer)
    good = peer.finished_body()
    _finished_then_forged(peer, verify_data=bytes(b ^ 0x55 for b in good))


@case("finished_truncated", "Finished truncated (6 bytes of verify_data)", "handshake")
def _finished_truncated(peer, control):
    _flight_up_to_finished(peer)
    _finished_then_forged(peer, raw_body=peer.finished_body()[:6])


@case("finished_never_sent", "Finished never sent (peer stalls)", "handshake", stall=True)
def _finished_never_sent(peer, control):
    _flight_up_to_finished(peer)
    peer.flush()
    control.release.wait(30)


@case("early_ccs", "ChangeCipherSpec injected early (CVE-2014-0224 pattern)", "handshake",
      versions=(TLS12,))
def _early_ccs(peer, control):
    if peer.is_server:  # CCS right after ServerHello, before any key exchange
        peer.recv_client_hello()
        peer.queue_server_hello()
        peer.queue_raw(CCS_RECORD)
        peer.queue_server_flight()
    else:  # CCS before ClientKeyExchange
        peer.start()
        peer.queue_raw(CCS_RECORD)
        peer.queue_key_exchange()
    peer.queue_raw(CCS_RECORD)
    peer.flush()


@case("garbage_server_hello", "garbage instead of a ServerHello", "handshake", our_roles=("client",))
def _garbage_server_hello(peer, control):
    peer.recv_client_hello()
    peer.queue_raw(GARBAGE)
    peer.flush()


@case("stall_mid_handshake", "peer stalls mid-handshake", "handshake", stall=True)
def _stall_mid_handshake(peer, control):
    if peer.is_server:  # a ServerHello, then silence
        peer.recv_client_hello()
        peer.queue_server_hello()
    else:  # half a ClientHello, then silence
        hello = peer.client_hello()
        peer.queue_raw(bytes([ContentType.HANDSHAKE, 3, 3]) + len(hello).to_bytes(2, "big") + hello[:20])
    peer.flush()
    control.release.wait(30)


# --- record phase (after an honest handshake) ----------------------------------------------------------

def record_script(attack, finished=None):
    """The script of a record-phase case: the attack runs between BEFORE and AFTER; it returns False
    when it ended the connection. ``finished``: framing options for the peer's Finished (see
    tests.hostile.peer.queue_handshake)."""
    def script(peer, control):
        peer.complete(**(finished or {}))
        peer.recv_app(READY)
        peer.send_app(BEFORE)
        if attack(peer) is False:
            return
        peer.queue_record(ContentType.APPLICATION_DATA, AFTER)
        peer.queue_record(ContentType.ALERT, b"\x01\x00")  # close_notify
        peer.flush()
    return script


def record_case(name, title, *, finished=None, **options):
    """Registers a record-phase case (see record_script)."""
    def register(attack):
        CASES.append(Case(name, title, "record", record_script(attack, finished), **options))
        return attack
    return register


@record_case("record_too_long", "record longer than 2^14 + 256 (authentic, 16684-byte plaintext)")
def _record_too_long(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED * (16684 // len(FORGED)) + FORGED[:16684 % len(FORGED)])


@record_case("record_bad_version", "record with version 0x0301 in its header")
def _record_bad_version(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED, header_version=0x0301)


@record_case("bad_auth_tag", "record with a bad authentication tag")
def _bad_auth_tag(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED, tamper_tag=True)


@record_case("truncated_record_fin", "truncated record followed by TCP FIN")
def _truncated_record_fin(peer):
    record = peer.write.seal(ContentType.APPLICATION_DATA, FORGED)
    peer.queue_raw(record[: len(record) // 2])
    peer.shutdown_write()
    return False


for _type, _label in ((ContentType.CHANGE_CIPHER_SPEC, "change_cipher_spec"), (ContentType.ALERT, "alert"),
                      (ContentType.HANDSHAKE, "handshake"), (ContentType.APPLICATION_DATA, "application_data")):
    def _empty(peer, content_type=_type):
        peer.queue_record(content_type, b"")
    record_case(f"empty_{_label}", f"zero-length {_label} record")(_empty)


@record_case("ccs_after_handshake", "ChangeCipherSpec after the handshake (protected)")
def _ccs_after_handshake(peer):
    peer.queue_record(ContentType.CHANGE_CIPHER_SPEC, b"\x01")


@record_case("unknown_content_type", "record of unknown content type 99")
def _unknown_content_type(peer):
    peer.queue_record(99, FORGED)


@record_case("hello_request", "HelloRequest (renegotiation request)", our_roles=("client",))
def _hello_request(peer):
    peer.queue_handshake(HandshakeType.hello_request, b"", transcript=False)


@record_case("warning_alert_flood", f"{WARNING_ALERT_FLOOD} warning alerts (user_canceled) in a row")
def _warning_alert_flood(peer):
    for _ in range(WARNING_ALERT_FLOOD):
        peer.queue_record(ContentType.ALERT, b"\x01\x5a")


@record_case("key_update_flood", f"{KEY_UPDATE_FLOOD} KeyUpdates in a row", versions=(TLS13,))
def _key_update_flood(peer):
    for _ in range(KEY_UPDATE_FLOOD):
        peer.key_update(requested=False)


@record_case("garbage_session_ticket", "NewSessionTicket that is garbage", our_roles=("client",))
def _garbage_session_ticket(peer):
    peer.queue_handshake(HandshakeType.new_session_ticket, bytes(range(7)) + b"\xff" * 9, transcript=False)


@record_case("tcp_rst_mid_record", "TCP RST in the middle of a record")
def _tcp_rst_mid_record(peer):
    record = peer.write.seal(ContentType.APPLICATION_DATA, FORGED)
    peer.queue_raw(record[: len(record) // 2])
    peer.wait_delivered(PEER_ACK_TIMEOUT)  # the half record is in our receive queue before the RST
    peer.reset()
    return False


# --- framing (issue 11): legal and illegal ways to cut messages into records ------------------------------
#
# Each legal one must work under kTLS as it does in OpenSSL (Policy.USERSPACE is the oracle: see
# tests/security/test_framing.py); each illegal one must fail the way OpenSSL fails.

KEY_UPDATE = build_handshake(HandshakeType.key_update, b"\x00")  # update_not_requested


def _nothing(peer):
    """Nothing hostile after the handshake: the framing of the handshake was the test."""


for _pieces in (2, 4):
    record_case(f"finished_in_{_pieces}_records", f"the peer's Finished split over {_pieces} records",
                finished={"fragments": _pieces})(_nothing)

# RFC 5246 forbids sending it, but OpenSSL accepts it (TLS 1.3: refused, see empty_handshake).
record_case("empty_record_before_finished",
            "zero-length handshake record before the peer's Finished (after ChangeCipherSpec)",
            finished={"empty_before": 1}, versions=(TLS12,))(_nothing)

TICKET_20K = 20 * 1024
TICKET_MAX = 0xFFFF  # the largest ticket a NewSessionTicket can carry: the message spans 5 records


def _session_ticket(ticket_size):
    def attack(peer):
        ticket = bytes(range(256)) * (ticket_size // 256) + bytes(ticket_size % 256)
        peer.queue_handshake(HandshakeType.new_session_ticket, new_session_ticket_body(ticket), transcript=False)
    return attack


record_case("session_ticket_20k", f"NewSessionTicket with a {TICKET_20K}-byte ticket (2 records)",
            our_roles=("client",), versions=(TLS13,))(_session_ticket(TICKET_20K))
record_case("session_ticket_max", f"NewSessionTicket with a {TICKET_MAX}-byte ticket (5 records)",
            our_roles=("client",), versions=(TLS13,))(_session_ticket(TICKET_MAX))


def _certificate_request(size):
    def attack(peer):
        peer.queue_handshake(HandshakeType.certificate_request, certificate_request_body(size), transcript=False)
    return attack


for _kib in (20, 60):
    record_case(f"certificate_request_{_kib}k",
                f"post-handshake CertificateRequest of {_kib} KiB ({-(-_kib // 16)} records; our client "
                "offers post-handshake auth)",
                our_roles=("client",), versions=(TLS13,),
                settings=(("post_handshake_auth", True),))(_certificate_request(_kib * 1024))


for _pieces in (2, 5):
    def _key_update_split(peer, pieces=_pieces):
        peer.key_update(requested=False, fragments=pieces)
    record_case(f"key_update_in_{_pieces}_records", f"KeyUpdate split over {_pieces} records",
                versions=(TLS13,), needs_rekey=True)(_key_update_split)


@record_case("key_update_not_at_record_end",
             "KeyUpdate followed by the head of another handshake message in its record", versions=(TLS13,))
def _key_update_not_at_record_end(peer):
    # RFC 8446 5.1: a KeyUpdate must end its record (the next message is under the next key).
    ticket = build_handshake(HandshakeType.new_session_ticket, new_session_ticket_body(b"\x01" * 16))
    first, rest = fragment(ticket, [6])
    peer.queue_handshake_bytes(KEY_UPDATE + first)
    peer.next_write_key()
    peer.queue_handshake_bytes(rest)


@record_case("two_key_updates_in_one_record", "two KeyUpdates in one record", versions=(TLS13,))
def _two_key_updates_in_one_record(peer):
    peer.queue_handshake_bytes(KEY_UPDATE * 2)
    peer.next_write_key()
    peer.next_write_key()


@record_case("ticket_fragment_starting_with_24",
             "NewSessionTicket split where a fragment starts with byte 24 (KeyUpdate's type)",
             our_roles=("client",), versions=(TLS13,))
def _ticket_fragment_starting_with_24(peer):
    # Only the first byte of a whole message names its type: a fragment that starts with 0x18 in
    # the middle of a NewSessionTicket is no KeyUpdate.
    body = new_session_ticket_body(b"\x18" * 32)
    head = 4 + 4 + 4 + 1 + 1 + 2  # message header, lifetime, age_add, nonce, ticket length
    peer.queue_handshake(HandshakeType.new_session_ticket, body, transcript=False, fragments=[head + 3])


@record_case("data_inside_fragmented_ticket",
             "application data between the fragments of a NewSessionTicket", our_roles=("client",),
             versions=(TLS13,))
def _data_inside_fragmented_ticket(peer):
    message = build_handshake(HandshakeType.new_session_ticket, new_session_ticket_body(b"\x01" * 64))
    first, rest = fragment(message, [10])
    peer.queue_handshake_bytes(first)
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED)
    peer.queue_handshake_bytes(rest)


@record_case("data_inside_fragmented_key_update",
             "application data between the fragments of a KeyUpdate", versions=(TLS13,))
def _data_inside_fragmented_key_update(peer):
    first, rest = fragment(KEY_UPDATE, [2])
    peer.queue_handshake_bytes(first)
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED)
    peer.queue_handshake_bytes(rest)
    peer.next_write_key()


# TLS 1.2 only here: in TLS 1.3 OpenSSL reads any close_notify as the end of the data, whatever
# its level (an orderly EOF that drops AFTER, which test_hostile has no expectation for); the TLS 1.3
# variants are in test_framing.py.
@record_case("fatal_close_notify", "close_notify with alert level fatal (2)", versions=(TLS12,))
def _fatal_close_notify(peer):
    peer.queue_alert(2, 0)


@record_case("close_notify_unknown_level", "close_notify with an unknown alert level (3)", versions=(TLS12,))
def _close_notify_unknown_level(peer):
    peer.queue_alert(3, 0)


for _count in EMPTY_RECORD_COUNTS:
    def _empty_data_records(peer, count=_count):
        for _ in range(count):
            peer.queue_record(ContentType.APPLICATION_DATA, b"")
    record_case(f"empty_application_data_x{_count}", f"{_count} zero-length application_data records in a row"
                )(_empty_data_records)


def variants():
    """(case, our_role, version) for every combination that applies."""
    for entry in CASES:
        for version in entry.versions:
            for role in entry.our_roles:
                yield entry, role, version
