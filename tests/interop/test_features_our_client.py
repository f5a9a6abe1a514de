"""Beyond bulk data, ktls_ossl as the client of real servers: s_server's -rev and -www modes, ALPN,
SNI, client certificates, certificate errors (compared with CPython's ssl against the same peer),
session resumption, TLS 1.3 tickets, KeyUpdate, renegotiation, EOF handling, RSA certificates.

Where kernel TLS and OpenSSL must differ (KeyUpdate on a kernel without TLS 1.3 rekey, a
renegotiation the kernel cannot carry out), the test asserts each behaviour exactly.
"""
from __future__ import annotations

import ssl
import time

import pytest

import ktls_ossl
from ktls_ossl import Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import KTLS, REKEY, expect_our_ktls
from ..tlshelpers import TLS12_SUITES, TLS13_SUITES, recv_exactly, same_error, versioned
from .coverage import ROLE_OUR_CLIENT
from .exchange import TIMEOUT, Endpoint, assert_same, client_context, connect
from .peers import (
    CELL_IDS,
    CELLS,
    gnutls_priority,
    no_suite_reason,
    openssl_cipher_args,
    payload,
)

pytestmark = pytest.mark.ktls_or_fallback

S_SERVER = "openssl s_server (userspace)"
GNUTLS_SERV = "gnutls-serv --echo"
VERSIONS = [TLS_1_2_VERSION, TLS_1_3_VERSION]
VERSION_IDS = ["tls12", "tls13"]
VERSION_NAME = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}
LABEL = {TLS_1_2_VERSION: "TLS 1.2", TLS_1_3_VERSION: "TLS 1.3"}


def version_args(version) -> list[str]:
    return ["-tls1_2"] if version == TLS_1_2_VERSION else ["-tls1_3"]








def recv_until_closed(sock) -> tuple[bytes, BaseException | None]:
    data = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(data), None
            data.append(chunk)
    except (OSError, ssl.SSLError) as exc:
        return b"".join(data), exc




# --- s_server's other modes ------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_s_server_rev_text_echo(launch, interop_pki, feature, version):
    """-rev answers every line reversed; "CLOSE" ends the connection with close_notify."""
    feature(f"s_server -rev text echo, close_notify at CLOSE ({LABEL[version]})", peer="openssl s_server -rev",
            role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="rev", extra=version_args(version))
    sock = connect(server.port, versioned(client_context(interop_pki.ca), version), suppress_ragged_eofs=False)
    try:
        expect_our_ktls(sock)
        lines = [bytes(32 + b % 95 for b in payload(length, length)) for length in (1, 100, 4000, 16000, 7)]
        reader = sock.makefile("rb")
        for line in lines:
            sock.sendall(line + b"\n")
            assert reader.readline() == line[::-1] + b"\n"
        sock.sendall(b"CLOSE\n")
        assert reader.read() == b""  # close_notify: an orderly end even with suppress_ragged_eofs=False
        reader.close()
    finally:
        sock.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_s_server_www_status_page(launch, interop_pki, feature, version):
    """-www reports the session as s_server saw it (same suite), then sends close_notify."""
    feature(f"s_server -www status page, close_notify ({LABEL[version]})", peer="openssl s_server -www",
            role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="www", extra=version_args(version))
    sock = connect(server.port, versioned(client_context(interop_pki.ca), version), suppress_ragged_eofs=False)
    try:
        expect_our_ktls(sock)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        page, error = recv_until_closed(sock)
        assert error is None, f"the page did not end with close_notify: {error!r}"
        assert page.startswith(b"HTTP/1.0 200 ok\r\n")
        assert f"New, {VERSION_NAME[version]}, Cipher is {sock.cipher()[0]}".encode() in page
    finally:
        sock.close()


# --- ALPN ----------------------------------------------------------------------------------------

def test_alpn_with_s_server(launch, interop_pki, feature):
    feature("ALPN: server picks http/1.1 from h2,http/1.1", peer="openssl s_server", role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="www", extra=["-alpn", "http/1.1"])
    ctx = client_context(interop_pki.ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    sock = connect(server.port, ctx)
    try:
        assert sock.selected_alpn_protocol() == "http/1.1"
        expect_our_ktls(sock)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_until_closed(sock)[0].startswith(b"HTTP/1.0 200 ok")
    finally:
        sock.close()


def test_alpn_with_gnutls_serv(launch, interop_pki, feature):
    feature("ALPN: server picks http/1.1 from h2,http/1.1", peer="gnutls-serv", role=ROLE_OUR_CLIENT)
    server = launch.gnutls_serv(interop_pki.server, extra=["--alpn", "http/1.1"])
    ctx = client_context(interop_pki.ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    sock = connect(server.port, ctx)
    try:
        assert sock.selected_alpn_protocol() == "http/1.1"
        expect_our_ktls(sock)
        sock.sendall(b"ping\n")
        assert recv_exactly(sock, 5) == b"ping\n"
    finally:
        sock.close()


def test_alpn_no_overlap_is_refused_like_cpython(launch, interop_pki, feature):
    """s_server -alpn answers a client without a common protocol with no_application_protocol."""
    feature("ALPN without overlap: fatal alert, same error as CPython", peer="openssl s_server",
            role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="www", extra=["-alpn", "h3"])
    errors = {}
    for ours in (True, False):
        ctx = client_context(interop_pki.ca, ours=ours)
        ctx.set_alpn_protocols(["http/1.1"])
        with pytest.raises(ssl.SSLError) as info:
            connect(server.port, ctx).close()
        errors[ours] = info.value
    same_error(errors[True], errors[False])
    # (CPython 3.11's reason table has no name for this alert: reason is None for both.)
    assert "tlsv1 alert no application protocol" in str(errors[True])


# --- SNI -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["other.example", "localhost"])
def test_sni_selects_the_servers_certificate(launch, interop_pki, feature, name):
    """s_server -servername other.example serves -cert2 for that name and -cert otherwise."""
    feature(f"SNI: server picks the certificate for {name}", peer="openssl s_server", role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="www", extra=[
        "-servername", "other.example", "-cert2", interop_pki.other.cert_path, "-key2", interop_pki.other.key_path])
    sock = connect(server.port, client_context(interop_pki.ca), server_hostname=name)
    try:
        subject = dict(item for rdn in sock.getpeercert()["subject"] for item in rdn)
        assert subject["commonName"] == name
        expect_our_ktls(sock)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_until_closed(sock)[0].startswith(b"HTTP/1.0 200 ok")
    finally:
        sock.close()


# --- client certificates ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_certificate_accepted(launch, interop_pki, feature, version):
    feature(f"client certificate required and sent ({LABEL[version]})", peer="openssl s_server -Verify",
            role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, extra=["-Verify", "1", "-verify_return_error",
                                                        "-CAfile", interop_pki.ca, *version_args(version)])
    ctx = versioned(client_context(interop_pki.ca), version)
    ctx.load_cert_chain(interop_pki.client.chain_path, interop_pki.client.key_path)
    end = Endpoint(connect(server.port, ctx), server.workdir)
    try:
        expect_our_ktls(end.sock)
        data = payload(20000, 1)
        end.send(data, "sendall")
        assert_same("data after client authentication", server.take_output(len(data)), data)
        server.write(data)
        assert_same("data from the server", end.recv_exactly(len(data), "recv_into"), data)
        summary = server.wait_stderr("Ciphersuite:")
        assert "Client certificate: " in summary or "CN = interop client" in summary, summary
    finally:
        end.close()


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_missing_client_certificate_refused_like_cpython(launch, interop_pki, feature, version):
    """TLS 1.2 fails in the handshake; TLS 1.3 at the first read (the server's alert comes after
    our Finished). Either way ktls_ossl raises what CPython raises, at the same call."""
    feature(f"client certificate required, none sent: refused like CPython ({LABEL[version]})",
            peer="openssl s_server -Verify", role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, extra=["-Verify", "1", "-verify_return_error",
                                                        "-CAfile", interop_pki.ca, *version_args(version)])
    errors, stages = {}, {}
    for ours in (True, False):
        ctx = versioned(client_context(interop_pki.ca, ours=ours), version)
        sock = None
        try:
            sock = connect(server.port, ctx)
            stages[ours] = "read"
            sock.settimeout(TIMEOUT)
            with pytest.raises(ssl.SSLError) as info:
                sock.recv(100)
        except ssl.SSLError as exc:
            stages[ours] = "handshake"
            errors[ours] = exc
        else:
            errors[ours] = info.value
        finally:
            if sock is not None:
                sock.close()
    assert stages[True] == stages[False] == ("handshake" if version == TLS_1_2_VERSION else "read")
    same_error(errors[True], errors[False])
    assert errors[True].reason == ("SSLV3_ALERT_HANDSHAKE_FAILURE" if version == TLS_1_2_VERSION
                                   else "TLSV13_ALERT_CERTIFICATE_REQUIRED")


def test_client_certificate_with_gnutls_serv(launch, interop_pki, feature):
    feature("client certificate required and sent (TLS 1.3)", peer="gnutls-serv --require-client-cert",
            role=ROLE_OUR_CLIENT)
    server = launch.gnutls_serv(interop_pki.server, extra=["--require-client-cert", "--x509cafile", interop_pki.ca])
    ctx = client_context(interop_pki.ca)
    ctx.load_cert_chain(interop_pki.client.chain_path, interop_pki.client.key_path)
    sock = connect(server.port, ctx)
    try:
        expect_our_ktls(sock)
        sock.sendall(b"authenticated\n")
        assert recv_exactly(sock, 14) == b"authenticated\n"
    finally:
        sock.close()


# --- certificate errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("peer", ["s_server", "gnutls-serv"])
@pytest.mark.parametrize("case", ["hostname mismatch", "untrusted CA"])
def test_certificate_errors_like_cpython(launch, interop_pki, feature, peer, case):
    name = "openssl s_server" if peer == "s_server" else "gnutls-serv"
    feature(f"server certificate refused: {case} (CPython's exception)", peer=name, role=ROLE_OUR_CLIENT)
    cert = interop_pki.foreign_server if case == "untrusted CA" else interop_pki.server
    server = (launch.s_server(cert, mode="www") if peer == "s_server" else launch.gnutls_serv(cert))
    hostname = "wrong.example" if case == "hostname mismatch" else "localhost"
    errors = {}
    for ours in (True, False):
        with pytest.raises(ssl.SSLError) as info:
            connect(server.port, client_context(interop_pki.ca, ours=ours), server_hostname=hostname).close()
        errors[ours] = info.value
    same_error(errors[True], errors[False])
    assert isinstance(errors[True], ssl.SSLCertVerificationError)
    assert errors[True].verify_code == (62 if case == "hostname mismatch" else 20)


# --- resumption -------------------------------------------------------------------------------------

RESUMPTION = [
    ("TLS 1.2 session id", TLS_1_2_VERSION, ["-no_ticket"], Policy.AFTER_FINISHED),
    ("TLS 1.2 ticket", TLS_1_2_VERSION, [], Policy.AFTER_FINISHED),
    ("TLS 1.3 ticket", TLS_1_3_VERSION, [], Policy.AFTER_FINISHED),
    ("TLS 1.3 ticket, Policy.USERSPACE", TLS_1_3_VERSION, [], Policy.USERSPACE),
]


@pytest.mark.parametrize("label, version, flags, policy", RESUMPTION, ids=[r[0] for r in RESUMPTION])
def test_session_resumption_with_s_server(launch, interop_pki, feature, label, version, flags, policy):
    feature(f"session resumption: {label}", peer="openssl s_server -www", role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="www", extra=[*version_args(version), *flags])
    ctx = versioned(client_context(interop_pki.ca), version)
    ctx.ktls_policy = policy
    pages, sessions, reused = [], [], []
    for attempt in range(2):
        sock = connect(server.port, ctx, session=sessions[-1] if sessions else None)
        try:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            page, error = recv_until_closed(sock)
            assert error is None, repr(error)
            pages.append(page)
            reused.append(sock.session_reused)
            sessions.append(sock.session)
            if policy is Policy.USERSPACE:
                assert not sock.ktls.tx and not sock.ktls.rx and sock.ktls.rx_reason == "ktls_policy is USERSPACE"
            else:
                expect_our_ktls(sock, f"connection {attempt + 1}")
        finally:
            sock.close()
    assert reused == [False, True]
    assert f"New, {VERSION_NAME[version]}".encode() in pages[0]
    assert f"Reused, {VERSION_NAME[version]}".encode() in pages[1], "s_server did not resume the session"
    assert sessions[0].has_ticket == (not flags)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_session_resumption_with_gnutls_serv(launch, interop_pki, feature, version):
    feature(f"session resumption: {LABEL[version]} ticket", peer="gnutls-serv", role=ROLE_OUR_CLIENT)
    server = launch.gnutls_serv(interop_pki.server, priority=gnutls_priority(version, KernelCipher.AES_GCM_256))
    ctx = versioned(client_context(interop_pki.ca), version)
    session, reused = None, []
    for attempt in range(2):
        sock = connect(server.port, ctx, session=session)
        try:
            expect_our_ktls(sock, f"connection {attempt + 1}")
            sock.sendall(b"hello\n")
            assert recv_exactly(sock, 6) == b"hello\n"
            reused.append(sock.session_reused)
            session = wait_for_ticket(sock)
            assert session.has_ticket, "gnutls-serv sent no ticket within the wait"
        finally:
            sock.close()
    assert reused == [False, True]


def wait_for_ticket(sock, seconds: float = 3.0):
    """The session once a ticket has been processed. GnuTLS may send its TLS 1.3 tickets after the
    first application data, so a client that closes at once has nothing to resume with (true of
    any client); reading on briefly lets the kernel hand the ticket to OpenSSL."""
    deadline = time.monotonic() + seconds
    session = sock.session
    while not session.has_ticket and time.monotonic() < deadline:
        sock.settimeout(0.1)
        try:
            assert sock.recv(1) == b"", "unexpected data while waiting for a ticket"
        except TimeoutError:
            pass
        finally:
            sock.settimeout(TIMEOUT)
        session = sock.session
    return session


@pytest.mark.parametrize("tickets", [0, 1, 2, 3, 4])
def test_s_server_num_tickets(launch, interop_pki, feature, tickets):
    """-num_tickets N: our client meets exactly N NewSessionTickets (in the kernel's record stream
    under kTLS) and can resume iff N > 0."""
    feature(f"TLS 1.3 s_server -num_tickets {tickets}", peer="openssl s_server -www", role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="www", extra=["-tls1_3", "-num_tickets", str(tickets)])
    ctx = versioned(client_context(interop_pki.ca), TLS_1_3_VERSION)
    sock = connect(server.port, ctx)
    try:
        expect_our_ktls(sock)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        page, error = recv_until_closed(sock)
        assert error is None and page.startswith(b"HTTP/1.0 200 ok")
        if KTLS:
            assert sock._sslobj.tickets_received == tickets
        session = sock.session
    finally:
        sock.close()
    assert session.has_ticket == bool(tickets)
    again = connect(server.port, ctx, session=session)
    try:
        assert again.session_reused == bool(tickets)
    finally:
        again.close()


# --- KeyUpdate -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["k", "K"])
def test_key_update_from_s_server(launch, interop_pki, counters, feature, command):
    """s_server 'k' sends a KeyUpdate, 'K' one that asks for ours. 7.2: the connection goes on
    under the new keys (and with 'K' we update ours too); 6.1: KTLSRekeyUnsupportedError at the
    read that meets the KeyUpdate; on the host OpenSSL handles it."""
    what = "update_not_requested" if command == "k" else "update_requested"
    cell = feature(f"TLS 1.3 KeyUpdate from the server ('{command}': {what})", peer="openssl s_server",
                   role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="commands", extra=["-tls1_3"])
    sock = connect(server.port, versioned(client_context(interop_pki.ca), TLS_1_3_VERSION))
    try:
        expect_our_ktls(sock)
        sock.sendall(b"before the update\n")
        server.wait_output("before the update")
        stats = counters()
        server.command(command)  # read on its own: s_server sends the KeyUpdate at once
        server.write(b"sent under the new key\n")
        if KTLS and not REKEY:
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError) as info:
                sock.recv(100)
            assert info.value.reason == "KEY_UPDATE_UNSUPPORTED" and "6.14" in str(info.value)
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError):
                sock.recv(100)  # the connection stays failed
            cell.note("this kernel: KTLSRekeyUnsupportedError when the KeyUpdate arrives")
            return
        assert recv_exactly(sock, 23) == b"sent under the new key\n"
        sock.sendall(b"answer under our key\n")
        server.wait_output("answer under our key")
        if KTLS:
            delta = stats.delta()
            assert delta.get("TlsRxRekeyOk") == 1, delta
            assert delta.get("TlsTxRekeyOk") == (1 if command == "K" else 0), delta
            cell.note(f"kernel rekeyed RX{' and TX' if command == 'K' else ''}")
    finally:
        sock.close()


@pytest.mark.parametrize("peer", ["s_server", "gnutls-serv"])
def test_our_key_update_request(launch, interop_pki, counters, feature, peer):
    """We send KeyUpdate(update_requested): 7.2 and the host go on with new keys both ways;
    6.1 refuses before sending anything and the connection is still usable."""
    cell = feature("TLS 1.3 KeyUpdate from us, requesting the peer's",
                   peer="openssl s_server" if peer == "s_server" else GNUTLS_SERV, role=ROLE_OUR_CLIENT)
    if peer == "s_server":
        server = launch.s_server(interop_pki.server, mode="data", extra=["-tls1_3"])
    else:
        server = launch.gnutls_serv(interop_pki.server, priority=gnutls_priority(TLS_1_3_VERSION, KernelCipher.AES_GCM_128))
    sock = connect(server.port, versioned(client_context(interop_pki.ca), TLS_1_3_VERSION))

    def exchange(text: bytes):
        sock.sendall(text)
        if peer == "s_server":
            assert server.take_output(len(text)) == text
            server.write(text)
        assert recv_exactly(sock, len(text)) == text

    try:
        expect_our_ktls(sock)
        exchange(b"before\n")
        stats = counters()
        if KTLS and not REKEY:
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError) as info:
                sock.key_update(request_peer=True)
            assert "nothing was sent" in str(info.value)
            exchange(b"still fine\n")
            cell.note("this kernel: KTLSRekeyUnsupportedError, nothing sent, connection intact")
            return
        sock.key_update(request_peer=True)
        exchange(b"after our update\n")
        exchange(b"and after the peer's\n")
        if KTLS:
            delta = stats.delta()
            assert (delta.get("TlsTxRekeyOk"), delta.get("TlsRxRekeyOk")) == (1, 1), delta
    finally:
        sock.close()


# --- renegotiation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["r", "R"])
def test_renegotiation_from_s_server(launch, interop_pki, feature, command):
    """s_server 'r' (HelloRequest) / 'R' (and asks for a certificate), TLS 1.2. Under kTLS we cannot
    renegotiate: we answer no_renegotiation, s_server then aborts with handshake_failure, which
    surfaces as CPython's error for that alert. In the host fallback OpenSSL renegotiates, as
    CPython does, and the connection goes on."""
    cell = feature(f"TLS 1.2 renegotiation requested by the server ('{command}')", peer="openssl s_server",
                   role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="commands", extra=["-tls1_2"])
    sock = connect(server.port, versioned(client_context(interop_pki.ca), TLS_1_2_VERSION))
    try:
        expect_our_ktls(sock)
        sock.sendall(b"before\n")
        server.wait_output("before")
        server.command(command)
        server.write(b"after the request\n")
        if KTLS:
            with pytest.raises(ssl.SSLError) as info:
                recv_until_closed_raising(sock)
            assert info.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE", info.value
            events = [what for _, what in sock.ktls_events]
            assert any("renegotiate" in e and "refused" in e for e in events), events
            server.wait_stderr("no renegotiation")  # s_server's own account of why it gave up
            cell.note("kTLS: refused with no_renegotiation; s_server aborts with handshake_failure")
        else:
            assert recv_exactly(sock, 18) == b"after the request\n"
            sock.sendall(b"after renegotiation\n")
            server.wait_output("after renegotiation")
            cell.note("fallback: OpenSSL renegotiates, as CPython does")
    finally:
        sock.close()


def recv_until_closed_raising(sock) -> bytes:
    data, error = recv_until_closed(sock)
    if error is not None:
        raise error
    return data


# --- EOF ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suppress", [True, False], ids=["suppress_ragged_eofs", "report_ragged_eofs"])
@pytest.mark.parametrize("peer", ["s_server q", "gnutls-serv killed"])
def test_peer_closes_tcp_without_close_notify(launch, interop_pki, feature, peer, suppress):
    """A peer that drops TCP: b"" with suppress_ragged_eofs, else SSLEOFError, as CPython."""
    name = "openssl s_server" if peer.startswith("s_server") else GNUTLS_SERV
    feature(f"ragged EOF (TCP closed without close_notify), suppress_ragged_eofs={suppress}",
            peer=name, role=ROLE_OUR_CLIENT)
    outcomes = {}
    for ours in (True, False):
        if peer.startswith("s_server"):
            server = launch.s_server(interop_pki.server, mode="commands")
        else:
            server = launch.gnutls_serv(interop_pki.server)
        sock = connect(server.port, client_context(interop_pki.ca, ours=ours), suppress_ragged_eofs=suppress)
        try:
            sock.settimeout(TIMEOUT)
            if ours:
                expect_our_ktls(sock)
            sock.sendall(b"hello\n")
            if peer.startswith("s_server"):
                server.wait_output("hello")
                server.command("q")  # s_server closes the socket without close_notify
            else:
                assert recv_exactly(sock, 6) == b"hello\n"
                server.stop()  # SIGTERM/SIGKILL: the kernel closes its socket
            outcomes[ours] = recv_until_closed(sock)
        finally:
            sock.close()
            server.stop()
    assert outcomes[True][0] == outcomes[False][0] == b""
    if suppress:
        assert outcomes[True][1] is None and outcomes[False][1] is None
    else:
        assert isinstance(outcomes[True][1], ssl.SSLEOFError)
        same_error(outcomes[True][1], outcomes[False][1])


# --- RSA-2048 certificates ------------------------------------------------------------------------

@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_rsa_certificate_with_s_server(launch, interop_pki, cell, counters, tmp_path, version, cipher):
    entry = cell(peer="openssl s_server (userspace), RSA-2048", role=ROLE_OUR_CLIENT, version=version, cipher=cipher)
    if reason := no_suite_reason(version, cipher, "rsa"):
        pytest.skip(reason)
    entry.row_note("RSA-2048 certificate; 16385 bytes each way")
    server = launch.s_server(interop_pki.rsa_server, mode="data",
                             cipher_args=openssl_cipher_args(version, cipher, "rsa"))
    stats = counters()
    end = Endpoint(connect(server.port, client_context(interop_pki.rsa_ca, version, cipher, key_type="rsa")),
                   str(tmp_path))
    try:
        expect_our_ktls(end.sock)
        expected = TLS12_SUITES[("rsa", cipher)] if version == TLS_1_2_VERSION else TLS13_SUITES[cipher]
        assert end.sock.cipher()[0] == expected
        data = payload(16385, 5)
        end.send(data, "sendall")
        assert_same("16385 bytes to s_server", server.take_output(16385), data)
        server.write(data)
        assert_same("16385 bytes from s_server", end.recv_exactly(16385, "recv_into"), data)
        stats.expect_installs(1, 1, "our client (RSA certificate)")
    finally:
        end.close()



def test_post_handshake_auth_from_s_server(launch, interop_pki, feature):
    """s_server's 'c' asks for a client certificate after the handshake (TLS 1.3). Under kTLS the
    CertificateRequest reaches OpenSSL through the kernel and its answer leaves through it."""
    cell = feature("TLS 1.3 post-handshake client authentication ('c')", peer="openssl s_server",
                   role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="commands",
                             extra=["-tls1_3", "-verify", "1", "-CAfile", interop_pki.ca])
    ctx = versioned(client_context(interop_pki.ca), TLS_1_3_VERSION)
    ctx.post_handshake_auth = True
    ctx.load_cert_chain(interop_pki.client.chain_path, interop_pki.client.key_path)
    sock = connect(server.port, ctx)
    try:
        expect_our_ktls(sock)
        sock.sendall(b"before authentication\n")
        server.wait_output("before authentication")
        server.command("c")
        server.write(b"after the request\n")
        assert recv_exactly(sock, 18) == b"after the request\n"  # our certificate went out here
        log = server.wait_stderr("CN = interop client")
        assert "verify error" not in log, log
        sock.sendall(b"authenticated\n")
        server.wait_output("authenticated")
        if sock.ktls.rx:
            assert any("CertificateRequest answered by OpenSSL" in what for _, what in sock.ktls_events)
            cell.note("the CertificateRequest went to OpenSSL through the kernel; its answer back out")
    finally:
        sock.close()
