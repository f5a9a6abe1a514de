"""The audit trail (sock.ktls_events and the "ktls_ossl" logger), and when receive keys reach the
kernel, measured from the kernel itself.

The peer is CPython's ssl (OpenSSL in user space), so every kernel TLS installation counted in
/proc/net/tls_stat is ours. A test observer on our Handshake samples the kernel from inside OpenSSL's
message callback at the moment the peer's Finished is being processed (before OpenSSL verifies it):
the TlsRxSw counter and getsockopt(SOL_TLS, TLS_RX) on our socket.
"""
from __future__ import annotations

import logging
import threading

import pytest

import ktls_ossl
from ktls_ossl import kernel
from ktls_ossl.errors import KernelTLSError
from ktls_ossl.audit import HEAD, MARKER_SOURCE, TAIL, AuditTrail
from ktls_ossl.handshake import Handshake, Policy
from ktls_ossl.kernel import Direction
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher
from ktls_ossl.records import ContentType

from ..conftest import loopback_pair
from ..timing import scaled
from ..tlshelpers import client_context, server_context
from .cases import AFTER, BEFORE, READY, Case
from .harness import run_case

HELLO, BYE = b"hello from the peer", b"bye from ktls_ossl"


class KernelSampler:
    """Observer: at the peer's Finished, what does the kernel hold for our socket?"""

    def __init__(self, fd: int, baseline: dict):
        self.fd, self.baseline, self.samples = fd, baseline, []

    def __call__(self, write_p, content_type, data):
        if write_p or content_type != 22 or not data or data[0] != 20:
            return
        installs = kernel.tls_stat().get("TlsRxSw", 0) - self.baseline.get("TlsRxSw", 0)
        try:
            decrypted = kernel.read_crypto_info(self.fd, Direction.RX).seq
        except KernelTLSError:
            decrypted = None
        self.samples.append((installs, decrypted))


def _run(our_role, version, policy, server_cert, pki):
    """Handshake, data both ways, close_notify both ways; returns (our socket's trail, sampler,
    TlsRxSw delta after the handshake, our ktls status)."""
    kernel.probe()
    ctx = (client_context(pki.ca_path, version=version, cipher=KernelCipher.AES_GCM_128, ktls_policy=policy)
           if our_role == "client" else
           server_context(server_cert, version=version, cipher=KernelCipher.AES_GCM_128, ktls_policy=policy))
    peer_ctx = (server_context(server_cert, ours=False, version=version, cipher=KernelCipher.AES_GCM_128)
                if our_role == "client" else
                client_context(pki.ca_path, ours=False, version=version, cipher=KernelCipher.AES_GCM_128))
    raw_ours, raw_peer = loopback_pair()
    raw_ours.settimeout(scaled(10))
    raw_peer.settimeout(scaled(10))
    sock = ctx.wrap_socket(raw_ours, server_side=our_role == "server",
                           server_hostname="localhost" if our_role == "client" else None,
                           do_handshake_on_connect=False)
    baseline = kernel.tls_stat()
    sampler = KernelSampler(sock.fileno(), baseline)
    sock._sslobj._handshake.observers.append(sampler)
    failures = []

    def peer():
        try:
            tls = peer_ctx.wrap_socket(raw_peer, server_side=our_role == "client",
                                       server_hostname="localhost" if our_role == "server" else None)
            tls.sendall(HELLO)
            assert tls.recv(100) == BYE
            tls.unwrap().close()
        except BaseException as exc:
            failures.append(exc)
            raw_peer.close()

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        sock.do_handshake()
        installs = kernel.tls_stat().get("TlsRxSw", 0) - baseline.get("TlsRxSw", 0)
        status = sock.ktls
        assert sock.recv(100) == HELLO
        sock.sendall(BYE)
        assert sock.recv(100) == b""
        sock.unwrap()
    finally:
        sock.close()
        thread.join(scaled(10))
    assert not failures, failures
    return [what for _, what in sock.ktls_events], sampler, installs, status


def _index(events, prefix):
    return next(i for i, e in enumerate(events) if e.startswith(prefix))


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("policy", [Policy.AFTER_FINISHED, Policy.AFTER_CCS], ids=["after_finished", "after_ccs"])
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
@pytest.mark.parametrize("our_role", ["client", "server"])
def test_rx_key_reaches_the_kernel_as_the_policy_says(our_role, version, policy, server_cert, pki, caplog):
    caplog.set_level(logging.INFO, logger="ktls_ossl")
    events, sampler, installs, status = _run(our_role, version, policy, server_cert, pki)
    ktls = kernel.probe().ulp_available

    # The trail, in order, whatever the kernel: started, the peer's Finished seen, verified, the
    # first data, close_notify, closed.
    started = events.index("handshake started")
    seen = _index(events, "peer Finished received (not yet verified); kernel RX key: ")
    verified = events.index("handshake complete: peer Finished verified")
    delivered = _index(events, "first application data delivered")
    assert started < seen < verified < delivered
    assert events[-2:] == ["unwrapped: TLS ended, the TCP socket stays open", "socket closed"]
    assert len(sampler.samples) == 1, sampler.samples
    at_finished = sampler.samples[0]

    if not ktls:
        assert at_finished == (0, None) and installs == 0
        assert not any("installed" in e for e in events)
    elif policy is Policy.AFTER_FINISHED:
        # Nothing in the kernel while OpenSSL checks the Finished; the key goes in after.
        assert at_finished == (0, None)
        assert events[seen].endswith("kernel RX key: none")
        assert installs == 1 and status.rx
        assert verified < _index(events, "RX installed in the kernel at record ") < delivered
        assert verified < _index(events, "TX installed in the kernel at record ")
        assert events.index("close_notify received") < events.index("close_notify sent")
    elif version == TLS_1_2_VERSION:
        # OpenSSL's kTLS: the key went in at ChangeCipherSpec; the kernel has already decrypted one
        # record, the Finished that OpenSSL is about to verify.
        assert at_finished == (1, 1)
        assert events[seen].endswith("kernel RX key: installed, 1 record(s) already decrypted by the kernel")
        assert events.index("RX installed in the kernel by OpenSSL") < seen < verified
        assert installs == 1 and status.rx
    else:
        # TLS 1.3 under OpenSSL's kTLS: its receive side stays in user space (OpenSSL 3.0).
        assert at_finished == (0, None)
        if ktls_ossl.OPENSSL_VERSION_NUMBER < 0x30200000:
            assert installs == 0 and not status.rx
            assert "never offloads TLS 1.3 reception" in status.rx_reason
            assert "RX installed in the kernel by OpenSSL" not in events
        # (A TLS 1.3 server has its application write key before the client's Finished: 0.5-RTT.)
        assert status.tx and "TX installed in the kernel by OpenSSL" in events

    # The same trail reaches the "ktls_ossl" logger, in the same order.
    logged = [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.name == "ktls_ossl"
              and r.getMessage().startswith(f"{our_role} fd=")]
    assert logged == events


# --- the trail is bounded, whatever a peer makes it record (issue 11) ---------------------------------

@pytest.fixture
def bounded_trail(monkeypatch):
    """Every connection's trail an AuditTrail. Until handshake.py makes it one itself
    (``self.events = AuditTrail()``), this swaps it in right after Handshake.__init__; from then
    on it changes nothing."""
    original = Handshake.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not isinstance(self.events, AuditTrail):
            trail = AuditTrail()
            for event in self.events:
                trail.append(event)
            self.events = trail

    monkeypatch.setattr(Handshake, "__init__", init)


ALERTS_BETWEEN_DATA = 1000


def _alerts_between_data(peer, control):
    """A warning alert and one byte of data, again and again: OpenSSL's limit of warning alerts in a
    row never trips, and each alert is an audited event."""
    peer.complete()
    peer.recv_app(READY)
    peer.send_app(BEFORE)
    for _ in range(ALERTS_BETWEEN_DATA):
        peer.queue_record(ContentType.ALERT, b"\x01\x5a")  # user_canceled, a warning
        peer.queue_record(ContentType.APPLICATION_DATA, b"x")
    peer.queue_record(ContentType.APPLICATION_DATA, AFTER)
    peer.queue_record(ContentType.ALERT, b"\x01\x00")  # close_notify
    peer.flush()


@pytest.mark.ktls
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
def test_a_flood_of_audited_records_keeps_the_trail_bounded(version, server_cert, pki, bounded_trail):
    """The kernel path audits every control record (OpenSSL in user space audits none of these)."""
    case = Case("alerts_between_data", f"{ALERTS_BETWEEN_DATA} x (warning alert + 1 byte)", "record",
                _alerts_between_data)
    m = run_case(case, "client", version, Policy.AFTER_FINISHED, server_cert, pki.ca_path)
    assert m.error is None and m.orderly_eof, m.error
    assert m.delivered == BEFORE + b"x" * ALERTS_BETWEEN_DATA + AFTER
    assert m.status.rx
    # The first HEAD events (the handshake, the handoff), a marker with the count of the dropped
    # ones, the last TAIL events (the end: close_notify, "socket closed" last).
    events = m.events
    assert len(events) == HEAD + TAIL + 1, len(events)
    markers = [(i, what) for i, (source, what) in enumerate(events) if source == MARKER_SOURCE]
    assert len(markers) == 1 and markers[0][0] == HEAD, markers
    omitted = int(markers[0][1].split()[0])
    assert markers[0][1] == f"{omitted} events omitted" and omitted >= ALERTS_BETWEEN_DATA - HEAD - TAIL
    whats = [what for _, what in events]
    assert "handshake started" in whats[:HEAD]
    assert "handshake complete: peer Finished verified" in whats[:HEAD]
    assert whats[-1] == "socket closed"
