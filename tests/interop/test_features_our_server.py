"""Beyond bulk data, ktls_ossl as the server (ktls_ossl.serve) of real clients: ALPN, SNI through
sni_callback (switching sslsocket.context), client certificates accepted and refused, certificates
the client refuses, session resumption, KeyUpdate (gnutls-cli ^rekey^, s_client k/K), renegotiation
attempts (gnutls-cli ^renegotiate^, s_client R), close_notify and ragged EOF, RSA certificates, and
``python -m ktls_ossl serve`` as a subprocess.

Refusals are compared with CPython's ssl serving the same client through the same server class.
"""
from __future__ import annotations

import gc
import os
import re
import ssl
import sys

import pytest

import ktls_ossl
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION

from .conftest import KTLS, REKEY, expect_our_ktls, port_of, read_log
from ..tlshelpers import TLS12_SUITES, TLS13_SUITES, same_error, versioned
from .coverage import ROLE_OUR_SERVER
from .exchange import TIMEOUT, server_context, sha
from .peers import (
    CELL_IDS,
    CELLS,
    LOOPBACK,
    no_suite_reason,
    openssl_cipher_args,
    payload,
)

pytestmark = pytest.mark.ktls_or_fallback

VERSIONS = [TLS_1_2_VERSION, TLS_1_3_VERSION]
VERSION_IDS = ["tls12", "tls13"]
VERSION_NAME = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}
LABEL = {TLS_1_2_VERSION: "TLS 1.2", TLS_1_3_VERSION: "TLS 1.3"}








def cpython_server_context(cert, version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.chain_path, cert.key_path)
    if version is not None:
        versioned(ctx, version)
    return ctx


def echo_once(peer, text: bytes) -> None:
    peer.write(text)
    assert peer.take_output(len(text)) == text


def version_args(version) -> list[str]:
    return ["-tls1_2"] if version == TLS_1_2_VERSION else ["-tls1_3"]


# --- ALPN ------------------------------------------------------------------------------------------

def test_alpn_with_curl(launch, our_servers, interop_pki, feature, tmp_path):
    feature("ALPN: h2,http/1.1 offered, server picks http/1.1", peer="curl (OpenSSL)", role=ROLE_OUR_SERVER)
    (tmp_path / "hello").write_bytes(b"hello")
    ctx = server_context(interop_pki.server)
    ctx.set_alpn_protocols(["http/1.1"])
    server = our_servers.files(ctx, str(tmp_path))
    port = port_of(server)
    peer = launch.run("curl", ["curl", "--verbose", "--silent", "--show-error", "--fail", "--http2",
                               "--cacert", interop_pki.ca, "--resolve", f"localhost:{port}:127.0.0.1",
                               f"https://localhost:{port}/hello"], stdin=False)
    assert peer.wait(60) == 0, peer.report()
    assert peer.stdout.text() == "hello"
    log = peer.stderr_text()
    assert "ALPN: offers h2,http/1.1" in log and "ALPN: server accepted http/1.1" in log, log
    expect_our_ktls(server.wait_records(1, TIMEOUT)[0]["status"])


def test_alpn_with_s_client(launch, our_servers, interop_pki, feature):
    feature("ALPN: h2,http/1.1 offered, server picks http/1.1", peer="openssl s_client", role=ROLE_OUR_SERVER)
    ctx = server_context(interop_pki.server)
    ctx.set_alpn_protocols(["http/1.1", "h2"])  # our preference order decides
    server = our_servers.echo(ctx)
    client = launch.s_client(port_of(server), interop_pki.ca, extra=["-alpn", "h2,http/1.1"])
    echo_once(client, b"alpn\n")
    client.stop()
    record = server.wait_records(1, TIMEOUT)[0]
    assert record["alpn"] == "http/1.1"
    expect_our_ktls(record["ktls"])


# --- SNI -------------------------------------------------------------------------------------------

def sni_server(our_servers, interop_pki, seen: list, *, files_root=None):
    """Our server with the localhost certificate, switching to other.example's context in
    sni_callback (sslsocket.context = ...), the way a CPython server does it."""
    main = server_context(interop_pki.server)
    other = server_context(interop_pki.other)

    def choose(sslsocket, server_name, context):
        seen.append(server_name)
        if server_name == "other.example":
            sslsocket.context = other
        return None

    main.sni_callback = choose
    return our_servers.files(main, files_root) if files_root else our_servers.echo(main)


@pytest.mark.parametrize("name", ["other.example", "localhost"])
def test_sni_with_s_client(launch, our_servers, interop_pki, feature, name):
    feature(f"SNI: sni_callback switches the certificate ({name})", peer="openssl s_client", role=ROLE_OUR_SERVER)
    seen = []
    server = sni_server(our_servers, interop_pki, seen)
    client = launch.s_client(port_of(server), interop_pki.ca, servername=name)
    echo_once(client, b"sni\n")
    summary = client.wait_stderr("Verification: OK")
    assert f"CN = {name}" in summary, summary
    client.stop()
    assert seen == [name]
    expect_our_ktls(server.wait_records(1, TIMEOUT)[0]["ktls"])


def test_sni_with_curl(launch, our_servers, interop_pki, feature, tmp_path):
    feature("SNI: sni_callback switches the certificate (other.example)", peer="curl (OpenSSL)",
            role=ROLE_OUR_SERVER)
    (tmp_path / "hello").write_bytes(b"hello other")
    seen = []
    server = sni_server(our_servers, interop_pki, seen, files_root=str(tmp_path))
    port = port_of(server)
    peer = launch.run("curl", ["curl", "--silent", "--show-error", "--fail", "--cacert", interop_pki.ca,
                               "--resolve", f"other.example:{port}:127.0.0.1",
                               f"https://other.example:{port}/hello"], stdin=False)
    assert peer.wait(60) == 0, peer.report()
    assert peer.stdout.text() == "hello other"
    assert seen == ["other.example"]
    expect_our_ktls(server.wait_records(1, TIMEOUT)[0]["status"])


def test_sni_with_gnutls_cli(launch, our_servers, interop_pki, feature):
    feature("SNI: sni_callback switches the certificate (other.example)", peer="gnutls-cli", role=ROLE_OUR_SERVER)
    seen = []
    server = sni_server(our_servers, interop_pki, seen)
    client = launch.gnutls_cli(port_of(server), interop_pki.ca, servername="other.example")
    echo_once(client, b"sni\n")
    client.close_input()
    assert client.wait() == 0, client.report()
    assert "subject `CN=other.example" in read_log(client)
    assert seen == ["other.example"]
    expect_our_ktls(server.wait_records(1, TIMEOUT)[0]["ktls"])


# --- client certificates ----------------------------------------------------------------------------

def mtls_context(interop_pki, version=None):
    ctx = server_context(interop_pki.server)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(interop_pki.ca)
    return versioned(ctx, version) if version else ctx


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_certificate_from_s_client(launch, our_servers, interop_pki, feature, version):
    feature(f"client certificate required and sent ({LABEL[version]})", peer="openssl s_client",
            role=ROLE_OUR_SERVER)
    server = our_servers.echo(mtls_context(interop_pki, version))
    client = launch.s_client(port_of(server), interop_pki.ca, extra=[
        "-cert", interop_pki.client.cert_path, "-key", interop_pki.client.key_path])
    echo_once(client, b"with a certificate\n")
    client.stop()
    record = server.wait_records(1, TIMEOUT)[0]
    assert record["error"] is None, repr(record["error"])
    subject = dict(item for rdn in record["peer_cert"]["subject"] for item in rdn)
    assert subject["commonName"] == "interop client"
    expect_our_ktls(record["ktls"])


@pytest.mark.parametrize("peer", ["gnutls-cli", "curl"])
def test_client_certificate_from_gnutls_cli_and_curl(launch, our_servers, interop_pki, feature, tmp_path, peer):
    feature("client certificate required and sent (TLS 1.3)", peer="gnutls-cli" if peer == "gnutls-cli"
            else "curl (OpenSSL)", role=ROLE_OUR_SERVER)
    if peer == "gnutls-cli":
        server = our_servers.echo(mtls_context(interop_pki))
        client = launch.gnutls_cli(port_of(server), interop_pki.ca, extra=[
            "--x509certfile", interop_pki.client.cert_path, "--x509keyfile", interop_pki.client.key_path])
        echo_once(client, b"with a certificate\n")
        client.close_input()
        assert client.wait() == 0, client.report()
        record = server.wait_records(1, TIMEOUT)[0]
        assert record["error"] is None and record["peer_cert"], record
        expect_our_ktls(record["ktls"])
    else:
        (tmp_path / "hello").write_bytes(b"hello")
        server = our_servers.files(mtls_context(interop_pki), str(tmp_path))
        port = port_of(server)
        client = launch.run("curl", ["curl", "--silent", "--show-error", "--fail", "--cacert", interop_pki.ca,
                                     "--cert", interop_pki.client.cert_path, "--key", interop_pki.client.key_path,
                                     "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/hello"],
                            stdin=False)
        assert client.wait(60) == 0, client.report()
        assert client.stdout.text() == "hello"
        expect_our_ktls(server.wait_records(1, TIMEOUT)[0]["status"])


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_missing_client_certificate_refused_like_cpython(launch, our_servers, interop_pki, feature, version):
    """s_client without a certificate: our server fails the handshake with CPython's error."""
    feature(f"client certificate required, none sent: refused like CPython ({LABEL[version]})",
            peer="openssl s_client", role=ROLE_OUR_SERVER)
    errors = {}
    for ours in (True, False):
        if ours:
            ctx = mtls_context(interop_pki, version)
        else:
            ctx = cpython_server_context(interop_pki.server, version)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(interop_pki.ca)
        server = our_servers.echo(ctx)
        client = launch.s_client(port_of(server), interop_pki.ca)
        if version == TLS_1_3_VERSION:
            client.write(b"never echoed\n")  # TLS 1.3: the server's check comes after the client's Finished
        record = server.wait_records(1, TIMEOUT)[0]
        errors[ours] = record["error"]
        client.stop()
        assert client.stdout.total == 0, "data was echoed without a client certificate"
    assert errors[True] is not None
    same_error(errors[True], errors[False])
    assert errors[True].reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE",), errors[True]


@pytest.mark.parametrize("case", ["untrusted CA", "hostname mismatch"])
def test_client_refuses_our_certificate_like_cpython(launch, our_servers, interop_pki, feature, case):
    """s_client refuses our certificate and says so with an alert; our server reports that alert
    as CPython's server does."""
    feature(f"client refuses our certificate: {case} (CPython's exception)", peer="openssl s_client",
            role=ROLE_OUR_SERVER)
    cert = interop_pki.foreign_server if case == "untrusted CA" else interop_pki.server
    errors = {}
    for ours in (True, False):
        ctx = server_context(cert) if ours else cpython_server_context(cert)
        server = our_servers.echo(ctx)
        client = launch.s_client(port_of(server), interop_pki.ca,
                                 servername="wrong.example" if case == "hostname mismatch" else "localhost")
        errors[ours] = server.wait_records(1, TIMEOUT)[0]["error"]
        assert client.wait(30) != 0, "s_client accepted a certificate it must refuse"
        assert "Verification error" in client.stderr_text() or "verify error" in client.stderr_text()
    same_error(errors[True], errors[False])


# --- resumption ------------------------------------------------------------------------------------------

RESUMPTION = [
    ("TLS 1.2 session id", TLS_1_2_VERSION, ["-no_ticket"]),
    ("TLS 1.2 ticket", TLS_1_2_VERSION, []),
    ("TLS 1.3 ticket", TLS_1_3_VERSION, []),
]


@pytest.mark.parametrize("label, version, flags", RESUMPTION, ids=[r[0] for r in RESUMPTION])
def test_session_resumption_with_s_client(launch, our_servers, interop_pki, feature, tmp_path, label, version, flags):
    feature(f"session resumption: {label}", peer="openssl s_client -sess_out/-sess_in", role=ROLE_OUR_SERVER)
    server = our_servers.echo(versioned(server_context(interop_pki.server), version))
    session_file = str(tmp_path / "session.pem")
    for attempt, option in enumerate(["-sess_out", "-sess_in"]):
        client = launch.s_client(port_of(server), interop_pki.ca, extra=[option, session_file, *flags], data=False)
        echo_once(client, f"connection {attempt}\n".encode())
        client.close_input()  # close_notify: a session whose connection was cut is not resumed
        assert client.wait() == 0, client.report()
        # Free the finished connection's SSL object now rather than whenever the cyclic garbage
        # collector gets to it: resumption must not depend on that timing.
        gc.collect()
        record = server.wait_records(attempt + 1, TIMEOUT)[attempt]
        assert record["reused"] == bool(attempt), f"connection {attempt + 1}: reused={record['reused']}"
        expect_our_ktls(record["ktls"], f"connection {attempt + 1}")


def test_session_resumption_with_gnutls_cli(launch, our_servers, interop_pki, feature):
    cell = feature("session resumption: TLS 1.3 ticket (gnutls-cli --resume)", peer="gnutls-cli",
                   role=ROLE_OUR_SERVER)
    server = our_servers.echo(server_context(interop_pki.server))
    client = launch.gnutls_cli(port_of(server), interop_pki.ca, extra=["--resume", "--waitresumption"])
    echo_once(client, b"resumed\n")
    client.close_input()
    assert client.wait() == 0, client.report()
    assert "This is a resumed session" in read_log(client), read_log(client)[-2000:]
    records = server.wait_records(2, TIMEOUT)
    assert [r["reused"] for r in records] == [False, True], records
    # gnutls-cli closes its first connection as soon as it holds a ticket: when its FIN is already
    # in when our handshake returns, the tls ULP refuses the half-closed socket (ENOTCONN) and that
    # connection stays in user space, which sock.ktls then says. The resumed one carries data.
    first = records[0]["ktls"]
    if KTLS and not first.active:
        assert "not established" in first.rx_reason and "not established" in first.tx_reason, first
        cell.note("first connection sometimes half-closed before the handoff: stays in user space (ENOTCONN)")
    else:
        expect_our_ktls(first)
    expect_our_ktls(records[1]["ktls"])


# --- KeyUpdate -----------------------------------------------------------------------------------------

def expect_key_update_refused(server, cell) -> None:
    """A kernel without TLS 1.3 rekey: our server fails with KTLSRekeyUnsupportedError the moment
    the client's KeyUpdate arrives."""
    record = server.wait_records(1, TIMEOUT)[0]
    assert isinstance(record["error"], ktls_ossl.KTLSRekeyUnsupportedError), repr(record["error"])
    assert record["error"].reason == "KEY_UPDATE_UNSUPPORTED"
    cell.note("this kernel: our server fails with KTLSRekeyUnsupportedError when the KeyUpdate arrives")


@pytest.mark.parametrize("command", ["^rekey^", "^rekey1^"])
def test_key_update_from_gnutls_cli(launch, our_servers, interop_pki, counters, feature, command):
    """gnutls-cli ^rekey^ updates its keys and asks for ours, ^rekey1^ only its own. 7.2: the echo
    goes on under the new keys; 6.1: our server fails with KTLSRekeyUnsupportedError when the
    KeyUpdate arrives; host: OpenSSL handles it."""
    cell = feature(f"TLS 1.3 KeyUpdate from the client ({command})", peer="gnutls-cli", role=ROLE_OUR_SERVER)
    server = our_servers.echo(server_context(interop_pki.server))
    client = launch.gnutls_cli(port_of(server), interop_pki.ca, extra=["--inline-commands"])
    echo_once(client, b"before\n")
    stats = counters()
    client.command(command)
    client.write(b"after\n")
    if KTLS and not REKEY:
        expect_key_update_refused(server, cell)
        return
    assert client.take_output(6) == b"after\n"
    echo_once(client, b"and more\n")
    client.close_input()
    assert client.wait() == 0, client.report()
    if KTLS:
        delta = stats.delta()
        assert delta.get("TlsRxRekeyOk") == 1, delta
        assert delta.get("TlsTxRekeyOk") == (1 if command == "^rekey^" else 0), delta
    record = server.wait_records(1, TIMEOUT)[0]
    assert record["error"] is None, repr(record["error"])
    assert record["bytes"] == len(b"before\nafter\nand more\n")


@pytest.mark.parametrize("command", ["k", "K"])
def test_key_update_from_s_client(launch, our_servers, interop_pki, counters, feature, command):
    cell = feature(f"TLS 1.3 KeyUpdate from the client (s_client '{command}')", peer="openssl s_client",
                   role=ROLE_OUR_SERVER)
    server = our_servers.echo(server_context(interop_pki.server))
    client = launch.s_client(port_of(server), interop_pki.ca, data=False)
    echo_once(client, b"before\n")
    stats = counters()
    client.command(command)
    client.write(b"after\n")
    if KTLS and not REKEY:
        expect_key_update_refused(server, cell)
        return
    assert client.take_output_until(b"after\n").endswith(b"after\n")
    if KTLS:
        delta = stats.delta()
        assert delta.get("TlsRxRekeyOk") == 1, delta
        assert delta.get("TlsTxRekeyOk") == (1 if command == "K" else 0), delta


# --- renegotiation ----------------------------------------------------------------------------------------

def test_renegotiation_from_gnutls_cli(launch, our_servers, interop_pki, feature):
    """gnutls-cli ^renegotiate^ (TLS 1.2): every ClientHello gets a no_renegotiation warning (kTLS
    cannot renegotiate; OpenSSL 3 refuses client-initiated renegotiation too). gnutls-cli retries,
    then gives up ("ReHandshake has failed") and exits; exactly as against CPython's server."""
    cell = feature("TLS 1.2 renegotiation requested by the client (^renegotiate^)", peer="gnutls-cli",
                   role=ROLE_OUR_SERVER)
    outcomes, errors = {}, {}
    for ours in (True, False):
        ctx = versioned(server_context(interop_pki.server) if ours else cpython_server_context(interop_pki.server),
                        TLS_1_2_VERSION)
        server = our_servers.echo(ctx)
        client = launch.gnutls_cli(port_of(server), interop_pki.ca, extra=["--inline-commands"])
        echo_once(client, b"before\n")
        client.write(b"^renegotiate^\n")
        status = client.wait(60)
        text = client.stderr_text()
        assert "ReHandshake has failed" in text, client.report()
        record = server.wait_records(1, TIMEOUT)[0]
        assert record["bytes"] == len(b"before\n")
        outcomes[ours] = (status, text.count("A TLS warning alert has been received"))
        errors[ours] = record["error"]  # gnutls-cli's parting fatal alert
        if ours and KTLS:
            refusals = [what for _, what in record["events"] if "renegotiate" in what and "refused" in what]
            # one refusal per ClientHello; gnutls-cli stops reading before our last answer
            assert outcomes[ours][1] <= len(refusals) <= outcomes[ours][1] + 1, record["events"]
    assert outcomes[True] == outcomes[False], outcomes
    assert outcomes[True][0] != 0 and outcomes[True][1] >= 1
    same_error(errors[True], errors[False])
    assert errors[True].reason == "TLSV1_ALERT_INTERNAL_ERROR"
    cell.note(f"each attempt answered with no_renegotiation; gnutls-cli gives up after {outcomes[True][1]} "
              "and exits, as against CPython")


def test_renegotiation_from_s_client(launch, our_servers, interop_pki, feature):
    """s_client 'R' (TLS 1.2): refused with no_renegotiation; OpenSSL's client then aborts the
    connection with handshake_failure, which our server reports as CPython's server does."""
    feature("TLS 1.2 renegotiation requested by the client (s_client 'R')", peer="openssl s_client",
            role=ROLE_OUR_SERVER)
    errors = {}
    for ours in (True, False):
        ctx = versioned(server_context(interop_pki.server) if ours else cpython_server_context(interop_pki.server),
                        TLS_1_2_VERSION)
        server = our_servers.echo(ctx)
        client = launch.s_client(port_of(server), interop_pki.ca, data=False)
        echo_once(client, b"before\n")
        client.command("R")
        client.wait_stderr("no renegotiation")
        errors[ours] = server.wait_records(1, TIMEOUT)[0]["error"]
        client.stop()
    assert errors[True] is not None
    same_error(errors[True], errors[False])
    assert errors[True].reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


# --- EOF ---------------------------------------------------------------------------------------------

def test_client_close_notify(launch, our_servers, interop_pki, feature):
    """s_client ends with close_notify when its input ends; our echo server answers with its own."""
    feature("client close_notify: orderly end, ours answered", peer="openssl s_client", role=ROLE_OUR_SERVER)
    server = our_servers.echo(server_context(interop_pki.server))
    server.suppress_ragged_eofs = False
    client = launch.s_client(port_of(server), interop_pki.ca, data=False)
    echo_once(client, b"bye soon\n")
    client.close_input()
    assert client.wait() == 0, client.report()
    record = server.wait_records(1, TIMEOUT)[0]
    assert record["error"] is None, repr(record["error"])
    assert record["end"] == "close_notify exchanged"
    expect_our_ktls(record["ktls"])


@pytest.mark.parametrize("suppress", [True, False], ids=["suppress_ragged_eofs", "report_ragged_eofs"])
def test_client_drops_tcp(launch, our_servers, interop_pki, feature, suppress):
    """A client killed mid-connection: b"" (suppressed) or SSLEOFError, as CPython's server."""
    feature(f"client drops TCP without close_notify, suppress_ragged_eofs={suppress}", peer="openssl s_client",
            role=ROLE_OUR_SERVER)
    outcomes = {}
    for ours in (True, False):
        server = our_servers.echo(server_context(interop_pki.server) if ours
                                  else cpython_server_context(interop_pki.server))
        server.suppress_ragged_eofs = suppress
        client = launch.s_client(port_of(server), interop_pki.ca)
        echo_once(client, b"then silence\n")
        client.stop()
        record = server.wait_records(1, TIMEOUT)[0]
        outcomes[ours] = record
    if suppress:
        assert outcomes[True]["error"] is None and outcomes[True]["end"].startswith("eof")
        assert outcomes[False]["error"] is None and outcomes[False]["end"].startswith("eof")
    else:
        assert isinstance(outcomes[True]["error"], ssl.SSLEOFError), repr(outcomes[True]["error"])
        same_error(outcomes[True]["error"], outcomes[False]["error"])


# --- RSA-2048 certificates ---------------------------------------------------------------------------

@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_rsa_certificate_with_s_client(launch, our_servers, interop_pki, cell, counters, version, cipher):
    entry = cell(peer="openssl s_client (userspace), RSA-2048", role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    if reason := no_suite_reason(version, cipher, "rsa"):
        pytest.skip(reason)
    entry.row_note("RSA-2048 certificate; 16385 bytes echoed")
    server = our_servers.echo(server_context(interop_pki.rsa_server, version, cipher, key_type="rsa"))
    stats = counters()
    client = launch.s_client(port_of(server), interop_pki.rsa_ca, cipher_args=openssl_cipher_args(version, cipher, "rsa"))
    data = payload(16385, 9)
    echo_once(client, data)
    stats.expect_installs(1, 1, "our server (RSA certificate)")
    client.stop()
    record = server.wait_records(1, TIMEOUT)[0]
    expected = TLS12_SUITES[("rsa", cipher)] if version == TLS_1_2_VERSION else TLS13_SUITES[cipher]
    assert record["error"] is None and record["cipher"][0] == expected, record
    assert record["sha256"] == sha(data)
    expect_our_ktls(record["ktls"])


# --- the command line server ---------------------------------------------------------------------------

def test_python_m_ktls_ossl_serve(launch, interop_pki, feature, tmp_path):
    """`python -m ktls_ossl serve` as its own process, fetched by curl and by `python -m ktls_ossl fetch`."""
    feature("python -m ktls_ossl serve (subprocess), GET by curl", peer="curl (OpenSSL)", role=ROLE_OUR_SERVER)
    root = tmp_path / "root"
    root.mkdir()
    data = payload(300000, 3)
    (root / "file.bin").write_bytes(data)
    server = launch.run("ktls_ossl serve", [sys.executable, "-m", "ktls_ossl", "serve", "--port", "0",
                                            "--bind", LOOPBACK, "--root", str(root),
                                            "--cert", interop_pki.server.chain_path, "--key", interop_pki.server.key_path],
                        stdin=False,
                        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ktls_ossl.__file__))))
    port = int(re.search(r"serving on [\d.]+:(\d+)", server.wait_output("serving on", timeout=60)).group(1))
    peer = launch.run("curl", ["curl", "--silent", "--show-error", "--fail", "--dump-header", str(tmp_path / "head"),
                               "--cacert", interop_pki.ca, "--resolve", f"localhost:{port}:127.0.0.1",
                               "-o", str(tmp_path / "got"), f"https://localhost:{port}/file.bin"], stdin=False)
    assert peer.wait(60) == 0, peer.report()
    assert (tmp_path / "got").read_bytes() == data
    head = (tmp_path / "head").read_text()
    match = re.search(r"X-KTLS: (.*)", head)
    assert match, head
    assert ("tx+rx=kernel" in match.group(1)) == KTLS, match.group(1)


# --- a cut connection's session ---------------------------------------------------------------------

def test_session_of_a_cut_connection_is_not_resumed_like_cpython(launch, our_servers, interop_pki, feature, tmp_path):
    """OpenSSL treats a TCP EOF without close_notify as fatal (it answers decode_error) and drops the
    session from the server's cache, so CPython's server never resumes it. ktls_ossl must do the
    same when the kernel reports that EOF."""
    feature("TLS 1.2 session id of a connection cut without close_notify: not resumed, like CPython",
            peer="openssl s_client -sess_out/-sess_in", role=ROLE_OUR_SERVER)
    reused = {}
    for ours in (True, False):
        ctx = versioned(server_context(interop_pki.server) if ours else cpython_server_context(interop_pki.server),
                        TLS_1_2_VERSION)
        server = our_servers.echo(ctx)
        session_file = str(tmp_path / f"session-{ours}.pem")
        client = launch.s_client(port_of(server), interop_pki.ca, extra=["-sess_out", session_file, "-no_ticket"])
        echo_once(client, b"cut short\n")
        client.stop()  # TCP closes without close_notify
        first = server.wait_records(1, TIMEOUT)[0]
        assert first["error"] is None and first["end"].startswith("eof"), first
        gc.collect()  # whatever SSL_free does with the session happens now, on both sides
        client = launch.s_client(port_of(server), interop_pki.ca, extra=["-sess_in", session_file, "-no_ticket"],
                                 data=False)
        echo_once(client, b"again\n")
        client.close_input()
        assert client.wait() == 0, client.report()
        reused[ours] = server.wait_records(2, TIMEOUT)[1]["reused"]
    assert reused[False] is False, "CPython's server resumed a cut session: the premise changed"
    assert reused[True] is False, "ktls_ossl resumed the session of a connection that ended without close_notify"


def test_post_handshake_auth_of_s_client(launch, interop_pki, feature):
    """Our server asks s_client -enable_pha for its certificate after the handshake (TLS 1.3);
    the client's answer is checked by OpenSSL before any data behind it is delivered."""
    import socket
    import threading

    from .peers import LOOPBACK

    feature("TLS 1.3 post-handshake client authentication (verify_client_post_handshake)",
            peer="openssl s_client -enable_pha", role=ROLE_OUR_SERVER)
    ctx = versioned(server_context(interop_pki.server), TLS_1_3_VERSION)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.post_handshake_auth = True
    ctx.load_verify_locations(interop_pki.ca)
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(TIMEOUT)
    result = {}

    def serve():
        try:
            raw, _ = listener.accept()
            raw.settimeout(TIMEOUT)
            with ctx.wrap_socket(raw, server_side=True) as sock:
                result["ktls"] = sock.ktls
                result["before"] = sock.getpeercert()
                sock.verify_client_post_handshake()
                sock.sendall(b"who are you?\n")
                result["data"] = sock.recv(100)  # arrives behind the client's certificate
                result["cert"] = sock.getpeercert()
                result["events"] = sock.ktls_events
                sock.sendall(b"welcome\n")
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = launch.s_client(listener.getsockname()[1], interop_pki.ca, extra=[
        "-tls1_3", "-enable_pha", "-cert", interop_pki.client.chain_path, "-key", interop_pki.client.key_path])
    try:
        assert client.take_output(13) == b"who are you?\n"
        client.write(b"a client\n")
        assert client.take_output(8) == b"welcome\n"
        thread.join(TIMEOUT)
        assert "error" not in result, result.get("error")
        assert result["before"] is None
        assert result["data"] == b"a client\n"
        subject = dict(item[0] for item in result["cert"]["subject"])
        assert subject["commonName"] == "interop client"
        if KTLS:
            assert result["ktls"].tx and result["ktls"].rx
            assert any("client authenticated after the handshake" in what for _, what in result["events"])
    finally:
        listener.close()
