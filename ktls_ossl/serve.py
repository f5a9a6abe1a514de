"""A small HTTPS file server and echo server on ktls_ossl, and a matching client.

``python -m ktls_ossl serve`` serves a directory over HTTPS: file bodies go out with
``KTLSSocket.sendfile``, so with TX in the kernel the file's pages are encrypted by the kernel
without passing through Python. ``--echo`` turns it into a TLS echo server. ``python -m ktls_ossl
fetch`` downloads a URL with ktls_ossl and prints its size, SHA-256 and where the record layer ran.
Useful on its own, and the peer that the interop tests and the demonstration run against.

Diagnostics for exercising each socket I/O path against real clients:
- ``GET /file?via=sendfile|sendall|send|makefile`` picks how the body is written (default sendfile).
- ``POST`` or ``PUT`` (any path) reads a ``Content-Length`` body with ``?via=makefile|recv|recv_into``
  (default makefile) and answers ``{"bytes": N, "sha256": HEX, "ktls": STATUS}`` as JSON.
- The echo server reads with ``read_path`` (recv_into, recv, makefile) and writes with
  ``write_path`` (sendall, send, makefile).
Both servers keep a record per connection or request (``records``) and the exception of every
connection that failed (``errors``), so a test or an operator can see what each side saw.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import posixpath
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

from . import kernel
from .context import SSLContext
from .handshake import Policy
from .progress import Progress


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


SEND_PATHS = ("sendfile", "sendall", "send", "makefile")
RECV_PATHS = ("makefile", "recv", "recv_into")
_CHUNK = 1 << 20


def _query_choice(path: str, allowed: tuple[str, ...]) -> str | None:
    """The ``via`` query parameter if it is one of ``allowed`` (first entry by default), else None."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("via")
    if not values:
        return allowed[0]
    return values[0] if values[0] in allowed else None


def send_all_via(sock, data, via: str) -> None:
    """Write all of ``data`` with one of the socket's write paths (for diagnostics and tests)."""
    view = memoryview(data)
    if via == "sendall":
        sock.sendall(view)
    elif via == "send":
        while view:
            view = view[sock.send(view):]
    elif via == "makefile":
        with sock.makefile("wb") as writer:
            writer.write(view)
            writer.flush()
    else:
        raise ValueError(f"unknown write path {via!r}")


class FileHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of files under the server's root (bodies sent with sendfile); POST/PUT bodies are
    read and answered with their size and SHA-256."""

    protocol_version = "HTTP/1.1"
    server_version = "ktls_ossl"
    # Unbuffered: after the headers the socket is exactly at the body, so any read path can take it.
    rbufsize = 0

    def _path(self) -> str | None:
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        full = os.path.join(self.server.root, *parts)
        return full if os.path.isfile(full) else None

    def _ktls(self) -> str | None:
        ktls = getattr(self.connection, "ktls", None)
        return str(ktls) if ktls is not None else None

    def do_HEAD(self):
        self._respond(send_body=False)

    def do_GET(self):
        self._respond(send_body=True)

    def do_POST(self):
        self._receive()

    def do_PUT(self):
        self._receive()

    def _respond(self, send_body: bool):
        via = _query_choice(self.path, SEND_PATHS)
        if via is None:
            self.send_error(400, f"via must be one of {', '.join(SEND_PATHS)}")
            return
        path = self._path()
        if path is None:
            self.send_error(404, "not found")
            return
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        ktls = self._ktls()
        if ktls is not None:
            self.send_header("X-KTLS", ktls)
        self.end_headers()
        if send_body:
            with open(path, "rb") as body:
                if via == "sendfile":
                    self.connection.sendfile(body)
                else:
                    while chunk := body.read(_CHUNK):
                        send_all_via(self.connection, chunk, via)
        self.server.add_record({"method": self.command, "path": self.path, "via": via,
                                "bytes": size if send_body else 0, "ktls": ktls,
                                "status": getattr(self.connection, "ktls", None)})

    def _receive(self):
        via = _query_choice(self.path, RECV_PATHS)
        if via is None:
            self.send_error(400, f"via must be one of {', '.join(RECV_PATHS)}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            self.send_error(411, "a Content-Length body is required")
            return
        digest = hashlib.sha256()
        remaining = length
        buffer = bytearray(min(max(length, 1), _CHUNK))
        view = memoryview(buffer)
        while remaining:
            want = min(remaining, len(buffer))
            if via == "recv":
                chunk = self.connection.recv(want)
                count = len(chunk)
                digest.update(chunk)
            else:
                reader = self.rfile if via == "makefile" else self.connection
                count = (reader.readinto(view[:want]) if via == "makefile"
                         else reader.recv_into(view[:want], want))
                digest.update(view[:count])
            if not count:
                self.close_connection = True
                return  # the client went away mid-body
            remaining -= count
        ktls = self._ktls()
        answer = json.dumps({"bytes": length, "sha256": digest.hexdigest(), "ktls": ktls}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.server.add_record({"method": self.command, "path": self.path, "via": via, "bytes": length,
                                "sha256": digest.hexdigest(), "ktls": ktls,
                                "status": getattr(self.connection, "ktls", None)})

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)


class _TLSServerMixin:
    """Handshakes in the connection's own thread, so one slow client cannot stall accept().

    ``records`` collects what the handlers report (one dict per connection or request) and
    ``errors`` the exception of every connection that failed, the latest ``max_records`` of each
    (a long-running server does not grow); ``wait_records`` waits for them."""

    max_records = 1000

    def _init_records(self) -> None:
        self.records: list[dict] = []
        self.errors: list[tuple[object, BaseException]] = []
        self._records_changed = threading.Condition()

    def add_record(self, record: dict) -> None:
        with self._records_changed:
            self.records.append(record)
            del self.records[:-self.max_records]
            self._records_changed.notify_all()

    def wait_records(self, count: int, timeout: float = 30.0) -> list[dict]:
        """At least ``count`` records (raises TimeoutError otherwise); a copy of the list."""
        with self._records_changed:
            if not self._records_changed.wait_for(lambda: len(self.records) >= count, timeout):
                raise TimeoutError(f"{len(self.records)} of {count} connection records after {timeout} s "
                                   f"(errors: {self.errors!r})")
            return list(self.records)

    # False: a client that closes TCP without close_notify is reported (SSLEOFError in ``errors``
    # and in the echo record) instead of looking like an orderly end.
    suppress_ragged_eofs = True

    def get_request(self):
        sock, address = self.socket.accept()
        return self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False,
                                            suppress_ragged_eofs=self.suppress_ragged_eofs), address

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        with self._records_changed:
            self.errors.append((client_address, error))
            del self.errors[:-self.max_records]
            self._records_changed.notify_all()
        if self.verbose:
            super().handle_error(request, client_address)


class HTTPSFileServer(_TLSServerMixin, http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, context, root, verbose=False):
        self.tls_context = context
        self.root = os.path.abspath(root)
        self.verbose = verbose
        self._init_records()
        super().__init__(address, FileHandler)


class EchoHandler(socketserver.BaseRequestHandler):
    """Echoes what the client sends until it closes; reports bytes, SHA-256, kTLS status and how
    the connection ended as one record (also when it failed, with the exception)."""

    def handle(self):
        sock = self.request
        server = self.server
        record = {"peer": self.client_address, "bytes": 0, "ktls": None, "version": None,
                  "cipher": None, "end": None, "error": None}
        digest = hashlib.sha256()
        try:
            sock.do_handshake()
            record.update(ktls=getattr(sock, "ktls", None), version=sock.version(), cipher=sock.cipher(),
                          reused=sock.session_reused, alpn=sock.selected_alpn_protocol(),
                          peer_cert=sock.getpeercert())
            reader = sock.makefile("rb") if server.read_path == "makefile" else None
            buffer = bytearray(1 << 16)
            view = memoryview(buffer)
            while True:
                if server.read_path == "recv":
                    data = sock.recv(len(buffer))
                    count = len(data)
                    view[:count] = data
                elif reader is not None:
                    count = reader.readinto1(buffer)  # what is there, at most one read underneath
                else:
                    count = sock.recv_into(buffer)
                if not count:
                    record["end"] = "eof"
                    break
                digest.update(view[:count])
                record["bytes"] += count
                send_all_via(sock, view[:count], server.write_path)
            try:
                sock.unwrap()
                record["end"] = "close_notify exchanged"
            except (OSError, ValueError) as exc:
                record["end"] = f"eof (unwrap: {type(exc).__name__})"
        except BaseException as exc:
            record["error"] = exc
            raise
        finally:
            record["sha256"] = digest.hexdigest()
            record["events"] = list(getattr(sock, "ktls_events", []))
            server.add_record(record)


class TLSEchoServer(_TLSServerMixin, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, context, verbose=False, read_path="recv_into", write_path="sendall"):
        if read_path not in RECV_PATHS:
            raise ValueError(f"read_path must be one of {RECV_PATHS}")
        if write_path not in SEND_PATHS[1:]:
            raise ValueError(f"write_path must be one of {SEND_PATHS[1:]}")
        self.tls_context = context
        self.verbose = verbose
        self.read_path = read_path
        self.write_path = write_path
        self._init_records()
        super().__init__(address, EchoHandler)


# Protocol names as openssl s_server's -min_protocol/-max_protocol spell them; the versions the
# kernel can carry (TLS 1.0 and 1.1 are deprecated in ssl and below OpenSSL 3's default level).
TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert: str, key: str, policy: Policy = Policy.AFTER_FINISHED,
                   ciphers: str | None = None, ciphersuites: str | None = None, *,
                   min_version: str | ssl.TLSVersion | None = None,
                   max_version: str | ssl.TLSVersion | None = None,
                   dhparam: str | None = None, groups: str | None = None) -> SSLContext:
    """A server context as ``serve`` builds it. ``min_version``/``max_version``: a TLS_VERSIONS
    name or an ssl.TLSVersion; ``dhparam``: PEM DH parameters for TLS 1.2 DHE suites
    (load_dh_params); ``groups``: key exchange groups in OpenSSL's list format (set_groups).
    Errors are the context's own (ssl.SSLError, OSError such as FileNotFoundError, ValueError)."""
    context = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.ktls_policy = policy
    if min_version is not None:
        context.minimum_version = TLS_VERSIONS.get(min_version, min_version)
    if max_version is not None:
        context.maximum_version = TLS_VERSIONS.get(max_version, max_version)
    if ciphers:
        context.set_ciphers(ciphers)
    if ciphersuites:
        context.set_ciphersuites(ciphersuites)
    if dhparam:
        context.load_dh_params(dhparam)
    if groups:
        context.set_groups(groups)
    return context


# --- fetch: a download that says where each side's record layer ran ---------------------------------

class FetchError(OSError):
    """Why fetch failed, in one line (``reason``), and curl's exit code for the same failure
    (``exit_code``), so that a script can treat ``python -m ktls_ossl fetch`` as it treats curl."""

    def __init__(self, exit_code: int, reason: str):
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class FetchFailure:
    """A row of FETCH_FAILURES: curl's exit code, what it means, and the exceptions that are this
    failure when raised in one of ``stages`` (any stage where empty). A row without exceptions is
    found by fetch's own checks (the URL, the HTTP status, the body's length)."""

    exit_code: int
    meaning: str
    stages: tuple[str, ...] = ()
    exceptions: tuple[type[BaseException], ...] = ()


# curl's exit codes (curl(1), EXIT CODES; 22 as with --fail). The first row that matches an
# exception wins: a timeout or a certificate that failed verification is that, whatever the stage.
# Stages: setup (the CA file), url, connect (name resolution and TCP), handshake, response (the
# request, status line and headers), body, output (the file given with ``output``).
FETCH_FAILURES = (
    FetchFailure(1, "unsupported protocol (only https:// URLs)"),
    FetchFailure(3, "malformed URL", ("url",), (ValueError, http.client.InvalidURL)),
    FetchFailure(77, "could not read the CA certificates", ("setup",), (OSError,)),
    FetchFailure(28, "timed out", (), (TimeoutError,)),
    FetchFailure(60, "peer certificate could not be verified", (), (ssl.SSLCertVerificationError,)),
    FetchFailure(6, "could not resolve host", ("connect",), (socket.gaierror,)),
    FetchFailure(7, "failed to connect", ("connect",), (OSError,)),
    FetchFailure(35, "TLS handshake failed", ("handshake",), (OSError,)),
    FetchFailure(52, "empty reply: the server closed the connection without answering", ("response",),
                 (http.client.RemoteDisconnected,)),
    FetchFailure(8, "the reply is not HTTP", ("response",), (http.client.HTTPException,)),
    FetchFailure(22, "HTTP status 400 or above (as curl --fail)"),
    FetchFailure(18, "partial file: the body ended before its Content-Length", ("body",),
                 (http.client.IncompleteRead,)),
    FetchFailure(56, "failure receiving data (connection reset, TLS error after the handshake)",
                 ("response", "body"), (OSError,)),
    FetchFailure(23, "write error on the output file", ("output",), (OSError,)),
)
_FAILURE_BY_CODE = {failure.exit_code: failure for failure in FETCH_FAILURES}


def fetch_failure_of(exc: BaseException, stage: str) -> FetchFailure | None:
    """The row of FETCH_FAILURES for ``exc`` raised while fetch was at ``stage``; None for an
    exception that is no expected failure (a bug, which should show its traceback)."""
    for failure in FETCH_FAILURES:
        if (failure.exceptions and isinstance(exc, failure.exceptions)
                and (not failure.stages or stage in failure.stages)):
            return failure
    return None


def _fetch_failed(exit_code: int, detail: str) -> FetchError:
    return FetchError(exit_code, f"{_FAILURE_BY_CODE[exit_code].meaning}: {detail}")


def _exception_text(exc: BaseException) -> str:
    """What the exception itself says, in one line: an OS error's strerror (not "[Errno 111]"),
    an SSL error's whole message (it names the reason, e.g. the verify message)."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _address_is_here(address: str) -> bool:
    """Whether ``address`` belongs to this network namespace (a socket can bind to it): a server
    there counts its kTLS installs in the same /proc/net/tls_stat as this client."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def fetch(url: str, *, cafile: str | None = None, output: str | None = None,
          policy: Policy = Policy.AFTER_FINISHED, timeout: float = 60.0, progress: bool = False) -> dict:
    """Download ``url`` with ktls_ossl (GET); raises FetchError, with curl's exit code, on failure.

    Returns ``url``, ``status`` and ``reason`` (HTTP), ``bytes``, ``sha256``, ``seconds``,
    ``client_ktls`` (str of the client socket's KTLSStatus, taken while the socket is open),
    ``server_ktls`` (the X-KTLS header a ktls_ossl server sends; None from any other server),
    ``server_address``, ``server_shares_namespace`` (whether the server's address is in this
    network namespace, so that its installs are counted in the same tls_stat) and
    ``tls_stat_delta``: the /proc/net/tls_stat counters that changed during the transfer
    ({name: change}; not the TlsCurr* gauges), None where the file is absent (no tls module). ``progress``: a progress
    line on stdout while the body arrives, when stdout is a terminal."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise _fetch_failed(1, f"{parts.scheme or 'no scheme'} in {url!r}")
    stage = "url"
    try:
        host, port = parts.hostname, parts.port or 443  # .port raises ValueError when out of range
        if not host:
            raise ValueError("no host")
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.putrequest("GET", target)  # checks the path; sent with endheaders()
        stage = "setup"
        context = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.ktls_policy = policy
        if cafile:
            context.load_verify_locations(cafile)
        else:
            context.load_default_certs()
    except Exception as exc:
        failure = fetch_failure_of(exc, stage)
        if failure is None:
            raise
        subject = url if stage == "url" else cafile or "the system's default CA certificates"
        raise _fetch_failed(failure.exit_code, f"{subject}: {_exception_text(exc)}") from exc
    # The probe makes test connections of its own, which count in tls_stat: it runs (once per
    # process) before the first snapshot, not between the two. Attaching the ULP may load the tls
    # module, so the file is looked for afterwards.
    kernel.probe()
    before = kernel.tls_stat() if os.path.exists(kernel.TLS_STAT_PATH) else None
    peer = f"{host} port {port}"
    subjects = {"connect": f"{peer}, connecting", "handshake": f"{peer}, TLS handshake",
                "response": f"{peer}, waiting for the response", "body": f"{peer}, receiving the body",
                "output": output}
    client_status = None
    started = time.monotonic()
    try:
        stage = "connect"
        connection.connect()
        stage = "handshake"
        # Kept here: http.client drops its reference as soon as a response says Connection: close.
        tls_socket = context.wrap_socket(connection.sock, server_hostname=host)
        connection.sock = tls_socket
        client_status = tls_socket.ktls
        server_address = tls_socket.getpeername()[0]
        stage = "response"
        connection.endheaders()
        response = connection.getresponse()
        if response.status >= 400:
            raise FetchError(22, f"HTTP {response.status} {response.reason} ({url})")
        server_ktls = response.getheader("X-KTLS")
        expected = response.length  # Content-Length; None when the body ends with the connection
        digest = hashlib.sha256()
        size = 0
        with contextlib.ExitStack() as stack:
            stage = "output"
            sink = stack.enter_context(open(output, "wb")) if output else None
            bar = stack.enter_context(Progress(expected, f"{host}:{port}", enabled=progress))
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            while True:
                stage = "body"
                count = response.readinto(buffer)
                # Until the last read the socket is open; once the body is complete http.client
                # may close it, and a closed socket has no status.
                client_status = tls_socket.ktls or client_status
                if not count:
                    break
                digest.update(view[:count])
                size += count
                bar.update(size)
                if sink:
                    stage = "output"
                    sink.write(view[:count])
            stage = "output"  # closing the file writes what is buffered
        if expected is not None and size < expected:
            # http.client's readinto returns 0 at the connection's end, whatever Content-Length said.
            raise _fetch_failed(18, f"{size} of {expected} bytes, then the server closed the connection")
    except FetchError:
        raise
    except Exception as exc:
        failure = fetch_failure_of(exc, stage)
        if failure is None:
            raise
        limit = f" (limit {timeout:g} s)" if failure.exit_code == 28 else ""
        raise _fetch_failed(failure.exit_code, f"{subjects[stage]}: {_exception_text(exc)}{limit}") from exc
    finally:
        connection.close()
    elapsed = time.monotonic() - started
    after = kernel.tls_stat() if before is not None else None
    return {
        "url": url,
        "status": response.status,
        "reason": response.reason,
        "bytes": size,
        "sha256": digest.hexdigest(),
        "seconds": elapsed,
        "client_ktls": str(client_status),
        "server_ktls": server_ktls,
        "server_address": server_address,
        "server_shares_namespace": _address_is_here(server_address),
        "tls_stat_delta": None if after is None else _counter_changes(before, after),
    }


def _counter_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The tls_stat counters that moved, less the TlsCurr* gauges: those count the sockets open
    at the moment of reading, and whether the server's end of this connection has closed by then
    is a race that says nothing about the transfer."""
    return {name: after[name] - before.get(name, 0) for name in after
            if not name.startswith("TlsCurr") and after[name] != before.get(name, 0)}


def placement_lines(result: dict) -> list[str]:
    """What a fetch result says about the record layer, for people: the client's and the server's
    placement and the tls_stat changes, each labelled with what it covers."""
    server = result["server_ktls"] or "unknown (not a ktls_ossl server: it sent no X-KTLS header)"
    delta = result["tls_stat_delta"]
    if delta is None:
        stat = "/proc/net/tls_stat: absent, the kernel has no tls module loaded"
    else:
        scope = ("this network namespace, the server's too: its installs count here"
                 if result["server_shares_namespace"] else "this network namespace")
        changes = ", ".join(f"{name} {change:+d}" for name, change in sorted(delta.items()))
        stat = f"/proc/net/tls_stat ({scope}): {changes or 'no change'}"
    return [f"client: {result['client_ktls']}", f"server: {server}", stat]


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


__all__ = ["HTTPSFileServer", "TLSEchoServer", "FETCH_FAILURES", "FetchError", "FetchFailure", "fetch",
           "fetch_failure_of", "placement_lines", "make_self_signed", "server_context",
           "serve_forever", "run_in_thread", "send_all_via", "SEND_PATHS", "RECV_PATHS", "TLS_VERSIONS"]
