"""KTLSSocket end to end: our client and server, and each against CPython's ssl.

Runs on the host (where the connection falls back to OpenSSL and sock.ktls says why) and under
the VM kernels (where every direction must be in the kernel and /proc/net/tls_stat must move).
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import http.server
import os
import re
import select
import socket
import ssl
import sys
import threading

import pytest

import ktls_ossl
from ktls_ossl import Policy, kernel
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import RekeyCounters, kernel_can_rekey, loopback_pair
from .timing import scaled
from .tlshelpers import (
    COMBINATION_IDS,
    COMBINATIONS,
    client_context,
    expect_ktls,
    in_thread,
    recv_exactly,
    server_context,
    strip_location,
    tls_pair,
)

SIZES = [1, 16383, 16384, 16385, 1 << 20]
VERSION_NAMES = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}




@pytest.fixture
def pair_factory(server_cert, pki):
    pairs = []

    def make(version=None, cipher=None, *, client_ours=True, server_ours=True, client_settings=None,
             server_settings=None, **kwargs):
        server_ctx = server_context(server_cert, ours=server_ours, version=version, cipher=cipher,
                                    **(server_settings or {}))
        client_ctx = client_context(pki.ca_path, ours=client_ours, version=version, cipher=cipher,
                                    **(client_settings or {}))
        pair = tls_pair(client_ctx, server_ctx, **kwargs)
        pairs.append(pair)
        # Every connection of ours says where its records go: the kernel wherever it can.
        for sock in (pair.client, pair.server):
            if isinstance(sock, ktls_ossl.KTLSSocket) and sock.context.ktls_policy is Policy.AFTER_FINISHED:
                expect_ktls(sock)
        return pair

    yield make
    for pair in pairs:
        pair.close()


def round_trip(sender, receiver, size: int) -> None:
    payload = os.urandom(size)
    join = in_thread(sender.sendall, payload)
    assert hashlib.sha256(recv_exactly(receiver, size)).digest() == hashlib.sha256(payload).digest()
    join()


# --- the matrix: every version x kernel cipher, ours <-> ours -----------------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version, cipher", COMBINATIONS, ids=COMBINATION_IDS)
def test_ours_to_ours_every_cipher(pair_factory, version, cipher):
    kernel.probe()  # its own installs must not count below
    before = kernel.tls_stat()
    pair = pair_factory(version, cipher)
    for sock in (pair.client, pair.server):
        assert sock.version() == VERSION_NAMES[version]
        assert isinstance(sock, ssl.SSLSocket) and isinstance(sock, ktls_ossl.KTLSSocket)
        expect_ktls(sock)
    for size in SIZES:
        round_trip(pair.client, pair.server, size)
        round_trip(pair.server, pair.client, size)
    if kernel.probe().ulp_available:
        after = kernel.tls_stat()
        assert after["TlsTxSw"] - before["TlsTxSw"] == 2
        assert after["TlsRxSw"] - before["TlsRxSw"] == 2
        assert pair.client.ktls.cipher.startswith(cipher.display_name)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version, cipher",
                         [c for c in COMBINATIONS if not (c[0] == TLS_1_3_VERSION and c[1] is KernelCipher.AES_CCM_128)],
                         ids=[i for c, i in zip(COMBINATIONS, COMBINATION_IDS)
                              if not (c[0] == TLS_1_3_VERSION and c[1] is KernelCipher.AES_CCM_128)])
@pytest.mark.parametrize("ours", ["client", "server"])
def test_ours_against_cpython(pair_factory, version, cipher, ours):
    pair = pair_factory(version, cipher, client_ours=ours == "client", server_ours=ours == "server")
    mine, theirs = (pair.client, pair.server) if ours == "client" else (pair.server, pair.client)
    assert mine.cipher() == theirs.cipher()
    assert mine.version() == theirs.version() == VERSION_NAMES[version]
    expect_ktls(mine)
    for size in (1, 16385, 1 << 20):
        round_trip(mine, theirs, size)
        round_trip(theirs, mine, size)


# --- the handoff -------------------------------------------------------------------------------------

@pytest.mark.ktls_or_fallback
def test_tls13_server_tickets_are_counted_not_assumed(pair_factory):
    """A TLS 1.3 server has written its NewSessionTickets before the handoff: its first kernel
    record number is the ticket count, and the client meets the tickets in the kernel stream."""
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, server_settings={"num_tickets": 3})
    round_trip(pair.server, pair.client, 1000)
    round_trip(pair.client, pair.server, 1000)
    if pair.client.ktls.rx:
        assert pair.client._sslobj.tickets_received == 3
        assert kernel.read_crypto_info(pair.server, kernel.Direction.TX).seq >= 3


@pytest.mark.ktls_or_fallback
def test_keys_go_to_the_kernel_only_after_the_peer_finished(pair_factory):
    pair = pair_factory(TLS_1_2_VERSION, KernelCipher.AES_GCM_128)
    for sock in (pair.client, pair.server):
        events = [what for _, what in sock.ktls_events]
        verified = events.index("handshake complete: peer Finished verified")
        assert events.index("finished received") < verified
        if sock.ktls.rx:
            assert verified < next(i for i, e in enumerate(events) if e.startswith("RX installed"))
            assert verified < next(i for i, e in enumerate(events) if e.startswith("TX installed"))


@pytest.mark.ktls_or_fallback
def test_policy_userspace_never_uses_the_kernel(pair_factory):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128,
                        client_settings={"ktls_policy": Policy.USERSPACE},
                        server_settings={"ktls_policy": Policy.USERSPACE})
    assert not pair.client.ktls.tx and not pair.client.ktls.rx
    assert pair.client.ktls.rx_reason == "ktls_policy is USERSPACE"
    round_trip(pair.client, pair.server, 70000)


@pytest.mark.ktls_or_fallback
def test_suite_without_kernel_cipher_falls_back_with_the_reason(server_cert, pki):
    server_ctx, client_ctx = server_context(server_cert), client_context(pki.ca_path)
    for ctx in (server_ctx, client_ctx):
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    pair = tls_pair(client_ctx, server_ctx)
    try:
        status = pair.client.ktls
        assert not status.tx and not status.rx
        if kernel.probe().ulp_available:
            assert "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA has no kernel TLS cipher" in status.rx_reason
        else:
            assert "modprobe tls" in status.rx_reason
        round_trip(pair.client, pair.server, 70000)
        round_trip(pair.server, pair.client, 70000)
    finally:
        pair.close()


def test_require_ktls_fails_clearly_without_the_kernel(server_cert, pki):
    server_ctx = server_context(server_cert)
    client_ctx = client_context(pki.ca_path, require_ktls=True)
    if kernel.probe().ulp_available:
        client_ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")
        client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        server_ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")
        with pytest.raises(ktls_ossl.KTLSUnavailableError) as info:
            tls_pair(client_ctx, server_ctx)
        assert info.value.reason == "KTLS_REQUIRED" and "AES_128_CBC" in str(info.value)
    else:
        with pytest.raises(ktls_ossl.KTLSUnavailableError) as info:
            tls_pair(client_ctx, server_ctx)
        assert info.value.reason == "KTLS_REQUIRED" and "modprobe tls" in str(info.value)
    # One error, worded once: no exception's text nested in another, no errno named twice.
    text = str(info.value)
    assert text.count("[KTLS:") == 1 and text.count("(ktls_ossl)") <= 1
    names = [name for name in errno.errorcode.values() if re.search(rf"\b{name}\b", text)]
    assert len(names) <= 1 and all(text.count(name) == 1 for name in names)
    assert "Success" not in text


# --- blocking, timeout and non-blocking modes: what CPython raises ---------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("ours", [True, False], ids=["ktls_ossl", "cpython"])
def test_read_timeout_is_the_same_as_cpython(pair_factory, ours):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, client_ours=ours, server_ours=ours)
    pair.client.settimeout(0.2)
    with pytest.raises(TimeoutError) as info:
        pair.client.recv(10)
    assert str(info.value).endswith("The read operation timed out")
    pair.server.sendall(b"late")
    pair.client.settimeout(5)
    assert pair.client.recv(10) == b"late"


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("ours", [True, False], ids=["ktls_ossl", "cpython"])
def test_non_blocking_read_raises_want_read(pair_factory, ours):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, client_ours=ours, server_ours=ours)
    pair.client.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError) as info:
        pair.client.recv(10)
    assert info.value.args[0] == ssl.SSL_ERROR_WANT_READ
    assert strip_location(info.value.args[1]) == "The operation did not complete (read)"
    pair.server.sendall(b"now")
    select.select([pair.client], [], [], 5)
    assert pair.client.recv(10) == b"now"


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("ours", [True, False], ids=["ktls_ossl", "cpython"])
def test_non_blocking_write_raises_want_write_when_full(pair_factory, ours):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, client_ours=ours, server_ours=ours)
    pair.client.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    with pytest.raises(ssl.SSLWantWriteError):
        for _ in range(10000):
            sent += pair.client.send(chunk)
    assert sent > 0
    pair.server.settimeout(10)
    assert len(recv_exactly(pair.server, sent)) == sent


@pytest.mark.ktls_or_fallback
def test_non_blocking_handshake_then_kernel_io(server_cert, pki):
    server_ctx = server_context(server_cert)
    client_ctx = client_context(pki.ca_path)
    raw_client, raw_server = loopback_pair()
    sockets = [client_ctx.wrap_socket(raw_client, server_hostname="localhost", do_handshake_on_connect=False),
               server_ctx.wrap_socket(raw_server, server_side=True, do_handshake_on_connect=False)]
    try:
        for sock in sockets:
            sock.setblocking(False)
        pending = list(sockets)
        for _ in range(1000):
            if not pending:
                break
            for sock in list(pending):
                try:
                    sock.do_handshake()
                    pending.remove(sock)
                except ssl.SSLWantReadError:
                    select.select([sock], [], [], 0.01)
                except ssl.SSLWantWriteError:
                    select.select([], [sock], [], 0.01)
        assert not pending
        for sock in sockets:
            expect_ktls(sock)
            sock.settimeout(10)
        round_trip(sockets[0], sockets[1], 50000)
    finally:
        for sock in sockets:
            sock.close()


def test_do_handshake_on_connect_refuses_non_blocking_sockets(server_cert, pki):
    raw_client, raw_server = loopback_pair()
    with raw_client, raw_server:
        raw_client.setblocking(False)
        with pytest.raises(ValueError, match="non-blocking"):
            client_context(pki.ca_path).wrap_socket(raw_client, server_hostname="localhost")


# --- EOF ----------------------------------------------------------------------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
def test_close_notify_is_an_orderly_eof(pair_factory, version):
    pair = pair_factory(version, KernelCipher.AES_GCM_256)
    pair.server.sendall(b"last words")
    join = in_thread(pair.server.unwrap)
    assert recv_exactly(pair.client, 10) == b"last words"
    assert pair.client.recv(100) == b""
    assert pair.client.recv(100) == b""
    unwrapped = pair.client.unwrap()
    assert unwrapped is pair.client
    assert join() is pair.server


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
@pytest.mark.parametrize("policy", [Policy.USERSPACE, Policy.AFTER_FINISHED], ids=lambda p: p.name)
def test_starttls_and_back_to_plaintext_with_a_stock_ssl_peer(server_cert, pki, policy, version):
    """STARTTLS / ENDTLS against CPython's ssl: plaintext, TLS, unwrap() on both sides, plaintext.
    In OpenSSL (USERSPACE, or no kernel TLS) the plaintext phase works as between two CPython
    sockets. Where the kernel carries the connection it cannot take its keys off the socket, so
    the unwrapped socket refuses data calls with a specific error, and no TLS record reaches the
    peer where it expects plaintext."""
    timeout = scaled(10.0)
    ours_raw, peer_raw = loopback_pair()
    ours_raw.settimeout(timeout)
    peer_raw.settimeout(timeout)
    with ours_raw, peer_raw:
        peer_raw.sendall(b"STARTTLS")
        assert recv_exactly(ours_raw, 8) == b"STARTTLS"
        ours_ctx = server_context(server_cert, version=version, cipher=KernelCipher.AES_GCM_128, ktls_policy=policy)
        peer_ctx = client_context(pki.ca_path, ours=False, version=version, cipher=KernelCipher.AES_GCM_128)
        join = in_thread(lambda: peer_ctx.wrap_socket(peer_raw, server_hostname="localhost"))
        ours = ours_ctx.wrap_socket(ours_raw, server_side=True)
        peer = join()
        in_kernel = policy is Policy.AFTER_FINISHED and kernel.probe().ulp_available
        if in_kernel:
            expect_ktls(ours)
        peer.sendall(b"secret")
        assert recv_exactly(ours, 6) == b"secret"
        ours.sendall(b"terces")
        assert recv_exactly(peer, 6) == b"terces"
        join = in_thread(peer.unwrap)
        plain = ours.unwrap()
        plain_peer = join()
        assert plain is ours
        if not in_kernel:
            plain.sendall(b"plain ours")
            assert recv_exactly(plain_peer, 10) == b"plain ours"
            plain_peer.sendall(b"plain peer")
            assert recv_exactly(plain, 10) == b"plain peer"
            return
        calls = {"send": lambda: plain.send(b"plain"), "sendall": lambda: plain.sendall(b"plain"),
                 "recv": lambda: plain.recv(10), "recv_into": lambda: plain.recv_into(bytearray(10))}
        for name, call in calls.items():
            with pytest.raises(ktls_ossl.KTLSUnwrappedError) as info:
                call()
            assert info.value.reason == "KTLS_CANNOT_UNWRAP", name
            assert "Policy.USERSPACE" in str(info.value)
        # Nothing went out after our close_notify: the peer's raw socket has nothing to read.
        plain_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            plain_peer.recv(100)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("suppress", [True, False])
@pytest.mark.parametrize("ours", [True, False], ids=["ktls_ossl", "cpython"])
def test_tcp_eof_without_close_notify(pair_factory, suppress, ours):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, client_ours=ours, server_ours=True,
                        client_kwargs={"suppress_ragged_eofs": suppress})
    pair.server.sendall(b"partial")
    socket.socket.shutdown(pair.server, socket.SHUT_RDWR)
    assert recv_exactly(pair.client, 7) == b"partial"
    if suppress:
        assert pair.client.recv(100) == b""
    else:
        with pytest.raises(ssl.SSLEOFError) as info:
            pair.client.recv(100)
        assert info.value.args[0] == ssl.SSL_ERROR_EOF
        assert "EOF occurred in violation of protocol" in str(info.value)


# --- errors, side by side with CPython -----------------------------------------------------------------

def _client_error(client_ctx, server_ctx, hostname="localhost"):
    with pytest.raises(ssl.SSLError) as info:
        pair = tls_pair(client_ctx, server_ctx, server_hostname=hostname)
        pair.close()
    return info.value


@pytest.mark.parametrize("case", ["untrusted", "hostname"])
def test_certificate_errors_match_cpython(server_cert, pki, tmp_path, case):
    from .certs import CertificateAuthority
    other_ca = CertificateAuthority(str(tmp_path), name="someone else")
    ca_path = other_ca.ca_path if case == "untrusted" else pki.ca_path
    hostname = "localhost" if case == "untrusted" else "wrong.example"
    errors = {}
    for ours in (True, False):
        errors[ours] = _client_error(client_context(ca_path, ours=ours), server_context(server_cert), hostname)
    mine, theirs = errors[True], errors[False]
    assert type(mine) is type(theirs) is ssl.SSLCertVerificationError
    assert (mine.verify_code, mine.verify_message) == (theirs.verify_code, theirs.verify_message)
    assert (mine.library, mine.reason) == (theirs.library, theirs.reason) == ("SSL", "CERTIFICATE_VERIFY_FAILED")
    assert strip_location(str(mine)) == strip_location(str(theirs))
    assert mine.args[0] == theirs.args[0] == ssl.SSL_ERROR_SSL


def test_server_sees_the_clients_alert_like_cpython(server_cert, pki, tmp_path):
    from .certs import CertificateAuthority
    other_ca = CertificateAuthority(str(tmp_path), name="someone else")
    seen = {}
    for ours in (True, False):
        raw_client, raw_server = loopback_pair()
        join = in_thread(server_context(server_cert, ours=ours).wrap_socket, raw_server, True)
        with pytest.raises(ssl.SSLCertVerificationError):
            client_context(other_ca.ca_path, ours=False).wrap_socket(raw_client, server_hostname="localhost")
        raw_client.close()
        with pytest.raises(ssl.SSLError) as info:
            join()
        raw_server.close()
        seen[ours] = info.value
    assert type(seen[True]) is type(seen[False])
    assert (seen[True].library, seen[True].reason) == (seen[False].library, seen[False].reason)
    assert strip_location(str(seen[True])) == strip_location(str(seen[False]))


# --- information --------------------------------------------------------------------------------------

def test_connection_information_matches_cpython(server_cert, pki):
    results = {}
    for ours in (True, False):
        server_ctx = server_context(server_cert, ours=ours)
        client_ctx = client_context(pki.ca_path, ours=ours)
        server_ctx.set_alpn_protocols(["h2", "http/1.1"])
        client_ctx.set_alpn_protocols(["http/1.1"])
        pair = tls_pair(client_ctx, server_ctx)
        try:
            client = pair.client
            results[ours] = {
                "cert": client.getpeercert(),
                "der": client.getpeercert(binary_form=True),
                "alpn": (client.selected_alpn_protocol(), pair.server.selected_alpn_protocol()),
                "version": client.version(),
                "cipher": client.cipher(),
                "server_cipher": pair.server.cipher(),
                "compression": client.compression(),
                "binding_len": len(client.get_channel_binding("tls-unique")),
                "server_hostname": client.server_hostname,
                "server_side": (client.server_side, pair.server.server_side),
                "client_cert": pair.server.getpeercert(),
                "shared": sorted(pair.server.shared_ciphers() or []),
                "client_shared": pair.client.shared_ciphers(),
                "pending": client.pending(),
            }
            assert client.get_channel_binding("tls-unique") == pair.server.get_channel_binding("tls-unique")
            with pytest.raises(ValueError, match="channel binding type not implemented"):
                client.get_channel_binding("tls-server-end-point")
        finally:
            pair.close()
    assert results[True] == results[False]
    assert results[True]["cert"]["subjectAltName"] == (("DNS", "localhost"), ("IP Address", "127.0.0.1"))
    assert results[True]["alpn"] == ("http/1.1", "http/1.1")


def test_chains_are_der_leaf_first(pair_factory, server_cert, pki):
    from cryptography.hazmat.primitives.serialization import Encoding
    pair = pair_factory()
    leaf = server_cert.cert.public_bytes(Encoding.DER)
    ca = pki.ca_cert.public_bytes(Encoding.DER)
    assert pair.client.get_verified_chain() == [leaf, ca]
    assert pair.client.get_unverified_chain()[0] == leaf


def test_getpeercert_before_handshake_and_unverified(server_cert, pki):
    raw_client, raw_server = loopback_pair()
    client = client_context(pki.ca_path).wrap_socket(raw_client, server_hostname="localhost",
                                                     do_handshake_on_connect=False)
    with client, raw_server:
        with pytest.raises(ValueError, match="handshake not done yet"):
            client.getpeercert()
    ctx = client_context(pki.ca_path)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    pair = tls_pair(ctx, server_context(server_cert))
    try:
        assert pair.client.getpeercert() == {}
        assert pair.client.getpeercert(True)
    finally:
        pair.close()


# --- data paths ------------------------------------------------------------------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
def test_sendfile_carries_a_file_intact(pair_factory, tmp_path, version):
    content = os.urandom((4 << 20) + 4321)
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    pair = pair_factory(version, KernelCipher.CHACHA20_POLY1305)
    before = kernel.tls_stat()

    def send():
        with open(path, "rb") as source:
            return pair.server.sendfile(source, offset=100, count=len(content) - 200)

    join = in_thread(send)
    received = recv_exactly(pair.client, len(content) - 200)
    assert join() == len(content) - 200
    assert hashlib.sha256(received).digest() == hashlib.sha256(content[100:-100]).digest()
    if pair.server.ktls.tx:
        assert kernel.tls_stat()["TlsCurrTxSw"] >= before.get("TlsCurrTxSw", 0)


@pytest.mark.ktls_or_fallback
def test_makefile_serves_http_client(server_cert, pki):
    body = os.urandom(300000)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client keeps its socket to inspect

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server_ctx = server_context(server_cert)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPSConnection("localhost", httpd.server_address[1],
                                                 context=client_context(pki.ca_path), timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        assert response.status == 200
        assert isinstance(connection.sock, ktls_ossl.KTLSSocket)
        expect_ktls(connection.sock)
        assert response.read() == body
        connection.close()
    finally:
        thread.join(10)
        httpd.server_close()


@pytest.mark.ktls_or_fallback
def test_recv_into_and_small_reads_across_records(pair_factory):
    pair = pair_factory(TLS_1_2_VERSION, KernelCipher.AES_CCM_128)
    payload = os.urandom(40000)
    join = in_thread(pair.server.sendall, payload)
    buffer = bytearray(7)
    received = bytearray()
    while len(received) < len(payload):
        count = pair.client.recv_into(buffer)
        assert count > 0
        received += buffer[:count]
        if pair.client.pending():
            assert pair.client.pending() <= 16384
    join()
    assert received == payload


# --- control records (the kernel path) ------------------------------------------------------------------

@pytest.mark.ktls
def test_peer_fatal_alert_is_raised_like_openssl(pair_factory):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128)
    kernel.send_record(pair.server, 21, b"\x02\x28")
    with pytest.raises(ssl.SSLError) as info:
        pair.client.recv(100)
    assert (info.value.library, info.value.reason) == ("SSL", "SSLV3_ALERT_HANDSHAKE_FAILURE")
    assert "sslv3 alert handshake failure" in str(info.value)
    with pytest.raises(ssl.SSLError):
        pair.client.recv(100)


@pytest.mark.ktls
def test_tls12_hello_request_is_refused_with_no_renegotiation(pair_factory):
    pair = pair_factory(TLS_1_2_VERSION, KernelCipher.AES_GCM_128)
    kernel.send_record(pair.server, 22, b"\x00\x00\x00\x00")
    pair.server.sendall(b"after")
    assert pair.client.recv(100) == b"after"
    assert kernel.recv_record(pair.server, 100) == (21, b"\x01\x64")
    assert any("HelloRequest" in what for _, what in pair.client.ktls_events)


@pytest.mark.ktls
def test_unexpected_handshake_message_fails_with_an_alert(pair_factory):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128)
    kernel.send_record(pair.server, 22, b"\x14\x00\x00\x20" + bytes(32))  # a Finished
    pair.server.sendall(b"never delivered")
    with pytest.raises(ssl.SSLError) as info:
        pair.client.recv(100)
    assert info.value.reason == "UNEXPECTED_MESSAGE"
    assert kernel.recv_record(pair.server, 100) == (21, b"\x02\x0a")


@pytest.mark.ktls
def test_control_record_callback_and_recv_record(pair_factory):
    seen = []
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, server_settings={"num_tickets": 1},
                        client_settings={"control_record_callback": lambda s, t, p: seen.append((s, t, p))})
    pair.server.sendall(b"data")
    assert pair.client.recv(100) == b"data"
    assert len(seen) == 1 and seen[0][0] is pair.client and seen[0][1] == 22 and seen[0][2][0] == 4
    kernel.send_record(pair.server, 21, b"\x01\x5a")  # user_canceled warning
    assert pair.client.recv_record() == (21, b"\x01\x5a")


@pytest.mark.ktls
@pytest.mark.parametrize("record", [b"\x18\x00\x00\x01\x00\x04\x00", b"\x18\x00\x00\x01\x00" * 2],
                         ids=["key_update_then_more", "two_key_updates"])
def test_a_readiness_driven_reader_learns_of_a_failure_behind_data(pair_factory, record):
    """Data, then a record that fails the connection (a KeyUpdate that does not end its record),
    all sent before the reader looks. A non-blocking reader that waits in select() gets the data,
    then must be told readable again and get the failure: on a kernel that rekeys, the kernel
    parks the record (it starts with byte 24) and reports nothing readable, so our side takes it
    after the data and, as it fails, shuts reception down to make the socket readable."""
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_128)
    pair.server.sendall(b"before")
    kernel.send_record(pair.server, 22, record)
    pair.client.setblocking(False)
    received = b""
    for _ in range(100):  # bounded: each round is one wake-up of select()
        ready, _, _ = select.select([pair.client], [], [], scaled(5))
        assert ready, f"select() found nothing to read after {received!r}"
        try:
            chunk = pair.client.recv(100)
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError as exc:
            assert received == b"before"
            assert exc.reason == "NOT_ON_RECORD_BOUNDARY", exc
            break
        assert chunk, "EOF instead of the failure"
        received += chunk
    else:
        raise AssertionError("the reader never learnt of the failure")
    assert kernel.recv_record(pair.server, 100) == (21, b"\x02\x0a")  # unexpected_message went out


@pytest.mark.ktls
def test_key_update_both_ways_or_the_specific_error(pair_factory):
    pair = pair_factory(TLS_1_3_VERSION, KernelCipher.AES_GCM_256)
    round_trip(pair.client, pair.server, 1000)
    counters = RekeyCounters()
    if not kernel_can_rekey():
        with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError) as info:
            pair.client.key_update()
        assert "nothing was sent" in str(info.value)
        round_trip(pair.client, pair.server, 1000)
        kernel.send_record(pair.server, 22, b"\x18\x00\x00\x01\x00")
        with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError) as info:
            pair.client.recv(100)
        assert info.value.reason == "KEY_UPDATE_UNSUPPORTED" and "6.14" in str(info.value)
        counters.check(0, 0)
        return
    pair.client.key_update(request_peer=True)
    round_trip(pair.client, pair.server, 50000)  # the server rekeys RX, answers, rekeys TX
    round_trip(pair.server, pair.client, 50000)
    pair.server.key_update()
    round_trip(pair.server, pair.client, 50000)
    counters.check(3, 3)


# --- SNI, ALPN and key logging on live connections -------------------------------------------------------

@pytest.mark.ktls_or_fallback
def test_sni_callback_switches_the_certificate(server_cert, pki):
    other = pki.issue("other.example", dns=["other.example"])
    default_ctx = server_context(server_cert)
    other_ctx = server_context(other)
    seen = []

    def choose(sslsocket, server_name, context):
        seen.append((type(sslsocket), server_name, context is default_ctx))
        if server_name == "other.example":
            sslsocket.context = other_ctx

    default_ctx.sni_callback = choose
    for name, expected_cn in (("other.example", "other.example"), ("localhost", "localhost")):
        pair = tls_pair(client_context(pki.ca_path), default_ctx, server_hostname=name)
        try:
            subject = dict(item[0] for item in pair.client.getpeercert()["subject"])
            assert subject["commonName"] == expected_cn
            assert (pair.server.context is other_ctx) == (name == "other.example")
            expect_ktls(pair.server)
            round_trip(pair.client, pair.server, 20000)
        finally:
            pair.close()
    assert seen == [(ktls_ossl.KTLSSocket, "other.example", True), (ktls_ossl.KTLSSocket, "localhost", True)]


def test_sni_callback_alert_and_exception(server_cert, pki):
    server_ctx = server_context(server_cert)
    server_ctx.sni_callback = lambda sock, name, ctx: ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
    with pytest.raises(ssl.SSLError) as info:
        tls_pair(client_context(pki.ca_path), server_ctx).close()
    assert info.value.reason == "TLSV1_UNRECOGNIZED_NAME"

    def broken(sock, name, ctx):
        raise ZeroDivisionError("in the callback")

    server_ctx.sni_callback = broken
    raw_client, raw_server = loopback_pair()
    reported = []
    hook, sys.unraisablehook = sys.unraisablehook, reported.append
    try:
        join = in_thread(server_ctx.wrap_socket, raw_server, True)
        with pytest.raises(ssl.SSLError):
            client_context(pki.ca_path).wrap_socket(raw_client, server_hostname="localhost")
        # As CPython: the exception goes to sys.unraisablehook, the handshake fails with OpenSSL's
        # error (tests/test_cpython_parity.py compares both with CPython's).
        with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED"):
            join()
    finally:
        sys.unraisablehook = hook
        raw_client.close()
        raw_server.close()
    assert [type(args.exc_value) for args in reported] == [ZeroDivisionError]


@pytest.mark.ktls_or_fallback
def test_alpn_without_overlap_selects_nothing(server_cert, pki):
    server_ctx, client_ctx = server_context(server_cert), client_context(pki.ca_path)
    server_ctx.set_alpn_protocols(["h2"])
    client_ctx.set_alpn_protocols(["http/1.1"])
    pair = tls_pair(client_ctx, server_ctx)
    try:
        assert pair.client.selected_alpn_protocol() is None
        assert pair.server.selected_alpn_protocol() is None
        round_trip(pair.client, pair.server, 100)
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version, cipher", [(TLS_1_2_VERSION, KernelCipher.AES_GCM_256),
                                             (TLS_1_3_VERSION, KernelCipher.CHACHA20_POLY1305)],
                         ids=["tls12", "tls13"])
def test_handoff_keys_are_the_keys_openssl_negotiated(server_cert, pki, tmp_path, version, cipher):
    """Our client's kernel keys equal what the peer (CPython's ssl, i.e. OpenSSL) logged."""
    from ktls_ossl import keys as key_schedule
    keylog = tmp_path / "peer.keylog"
    server_ctx = server_context(server_cert, ours=False, version=version, cipher=cipher)
    server_ctx.keylog_filename = str(keylog)
    client_ctx = client_context(pki.ca_path, version=version, cipher=cipher)
    client_ctx.keylog_filename = str(tmp_path / "ours.keylog")
    pair = tls_pair(client_ctx, server_ctx)
    try:
        round_trip(pair.client, pair.server, 1000)
        peer_lines = [line.split() for line in keylog.read_text().splitlines() if not line.startswith("#")]
        peer = {label: bytes.fromhex(secret) for label, _, secret in peer_lines}
        ours = [line.split() for line in (tmp_path / "ours.keylog").read_text().splitlines()
                if not line.startswith("#")]
        assert {label for label, _, _ in ours} == set(peer)  # our keylog_filename works as CPython's
        hash_name = "sha384" if cipher is KernelCipher.AES_GCM_256 else "sha256"
        if version == TLS_1_3_VERSION:
            expected_tx = key_schedule.tls13_traffic_keys(peer["CLIENT_TRAFFIC_SECRET_0"], cipher, hash_name)
            expected_rx = key_schedule.tls13_traffic_keys(peer["SERVER_TRAFFIC_SECRET_0"], cipher, hash_name)
        else:
            client_random = bytes.fromhex(peer_lines[0][1])
            handshake = pair.client._sslobj._handshake
            from ktls_ossl._ossl import ffi, lib
            server_random = ffi.new("unsigned char[32]")
            lib.SSL_get_server_random(handshake.ssl, server_random, 32)
            expected_tx, expected_rx = key_schedule.tls12_connection_keys(
                peer["CLIENT_RANDOM"], client_random, bytes(server_random), cipher, hash_name,
                server_side=False, tx_seq=1, rx_seq=1)
        if pair.client.ktls.rx:
            installed_tx = kernel.read_crypto_info(pair.client, kernel.Direction.TX)
            installed_rx = kernel.read_crypto_info(pair.client, kernel.Direction.RX)
            assert (installed_tx.key, installed_tx.salt) == (expected_tx.key, expected_tx.salt)
            assert (installed_rx.key, installed_rx.salt) == (expected_rx.key, expected_rx.salt)
            if version == TLS_1_3_VERSION or cipher is KernelCipher.CHACHA20_POLY1305:
                assert installed_tx.iv == expected_tx.iv and installed_rx.iv == expected_rx.iv
        handoff = pair.client._sslobj._handoff
        if handoff is not None:
            assert (handoff.tx.key, handoff.rx.key) == (expected_tx.key, expected_rx.key)
    finally:
        pair.close()
