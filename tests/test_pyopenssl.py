"""The pyOpenSSL front (ktls_ossl.pyopenssl): pyOpenSSL's API and exceptions with the kernel's
record layer after the verified Finished.

Oracles: CPython's ssl as the peer (its own view of version, cipher, ALPN, resumption and of the
bytes it received, by SHA-256), native pyOpenSSL side by side for every exception, the hostile peer
of tests/hostile (its own key schedule against the key the kernel holds, what it saw our side send),
and /proc/net/tls_stat (installs, rekeys). Runs on the host, where pyOpenSSL keeps the record layer
and says why, and under both VM kernels, where the kernel carries it.
"""
from __future__ import annotations

import gc
import hashlib
import os
import select
import socket
import ssl
import threading

import pytest

OpenSSL = pytest.importorskip("OpenSSL", reason="pyOpenSSL is not installed (pip install ktls_ossl[pyopenssl])")
from OpenSSL import SSL  # noqa: E402

from ktls_ossl import kernel, keys  # noqa: E402
from ktls_ossl import pyopenssl as kp  # noqa: E402
from ktls_ossl.connection import ConnectionState  # noqa: E402
from ktls_ossl.errors import KTLSRekeyUnsupportedError, KTLSUnavailableError  # noqa: E402
from ktls_ossl.handshake import Policy  # noqa: E402
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher  # noqa: E402
from ktls_ossl.records import AlertDescription, ContentType, HandshakeType  # noqa: E402

from .conftest import RekeyCounters, kernel_can_rekey, loopback_pair  # noqa: E402
from .hostile.peer import HostileClient, HostileServer, certificate_request_body  # noqa: E402
from .timing import scaled  # noqa: E402

pytestmark = pytest.mark.ktls_or_fallback

KTLS = kernel.probe().ulp_available
REKEY = KTLS and kernel_can_rekey()
PYOPENSSL_VERSION = tuple(int(part) for part in OpenSSL.__version__.split(".")[:2])
VERSIONS = [TLS_1_2_VERSION, TLS_1_3_VERSION]
VERSION_IDS = ["tls12", "tls13"]
PYOPENSSL_VERSIONS = {TLS_1_2_VERSION: SSL.TLS1_2_VERSION, TLS_1_3_VERSION: SSL.TLS1_3_VERSION}
CPYTHON_VERSIONS = {TLS_1_2_VERSION: ssl.TLSVersion.TLSv1_2, TLS_1_3_VERSION: ssl.TLSVersion.TLSv1_3}
VERSION_NAMES = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}
TIMEOUT = scaled(20.0)


# --- contexts and peers ------------------------------------------------------------------------------

def pyopenssl_context(*, server_cert=None, ca=None, version=None, client_cert=None) -> SSL.Context:
    """A pyOpenSSL context as its users make one: a server's with its certificate, a client's
    verifying the peer against ``ca``."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    if version is not None:
        ctx.set_min_proto_version(PYOPENSSL_VERSIONS[version])
        ctx.set_max_proto_version(PYOPENSSL_VERSIONS[version])
    if server_cert is not None:
        ctx.use_certificate_chain_file(server_cert.chain_path)
        ctx.use_privatekey_file(server_cert.key_path)
    if client_cert is not None:
        ctx.use_certificate_chain_file(client_cert.chain_path)
        ctx.use_privatekey_file(client_cert.key_path)
    if ca is not None:
        ctx.load_verify_locations(ca)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda conn, cert, errnum, depth, ok: ok)
    return ctx


def cpython_server_context(cert, version=None, **settings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.chain_path, cert.key_path)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = CPYTHON_VERSIONS[version]
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def cpython_client_context(ca, version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = CPYTHON_VERSIONS[version]
    return ctx


class Background:
    """A peer's part in a thread; ``result()`` joins it and raises what it raised. ``on_error``
    runs where it failed (a hostile peer closes its socket, so our side is not left waiting)."""

    def __init__(self, target, *args, on_error=None):
        self._outcome = {}

        def run():
            try:
                self._outcome["value"] = target(*args)
            except BaseException as exc:  # handed to the test's thread
                self._outcome["error"] = exc
                if on_error is not None:
                    on_error()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = TIMEOUT):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the peer did not finish"
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome.get("value")


def hostile_server(server_cert, version: int, cipher: KernelCipher = KernelCipher.AES_GCM_128):
    """(our socket, the hostile server on the other end of a loopback pair)."""
    ours, theirs = loopback_pair()
    return ours, HostileServer(theirs, version, cert=server_cert.cert, key=server_cert.key, cipher=cipher,
                               timeout=TIMEOUT)


def our_client(ctx, sock, **options) -> kp.Connection:
    conn = kp.Connection(ctx, sock, **options)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    return conn


def our_server(ctx, sock, **options) -> kp.Connection:
    conn = kp.Connection(ctx, sock, **options)
    conn.set_accept_state()
    return conn


def recv_exactly(conn, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += conn.recv(min(1 << 16, size - len(data)))
    return bytes(data)


def cpython_recv_exactly(sock, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 16, size - len(data)))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def common_name(certificate) -> str:
    from cryptography.x509.oid import NameOID
    return certificate.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def expect_kernel_or_reason(conn) -> None:
    """Under kTLS both directions are the kernel's; on the host pyOpenSSL keeps them and says why."""
    status = conn.ktls
    if KTLS:
        assert status.tx and status.rx and status.tx_reason is None, status
        assert conn.ktls_state is ConnectionState.KERNEL
    else:
        assert not status.tx and not status.rx, status
        assert "modprobe tls" in status.rx_reason and "modprobe tls" in status.tx_reason, status
        assert conn.ktls_state is ConnectionState.OPENSSL


class Installs:
    """TLS_TX/TLS_RX installations counted by /proc/net/tls_stat since this object was made."""

    def __init__(self):
        kernel.probe()  # its own installs happen once per process, never inside a delta
        self.before = kernel.tls_stat()

    def check(self, tx: int, rx: int) -> None:
        after = kernel.tls_stat()
        delta = tuple(after.get(name, 0) - self.before.get(name, 0) for name in ("TlsTxSw", "TlsRxSw"))
        assert delta == ((tx, rx) if KTLS else (0, 0)), f"tls_stat installs (TX, RX): {delta}"


# --- pyOpenSSL's API ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_is_a_pyopenssl_connection_and_reports_what_the_peer_negotiated(pki, server_cert, version):
    client_sock, server_sock = loopback_pair()
    up, down = os.urandom(1 << 20), os.urandom((1 << 20) + 7)
    server_ctx = cpython_server_context(server_cert, version)
    server_ctx.set_alpn_protocols(["http/1.1"])

    def serve():
        with server_ctx.wrap_socket(server_sock, server_side=True) as sock:
            received = cpython_recv_exactly(sock, len(up))
            sock.sendall(down)
            return sock.version(), sock.cipher()[0], hashlib.sha256(received).hexdigest()

    installs = Installs()
    peer = Background(serve)
    ctx = pyopenssl_context(ca=pki.ca_path)
    ctx.set_alpn_protos([b"h2", b"http/1.1"])
    conn = our_client(ctx, client_sock)
    try:
        assert isinstance(conn, SSL.Connection)
        conn.do_handshake()
        conn.sendall(up)
        assert hashlib.sha256(recv_exactly(conn, len(down))).hexdigest() == hashlib.sha256(down).hexdigest()
        peer_version, peer_cipher, peer_digest = peer.result()
        assert peer_digest == hashlib.sha256(up).hexdigest()
        assert conn.get_protocol_version_name() == peer_version == VERSION_NAMES[version]
        assert conn.get_cipher_name() == peer_cipher
        assert conn.get_alpn_proto_negotiated() == b"http/1.1"
        assert common_name(conn.get_peer_certificate()) == "localhost"
        chain = conn.get_peer_cert_chain()
        assert chain and common_name(chain[0]) == "localhost"
        expect_kernel_or_reason(conn)
        assert conn.ktls.version == VERSION_NAMES[version]
        installs.check(1, 1)
    finally:
        conn.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_server_with_client_certificates_and_sni(pki, server_cert, version):
    client_cert = pki.issue("pyopenssl client", client=True)
    client_sock, server_sock = loopback_pair()
    up, down = os.urandom(300_000), os.urandom(200_001)

    def connect():
        ctx = cpython_client_context(pki.ca_path, version)
        ctx.load_cert_chain(client_cert.chain_path, client_cert.key_path)
        with ctx.wrap_socket(client_sock, server_hostname="localhost") as sock:
            sock.sendall(up)
            return hashlib.sha256(cpython_recv_exactly(sock, len(down))).hexdigest()

    peer = Background(connect)
    conn = our_server(pyopenssl_context(server_cert=server_cert, ca=pki.ca_path), server_sock)
    try:
        conn.do_handshake()
        assert conn.get_servername() == b"localhost"
        assert common_name(conn.get_peer_certificate()) == "pyopenssl client"
        assert hashlib.sha256(recv_exactly(conn, len(up))).digest() == hashlib.sha256(up).digest()
        conn.sendall(down)
        assert peer.result() == hashlib.sha256(down).hexdigest()
        expect_kernel_or_reason(conn)
    finally:
        conn.close()


def test_accept_and_connect_make_kernel_connections(pki, server_cert):
    listener = socket.create_server(("127.0.0.1", 0))
    server = kp.Connection(pyopenssl_context(server_cert=server_cert), listener)
    client = kp.Connection(pyopenssl_context(ca=pki.ca_path), socket.socket())
    try:
        client.connect(listener.getsockname())
        accepted, _ = server.accept()
        assert isinstance(accepted, kp.Connection)
        peer = Background(accepted.do_handshake)
        client.do_handshake()
        peer.result()
        client.sendall(b"ping")
        assert recv_exactly(accepted, 4) == b"ping"
        expect_kernel_or_reason(client)
        expect_kernel_or_reason(accepted)
        accepted.close()
    finally:
        client.close()
        server.close()


# --- resumption: tickets re-fed to pyOpenSSL ------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_resumes_with_the_session_from_tickets_the_kernel_received(pki, server_cert, version):
    server_ctx = cpython_server_context(server_cert, version)
    ctx = pyopenssl_context(ca=pki.ca_path, version=version)

    def exchange(session=None) -> tuple[object, bool]:
        client_sock, server_sock = loopback_pair()

        def serve():
            with server_ctx.wrap_socket(server_sock, server_side=True) as sock:
                request = cpython_recv_exactly(sock, 5)
                sock.sendall(b"reply:" + request)
                return sock.session_reused

        peer = Background(serve)
        conn = our_client(ctx, client_sock)
        if session is not None:
            conn.set_session(session)
        try:
            conn.do_handshake()
            conn.sendall(b"hello")
            # The reply comes after the server's tickets (TLS 1.3): reading it feeds them.
            assert recv_exactly(conn, 11) == b"reply:hello"
            expect_kernel_or_reason(conn)
            conn.shutdown()  # a session is resumable after a connection that ended properly
            reused = peer.result()
            return conn.get_session(), reused
        finally:
            conn.close()

    session, reused = exchange()
    assert not reused
    assert session is not None
    gc.collect()  # the first connection's SSL object is freed: OpenSSL keeps a properly ended session
    _, reused = exchange(session)
    assert reused, "CPython's server did not resume the session pyOpenSSL kept"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_server_resumes_a_client_session(pki, server_cert, version):
    ctx = pyopenssl_context(server_cert=server_cert, version=version)
    ctx.set_session_id(b"ktls_ossl pyopenssl tests")
    client_ctx = cpython_client_context(pki.ca_path, version)

    def exchange(session=None):
        client_sock, server_sock = loopback_pair()

        def connect():
            with client_ctx.wrap_socket(client_sock, server_hostname="localhost", session=session) as sock:
                sock.sendall(b"hello")
                assert cpython_recv_exactly(sock, 5) == b"world"
                return sock.session, sock.session_reused

        peer = Background(connect)
        conn = our_server(ctx, server_sock)
        try:
            conn.do_handshake()
            assert recv_exactly(conn, 5) == b"hello"
            conn.sendall(b"world")
            result = peer.result()
            expect_kernel_or_reason(conn)
            return result
        finally:
            conn.close()

    session, reused = exchange()
    assert not reused
    _, reused = exchange(session)
    assert reused


# --- KeyUpdate ----------------------------------------------------------------------------------------

def test_key_update_both_ways_mid_stream(pki, server_cert):
    """Ours, requested: CPython's OpenSSL reads under our next key and answers with its own
    KeyUpdate, which the kernel then reads under its next key; tls_stat counts both rekeys. On a
    kernel that cannot rekey, the specific error, and the connection goes on under its first keys."""
    client_sock, server_sock = loopback_pair()
    size = 100_000

    def serve():
        with cpython_server_context(server_cert, TLS_1_3_VERSION).wrap_socket(server_sock, server_side=True) as sock:
            while True:
                data = sock.recv(size)
                if not data:
                    return
                data += cpython_recv_exactly(sock, size - len(data))
                sock.sendall(hashlib.sha256(data).digest())

    peer = Background(serve)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), client_sock)
    rekeys = RekeyCounters()
    rounds = 5 if REKEY else 1
    try:
        conn.do_handshake()
        for number in range(rounds):
            if not KTLS:
                with pytest.raises(ValueError, match="no KeyUpdate API"):
                    conn.key_update(request_peer=True)
            elif not REKEY:
                with pytest.raises(SSL.Error) as caught:
                    conn.key_update(request_peer=True)
                assert isinstance(caught.value.ktls_error, KTLSRekeyUnsupportedError)
            else:
                conn.key_update(request_peer=True)
            data = os.urandom(size)
            conn.sendall(data)
            assert recv_exactly(conn, 32) == hashlib.sha256(data).digest()
        if KTLS:
            rekeys.check(rounds, rounds)
        conn.shutdown()
    finally:
        conn.close()
    peer.result()


@pytest.mark.parametrize("requested", [False, True], ids=["plain", "requested"])
def test_peer_key_update(pki, server_cert, requested):
    """The hostile server's KeyUpdate with data behind it: read under the next key (7.2), answered
    with ours when requested; the specific error where the kernel cannot rekey."""
    ours, peer_side = hostile_server(server_cert, TLS_1_3_VERSION)

    def script():
        peer_side.complete()
        peer_side.recv_app(b"ready")
        peer_side.key_update(requested=requested)
        peer_side.queue_record(ContentType.APPLICATION_DATA, b"after the update")
        peer_side.flush()
        if requested:
            peer_side.recv_app(b"answer")
        return peer_side

    peer = Background(script, on_error=peer_side.close)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), ours)
    rekeys = RekeyCounters()
    try:
        conn.do_handshake()
        conn.sendall(b"ready")
        if KTLS and not kernel_can_rekey():
            with pytest.raises(SSL.Error) as caught:
                conn.recv(100)
            assert isinstance(caught.value.ktls_error, KTLSRekeyUnsupportedError)
            return
        assert recv_exactly(conn, 16) == b"after the update"
        if requested:
            conn.sendall(b"answer")
        peer.result()
        assert peer_side.post_handshake.count(("handshake", HandshakeType.key_update)) == int(requested)
        if KTLS:
            rekeys.check(int(requested), 1)
    finally:
        conn.close()
        peer_side.close()


# --- refused post-handshake messages ---------------------------------------------------------------

def test_post_handshake_authentication_is_refused(pki, server_cert):
    """pyOpenSSL offers no post-handshake authentication: a CertificateRequest after the handshake
    ends the connection with unexpected_message, in the kernel as in pyOpenSSL."""
    ours, peer_side = hostile_server(server_cert, TLS_1_3_VERSION)

    def script():
        peer_side.complete()
        peer_side.queue_handshake(HandshakeType.certificate_request, certificate_request_body(), transcript=False)
        peer_side.queue_record(ContentType.APPLICATION_DATA, b"must not be delivered")
        peer_side.flush()
        return peer_side.drain(TIMEOUT)

    peer = Background(script, on_error=peer_side.close)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), ours)
    try:
        conn.do_handshake()
        with pytest.raises(SSL.Error) as caught:
            conn.recv(100)
        assert caught.value.args[0][0] == ("SSL routines", "", "unexpected message")  # pyOpenSSL's own words
        if KTLS:
            assert "certificate_request" in str(caught.value.ktls_error)
        with pytest.raises(SSL.Error):
            conn.recv(100)  # failed for good
        conn.close()
        observed = peer.result()
        assert observed.first_alert == "fatal unexpected_message", observed
    finally:
        conn.close()
        peer_side.close()


@pytest.mark.ktls
def test_renegotiation_is_refused_and_the_connection_goes_on(pki, server_cert):
    ours, peer_side = hostile_server(server_cert, TLS_1_2_VERSION)

    def script():
        peer_side.complete()
        peer_side.queue_handshake(HandshakeType.hello_request, b"", transcript=False)
        peer_side.queue_record(ContentType.APPLICATION_DATA, b"still here")
        peer_side.flush()
        answers = [peer_side.recv_record() for _ in range(2)]
        peer_side.close_notify()
        return answers, peer_side.drain(TIMEOUT)

    peer = Background(script, on_error=peer_side.close)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), ours)
    try:
        conn.do_handshake()
        assert recv_exactly(conn, 10) == b"still here"
        conn.sendall(b"and so are we")
        with pytest.raises(SSL.ZeroReturnError):
            conn.recv(100)
        assert conn.shutdown() is True
        conn.close()
        answers, observed = peer.result()
        assert answers == [(ContentType.ALERT, bytes([1, AlertDescription.no_renegotiation])),
                           (ContentType.APPLICATION_DATA, b"and so are we")]
        assert observed.first_alert == "warning close_notify", observed
        with pytest.raises(SSL.Error, match="renegotiation is refused"):
            conn.renegotiate()
    finally:
        conn.close()
        peer_side.close()


# --- the handoff: exact, nothing early -----------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("cipher", list(KernelCipher), ids=lambda c: c.name.lower())
def test_data_and_ticket_glued_to_the_servers_finished(pki, server_cert, version, cipher):
    """The hostile server sends its Finished and, in the same TCP segment, a NewSessionTicket
    (TLS 1.3) and data: the handshake reads exactly to the Finished's end, so the kernel receives
    them at the first sequence numbers of its key, which is the one the peer's own key schedule
    derived; the data arrives after the handshake, whole."""
    ours, peer_side = hostile_server(server_cert, version, cipher=cipher)
    glued = b"glued to the Finished " * 100

    def script():
        peer_side.start()
        if version == TLS_1_3_VERSION:
            peer_side.queue_finished()
            peer_side.queue_handshake(HandshakeType.new_session_ticket, _ticket_body(), transcript=False)
            peer_side.queue_record(ContentType.APPLICATION_DATA, glued)
            peer_side.flush()
            peer_side.recv_peer_finished()
        else:
            peer_side.recv_peer_finished()
            peer_side.queue_ccs()
            peer_side.queue_finished()
            peer_side.queue_record(ContentType.APPLICATION_DATA, glued)
            peer_side.flush()
        peer_side.recv_app(b"done")
        return peer_side

    peer = Background(script, on_error=peer_side.close)
    ctx = pyopenssl_context(ca=pki.ca_path)
    _pin(ctx, version, cipher)
    conn = our_client(ctx, ours)
    try:
        conn.do_handshake()
        events = [what for _, what in conn.ktls_events]
        assert not any("delivered" in what for what in events)
        if KTLS:
            rx = kernel.read_crypto_info(ours, keys.Direction.RX)
            expected = _peer_write_keys(peer_side, version, cipher)
            assert (rx.key, rx.seq) == (expected.key, expected.seq)
            assert rx.seq == (0 if version == TLS_1_3_VERSION else 1)
        assert recv_exactly(conn, len(glued)) == glued
        conn.sendall(b"done")
        peer.result()
        expect_kernel_or_reason(conn)
        if version == TLS_1_3_VERSION and KTLS:
            assert "NewSessionTicket accepted by OpenSSL" in [what for _, what in conn.ktls_events]
    finally:
        conn.close()
        peer_side.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_data_glued_to_the_clients_finished(pki, server_cert, version):
    """The same on our server: the hostile client's data in the segment of its Finished."""
    ours, theirs = loopback_pair()
    peer_side = HostileClient(theirs, version, timeout=TIMEOUT)
    glued = b"client data behind its Finished"

    def script():
        peer_side.start()
        if version == TLS_1_2_VERSION:
            peer_side.queue_key_exchange()
        peer_side.queue_ccs()
        peer_side.queue_finished()
        peer_side.queue_record(ContentType.APPLICATION_DATA, glued)
        peer_side.flush()
        peer_side.recv_peer_finished()
        peer_side.recv_app(b"ok")
        return peer_side

    peer = Background(script, on_error=peer_side.close)
    conn = our_server(pyopenssl_context(server_cert=server_cert), ours)
    try:
        conn.do_handshake()
        assert recv_exactly(conn, len(glued)) == glued
        conn.sendall(b"ok")
        peer.result()
        expect_kernel_or_reason(conn)
    finally:
        conn.close()
        peer_side.close()


def _ticket_body() -> bytes:
    from .hostile.peer import new_session_ticket_body
    return new_session_ticket_body(b"\x07" * 48)


def _pin(ctx: SSL.Context, version: int, cipher: KernelCipher) -> None:
    from .tlshelpers import TLS12_SUITES, TLS13_SUITES
    ctx.set_min_proto_version(PYOPENSSL_VERSIONS[version])
    ctx.set_max_proto_version(PYOPENSSL_VERSIONS[version])
    if version == TLS_1_2_VERSION:
        ctx.set_cipher_list(TLS12_SUITES[("ecdsa", cipher)].encode())
    elif hasattr(ctx, "set_tls13_ciphersuites"):
        ctx.set_tls13_ciphersuites(TLS13_SUITES[cipher].encode())
    else:
        # pyOpenSSL before 24 has no TLS 1.3 suite setter: the test configures it through pyOpenSSL's
        # own bindings (the library never does).
        from OpenSSL._util import lib
        assert lib.SSL_CTX_set_ciphersuites(ctx._context, TLS13_SUITES[cipher].encode()) == 1


def _peer_write_keys(peer_side, version: int, cipher: KernelCipher) -> keys.TrafficKeys:
    """The hostile server's first application write keys, from its own key schedule."""
    if version == TLS_1_3_VERSION:
        return keys.tls13_traffic_keys(peer_side.secrets["server_ap"], cipher, peer_side.hash, 0)
    _, rx = keys.tls12_connection_keys(peer_side.master, peer_side.client_random, peer_side.server_random, cipher,
                                       peer_side.hash, server_side=False, tx_seq=1, rx_seq=1)
    return rx


# --- exceptions: pyOpenSSL's, side by side -------------------------------------------------------

def _native_client(ctx, sock):
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    return conn


def _outcome(make_connection, pki, server_cert, peer_script, *, nonblocking_recv: bool = False):
    """Run ``peer_script(peer)`` against a client made by ``make_connection`` and return what the
    client's next recv raised, as (type, args)."""
    ours, peer_side = hostile_server(server_cert, TLS_1_3_VERSION)

    def script():
        peer_side.complete()
        peer_side.recv_app(b"go")
        peer_script(peer_side)

    peer = Background(script, on_error=peer_side.close)
    conn = make_connection(pyopenssl_context(ca=pki.ca_path), ours)
    try:
        conn.do_handshake()
        conn.sendall(b"go")
        if nonblocking_recv:
            ours.setblocking(False)
        try:
            while True:
                conn.recv(1000)
        except Exception as exc:
            peer.result()
            if type(exc) is SSL.Error:
                # The first (primary) entry: OpenSSL 3.2 and later queue "record layer failure" behind
                # a record error, which the kernel's record layer has no counterpart for.
                return type(exc), exc.args[0][0]
            return type(exc), exc.args
    finally:
        ours.close()
        peer_side.close()


def _close_notify(peer):
    peer.send_app(b"last words")
    peer.close_notify()


def _ragged_eof(peer):
    peer.send_app(b"last words")
    peer.shutdown_write()


def _fatal_alert(peer):
    peer.send_alert(2, AlertDescription.handshake_failure)


def _forged_record(peer):
    peer.send_app(b"forged", flip=3)


def _reset(peer):
    peer.wait_delivered(TIMEOUT)
    peer.reset()


def _nothing_yet(peer):
    peer.wait_delivered(TIMEOUT)


@pytest.mark.parametrize("peer_script, nonblocking", [
    (_close_notify, False), (_ragged_eof, False), (_fatal_alert, False), (_forged_record, False), (_reset, False),
    (_nothing_yet, True),
], ids=["close_notify", "ragged_eof", "fatal_alert", "forged_record", "reset", "nonblocking_no_data"])
def test_exceptions_are_pyopenssls(pki, server_cert, peer_script, nonblocking):
    native = _outcome(_native_client, pki, server_cert, peer_script, nonblocking_recv=nonblocking)
    ours = _outcome(our_client, pki, server_cert, peer_script, nonblocking_recv=nonblocking)
    assert ours == native


# --- blocking modes, sendfile, closing -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nonblocking", "timeout"])
def test_nonblocking_handshake_and_data_both_roles(pki, server_cert, mode):
    """A socket with a timeout is non-blocking for pyOpenSSL: every wait is WantReadError/
    WantWriteError and the caller polls, on both ends."""
    client_sock, server_sock = loopback_pair()
    data = os.urandom(3 << 20)
    client = our_client(pyopenssl_context(ca=pki.ca_path), client_sock)
    server = our_server(pyopenssl_context(server_cert=server_cert), server_sock)
    for sock in (client_sock, server_sock):
        sock.setblocking(False) if mode == "nonblocking" else sock.settimeout(5.0)
    wants = {"read": 0, "write": 0}

    def drive(conn, sock, call):
        while True:
            try:
                return call()
            except SSL.WantReadError:
                wants["read"] += 1
                assert select.select([sock], [], [], TIMEOUT)[0], "nothing to read before the timeout"
            except SSL.WantWriteError:
                wants["write"] += 1
                assert select.select([], [sock], [], TIMEOUT)[1], "not writable before the timeout"

    peer = Background(drive, server, server_sock, server.do_handshake)
    drive(client, client_sock, client.do_handshake)
    peer.result()

    def receive():
        received = hashlib.sha256()
        count = 0
        while count < len(data):
            chunk = drive(server, server_sock, lambda: server.recv(1 << 16))
            received.update(chunk)
            count += len(chunk)
        return received.digest()

    peer = Background(receive)
    view, sent = memoryview(data), 0
    while sent < len(data):
        sent += drive(client, client_sock, lambda: client.send(view[sent:sent + (1 << 18)]))
    assert peer.result() == hashlib.sha256(data).digest()
    assert wants["read"] > 0
    expect_kernel_or_reason(client)
    expect_kernel_or_reason(server)
    client.close()
    server.close()


def test_sendfile_through_the_kernel(pki, server_cert, tmp_path):
    client_sock, server_sock = loopback_pair()
    path = tmp_path / "payload"
    data = os.urandom((4 << 20) + 123)
    path.write_bytes(data)

    def serve():
        with cpython_server_context(server_cert).wrap_socket(server_sock, server_side=True) as sock:
            return hashlib.sha256(cpython_recv_exactly(sock, len(data) - 1000)).digest()

    installs = Installs()
    peer = Background(serve)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), client_sock)
    try:
        conn.do_handshake()
        with open(path, "rb") as file:
            assert conn.sendfile(file, 1000) == len(data) - 1000
            assert file.tell() == len(data) or not KTLS
        assert peer.result() == hashlib.sha256(data[1000:]).digest()
        expect_kernel_or_reason(conn)
        installs.check(1, 1)
    finally:
        conn.close()


def test_close_from_another_thread_ends_a_blocked_recv(pki, server_cert):
    client_sock, server_sock = loopback_pair()
    handshaken = threading.Event()

    def serve():
        with cpython_server_context(server_cert).wrap_socket(server_sock, server_side=True) as sock:
            handshaken.set()
            return sock.recv(10)  # until our side goes away

    peer = Background(serve)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), client_sock)
    conn.do_handshake()
    reader = Background(lambda: conn.recv(100))
    assert handshaken.wait(TIMEOUT)
    fd = client_sock.fileno()
    conn.close()
    with pytest.raises(SSL.SysCallError) as caught:
        reader.result()
    assert caught.value.args[0] == 9  # EBADF: the socket was closed
    with pytest.raises(OSError):
        os.fstat(fd)  # and its descriptor is gone
    peer.result()


def test_shutdown_sends_close_notify_then_waits_for_the_peers(pki, server_cert):
    client_sock, server_sock = loopback_pair()

    def serve():
        with cpython_server_context(server_cert).wrap_socket(server_sock, server_side=True) as sock:
            assert sock.recv(10) == b""  # our close_notify
            return sock.unwrap()  # sends CPython's close_notify

    peer = Background(serve)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), client_sock)
    try:
        conn.do_handshake()
        assert conn.shutdown() is False
        assert conn.get_shutdown() & SSL.SENT_SHUTDOWN
        assert conn.shutdown() is True
        assert conn.get_shutdown() == SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN
        peer.result().close()
    finally:
        conn.close()


# --- fallback and policy ---------------------------------------------------------------------------

def test_policy_userspace_keeps_pyopenssl_and_says_so(pki, server_cert):
    client_sock, server_sock = loopback_pair()

    def serve():
        with cpython_server_context(server_cert).wrap_socket(server_sock, server_side=True) as sock:
            sock.sendall(cpython_recv_exactly(sock, 5))

    installs = Installs()
    peer = Background(serve)
    conn = our_client(pyopenssl_context(ca=pki.ca_path), client_sock, policy=Policy.USERSPACE)
    try:
        conn.do_handshake()
        conn.sendall(b"hello")
        assert recv_exactly(conn, 5) == b"hello"
        peer.result()
        assert (conn.ktls.tx, conn.ktls.rx, conn.ktls.rx_reason) == (False, False, "policy USERSPACE")
        installs.check(0, 0)
    finally:
        conn.close()


@pytest.mark.skipif(KTLS, reason="the kernel here can carry the connection")
def test_require_ktls_fails_before_the_handshake_where_the_kernel_cannot(pki):
    """A kernel without the tls module is known before any byte is sent: the handshake does not
    start (the peer receives nothing), and the error says why."""
    client_sock, server_sock = loopback_pair()
    conn = our_client(pyopenssl_context(ca=pki.ca_path), client_sock, require_ktls=True)
    try:
        with pytest.raises(SSL.Error, match="kernel TLS is required") as caught:
            conn.do_handshake()
        assert isinstance(caught.value.ktls_error, KTLSUnavailableError)
        assert "modprobe tls" in str(caught.value.ktls_error)
        assert conn.ktls_state is ConnectionState.FAILED
        with pytest.raises(SSL.Error, match="kernel TLS is required"):
            conn.send(b"data")  # failed for good
    finally:
        conn.close()
    assert server_sock.recv(100) == b""  # no ClientHello, nothing at all
    server_sock.close()


# --- the context's keylog callback -----------------------------------------------------------------

def test_the_users_keylog_callback_is_chained(pki, server_cert, tmp_path):
    client_sock, server_sock = loopback_pair()
    keylog = tmp_path / "cpython.keylog"
    server_ctx = cpython_server_context(server_cert, TLS_1_3_VERSION)
    server_ctx.keylog_filename = str(keylog)
    peer = Background(lambda: server_ctx.wrap_socket(server_sock, server_side=True))
    ctx = kp.prepare_context(pyopenssl_context(ca=pki.ca_path))
    lines = []
    ctx.set_keylog_callback(lambda conn, line: lines.append(line))
    conn = our_client(ctx, client_sock)
    try:
        conn.do_handshake()
        peer.result().close()
        theirs = {line.encode() for line in keylog.read_text().splitlines() if line and not line.startswith("#")}
        assert set(lines) == theirs and len(lines) == 5
        expect_kernel_or_reason(conn)
    finally:
        conn.close()


def test_a_context_with_its_own_keylog_callback_is_refused_with_the_way_out():
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_keylog_callback(lambda conn, line: None)
    with pytest.raises(ValueError, match="already has a keylog callback.*keylog_callback"):
        kp.Connection(ctx, socket.socket())
    kp.prepare_context(SSL.Context(SSL.TLS_METHOD), keylog_callback=lambda conn, line: None)  # the way


def test_a_context_used_before_preparation(pki, server_cert):
    """pyOpenSSL 26.2 and later freeze a context at its first connection: a clear error that
    says what to do. Earlier versions let the callback change, and the connection works."""
    ctx = pyopenssl_context(ca=pki.ca_path)
    SSL.Connection(ctx, None)
    if PYOPENSSL_VERSION >= (26, 2):
        with pytest.raises(ValueError, match="prepare_context.*before the context's first connection"):
            kp.Connection(ctx, socket.socket())
        return
    client_sock, server_sock = loopback_pair()
    peer = Background(lambda: cpython_server_context(server_cert).wrap_socket(server_sock, server_side=True))
    conn = our_client(ctx, client_sock)
    try:
        conn.do_handshake()
        peer.result().close()
        expect_kernel_or_reason(conn)
    finally:
        conn.close()


def test_sni_callback_switching_contexts_keeps_kernel_tls(pki, server_cert):
    """A server's SNI callback moves the connection to another context (set_context): that one is
    prepared too, so the TLS 1.3 secrets still arrive."""
    other = pki.issue("other.example", dns=["other.example"])
    other_ctx = pyopenssl_context(server_cert=other)
    ctx = pyopenssl_context(server_cert=server_cert)
    ctx.set_tlsext_servername_callback(
        lambda conn: conn.set_context(other_ctx) if conn.get_servername() == b"other.example" else None)
    client_sock, server_sock = loopback_pair()

    def connect():
        client_ctx = cpython_client_context(pki.ca_path, TLS_1_3_VERSION)
        with client_ctx.wrap_socket(client_sock, server_hostname="other.example") as sock:
            sock.sendall(b"sni")
            assert cpython_recv_exactly(sock, 2) == b"ok"  # the connection stays up past our handoff
            return sock.getpeercert()["subject"]

    peer = Background(connect)
    conn = our_server(ctx, server_sock)
    try:
        conn.do_handshake()
        assert recv_exactly(conn, 3) == b"sni"
        conn.sendall(b"ok")
        assert ((("commonName", "other.example"),) in peer.result())
        expect_kernel_or_reason(conn)
    finally:
        conn.close()


def test_the_sockets_data_calls_are_not_delegated_past_tls():
    """pyOpenSSL hands unknown attributes to the socket; its data calls would bypass TLS."""
    with socket.socket() as sock:
        conn = kp.Connection(SSL.Context(SSL.TLS_METHOD), sock)
        for name in ("sendmsg", "recvmsg", "recvmsg_into", "sendto", "recvfrom", "recvfrom_into"):
            with pytest.raises(AttributeError, match="bypass TLS"):
                getattr(conn, name)
        assert conn.fileno() == sock.fileno() and conn.gettimeout() == sock.gettimeout()


def test_a_connection_needs_a_tcp_socket():
    ctx = SSL.Context(SSL.TLS_METHOD)
    with pytest.raises(TypeError, match="needs a TCP socket"):
        kp.Connection(ctx, None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="stream"):
            kp.Connection(ctx, udp)
    with socket.socket() as sock:
        with pytest.raises(ValueError, match="AFTER_CCS is OpenSSL's own kTLS"):
            kp.Connection(ctx, sock, policy=Policy.AFTER_CCS)


def test_a_keylog_callback_replaced_behind_our_back_keeps_pyopenssl_with_the_reason(pki, server_cert):
    """pyOpenSSL's own setter called on the class (bypassing the chain) takes the TLS 1.3 secrets
    away: the connection stays in pyOpenSSL and says why, instead of guessing keys."""
    ctx = kp.prepare_context(pyopenssl_context(ca=pki.ca_path))
    SSL.Context.set_keylog_callback(ctx, lambda conn, line: None)
    client_sock, server_sock = loopback_pair()

    def serve():
        with cpython_server_context(server_cert, TLS_1_3_VERSION).wrap_socket(server_sock, server_side=True) as sock:
            sock.sendall(cpython_recv_exactly(sock, 4))

    peer = Background(serve)
    conn = our_client(ctx, client_sock)
    try:
        conn.do_handshake()
        conn.sendall(b"echo")
        assert recv_exactly(conn, 4) == b"echo"
        peer.result()
        assert not conn.ktls.rx and not conn.ktls.tx
        if KTLS:
            assert "keylog callback did not report the TLS 1.3 traffic secrets" in conn.ktls.rx_reason
    finally:
        conn.close()


def test_without_pyopenssl_the_import_says_how_to_get_it():
    import subprocess
    import sys
    probe = ("import sys; sys.modules['OpenSSL'] = None\n"
             "try:\n    import ktls_ossl.pyopenssl\nexcept ImportError as exc:\n    print(exc)\n"
             "import ktls_ossl; print('core ok')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.stdout.splitlines() == ["ktls_ossl's pyOpenSSL front needs pyOpenSSL: pip install "
                                       "'ktls_ossl[pyopenssl]'", "core ok"], out.stderr


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_suite_the_kernel_cannot_carry_stays_in_pyopenssl(pki, server_cert, role):
    """TLS 1.2 with a CBC suite: the kernel has no such cipher, so after the handshake through the
    pump pyOpenSSL keeps the records (on its memory BIOs), says why, and carries data both ways
    and the close_notify exchange."""
    suite = "ECDHE-ECDSA-AES128-SHA256"
    client_sock, server_sock = loopback_pair()
    up, down = os.urandom(700_000), os.urandom(500_003)
    installs = Installs()

    def cpython_end():
        if role == "client":
            ctx = cpython_server_context(server_cert, TLS_1_2_VERSION)
            ctx.set_ciphers(suite)
            sock = ctx.wrap_socket(server_sock, server_side=True)
        else:
            ctx = cpython_client_context(pki.ca_path, TLS_1_2_VERSION)
            ctx.set_ciphers(suite)
            sock = ctx.wrap_socket(client_sock, server_hostname="localhost")
        cipher = sock.cipher()[0]
        received = cpython_recv_exactly(sock, len(up))
        sock.sendall(down)
        assert sock.recv(10) == b""  # our close_notify
        sock.unwrap().close()
        return hashlib.sha256(received).digest(), cipher

    peer = Background(cpython_end)
    if role == "client":
        ctx = pyopenssl_context(ca=pki.ca_path, version=TLS_1_2_VERSION)
        ctx.set_cipher_list(suite.encode())
        conn = our_client(ctx, client_sock)
    else:
        ctx = pyopenssl_context(server_cert=server_cert, version=TLS_1_2_VERSION)
        ctx.set_cipher_list(suite.encode())
        conn = our_server(ctx, server_sock)
    try:
        conn.do_handshake()
        conn.sendall(up)
        assert recv_exactly(conn, len(down)) == down
        assert conn.shutdown() is False
        assert conn.shutdown() is True
        digest, cipher = peer.result()
        assert digest == hashlib.sha256(up).digest() and cipher == suite
        assert not conn.ktls.tx and not conn.ktls.rx
        if KTLS:
            assert "has no kernel TLS cipher" in conn.ktls.rx_reason, conn.ktls
        installs.check(0, 0)
    finally:
        conn.close()
