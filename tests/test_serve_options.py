"""``python -m ktls_ossl serve`` configured like ``openssl s_server``: --min-version/--max-version,
--dhparam, --groups, and the SSLContext.set_groups() behind --groups.

Each option is observed from the client side by a program that is not ktls_ossl: CPython's own
``ssl`` as the client (the negotiated version, the error a refused client gets) and ``openssl
s_client -brief`` (its "Server Temp Key" line names the key exchange group or the DH size). Where
CPython's ssl can serve the same configuration (minimum_version/maximum_version, load_dh_params,
set_ecdh_curve with one group), CPython's server stands beside ours and the client must see the
same: the same summary from s_client, the same exception in a CPython client. Our server runs as
its own process, exactly as a conformance run starts it; CPython's runs in-process in the same
HTTPSFileServer class, so only the TLS context differs.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest

import ktls_ossl
from ktls_ossl import kernel, serve
from ktls_ossl.__main__ import main
from ktls_ossl._ossl import lib
from ktls_ossl.context import SSLContext

from .timing import scaled
from .tlshelpers import same_error, strip_location

LOOPBACK = "127.0.0.1"
BODY = b"hello from the served root\n"
KTLS = kernel.probe().ulp_available

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve-root")
    (directory / "hello").write_bytes(BODY)
    return str(directory)


@pytest.fixture(scope="module")
def rsa_cert(rsa_pki):
    return rsa_pki.issue("localhost", dns=["localhost"], ips=[LOOPBACK])


@pytest.fixture(scope="module")
def dh_files(tmp_path_factory):
    """PEM DH parameters of two sizes, made by OpenSSL (the RFC 7919 primes, so no slow search),
    a file that is not PEM, and a path where no file is."""
    directory = tmp_path_factory.mktemp("dhparam")
    files = {}
    if shutil.which("openssl"):
        for name in ("ffdhe2048", "ffdhe3072"):
            path = str(directory / f"{name}.pem")
            subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", f"dh_param:{name}",
                            "-out", path], check=True, capture_output=True, timeout=scaled(30))
            files[name] = path
    files["garbage"] = str(directory / "garbage.pem")
    with open(files["garbage"], "wb") as out:
        out.write(b"-----BEGIN DH PARAMETERS-----\nbm90IERIIHBhcmFtZXRlcnM=\n-----END DH PARAMETERS-----\n")
    files["missing"] = str(directory / "missing.pem")
    return files


@pytest.fixture(scope="module")
def openssl_conf(tmp_path_factory):
    """An empty OpenSSL configuration for s_client, so that nothing on the machine (a system-wide
    Options = KTLS, other default groups) changes what the client offers."""
    path = tmp_path_factory.mktemp("openssl-conf") / "client.cnf"
    path.write_text("# s_client: no system_default\n")
    return str(path)


class ServeProcess:
    """``python -m ktls_ossl serve`` as its own process, listening on a free port."""

    def __init__(self, args: list[str], workdir: str):
        port_file = os.path.join(workdir, f"port-{time.monotonic_ns()}")
        self.argv = [sys.executable, "-m", "ktls_ossl", "serve", "--bind", LOOPBACK, "--port", "0",
                     "--port-file", port_file, *args]
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ktls_ossl.__file__)))
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + scaled(30)
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{' '.join(self.argv)} did not start:\n{self.output}")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output = self.process.stdout.read().decode("utf-8", "replace")
        self.process.stdout.close()


class CPythonServer:
    """The same HTTPSFileServer in this process, with a CPython ssl.SSLContext."""

    def __init__(self, context: ssl.SSLContext, root: str):
        self.server = serve.HTTPSFileServer((LOOPBACK, 0), context, root)
        self.port = self.server.server_address[1]
        self.thread = serve.run_in_thread(self.server)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(scaled(10))


@pytest.fixture
def servers(root, server_cert, tmp_path):
    """Starts ``ours(*options, cert=...)`` (the command line server) and ``cpython(context)``; stops
    every one of them when the test ends."""
    started = []

    class Factory:
        @staticmethod
        def ours(*options, cert=server_cert):
            started.append(ServeProcess(["--root", root, "--cert", cert.chain_path, "--key", cert.key_path,
                                         *options], str(tmp_path)))
            return started[-1]

        @staticmethod
        def cpython(context):
            started.append(CPythonServer(context, root))
            return started[-1]

    yield Factory
    for server in started:
        server.stop()


# CPython 3.10's set_ecdh_curve() goes through an EC_KEY: it cannot limit a context to X25519 or
# an FFDHE group, so the CPython reference server (or client) for those does not exist there. Our
# side of these tests does not depend on the Python version; they run on 3.11+.
needs_group_by_name = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="CPython 3.10's set_ecdh_curve takes EC curves only (no X25519/FFDHE reference)")


def cpython_server_context(cert, *, min_version=None, max_version=None, ciphers=None, dhparam=None, curve=None):
    """CPython's ssl configured as ``serve`` configures ours for the same options."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.chain_path, cert.key_path)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    if dhparam:
        ctx.load_dh_params(dhparam)
    if curve:
        ctx.set_ecdh_curve(curve)
    return ctx


# --- clients ---------------------------------------------------------------------------------------

def cpython_get(port: int, ca: str, **settings) -> dict:
    """GET /hello with CPython's ssl as the client; settings are set on its context first. Returns
    the version, cipher name, X-KTLS header (None from CPython's server) and body; a failed
    handshake raises CPython's exception."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    for name, value in settings.items():
        if name == "curve":
            ctx.set_ecdh_curve(value)
        else:
            setattr(ctx, name, value)
    with socket.create_connection((LOOPBACK, port), timeout=scaled(20)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            version, cipher = tls.version(), tls.cipher()[0]
            tls.sendall(b"GET /hello HTTP/1.0\r\nHost: localhost\r\n\r\n")
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    match = re.search(rb"\r\nX-KTLS: ([^\r\n]*)", head)
    return {"version": version, "cipher": cipher, "ktls": match.group(1).decode() if match else None,
            "status": head.split(b"\r\n", 1)[0].decode(), "body": body}


SUMMARY_KEYS = ("Protocol version", "Ciphersuite", "Server Temp Key")


def s_client(port: int, ca: str, conf: str, *options: str) -> dict:
    """``openssl s_client -brief`` sending GET /hello: its summary lines (SUMMARY_KEYS), whether the
    body arrived, the X-KTLS header, and its stderr for failure messages."""
    argv = ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-servername", "localhost",
            "-verify_hostname", "localhost", "-verify_return_error", "-CAfile", ca, "-brief", "-ign_eof",
            *options]
    done = subprocess.run(argv, input=b"GET /hello HTTP/1.0\r\nHost: localhost\r\n\r\n", capture_output=True,
                          timeout=scaled(30), env=dict(os.environ, OPENSSL_CONF=conf))
    err = done.stderr.decode("utf-8", "replace")
    summary = {key: value.strip() for key, _, value in (line.partition(":") for line in err.splitlines())
               if key in SUMMARY_KEYS}
    match = re.search(rb"\r\nX-KTLS: ([^\r\n]*)", done.stdout)
    return {"summary": summary, "body": done.stdout.endswith(b"\r\n\r\n" + BODY),
            "ktls": match.group(1).decode() if match else None, "stderr": err}


@pytest.fixture
def no_serving(monkeypatch):
    """For command lines that must fail before serving: serving instead fails the test (and does
    not block it for good)."""
    def serve_forever(server, port_file=None):
        server.server_close()
        raise AssertionError("the command line server started serving")

    monkeypatch.setattr(serve, "serve_forever", serve_forever)


def alert_of(stderr: str) -> str | None:
    """The alert s_client received ("SSL alert number 40" -> "40"), if any."""
    match = re.search(r"SSL alert number (\d+)", stderr)
    return match.group(1) if match else None


def expect_server_ktls(header: str | None, version: str) -> None:
    """Our server's X-KTLS: the kernel carries both directions where it has TLS, else the fallback
    says why; either way for the version the client negotiated."""
    assert header is not None, "our server sends X-KTLS"
    assert f" {version} " in header, header
    if KTLS:
        assert "tx+rx=kernel" in header, header
    else:
        assert "tx+rx=userspace" in header and "modprobe tls" in header, header


# --- --min-version / --max-version -----------------------------------------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("options, version", [
    (("--max-version", "TLSv1.2"), "TLSv1.2"),
    (("--min-version", "TLSv1.3"), "TLSv1.3"),
    (("--min-version", "TLSv1.2", "--max-version", "TLSv1.2"), "TLSv1.2"),
    (("--min-version", "TLSv1.3", "--max-version", "TLSv1.3"), "TLSv1.3"),
], ids=["max12", "min13", "only12", "only13"])
def test_version_options_decide_what_a_cpython_client_negotiates(servers, pki, options, version):
    ours = servers.ours(*options)
    got = cpython_get(ours.port, pki.ca_path)
    assert (got["status"], got["body"], got["version"]) == ("HTTP/1.1 200 OK", BODY, version)
    expect_server_ktls(got["ktls"], version)


@pytest.mark.parametrize("option, client", [
    (("--max-version", "TLSv1.2"), ssl.TLSVersion.TLSv1_3),
    (("--min-version", "TLSv1.3"), ssl.TLSVersion.TLSv1_2),
], ids=["tls12-server-tls13-client", "tls13-server-tls12-client"])
def test_version_refusal_equals_cpython_server(servers, pki, server_cert, option, client):
    """A client pinned to a version the server excludes gets from our server what it gets from
    CPython's server set up with the same limit."""
    flag, name = option
    limit = {"min_version" if flag == "--min-version" else "max_version": serve.TLS_VERSIONS[name]}
    errors = []
    for server in (servers.cpython(cpython_server_context(server_cert, **limit)), servers.ours(*option)):
        with pytest.raises(ssl.SSLError) as caught:
            cpython_get(server.port, pki.ca_path, minimum_version=client, maximum_version=client)
        errors.append(caught.value)
    cpython, ours = errors
    assert cpython.reason == "TLSV1_ALERT_PROTOCOL_VERSION", "the premise: CPython's server refuses that client"
    same_error(ours, cpython)


CHOICES = "(choose from 'TLSv1.2', 'TLSv1.3')"


@pytest.mark.parametrize("argv, message", [
    (["--min-version", "TLSv1.4"], f"argument --min-version: invalid choice: 'TLSv1.4' {CHOICES}"),
    (["--max-version", "tls1.3"], f"argument --max-version: invalid choice: 'tls1.3' {CHOICES}"),
    (["--min-version", "TLSv1.3", "--max-version", "TLSv1.2"],
     "--min-version TLSv1.3 is above --max-version TLSv1.2"),
], ids=["unknown-min", "unknown-max", "min-above-max"])
def test_bad_version_is_an_argparse_error(capsys, no_serving, argv, message):
    with pytest.raises(SystemExit) as caught:
        main(["serve", *argv])
    assert caught.value.code == 2
    assert f"python -m ktls_ossl serve: error: {message}\n" in capsys.readouterr().err


def test_server_context_maps_version_names(server_cert):
    ctx = serve.server_context(server_cert.chain_path, server_cert.key_path,
                               min_version="TLSv1.2", max_version=ssl.TLSVersion.TLSv1_2)
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)


# --- --groups ---------------------------------------------------------------------------------------

@needs_openssl
@needs_group_by_name
@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("group, bits", [("ffdhe2048", 2048), ("ffdhe3072", 3072)])
@pytest.mark.parametrize("offer", ["default", "only"],
                         ids=["client-default-groups(hrr)", "client-offers-only-the-group"])
def test_groups_ffdhe_tls13_equals_cpython_server(servers, pki, server_cert, openssl_conf, group, bits, offer):
    """TLS 1.3 with --groups ffdheN: s_client reports a DH key of N bits, as it does from CPython's
    server limited to the same group (set_ecdh_curve takes one group by name). With s_client's default
    groups its key share is X25519 and the server must ask for the FFDHE group (HelloRetryRequest)."""
    client_options = ["-groups", group] if offer == "only" else []
    cpython = servers.cpython(cpython_server_context(server_cert, min_version=ssl.TLSVersion.TLSv1_3, curve=group))
    ours = servers.ours("--min-version", "TLSv1.3", "--groups", group)
    theirs, mine = (s_client(server.port, pki.ca_path, openssl_conf, *client_options) for server in (cpython, ours))
    assert theirs["summary"]["Server Temp Key"] == f"DH, {bits} bits", theirs
    assert mine["summary"] == theirs["summary"], mine["stderr"]
    assert mine["body"] and theirs["body"], mine["stderr"]
    expect_server_ktls(mine["ktls"], "TLSv1.3")


@needs_openssl
@pytest.mark.ktls_or_fallback
def test_groups_list_accepts_each_listed_group_and_no_other(servers, pki, openssl_conf):
    """--groups X25519:ffdhe2048:ffdhe3072: a client offering any one of them gets that one; a client
    offering only a group outside the list is refused with handshake_failure (40)."""
    ours = servers.ours("--groups", "X25519:ffdhe2048:ffdhe3072")
    for offered, temp_key in (("X25519", "X25519, 253 bits"), ("ffdhe2048", "DH, 2048 bits"),
                              ("ffdhe3072", "DH, 3072 bits")):
        got = s_client(ours.port, pki.ca_path, openssl_conf, "-tls1_3", "-groups", offered)
        assert got["summary"].get("Server Temp Key") == temp_key and got["body"], got["stderr"]
        expect_server_ktls(got["ktls"], "TLSv1.3")
    refused = s_client(ours.port, pki.ca_path, openssl_conf, "-tls1_3", "-groups", "P-256")
    assert "Server Temp Key" not in refused["summary"] and not refused["body"]
    assert alert_of(refused["stderr"]) == "40", refused["stderr"]


@needs_group_by_name
def test_no_shared_group_refuses_a_cpython_client_like_cpython_server(servers, pki, server_cert):
    """A CPython client limited to X25519 against a server limited to ffdhe2048: the same error from
    our server as from CPython's."""
    errors = []
    for server in (servers.cpython(cpython_server_context(server_cert, curve="ffdhe2048")),
                   servers.ours("--groups", "ffdhe2048")):
        with pytest.raises(ssl.SSLError) as caught:
            cpython_get(server.port, pki.ca_path, curve="X25519")
        errors.append(caught.value)
    cpython, ours = errors
    assert cpython.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE", "the premise: CPython's server refuses that client"
    same_error(ours, cpython)


@pytest.mark.parametrize("groups", ["X25519:nope", "nope", "", "X25519::P-256"])
def test_set_groups_unknown_group_is_ssl_error(groups):
    """CPython's set_groups (3.15) message: "unrecognized group", errno 0, no library or reason,
    and OpenSSL's error queue left empty (as every CPython context method leaves it)."""
    ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ssl.SSLError) as caught:
        ctx.set_groups(groups)
    assert caught.value.args == (0, "unrecognized group (ktls_ossl)")
    assert (caught.value.library, caught.value.reason) == (None, None)
    assert lib.ERR_peek_error() == 0


@pytest.mark.parametrize("groups", ["X25519", "X25519:ffdhe2048:ffdhe3072", "P-256:P-384", "ffdhe8192"])
def test_set_groups_accepts_openssl_group_names(groups):
    assert SSLContext(ssl.PROTOCOL_TLS_SERVER).set_groups(groups) is None
    assert lib.ERR_peek_error() == 0


@pytest.mark.parametrize("value", [b"X25519", 1, None, "X25519\0P-256"])
def test_set_groups_argument_errors_are_cpythons_str_argument_errors(value):
    """The same argument checks CPython makes for a str parameter (shown with set_ciphers, which
    CPython 3.11 has): the same exception and message, with the method's name."""
    with pytest.raises(Exception) as theirs:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
    with pytest.raises(Exception) as mine:
        SSLContext(ssl.PROTOCOL_TLS_SERVER).set_groups(value)
    assert type(mine.value) is type(theirs.value)
    assert str(mine.value) == str(theirs.value).replace("set_ciphers", "set_groups")


def test_unknown_group_on_the_command_line(root, server_cert, capsys, no_serving):
    code = main(["serve", "--port", "0", "--root", root, "--cert", server_cert.chain_path,
                 "--key", server_cert.key_path, "--groups", "X25519:nope"])
    assert code == 2
    assert "python -m ktls_ossl serve: SSLError: unrecognized group (ktls_ossl)\n" in capsys.readouterr().err


# --- --dhparam --------------------------------------------------------------------------------------

DHE_SUITE = "DHE-RSA-AES128-GCM-SHA256"


@needs_openssl
@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("name, bits", [("ffdhe2048", 2048), ("ffdhe3072", 3072)])
def test_dhparam_sets_the_dhe_group_like_cpython_load_dh_params(servers, rsa_pki, rsa_cert, dh_files,
                                                                 openssl_conf, name, bits):
    """TLS 1.2 DHE-RSA with --dhparam FILE: s_client reports the DH size of FILE, as from CPython's
    server with load_dh_params(FILE); a CPython client negotiates the DHE suite too."""
    options = ("--max-version", "TLSv1.2", "--ciphers", DHE_SUITE, "--dhparam", dh_files[name])
    cpython = servers.cpython(cpython_server_context(rsa_cert, max_version=ssl.TLSVersion.TLSv1_2, ciphers=DHE_SUITE,
                                                     dhparam=dh_files[name]))
    ours = servers.ours(*options, cert=rsa_cert)
    theirs, mine = (s_client(server.port, rsa_pki.ca_path, openssl_conf, "-cipher", DHE_SUITE)
                    for server in (cpython, ours))
    assert theirs["summary"] == {"Protocol version": "TLSv1.2", "Ciphersuite": DHE_SUITE,
                                 "Server Temp Key": f"DH, {bits} bits"}, theirs
    assert mine["summary"] == theirs["summary"], mine["stderr"]
    assert mine["body"], mine["stderr"]
    expect_server_ktls(mine["ktls"], "TLSv1.2")
    got = cpython_get(ours.port, rsa_pki.ca_path)
    assert (got["version"], got["cipher"], got["body"]) == ("TLSv1.2", DHE_SUITE, BODY)
    expect_server_ktls(got["ktls"], "TLSv1.2")


@needs_openssl
def test_without_dhparam_dhe_is_refused_like_cpython(servers, rsa_pki, rsa_cert, openssl_conf):
    """The control for the test above: without DH parameters neither server can do DHE (neither
    turns on OpenSSL's automatic DH), so s_client offering only DHE gets handshake_failure from both."""
    cpython = servers.cpython(cpython_server_context(rsa_cert, max_version=ssl.TLSVersion.TLSv1_2, ciphers=DHE_SUITE))
    ours = servers.ours("--max-version", "TLSv1.2", "--ciphers", DHE_SUITE, cert=rsa_cert)
    theirs, mine = (s_client(server.port, rsa_pki.ca_path, openssl_conf, "-cipher", DHE_SUITE)
                    for server in (cpython, ours))
    assert alert_of(theirs["stderr"]) == "40" and not theirs["body"], theirs["stderr"]
    assert alert_of(mine["stderr"]) == "40" and not mine["body"], mine["stderr"]


@pytest.mark.parametrize("name", ["missing", "garbage"])
def test_dhparam_errors_equal_cpython_load_dh_params(dh_files, name):
    """load_dh_params on a missing file (FileNotFoundError with the filename) and on a file that
    is not DH parameters (ssl.SSLError, OpenSSL's library and reason): as CPython's."""
    with pytest.raises(OSError) as theirs:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(dh_files[name])
    with pytest.raises(OSError) as mine:
        SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(dh_files[name])
    same_error(mine.value, theirs.value)
    assert (mine.value.errno, mine.value.filename) == (theirs.value.errno, theirs.value.filename)
    assert type(theirs.value) is (FileNotFoundError if name == "missing" else ssl.SSLError)


@pytest.mark.parametrize("name", ["missing", "garbage"])
def test_dhparam_error_on_the_command_line_is_cpythons(root, rsa_cert, dh_files, capsys, no_serving, name):
    """``serve --dhparam`` with a bad file exits 2 and prints CPython's load_dh_params error."""
    with pytest.raises(OSError) as theirs:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(dh_files[name])
    code = main(["serve", "--port", "0", "--root", root, "--cert", rsa_cert.chain_path, "--key", rsa_cert.key_path,
                 "--dhparam", dh_files[name]])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert strip_location(err) == strip_location(
        f"python -m ktls_ossl serve: {type(theirs.value).__name__}: {theirs.value}")
