"""Issue 11: framing. Whatever OpenSSL accepts in user space must work under kTLS, and whatever it
refuses must fail the same way.

A peer may cut handshake messages into records in many legal ways (a Finished over several
records, or behind an empty handshake record; post-handshake messages larger than a record; a
KeyUpdate over several records) and in some illegal ones (a KeyUpdate that does not end its
record, application data between the fragments of a message, alerts with the wrong level, a run of
empty records). Each case of tests/security/cases.py that is about framing runs here twice, with
Policy.AFTER_FINISHED (the kernel carries RX where it can) and with Policy.USERSPACE (plain OpenSSL,
the oracle), and the outcomes must be the same: the exception's type and reason, the bytes
delivered, whether the data ended with close_notify, and the alert our side sent. The one
difference allowed is the kernel's: a legitimate KeyUpdate on a kernel that cannot rekey (before
Linux 6.14, pinned to the kernel's release) ends the connection with KTLSRekeyUnsupportedError.

Plus: refused data never reaches the caller's buffer, not even for recv_into() with a buffer large
enough for the kernel to decrypt into it directly.
"""
from __future__ import annotations

import contextlib
import ssl
import threading

import pytest

from ktls_ossl import kernel
from ktls_ossl.handshake import Policy
from ktls_ossl.keys import KernelCipher

from ..conftest import kernel_can_rekey, loopback_pair
from ..hostile.peer import PeerError, hostile_endpoint
from ..tlshelpers import client_context, recv_exactly, same_error
from . import harness
from .cases import AFTER, BEFORE, CASES, FORGED, READY, TLS12, TLS13, Case, record_script
from .harness import run_case

FRAMING = (
    "finished_in_2_records", "finished_in_4_records", "empty_record_before_finished",
    "session_ticket_20k", "session_ticket_max", "certificate_request_20k", "certificate_request_60k",
    "key_update_in_2_records", "key_update_in_5_records", "key_update_not_at_record_end",
    "two_key_updates_in_one_record", "ticket_fragment_starting_with_24", "data_inside_fragmented_ticket",
    "data_inside_fragmented_key_update", "fatal_close_notify", "close_notify_unknown_level",
    "empty_application_data_x32", "empty_application_data_x33", "empty_application_data_x1000",
)
BY_NAME = {case.name: case for case in CASES}


def _tls13_alert(name: str, level: int) -> Case:
    """The TLS 1.3 variant of an alert case (cases.py keeps TLS 1.2 only: in TLS 1.3 OpenSSL reads
    a close_notify of any level as the end of the data, which the hostile suite has no expectation
    for). Not part of the hostile suite's table."""
    def attack(peer):
        peer.queue_alert(level, 0)
    return Case(name, BY_NAME[name].title, "record", record_script(attack), versions=(TLS13,))


EXTRA = [_tls13_alert("fatal_close_notify", 2), _tls13_alert("close_notify_unknown_level", 3)]
VARIANTS = [(BY_NAME[name], role, version) for name in FRAMING
            for version in BY_NAME[name].versions for role in BY_NAME[name].our_roles]
VARIANTS += [(case, role, TLS13) for case in EXTRA for role in case.our_roles]
PARAMS = [pytest.param(case, role, version,
                       id=f"{case.name}-ours_{role}-tls{'1.2' if version == TLS12 else '1.3'}")
          for case, role, version in VARIANTS]


def test_every_framing_case_is_in_the_hostile_suite():
    assert set(FRAMING) <= set(BY_NAME)
    assert all(BY_NAME[name].phase == "record" for name in FRAMING)


@pytest.fixture
def run(server_cert, pki):
    """run(case, our_role, version, policy) -> harness.Measurement (the harness puts the case's
    settings on our context, e.g. post_handshake_auth for a post-handshake CertificateRequest)."""
    def run(case, our_role, version, policy):
        return run_case(case, our_role, version, policy, server_cert, pki.ca_path)
    return run


def outcome(m) -> dict:
    """What must be the same under kTLS as in OpenSSL."""
    return {
        "error": None if m.error is None else type(m.error).__name__,
        "reason": getattr(m.error, "reason", None),
        "delivered": m.delivered,
        "orderly_eof": m.orderly_eof,
        "alert sent": m.observed.first_alert if m.observed else "(peer did not report)",
    }


# A kernel that cannot rekey ends the connection at a legitimate KeyUpdate, and says why (the alert
# it sends is its own business: OpenSSL has no such case).
REKEY_REFUSED = {"error": "KTLSRekeyUnsupportedError", "reason": "KEY_UPDATE_UNSUPPORTED", "delivered": BEFORE,
                 "orderly_eof": False}
# The kernel consumes empty application-data records inside recvmsg without a trace, so a run of
# them cannot be counted under kTLS (README, "Limits"): the data behind the run is delivered.
EMPTY_RUN_UNSEEN = {"error": None, "reason": None, "delivered": BEFORE + AFTER, "orderly_eof": True,
                    "alert sent": None}
EMPTY_RUNS = ("empty_application_data_x33", "empty_application_data_x1000")


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("case, our_role, version", PARAMS)
def test_framing_as_openssl(run, case, our_role, version):
    ktls = kernel.probe().ulp_available
    oracle, m = harness.run_against_oracle(lambda policy: run(case, our_role, version, policy))
    expected = outcome(oracle)
    # The oracle itself: authentic data before the attack always arrives.
    assert expected["delivered"] in (BEFORE, BEFORE + AFTER), expected
    got = outcome(m)
    if case.needs_rekey and ktls and not kernel_can_rekey():
        assert expected["error"] is None
        expected = REKEY_REFUSED
        del got["alert sent"]
    if case.name in EMPTY_RUNS and ktls:
        assert expected["reason"] == "RECORD_TOO_SMALL"  # what OpenSSL does in user space
        expected = EMPTY_RUN_UNSEEN
    assert got == expected, (
        f"under kTLS: {harness.describe_error(m.error)}; OpenSSL in user space: "
        f"{harness.describe_error(oracle.error)}\nkTLS events: {[what for _, what in m.events][-8:]}")


# --- refused data and the caller's buffer -------------------------------------------------------------

PATTERN = b"\xa5\x5a untouched \x00\xff"


def _pattern(size: int) -> bytearray:
    return bytearray((PATTERN * (size // len(PATTERN) + 1))[:size])


@contextlib.contextmanager
def hostile_server(server_cert, version: int, script):
    """Our raw socket, connected to a hostile server that plays ``script(peer)`` in a thread and
    then reads what our side sends until it closes; the thread is joined on the way out."""
    ours, theirs = loopback_pair()
    peer = hostile_endpoint("server", theirs, version, cert=server_cert.cert, key=server_cert.key,
                            timeout=harness.PEER_TIMEOUT)

    def play():
        try:
            script(peer)
            peer.drain(harness.PEER_TIMEOUT)
        except (PeerError, OSError):
            pass
        finally:
            peer.close()
    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    ours.settimeout(harness.IO_TIMEOUT)
    try:
        yield ours
    finally:
        ours.close()
        thread.join(harness.PEER_TIMEOUT + 10)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("nbytes", [None, 16384], ids=["whole_buffer", "nbytes_16k"])
@pytest.mark.parametrize("size", [16384, 65536], ids=["16k", "64k"])
@pytest.mark.parametrize("policy", [Policy.AFTER_FINISHED, Policy.USERSPACE], ids=["after_finished", "userspace"])
def test_refused_data_never_reaches_the_callers_buffer(server_cert, pki, policy, size, nbytes):
    """Application data behind an unfinished NewSessionTicket is refused, and recv_into() leaves the
    caller's buffer as it was: with a buffer of 16 KiB or more the kernel decrypts straight into it,
    so the refused plaintext would be there already when the exception is raised."""
    case = BY_NAME["data_inside_fragmented_ticket"]
    context = harness.our_context("client", server_cert, pki.ca_path, TLS13, policy)
    with hostile_server(server_cert, TLS13, lambda peer: case.script(peer, None)) as ours, \
            context.wrap_socket(ours, server_hostname="localhost", suppress_ragged_eofs=False) as sock:
        if policy is Policy.AFTER_FINISHED and kernel.probe().ulp_available:
            assert sock.ktls.rx
        sock.sendall(READY)
        received = b""
        buffer = _pattern(size)
        while len(received) < len(BEFORE):
            count = sock.recv_into(buffer, nbytes or 0)
            assert count > 0
            received += bytes(buffer[:count])
            buffer[:] = _pattern(size)
        assert received == BEFORE
        with pytest.raises(ssl.SSLError) as info:
            for _ in range(4):  # a read that returns here returned data it should have refused
                count = sock.recv_into(buffer, nbytes or 0)
                assert FORGED[:16] not in buffer[:count], "refused data delivered"
                if count == 0:
                    break
        assert info.value.reason == "UNEXPECTED_RECORD", info.value
        # The ticket's first fragment is a record like any other, and with a buffer this large the
        # kernel may put it there; the refused data behind it must not be anywhere in the buffer.
        assert FORGED[:16] not in buffer, "the refused plaintext is in the caller's buffer"


# --- a fatal close_notify, worded as CPython's ssl words it ----------------------------------------

def _fatal_close_notify_error(server_cert, pki, *, ours: bool) -> BaseException:
    """What a TLS 1.2 client raises when the server's data is followed by a fatal close_notify."""
    def script(peer):
        peer.complete()
        peer.recv_app(READY)
        peer.send_app(BEFORE)
        peer.queue_alert(2, 0)
        peer.flush()
    context = client_context(pki.ca_path, ours=ours, version=TLS12, cipher=KernelCipher.AES_GCM_128)
    with hostile_server(server_cert, TLS12, script) as raw, \
            context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as sock:
        if ours and kernel.probe().ulp_available:
            assert sock.ktls.rx
        sock.sendall(READY)
        assert recv_exactly(sock, len(BEFORE)) == BEFORE
        with pytest.raises(ssl.SSLError) as info:
            sock.recv(100)
        return info.value


@pytest.mark.ktls_or_fallback
def test_fatal_close_notify_is_the_error_cpython_raises(server_cert, pki):
    """OpenSSL has no name and no text for reason 1000 (a received close_notify alert): CPython
    says "[SSL] unknown error", and so must the kernel path."""
    same_error(_fatal_close_notify_error(server_cert, pki, ours=True),
               _fatal_close_notify_error(server_cert, pki, ours=False))


# --- recv_record() keeps the post-handshake invariant ----------------------------------------------

@pytest.mark.ktls
def test_recv_record_refuses_data_behind_an_unfinished_message(server_cert, pki):
    """recv_record() hands out records one by one, yet the rule of recv() holds: the first
    fragment of a NewSessionTicket is returned (and buffered for OpenSSL), the application data
    behind it is refused, not returned, and the connection fails as recv() fails."""
    case = BY_NAME["data_inside_fragmented_ticket"]
    context = harness.our_context("client", server_cert, pki.ca_path, TLS13, Policy.AFTER_FINISHED)
    with hostile_server(server_cert, TLS13, lambda peer: case.script(peer, None)) as ours:
        with context.wrap_socket(ours, server_hostname="localhost") as sock:
            assert sock.ktls.rx
            sock.sendall(READY)
            seen = []
            with pytest.raises(ssl.SSLError) as info:
                for _ in range(8):  # BEFORE, maybe a ticket of OpenSSL's, the fragment; then the refusal
                    seen.append(sock.recv_record())
            assert info.value.reason == "UNEXPECTED_RECORD", info.value
            assert (23, BEFORE) in seen
            assert seen[-1][0] == 22 and seen[-1][1][0] == 4  # the ticket's first fragment
            assert all(FORGED not in payload for _, payload in seen)
            with pytest.raises(ssl.SSLError):
                sock.recv_record()  # the failure is final
