"""Issue 12: a connection that fails on a bad record closes so that the peer receives everything:
what was written before (a TLS 1.3 server's NewSessionTickets), the fatal alert, then a FIN.

Linux answers close() with an RST, and discards what the peer has not acknowledged, when unread
data is left in the receive queue; after the kernel refused a record there always is (the refused
record itself, and whatever the peer sent behind it). The hostile client here completes an honest
handshake, then sends a forged record and, behind it, more data that nobody will read, without
reading anything itself: what it drains afterwards is all our side sent, in order, and how the TCP
connection ended. ``serve``'s echo server is the server (socketserver shuts the write side down,
then closes), and the same client runs against our server socket closed by hand. Plain OpenSSL
(Policy.USERSPACE) on the same input is the oracle, and the outcome is also pinned: the alert is
bad_record_mac and the end is an EOF, never a reset.
"""
from __future__ import annotations

import socket
import threading

import pytest

from ktls_ossl import kernel, serve
from ktls_ossl.handshake import Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher
from ktls_ossl.records import ContentType, HandshakeType

from ..conftest import loopback_pair
from ..hostile.peer import hostile_endpoint
from ..timing import scaled
from ..tlshelpers import server_context
from .harness import JOIN_TIMEOUT, PEER_TIMEOUT

VERSIONS = {TLS_1_2_VERSION: "tls1.2", TLS_1_3_VERSION: "tls1.3"}
# Behind the forged record: data our side never reads (it stays in the kernel's receive queue).
UNREAD_RECORDS = 8


def _attack(peer) -> None:
    peer.complete()
    peer.queue_record(ContentType.APPLICATION_DATA, b"forged", tamper_tag=True)
    for _ in range(UNREAD_RECORDS):
        peer.queue_record(ContentType.APPLICATION_DATA, bytes(4000))
    peer.flush()


def _outcome(observed) -> dict:
    return {
        "alerts": observed.alerts,
        "tickets": observed.handshake.count(HandshakeType.new_session_ticket),
        "end": observed.end,
    }


def _against_echo_server(cert, version: int, policy: Policy):
    context = server_context(cert, version=version, cipher=KernelCipher.AES_GCM_128, ktls_policy=policy)
    server = serve.TLSEchoServer(("127.0.0.1", 0), context)
    thread = serve.run_in_thread(server)
    try:
        sock = socket.create_connection(server.server_address[:2])
        peer = hostile_endpoint("client", sock, version, timeout=PEER_TIMEOUT)
        try:
            _attack(peer)
            observed = peer.drain(PEER_TIMEOUT)
        finally:
            peer.close()
        record = server.wait_records(1, timeout=scaled(10.0))[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(JOIN_TIMEOUT)
    return observed, record["error"], record["events"]


def _against_our_socket(cert, version: int, policy: Policy):
    ours, theirs = loopback_pair()
    peer = hostile_endpoint("client", theirs, version, timeout=PEER_TIMEOUT)
    result = {}

    def play():
        try:
            _attack(peer)
            result["observed"] = peer.drain(PEER_TIMEOUT)
        finally:
            peer.close()

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    context = server_context(cert, version=version, cipher=KernelCipher.AES_GCM_128, ktls_policy=policy)
    ours.settimeout(scaled(5.0))
    sock = context.wrap_socket(ours, server_side=True)
    error = None
    try:
        while sock.recv(65536):
            pass
    except Exception as exc:
        error = exc
    finally:
        sock.close()
        events = sock.ktls_events
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()
    return result["observed"], error, events


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("run", [_against_echo_server, _against_our_socket], ids=["serve", "socket_close"])
@pytest.mark.parametrize("version", list(VERSIONS), ids=list(VERSIONS.values()))
def test_a_failed_connection_delivers_tickets_alert_then_fin(server_cert, run, version):
    oracle, oracle_error, _ = run(server_cert, version, Policy.USERSPACE)
    observed, error, events = run(server_cert, version, Policy.AFTER_FINISHED)
    if kernel.probe().ulp_available:
        assert ("ktls", "kernel refused a record: DECRYPTION_FAILED_OR_BAD_RECORD_MAC") in events, events
    expected = {"alerts": ["fatal bad_record_mac"], "tickets": 2 if version == TLS_1_3_VERSION else 0,
                "end": "eof"}
    assert _outcome(oracle) == expected  # OpenSSL's own answer, and a FIN
    assert _outcome(observed) == expected
    for failure in (oracle_error, error):
        assert getattr(failure, "reason", None) == "DECRYPTION_FAILED_OR_BAD_RECORD_MAC", failure
