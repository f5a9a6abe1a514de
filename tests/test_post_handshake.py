"""Post-handshake messages under kTLS: tickets into OpenSSL, KeyUpdate both ways, proactive key
updates, post-handshake client authentication, renegotiation refused."""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import ssl
import time

import pytest
from cryptography.hazmat.primitives import serialization

import ktls_ossl
from ktls_ossl import kernel, keys
from ktls_ossl.handshake import Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import RekeyCounters, kernel_can_rekey
from .tlshelpers import client_context, expect_ktls, in_thread, recv_exactly, server_context, tls_pair


def exchange(pair, size=1000):
    """Data both ways (which also makes each side process what is queued before it)."""
    for sender, receiver in ((pair.server, pair.client), (pair.client, pair.server)):
        payload = os.urandom(size)
        join = in_thread(sender.sendall, payload)
        assert recv_exactly(receiver, size) == payload
        join()


# --- sessions: TLS 1.2 resumption, TLS 1.3 NewSessionTicket processed by OpenSSL ----------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version, tickets", [(TLS_1_2_VERSION, 2), (TLS_1_3_VERSION, 1), (TLS_1_3_VERSION, 3)],
                         ids=["tls12", "tls13-1-ticket", "tls13-3-tickets"])
def test_sessions_resume_under_ktls(server_cert, pki, version, tickets):
    server_ctx = server_context(server_cert, version=version, cipher=KernelCipher.AES_GCM_128, num_tickets=tickets)
    client_ctx = client_context(pki.ca_path, version=version, cipher=KernelCipher.AES_GCM_128)
    first = tls_pair(client_ctx, server_ctx)
    try:
        expect_ktls(first.client)
        exchange(first)  # a TLS 1.3 client meets the tickets in the kernel's stream, hands them to OpenSSL
        session = first.client.session
        assert session.has_ticket and session.resumable
        if first.client.ktls.rx and version == TLS_1_3_VERSION:
            assert first.client._sslobj.tickets_received == tickets
        assert not first.client.session_reused
    finally:
        first.close()  # without close_notify, as most clients end
    # OpenSSL marks the session object of a connection freed without close_notify unresumable; the
    # session we handed out is a copy (as CPython's is), so it stays resumable whenever GC runs.
    gc.collect()
    assert session.resumable
    second = tls_pair(client_ctx, server_ctx, client_kwargs={"session": session})
    try:
        assert second.client.session_reused and second.server.session_reused
        expect_ktls(second.client)
        expect_ktls(second.server)
        exchange(second, 70000)
    finally:
        second.close()


@pytest.mark.ktls
def test_garbage_ticket_is_rejected_by_openssl(server_cert, pki):
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_128),
                    server_context(server_cert, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_128,
                                   num_tickets=0))
    try:
        kernel.send_record(pair.server, 22, b"\x04\x00\x00\x05\x00\x00\x00\x01\x02")
        pair.server.sendall(b"not delivered")
        with pytest.raises(ssl.SSLError) as info:
            pair.client.recv(100)
        assert info.value.library == "SSL" and info.value.reason in ("LENGTH_MISMATCH", "BAD_LENGTH")
        # OpenSSL's alert went out through the kernel.
        content_type, alert = kernel.recv_record(pair.server, 100)
        assert content_type == 21 and alert[0] == 2
    finally:
        pair.close()


# --- KeyUpdate and proactive key updates ---------------------------------------------------------------
#
# What a kernel does with a TLS 1.3 KeyUpdate is pinned to its version (kernel_can_rekey: 6.1 refuses,
# 6.14+ rekeys), never to kernel.probe(): a probe that wrongly reported "no rekey" would otherwise turn
# every rekey test into a "refused" test that passes. The probe is checked against the version here.

@pytest.mark.parametrize("release, rekeys", [("6.1.176", False), ("6.13.12-amd64", False), ("6.14.0", True),
                                             ("7.2.7", True), ("6.18.44-fc-v669", True), ("10.0.1", True)])
def test_kernel_can_rekey_from_the_release(release, rekeys):
    assert kernel_can_rekey(release) is rekeys


@pytest.mark.ktls
def test_probe_rekey_agrees_with_the_kernel_version():
    report = kernel.probe()
    assert report.rekey_supported is kernel_can_rekey(), (
        f"the probe says rekey_supported={report.rekey_supported} on {report.kernel_release}")


def _stream_both_ways(pair, total, chunk):
    payloads = {}
    joins = []
    for name, sender in (("c2s", pair.client), ("s2c", pair.server)):
        payload = os.urandom(total)
        payloads[name] = payload

        def send(sock=sender, data=payload):
            for offset in range(0, len(data), chunk):
                sock.sendall(data[offset:offset + chunk])

        joins.append(in_thread(send))
    got = {"c2s": in_thread(recv_exactly, pair.server, total), "s2c": in_thread(recv_exactly, pair.client, total)}
    for name in ("c2s", "s2c"):
        assert hashlib.sha256(got[name](60)).digest() == hashlib.sha256(payloads[name]).digest()
    for join in joins:
        join(60)


@pytest.mark.ktls
@pytest.mark.parametrize("cipher", [KernelCipher.AES_GCM_128, KernelCipher.CHACHA20_POLY1305])
def test_proactive_key_updates_keep_data_intact(server_cert, pki, cipher):
    threshold = 40
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=cipher, key_update_records=threshold),
                    server_context(server_cert, version=TLS_1_3_VERSION, cipher=cipher, key_update_records=threshold))
    try:
        counters = RekeyCounters()
        _stream_both_ways(pair, 2 << 20, 8192)  # 256 records each way, more than 6 thresholds
        for sock in (pair.client, pair.server):
            status = sock.ktls
            if kernel_can_rekey():
                assert status.rekey_supported and status.key_updates >= 5 and not status.key_limit_reached
            else:
                assert status.rekey_supported is False and status.key_updates == 0 and status.key_limit_reached
        # Each side's TX rekeys are the other side's RX rekeys; none at all on a kernel without rekey.
        updates = pair.client.ktls.key_updates + pair.server.ktls.key_updates
        counters.check(updates, updates)
        if kernel_can_rekey():
            assert updates >= 10
        exchange(pair)
    finally:
        pair.close()


@pytest.mark.ktls
def test_without_kernel_rekey_the_aead_limit_is_never_exceeded(server_cert, pki, monkeypatch):
    without_rekey = dataclasses.replace(kernel.probe(), rekey_supported=False)
    monkeypatch.setattr(kernel, "probe", lambda refresh=False: without_rekey)
    cipher = KernelCipher.AES_GCM_128
    monkeypatch.setitem(keys.AEAD_RECORD_LIMITS, cipher, 60)
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=cipher, key_update_records=30),
                    server_context(server_cert, version=TLS_1_3_VERSION, cipher=cipher))
    try:
        join = in_thread(recv_exactly, pair.server, 45 * 100)
        for _ in range(45):
            pair.client.sendall(b"r" * 100)
        assert pair.client.ktls.key_limit_reached
        assert join() == b"r" * 4500
        with pytest.raises(ktls_ossl.KTLSKeyLimitError) as info:
            for _ in range(30):
                pair.client.sendall(b"r" * 100)
        assert info.value.reason == "KEY_USAGE_LIMIT"
        assert kernel.read_crypto_info(pair.client, kernel.Direction.TX).seq <= 60
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
def test_key_update_is_tls13_only(server_cert, pki):
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_2_VERSION, cipher=KernelCipher.AES_GCM_128),
                    server_context(server_cert, version=TLS_1_2_VERSION, cipher=KernelCipher.AES_GCM_128))
    try:
        with pytest.raises(ValueError, match="TLS 1.3 only"):
            pair.client.key_update()
    finally:
        pair.close()


# --- post-handshake client authentication (TLS 1.3) ------------------------------------------------------

@pytest.fixture(scope="module")
def client_cert(pki):
    return pki.issue("client.example", client=True)


@pytest.fixture(scope="module")
def large_client_cert(pki):
    """A client certificate of over 20 KiB (1,200 DNS names): its Certificate message spans two
    records, which the kernel surfaces one by one and OpenSSL must get whole."""
    issued = pki.issue("client.example", client=True, dns=[f"name{i:04d}.client.example" for i in range(1200)])
    assert len(issued.cert.public_bytes(serialization.Encoding.DER)) > 20 * 1024
    return issued


def _pha_contexts(server_cert, pki, client_cert, *, client_ours=True, server_ours=True, with_cert=True):
    server_ctx = server_context(server_cert, ours=server_ours, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_256)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.post_handshake_auth = True
    server_ctx.load_verify_locations(pki.ca_path)
    client_ctx = client_context(pki.ca_path, ours=client_ours, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_256)
    client_ctx.post_handshake_auth = True
    if with_cert:
        client_ctx.load_cert_chain(client_cert.chain_path, client_cert.key_path)
    return client_ctx, server_ctx


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("certificate", ["client_cert", "large_client_cert"])
@pytest.mark.parametrize("client_ours, server_ours", [(True, True), (True, False), (False, True)],
                         ids=["ours-ours", "ours-cpython_server", "cpython_client-ours"])
def test_post_handshake_authentication(request, server_cert, pki, certificate, client_ours, server_ours):
    client_cert = request.getfixturevalue(certificate)
    client_ctx, server_ctx = _pha_contexts(server_cert, pki, client_cert, client_ours=client_ours,
                                           server_ours=server_ours)
    pair = tls_pair(client_ctx, server_ctx)
    try:
        assert pair.server.getpeercert() is None
        pair.server.verify_client_post_handshake()
        pair.server.sendall(b"please authenticate")
        assert recv_exactly(pair.client, 19) == b"please authenticate"  # the client answers here
        pair.client.sendall(b"here I am")
        assert recv_exactly(pair.server, 9) == b"here I am"  # OpenSSL accepted the certificate first
        subject = dict(item[0] for item in pair.server.getpeercert()["subject"])
        assert subject["commonName"] == "client.example"
        for sock, ours in ((pair.client, client_ours), (pair.server, server_ours)):
            if ours:
                expect_ktls(sock)
        exchange(pair, 50000)
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("requested", [False, True], ids=["update_not_requested", "update_requested"])
@pytest.mark.parametrize("updater", ["client", "server"])
@pytest.mark.parametrize("client_policy, server_policy", [
    (Policy.USERSPACE, Policy.USERSPACE), (Policy.USERSPACE, Policy.AFTER_FINISHED),
    (Policy.AFTER_FINISHED, Policy.USERSPACE), (Policy.AFTER_FINISHED, Policy.AFTER_FINISHED)],
    ids=lambda p: p.name)
def test_post_handshake_authentication_after_a_key_update(server_cert, pki, client_cert, client_policy,
                                                          server_policy, updater, requested):
    """The client's Finished of a post-handshake authentication is computed from the current client
    traffic secret (RFC 8446 4.4.4), so every KeyUpdate the kernel carries out must move OpenSSL's
    secrets too, whichever side sent it. Plain OpenSSL on the other side (USERSPACE) is the oracle:
    two kTLS sides whose OpenSSL secrets were stale alike would agree with each other."""
    if (Policy.AFTER_FINISHED in (client_policy, server_policy) and kernel.probe().ulp_available
            and not kernel_can_rekey()):
        pytest.skip(f"kernel {os.uname().release} cannot rekey (before 6.14): a KeyUpdate ends the "
                    "connection there (test_hostile covers that)")
    client_ctx, server_ctx = _pha_contexts(server_cert, pki, client_cert)
    client_ctx.ktls_policy, server_ctx.ktls_policy = client_policy, server_policy
    pair = tls_pair(client_ctx, server_ctx)
    try:
        exchange(pair)
        (pair.client if updater == "client" else pair.server).key_update(request_peer=requested)
        # Each side reads what the other sent, KeyUpdates included; the second round carries the
        # answer to a requested update (OpenSSL in user space sends it with its next write).
        exchange(pair)
        exchange(pair)
        pair.server.verify_client_post_handshake()
        pair.server.sendall(b"please authenticate")
        assert recv_exactly(pair.client, 19) == b"please authenticate"
        pair.client.sendall(b"here I am")
        assert recv_exactly(pair.server, 9) == b"here I am"
        subject = dict(item[0] for item in pair.server.getpeercert()["subject"])
        assert subject["commonName"] == "client.example"
        for sock, policy in ((pair.client, client_policy), (pair.server, server_policy)):
            if policy is Policy.AFTER_FINISHED:
                expect_ktls(sock)
        exchange(pair, 50000)
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
def test_post_handshake_authentication_without_a_certificate_fails_the_server_read(server_cert, pki, client_cert):
    client_ctx, server_ctx = _pha_contexts(server_cert, pki, client_cert, with_cert=False)
    pair = tls_pair(client_ctx, server_ctx)
    try:
        pair.server.verify_client_post_handshake()
        pair.server.sendall(b"who are you")
        assert recv_exactly(pair.client, 11) == b"who are you"
        pair.client.sendall(b"nobody")
        with pytest.raises(ssl.SSLError) as info:
            pair.server.recv(100)
        assert info.value.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
        with pytest.raises(ssl.SSLError) as info:
            pair.client.recv(100)
        assert info.value.reason in ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE")
    finally:
        pair.close()


def test_verify_client_post_handshake_needs_a_server_and_tls13(server_cert, pki, client_cert):
    client_ctx, server_ctx = _pha_contexts(server_cert, pki, client_cert)
    pair = tls_pair(client_ctx, server_ctx)
    try:
        with pytest.raises(ssl.SSLError):
            pair.client.verify_client_post_handshake()
    finally:
        pair.close()


# --- TLS 1.2 renegotiation stays refused --------------------------------------------------------------------

@pytest.mark.ktls
def test_tls12_client_hello_after_the_handshake_is_refused(server_cert, pki):
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_2_VERSION, cipher=KernelCipher.AES_GCM_256),
                    server_context(server_cert, version=TLS_1_2_VERSION, cipher=KernelCipher.AES_GCM_256))
    try:
        kernel.send_record(pair.client, 22, b"\x01\x00\x00\x04\x03\x03\x00\x00")
        pair.client.sendall(b"still here")
        assert pair.server.recv(100) == b"still here"
        assert kernel.recv_record(pair.client, 100) == (21, b"\x01\x64")  # no_renegotiation warning
    finally:
        pair.close()


@pytest.mark.ktls
def test_requested_key_updates_while_another_thread_streams(server_cert, pki, monkeypatch):
    """The client's reader thread answers KeyUpdates (rekeying TX) while its writer thread streams:
    no data record may slip between the KeyUpdate message and the key change."""
    real_rekey = kernel.rekey

    def slow_rekey(sock, direction, keys):
        if direction is kernel.Direction.TX:
            time.sleep(0.02)  # widen the window in which another thread could send
        real_rekey(sock, direction, keys)

    monkeypatch.setattr(kernel, "rekey", slow_rekey)
    cipher = KernelCipher.AES_GCM_128
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=cipher),
                    server_context(server_cert, version=TLS_1_3_VERSION, cipher=cipher))
    try:
        counters = RekeyCounters()
        if not kernel_can_rekey():
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError):
                pair.server.key_update(request_peer=True)
            counters.check(0, 0)
            return
        upstream = os.urandom(4 << 20)

        def stream():
            for offset in range(0, len(upstream), 4096):
                pair.client.sendall(upstream[offset:offset + 4096])

        def read_downstream():
            return recv_exactly(pair.client, 20 * 1000)

        writer = in_thread(stream)
        reader = in_thread(read_downstream)
        received = bytearray()
        for round_number in range(20):
            pair.server.key_update(request_peer=True)
            pair.server.sendall(bytes([round_number]) * 1000)
            received += pair.server.recv(65536)
        received += recv_exactly(pair.server, len(upstream) - len(received))
        writer(60)
        assert reader(60) == b"".join(bytes([n]) * 1000 for n in range(20))
        assert hashlib.sha256(bytes(received)).digest() == hashlib.sha256(upstream).digest()
        assert pair.client.ktls.key_updates >= 1 and pair.server.ktls.key_updates == 20
        # The kernel's count: the server's 20 TX rekeys are the client's 20 RX rekeys, and the
        # client's answers (at least 1: requests that arrive together are answered once) both ways,
        # once the server has read past the last answer.
        pair.client.sendall(b"end")
        assert recv_exactly(pair.server, 3) == b"end"
        answers = pair.client.ktls.key_updates
        counters.check(20 + answers, 20 + answers)
    finally:
        pair.close()
