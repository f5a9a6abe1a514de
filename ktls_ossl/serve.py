"""A small HTTPS file server and echo server on ktls_ossl, and a matching client.

``python -m ktls_ossl serve`` serves a directory over HTTPS: file bodies go out with
``KTLSSocket.sendfile``, so with TX in the kernel the file's pages are encrypted by the kernel
without passing through Python. ``--echo`` turns it into a TLS echo server. ``python -m ktls_ossl
fetch`` downloads a URL with ktls_ossl and prints its size, SHA-256 and where the record layer ran.
Useful on its own, and the peer that the interop tests and the demonstration run against.
"""
from __future__ import annotations

import datetime
import hashlib
import http.client
import http.server
import ipaddress
import os
import posixpath
import socketserver
import ssl
import threading
import time
import urllib.parse

from . import kernel
from .context import SSLContext
from .handshake import Policy


def make_self_signed(directory: str, hostname: str = "localhost") -> tuple[str, str]:
    """A throw-away ECDSA P-256 certificate for ``hostname`` (and 127.0.0.1): (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, f"{hostname}.crt")
    key_path = os.path.join(directory, f"{hostname}.key")
    with open(cert_path, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert_path, key_path


class FileHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of files under the server's root; bodies are sent with sendfile."""

    protocol_version = "HTTP/1.1"
    server_version = "ktls_ossl"

    def _path(self) -> str | None:
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        full = os.path.join(self.server.root, *parts)
        return full if os.path.isfile(full) else None

    def do_HEAD(self):
        self._respond(send_body=False)

    def do_GET(self):
        self._respond(send_body=True)

    def _respond(self, send_body: bool):
        path = self._path()
        if path is None:
            self.send_error(404, "not found")
            return
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        ktls = getattr(self.connection, "ktls", None)
        if ktls is not None:
            self.send_header("X-KTLS", str(ktls))
        self.end_headers()
        if send_body:
            with open(path, "rb") as body:
                self.connection.sendfile(body)

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)


class _TLSServerMixin:
    """Handshakes in the connection's own thread, so one slow client cannot stall accept()."""

    def get_request(self):
        sock, address = self.socket.accept()
        return self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


class HTTPSFileServer(_TLSServerMixin, http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, context, root, verbose=False):
        self.tls_context = context
        self.root = os.path.abspath(root)
        self.verbose = verbose
        super().__init__(address, FileHandler)


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.do_handshake()
        buffer = bytearray(1 << 16)
        while True:
            count = sock.recv_into(buffer)
            if not count:
                break
            sock.sendall(memoryview(buffer)[:count])
        try:
            sock.unwrap()
        except (OSError, ValueError):
            pass


class TLSEchoServer(_TLSServerMixin, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, context, verbose=False):
        self.tls_context = context
        self.verbose = verbose
        super().__init__(address, EchoHandler)


def server_context(cert: str, key: str, policy: Policy = Policy.AFTER_FINISHED,
                   ciphers: str | None = None, ciphersuites: str | None = None) -> SSLContext:
    context = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.ktls_policy = policy
    if ciphers:
        context.set_ciphers(ciphers)
    if ciphersuites:
        context.set_ciphersuites(ciphersuites)
    return context


def fetch(url: str, *, cafile: str | None = None, output: str | None = None,
          policy: Policy = Policy.AFTER_FINISHED, timeout: float = 60.0) -> dict:
    """Download ``url`` with ktls_ossl; returns size, sha256, seconds and the kTLS status."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise ValueError("fetch needs an https:// URL")
    context = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.ktls_policy = policy
    if cafile:
        context.load_verify_locations(cafile)
    else:
        context.load_default_certs()
    before = kernel.tls_stat()
    started = time.monotonic()
    connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=context, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        status = connection.sock.ktls if connection.sock is not None else None
        digest = hashlib.sha256()
        size = 0
        sink = open(output, "wb") if output else None
        try:
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            while True:
                count = response.readinto(buffer)
                if not count:
                    break
                digest.update(view[:count])
                size += count
                if sink:
                    sink.write(view[:count])
        finally:
            if sink:
                sink.close()
        if response.status != 200:
            raise OSError(f"{url}: HTTP {response.status} {response.reason}")
        server_ktls = response.getheader("X-KTLS")
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    after = kernel.tls_stat()
    return {
        "url": url,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "seconds": elapsed,
        "client_ktls": str(status) if status else None,
        "server_ktls": server_ktls,
        "tls_stat_delta": {name: after[name] - before.get(name, 0) for name in after
                           if after[name] != before.get(name, 0)},
    }


def serve_forever(server, port_file: str | None = None) -> None:
    host, port = server.server_address[:2]
    print(f"ktls_ossl: serving on {host}:{port}", flush=True)
    if port_file:
        with open(port_file + ".tmp", "w") as out:
            out.write(str(port))
        os.replace(port_file + ".tmp", port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run_in_thread(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


__all__ = ["HTTPSFileServer", "TLSEchoServer", "fetch", "make_self_signed", "server_context",
           "serve_forever", "run_in_thread"]
