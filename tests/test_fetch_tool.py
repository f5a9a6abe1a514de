"""`python -m ktls_ossl fetch` as a script sees it: a subprocess against real servers.

The servers run in this process: ktls_ossl's own HTTPSFileServer (which reports its placement in
X-KTLS) and, for what other servers do (close the connection after the response, answer nothing,
send less than Content-Length), http.server over CPython's ssl. The oracles: curl's exit codes
(curl(1), EXIT CODES), CPython's ssl for the verify message, and the kernel's /proc/net/tls_stat.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import json
import os
import pty
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import ktls_ossl
from ktls_ossl import kernel, serve

from .timing import scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ktls_ossl.__file__)))
PROG = "python -m ktls_ossl fetch"
BODY = bytes(range(256)) * 4096  # 1 MiB


def _command(url: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "ktls_ossl", "fetch", url, *options]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def run_fetch(url: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(url, *options), capture_output=True, text=True, env=_env(),
                          timeout=scaled(60))


def only_error_line(result: subprocess.CompletedProcess) -> str:
    """The single line fetch wrote on stderr (nothing else: no traceback, nothing on stdout)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PROG}: "), lines[0]
    assert result.stdout == "", result.stdout
    return lines[0]


def expected_placement() -> str:
    """Both directions in the kernel where it has TLS, else user space with the probe's reason."""
    report = kernel.probe()
    return "tx+rx=kernel" if report.ulp_available else f"tx+rx=userspace ({report.ulp_message})"


@pytest.fixture
def our_server(server_cert, tmp_path):
    """ktls_ossl's HTTPS file server serving BODY as /body.bin."""
    (tmp_path / "body.bin").write_bytes(BODY)
    server = serve.HTTPSFileServer(("127.0.0.1", 0), serve.server_context(server_cert.chain_path,
                                                                         server_cert.key_path), str(tmp_path))
    serve.run_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def url_of(server, path: str = "/body.bin") -> str:
    return f"https://localhost:{server.server_address[1]}{path}"


@contextlib.contextmanager
def cpython_server(server_cert, handler):
    """http.server over CPython's ssl (not a ktls_ossl server), one thread per connection."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert.chain_path, server_cert.key_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class ClosingHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0: the response says Connection: close and the server closes after the body."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass


class TruncatingHandler(ClosingHandler):
    """Declares 1000 bytes, sends 10, closes."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")


class SilentHandler(ClosingHandler):
    """Reads the request and closes the connection without a response."""

    def do_GET(self):
        pass


# --- failures: one line, curl's exit code ---------------------------------------------------------------

def test_untrusted_certificate_is_one_line_with_the_verify_message_and_exit_60(our_server):
    port = our_server.server_address[1]
    # CPython's ssl with the same trust (the system's CA certificates) says why it refuses.
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    result = run_fetch(url_of(our_server))
    assert result.returncode == 60, result
    assert f"certificate verify failed: {refused.value.verify_message}" in only_error_line(result)


def test_http_404_is_one_line_and_exit_22(our_server, pki):
    result = run_fetch(url_of(our_server, "/missing"), "--cafile", pki.ca_path)
    assert result.returncode == 22, result
    assert "HTTP 404 " in only_error_line(result)


def test_connection_refused_is_one_line_and_exit_7():
    with socket.socket() as bound:  # bound, never listening: a SYN to it is answered with RST
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        result = run_fetch(f"https://127.0.0.1:{port}/")
    assert result.returncode == 7, result
    assert os.strerror(errno.ECONNREFUSED) in only_error_line(result)


def test_body_shorter_than_content_length_is_partial_file_exit_18(server_cert, pki):
    with cpython_server(server_cert, TruncatingHandler) as server:
        result = run_fetch(url_of(server), "--cafile", pki.ca_path)
    assert result.returncode == 18, result
    assert "10 of 1000 bytes" in only_error_line(result)


def test_no_response_at_all_is_empty_reply_exit_52(server_cert, pki):
    with cpython_server(server_cert, SilentHandler) as server:
        result = run_fetch(url_of(server), "--cafile", pki.ca_path)
    assert result.returncode == 52, result
    only_error_line(result)


def test_a_server_that_never_answers_the_handshake_times_out_exit_28():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # the kernel accepts; nobody speaks TLS
        result = run_fetch(f"https://127.0.0.1:{listener.getsockname()[1]}/", "--timeout", "0.5")
    assert result.returncode == 28, result
    assert "timed out" in only_error_line(result)


def test_a_peer_that_is_not_tls_fails_the_handshake_exit_35():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(scaled(30))

        def answer_in_plain_text():
            with listener.accept()[0] as peer:
                peer.recv(4096)
                peer.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nthis port speaks plain HTTP\r\n")

        thread = threading.Thread(target=answer_in_plain_text, daemon=True)
        thread.start()
        result = run_fetch(f"https://127.0.0.1:{listener.getsockname()[1]}/")
        thread.join(scaled(30))
    assert result.returncode == 35, result
    only_error_line(result)


@pytest.mark.parametrize(("url", "exit_code"), [("http://localhost/", 1), ("https:///no-host", 3),
                                                ("https://localhost:99999/", 3)])
def test_urls_fetch_cannot_use_exit_as_curl_does(url, exit_code):
    result = run_fetch(url)
    assert result.returncode == exit_code, result
    only_error_line(result)


# --- what a successful fetch reports ------------------------------------------------------------------

@pytest.mark.ktls_or_fallback
def test_client_placement_survives_the_server_closing_the_connection(server_cert, pki):
    with cpython_server(server_cert, ClosingHandler) as server:
        result = run_fetch(url_of(server), "--cafile", pki.ca_path, "--json")
        text = run_fetch(url_of(server), "--cafile", pki.ca_path)
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    assert report["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert expected_placement() in report["client_ktls"], report
    assert report["server_ktls"] is None  # CPython's server says nothing about its record layer
    assert text.returncode == 0, text
    assert "server: unknown (not a ktls_ossl server" in text.stdout
    assert f"client: {report['client_ktls']}" in text.stdout
    if kernel.tls_stat():
        # Only the client went into the kernel (the server is CPython's): one install each way.
        assert (report["tls_stat_delta"]["TlsTxSw"], report["tls_stat_delta"]["TlsRxSw"]) == (1, 1), report
    else:
        assert report["tls_stat_delta"] is None
        assert "/proc/net/tls_stat: absent" in text.stdout


@pytest.mark.ktls_or_fallback
def test_client_placement_matches_what_our_server_saw(our_server, pki):
    result = run_fetch(url_of(our_server), "--cafile", pki.ca_path, "--json")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    served = our_server.wait_records(1, scaled(30))[0]
    assert report["server_ktls"] == served["ktls"]
    assert report["client_ktls"] == served["ktls"]  # same placement, version, cipher, kernel
    assert expected_placement() in report["client_ktls"]
    assert report["bytes"] == len(BODY) and report["sha256"] == hashlib.sha256(BODY).hexdigest()


@pytest.mark.ktls
def test_tls_stat_delta_counts_this_fetch_and_not_the_probe(our_server, pki):
    kernel.probe()  # this process's own probe (the server's) is done before the snapshot
    before = kernel.tls_stat()
    result = run_fetch(url_of(our_server), "--cafile", pki.ca_path, "--json")
    after = kernel.tls_stat()
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    delta = report["tls_stat_delta"]
    # Client and server share this network namespace: one install each way on each side.
    assert (delta["TlsTxSw"], delta["TlsRxSw"]) == (2, 2), report
    assert report["server_shares_namespace"] is True
    # The kernel counted more than that: the fetch process's probe, which the report leaves out.
    assert after["TlsTxSw"] - before["TlsTxSw"] > 2


# --- progress -------------------------------------------------------------------------------------------

PROGRESS_MARK = "/1.0 MiB"  # the bar: received of Content-Length (BODY is 1 MiB)


def test_no_progress_when_stdout_is_a_pipe(our_server, pki):
    result = run_fetch(url_of(our_server), "--cafile", pki.ca_path)
    assert result.returncode == 0, result
    assert "\r" not in result.stdout and PROGRESS_MARK not in result.stdout + result.stderr


def test_progress_on_a_terminal(our_server, pki):
    controller, terminal = pty.openpty()
    try:
        child = subprocess.Popen(_command(url_of(our_server), "--cafile", pki.ca_path), stdout=terminal,
                                 stderr=subprocess.PIPE, env=dict(_env(), COLUMNS="200"))  # a whole line
        os.close(terminal)
        terminal = None
        output = bytearray()
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the child has closed its end
                break
            if not data:
                break
            output += data
        assert child.wait(scaled(60)) == 0, child.stderr.read()
        child.stderr.close()
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)
    text = output.decode()
    assert PROGRESS_MARK in text and "\r" in text, text
    assert "HTTP 200" in text
