"""The pyOpenSSL front (ktls_ossl.pyopenssl.Connection) against peers nobody here wrote, and
against ktls_ossl's own KTLSSocket: TLS 1.2 and 1.3 x the four kernel ciphers x both roles.

Our side is a ``Connection(ctx, sock)`` built from a plain ``OpenSSL.SSL.Context`` pinned to one
version and suite, driven only through pyOpenSSL's API (set_connect_state/set_accept_state,
set_tlsext_host_name, do_handshake, send/sendall/recv/recv_into, shutdown) plus ``sendfile`` and
``ktls``. Peers: openssl s_server (data mode) and gnutls-serv --echo for our client, openssl
s_client (data mode) and gnutls-cli for our server, ktls_ossl's echo server and KTLSSocket client.

Each cell proves:
- the negotiated version and suite as pyOpenSSL names them (get_protocol_version_name,
  get_cipher_name: OpenSSL's names) and as the peer reports them (its own summary);
- ``conn.ktls``: the kernel carries both directions under the VM, the fallback says why on the host
  ("modprobe tls"); ``ktls_state`` agrees;
- payloads of 0, 1, 16383, 16384, 16385 bytes and 256 KiB both ways (gnutls-cli: every size up,
  0, 1 and one record-boundary size down: it writes its stdout one byte per system call), compared
  byte for byte with what the peer itself received or sent (its stdout/stdin, its echo, our echo
  server's SHA-256 of what it read), our send/receive call rotated over the cells;
- /proc/net/tls_stat in the VM: our connection installs exactly 1 TX and 1 RX key, a ktls_ossl
  peer in this process its own 1 + 1, a userspace peer none;
- the close: our shutdown() sends close_notify, and recv() ends as pyOpenSSL's does (ZeroReturnError
  at the peer's close_notify; gnutls-cli, which exits without one, gives pyOpenSSL's SysCallError
  (-1, 'Unexpected EOF')).
One 16 MiB upload by ``sendfile`` into s_server checks the whole transfer by SHA-256.
"""
from __future__ import annotations

import os
import re
import shutil
import socket

import pytest
from OpenSSL import SSL

from ktls_ossl.connection import ConnectionState
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher
from ktls_ossl.pyopenssl import Connection

from .conftest import KTLS, expect_our_ktls, port_of, read_log
from .coverage import ROLE_OUR_CLIENT, ROLE_OUR_SERVER
from .exchange import TIMEOUT, assert_same, client_context, send_through_file, server_context, sha
from ..tlshelpers import TLS12_SUITES, TLS13_SUITES, in_thread, recv_exactly
from .peers import (
    CELL_IDS,
    CELLS,
    GNUTLS_CIPHER,
    LOOPBACK,
    fast_tmpdir,
    gnutls_priority,
    openssl_cipher_args,
    payload,
)

pytestmark = pytest.mark.ktls_or_fallback

FEATURE = "pyOpenSSL Connection: TLS 1.2/1.3 x the 4 kernel ciphers"
S_SERVER = "openssl s_server (userspace)"
GNUTLS_SERV = "gnutls-serv --echo"
S_CLIENT = "openssl s_client (userspace)"
GNUTLS_CLI = "gnutls-cli"
KTLS_ECHO = "ktls_ossl echo server (KTLSSocket)"
KTLS_CLIENT = "ktls_ossl client (KTLSSocket)"

VERSION_NAME = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}
GNUTLS_VERSION = {TLS_1_2_VERSION: "TLS1.2", TLS_1_3_VERSION: "TLS1.3"}
PYOPENSSL_VERSION = {TLS_1_2_VERSION: SSL.TLS1_2_VERSION, TLS_1_3_VERSION: SSL.TLS1_3_VERSION}

SIZES = (0, 1, 16383, 16384, 16385, 256 << 10)
SENDFILE_SIZE = 16 << 20
SEND_PATHS = ("sendall", "send", "sendfile")
RECV_PATHS = ("recv_into", "recv")
BOTH_CLOSED = SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN


def suite_name(version, cipher) -> str:
    return TLS12_SUITES[("ecdsa", cipher)] if version == TLS_1_2_VERSION else TLS13_SUITES[cipher]


def paths(index: int) -> tuple[str, str]:
    """(send call, receive call) of our side in the index-th cell of a row."""
    return SEND_PATHS[index % len(SEND_PATHS)], RECV_PATHS[index % len(RECV_PATHS)]


# --- pyOpenSSL contexts and connections ------------------------------------------------------------

def set_tls13_suites(ctx: SSL.Context, names: str) -> None:
    if hasattr(SSL.Context, "set_tls13_ciphersuites"):
        ctx.set_tls13_ciphersuites(names.encode())
        return
    # Older pyOpenSSL (23.2, in .venv-3.10) has no API for the TLS 1.3 suites. Test-only use of
    # pyOpenSSL's own cffi bindings: SSL_CTX_set_ciphersuites on the context's SSL_CTX.
    from OpenSSL._util import lib
    assert lib.SSL_CTX_set_ciphersuites(ctx._context, names.encode()) == 1, names


def pyopenssl_context(version, cipher) -> SSL.Context:
    """A plain pyOpenSSL context pinned to one version and one suite."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(PYOPENSSL_VERSION[version])
    ctx.set_max_proto_version(PYOPENSSL_VERSION[version])
    if version == TLS_1_2_VERSION:
        ctx.set_cipher_list(suite_name(version, cipher).encode())
    else:
        set_tls13_suites(ctx, suite_name(version, cipher))
    return ctx


def pyopenssl_client_context(ca: str, version, cipher) -> SSL.Context:
    ctx = pyopenssl_context(version, cipher)
    ctx.load_verify_locations(ca)
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errnum, depth, ok: ok)
    return ctx


def pyopenssl_server_context(cert, version, cipher) -> SSL.Context:
    ctx = pyopenssl_context(version, cipher)
    ctx.use_certificate_chain_file(cert.chain_path)
    ctx.use_privatekey_file(cert.key_path)
    ctx.check_privatekey()
    return ctx


def handshake(conn: Connection) -> Connection:
    try:
        conn.do_handshake()
    except BaseException:
        conn.close()
        raise
    return conn


def pyopenssl_connect(port: int, ctx: SSL.Context) -> Connection:
    """Our pyOpenSSL client, handshaken, on a blocking socket (pyOpenSSL's blocking mode)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    sock.settimeout(None)
    conn = Connection(ctx, sock)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"localhost")
    return handshake(conn)


def listener() -> socket.socket:
    sock = socket.create_server((LOOPBACK, 0))
    sock.settimeout(TIMEOUT)  # a peer that never connects fails the test instead of hanging it
    return sock


def pyopenssl_accept(listening: socket.socket, ctx: SSL.Context) -> Connection:
    """Our pyOpenSSL server: Connection(ctx, sock) on the accepted socket, set_accept_state()."""
    raw, _ = listening.accept()
    raw.settimeout(None)
    conn = Connection(ctx, raw)
    conn.set_accept_state()
    return handshake(conn)


def check_negotiated(conn: Connection, version, cipher, *, server_side: bool) -> None:
    """pyOpenSSL's own view of the session, and where the record layer runs."""
    assert conn.get_protocol_version_name() == VERSION_NAME[version]
    assert conn.get_cipher_name() == suite_name(version, cipher)
    if server_side:
        assert conn.get_servername() == b"localhost", "the client's SNI"
        assert conn.get_peer_certificate() is None
    else:
        subject = conn.get_peer_certificate().to_cryptography().subject
        assert subject.rfc4514_string().startswith("CN=localhost,"), subject
    status = conn.ktls
    expect_our_ktls(status, "our pyOpenSSL connection")
    assert status.version == VERSION_NAME[version], status
    assert conn.ktls_state is (ConnectionState.KERNEL if KTLS else ConnectionState.OPENSSL), conn.ktls_state


# --- our side's I/O --------------------------------------------------------------------------------

class PyEnd:
    """Our pyOpenSSL connection, writing and reading through a chosen call."""

    def __init__(self, conn: Connection, workdir: str):
        self.conn = conn
        self.workdir = workdir
        self._files = 0

    def send(self, data: bytes, path: str) -> None:
        conn = self.conn
        if path == "sendall" or (path == "send" and not data):
            # (An empty send() is SSL_write(0), which pyOpenSSL itself fails: sendall is the call.)
            assert conn.sendall(data) == len(data)
        elif path == "send":
            view = memoryview(data)
            while view:
                sent = conn.send(view)
                assert 0 < sent <= len(view), f"send() returned {sent}"
                view = view[sent:]
        elif path == "sendfile":
            self._files += 1
            send_through_file(conn.sendfile, data, os.path.join(self.workdir, f"sendfile-{self._files}.bin"))
        else:
            raise ValueError(path)

    def recv_exactly(self, size: int, path: str) -> bytes:
        conn = self.conn
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            try:
                if path == "recv":
                    chunk = conn.recv(min(size - got, 1 << 16))
                    count = len(chunk)
                    assert count, "recv() returned b'' (pyOpenSSL raises ZeroReturnError instead)"
                    view[got:got + count] = chunk
                elif path == "recv_into":
                    count = conn.recv_into(view[got:], size - got)
                    assert count > 0, f"recv_into() returned {count}"
                else:
                    raise ValueError(path)
            except SSL.ZeroReturnError:
                raise AssertionError(f"close_notify after {got} of {size} bytes ({path})") from None
            got += count
        return bytes(buffer)

    def close_and_expect_peer_close_notify(self) -> None:
        """Our close_notify, then the peer's: pyOpenSSL's ZeroReturnError, both flags set."""
        conn = self.conn
        assert conn.shutdown() is False, "shutdown() said the peer's close_notify came before ours was sent"
        with pytest.raises(SSL.ZeroReturnError):
            conn.recv(1)
        assert conn.get_shutdown() == BOTH_CLOSED
        assert conn.shutdown() is True, "a second shutdown() after both close_notify must say done"


# --- exchanges -------------------------------------------------------------------------------------

def exchange_with_pipe(end: PyEnd, peer, send_path: str, recv_path: str, sizes, seed: int,
                       recv_sizes=None) -> None:
    """A data-mode pipe peer (s_server -brief, s_client -ign_eof, gnutls-cli): its stdout must be
    exactly our bytes (``sizes``), and what goes into its stdin must reach us exactly
    (``recv_sizes``, by default the same sizes)."""
    for number, size in enumerate(sizes):
        up = payload(size, seed + number)
        end.send(up, send_path)
        if size:
            assert_same(f"{size} bytes to {peer.name} via {send_path}", peer.take_output(size), up)
    for number, size in enumerate(sizes if recv_sizes is None else recv_sizes):
        down = payload(size, seed + 100 + number)
        if down:
            peer.write(down)
        assert_same(f"{size} bytes from {peer.name} via {recv_path}", end.recv_exactly(size, recv_path), down)
    assert peer.stdout.unconsumed == 0, f"{peer.stdout.unconsumed} unexpected bytes reached {peer.name}"


def line_bursts(data: bytes, chunk: int) -> list[bytes]:
    """``data`` cut for gnutls-serv's echo, which is line- and C-string-based (it echoes what it
    gathered once a LF comes, up to the first NUL): no NUL, each burst ends in LF."""
    clean = data.replace(b"\0", b"\1")
    bursts = []
    for offset in range(0, len(clean), chunk):
        burst = bytearray(clean[offset:offset + chunk])
        burst[-1] = 0x0A
        bursts.append(bytes(burst))
    return bursts


def exchange_with_echo(end: PyEnd, send_path: str, recv_path: str, sizes, seed: int, *, chunk: int,
                       lines: bool = False) -> bytes:
    """Each size through an echo peer in bursts of ``chunk`` bytes (send one, read its echo back),
    compared burst by burst; all the bytes sent, for the peer's own SHA-256."""
    sent = []
    for number, size in enumerate(sizes):
        data = payload(size, seed + number)
        if not size:
            end.send(b"", send_path)
            continue
        bursts = line_bursts(data, chunk) if lines else [data[o:o + chunk] for o in range(0, size, chunk)]
        for offset, burst in zip(range(0, size, chunk), bursts):
            end.send(burst, send_path)
            assert_same(f"burst at {offset} of {size} bytes echoed (sent via {send_path}, read via {recv_path})",
                        end.recv_exactly(len(burst), recv_path), burst)
            sent.append(burst)
    return b"".join(sent)


def exchange_with_ktls_socket(end: PyEnd, peer, send_path: str, recv_path: str, sizes, seed: int) -> bytes:
    """Both directions with a KTLSSocket in this process (its calls in a thread, so that neither
    side waits for the other's buffers); what the peer sent, in order."""
    for number, size in enumerate(sizes):
        up = payload(size, seed + number)
        join = in_thread(recv_exactly, peer, size)
        end.send(up, send_path)
        assert_same(f"{size} bytes to the KTLSSocket via {send_path}", join(TIMEOUT), up)
        down = payload(size, seed + 100 + number)
        join = in_thread(peer.sendall, down)
        assert_same(f"{size} bytes from the KTLSSocket via {recv_path}", end.recv_exactly(size, recv_path), down)
        join(TIMEOUT)


# --- the peers' own view -----------------------------------------------------------------------------

def check_openssl_summary(peer, version, cipher) -> None:
    """s_server -brief / s_client -brief print the session on stderr."""
    summary = peer.wait_stderr("Ciphersuite:")
    assert f"Protocol version: {VERSION_NAME[version]}" in summary, summary
    assert f"Ciphersuite: {suite_name(version, cipher)}" in summary, summary


DESCRIPTION = re.compile(r"- Description: \((TLS1\.\d)-[^)]*\)-.*-\(([A-Z0-9-]+)\)\s*$", re.M)


def check_gnutls_description(text: str, version, cipher) -> None:
    match = DESCRIPTION.search(text)
    assert match, f"no session description from GnuTLS:\n{text[-2000:]}"
    assert (match.group(1), match.group(2)) == (GNUTLS_VERSION[version], GNUTLS_CIPHER[cipher]), match.group(0)


# --- our pyOpenSSL client ------------------------------------------------------------------------------

@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_client_vs_s_server(launch, interop_pki, counters, feature, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    send_path, recv_path = paths(index)
    feature(FEATURE, peer=S_SERVER, role=ROLE_OUR_CLIENT)
    server = launch.s_server(interop_pki.server, mode="data", cipher_args=openssl_cipher_args(version, cipher))
    stats = counters()
    conn = pyopenssl_connect(server.port, pyopenssl_client_context(interop_pki.ca, version, cipher))
    try:
        check_negotiated(conn, version, cipher, server_side=False)
        end = PyEnd(conn, str(tmp_path))
        exchange_with_pipe(end, server, send_path, recv_path, SIZES, seed=index * 1000 + 10)
        stats.expect_installs(1, 1, "our pyOpenSSL client (s_server in userspace)")
        check_openssl_summary(server, version, cipher)
        end.close_and_expect_peer_close_notify()
    finally:
        conn.close()
    assert conn.ktls_state is ConnectionState.CLOSED


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_client_vs_gnutls_serv(launch, interop_pki, counters, feature, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    send_path, recv_path = paths(index + 1)
    feature(FEATURE, peer=GNUTLS_SERV, role=ROLE_OUR_CLIENT).row_note(
        "gnutls-serv's echo is line- and C-string-based: bursts of at most 16 KiB, no NUL, each ending in LF")
    server = launch.gnutls_serv(interop_pki.server, priority=gnutls_priority(version, cipher))
    stats = counters()
    conn = pyopenssl_connect(server.port, pyopenssl_client_context(interop_pki.ca, version, cipher))
    try:
        check_negotiated(conn, version, cipher, server_side=False)
        end = PyEnd(conn, str(tmp_path))
        exchange_with_echo(end, send_path, recv_path, SIZES, seed=index * 1000 + 20, chunk=1 << 14, lines=True)
        stats.expect_installs(1, 1, "our pyOpenSSL client (gnutls-serv in userspace)")
        assert server.stdout.wait_for(lambda out: DESCRIPTION.search(out.decode("utf-8", "replace")), TIMEOUT)
        check_gnutls_description(server.stdout.text(), version, cipher)
        end.close_and_expect_peer_close_notify()
    finally:
        conn.close()


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_client_vs_ktls_echo_server(our_servers, interop_pki, counters, feature, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    send_path, recv_path = paths(index + 2)
    feature(FEATURE, peer=KTLS_ECHO, role=ROLE_OUR_CLIENT)
    server = our_servers.echo(server_context(interop_pki.server, version, cipher))
    stats = counters()
    conn = pyopenssl_connect(port_of(server), pyopenssl_client_context(interop_pki.ca, version, cipher))
    try:
        check_negotiated(conn, version, cipher, server_side=False)
        end = PyEnd(conn, str(tmp_path))
        sent = exchange_with_echo(end, send_path, recv_path, SIZES, seed=index * 1000 + 30, chunk=1 << 16)
        end.close_and_expect_peer_close_notify()
    finally:
        conn.close()
    record = server.wait_records(1, TIMEOUT)[0]
    assert record["error"] is None, f"our echo server failed: {record['error']!r}"
    assert (record["version"], record["cipher"][0]) == (VERSION_NAME[version], suite_name(version, cipher))
    expect_our_ktls(record["ktls"], "the KTLSSocket echo server")
    assert (record["bytes"], record["sha256"]) == (len(sent), sha(sent)), "the echo server read other bytes"
    assert record["end"] == "close_notify exchanged", record["end"]
    stats.expect_installs(2, 2, "our pyOpenSSL client and the KTLSSocket echo server (1 + 1 each)")


def test_client_16mib_sendfile_to_s_server(launch, interop_pki, counters, feature):
    """16 MiB from a file by Connection.sendfile (the kernel encrypts from the page cache where it
    carries the records) into s_server, whose stdout must hash to the file's SHA-256."""
    version, cipher = TLS_1_3_VERSION, KernelCipher.AES_GCM_256
    feature("pyOpenSSL Connection: 16 MiB up by sendfile (TLS 1.3 AES-256-GCM)", peer=S_SERVER,
            role=ROLE_OUR_CLIENT)
    data = payload(SENDFILE_SIZE, 4242)
    directory = fast_tmpdir()
    path = os.path.join(directory, "sendfile-16mib.bin")
    try:
        with open(path, "wb") as out:
            out.write(data)
        server = launch.s_server(interop_pki.server, mode="data", cipher_args=openssl_cipher_args(version, cipher))
        stats = counters()
        conn = pyopenssl_connect(server.port, pyopenssl_client_context(interop_pki.ca, version, cipher))
        try:
            check_negotiated(conn, version, cipher, server_side=False)
            with open(path, "rb") as source:
                assert conn.sendfile(source) == SENDFILE_SIZE
            assert server.take_output_digest(SENDFILE_SIZE) == sha(data), "s_server received other bytes"
            assert server.stdout.unconsumed == 0
            stats.expect_installs(1, 1, "our pyOpenSSL client (s_server in userspace)")
            PyEnd(conn, directory).close_and_expect_peer_close_notify()
        finally:
            conn.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- our pyOpenSSL server ------------------------------------------------------------------------------

@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_server_vs_s_client(launch, interop_pki, counters, feature, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    send_path, recv_path = paths(index + 1)
    feature(FEATURE, peer=S_CLIENT, role=ROLE_OUR_SERVER)
    with listener() as listening:
        stats = counters()
        client = launch.s_client(listening.getsockname()[1], interop_pki.ca,
                                 cipher_args=openssl_cipher_args(version, cipher))
        conn = pyopenssl_accept(listening, pyopenssl_server_context(interop_pki.server, version, cipher))
    try:
        check_negotiated(conn, version, cipher, server_side=True)
        end = PyEnd(conn, str(tmp_path))
        exchange_with_pipe(end, client, send_path, recv_path, SIZES, seed=index * 1000 + 40)
        stats.expect_installs(1, 1, "our pyOpenSSL server (s_client in userspace)")
        summary = client.wait_stderr("Verification: OK")
        assert "Verified peername: localhost" in summary, summary
        check_openssl_summary(client, version, cipher)
        end.close_and_expect_peer_close_notify()
        assert client.wait() == 0, client.report()
    finally:
        conn.close()


GNUTLS_CLI_NOTE = ("every size up; down 0, 1 and one of 16383/16384/16385 "
                   "(gnutls-cli writes its stdout one byte per system call)")


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_server_vs_gnutls_cli(launch, interop_pki, counters, feature, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    send_path, recv_path = paths(index + 2)
    feature(FEATURE, peer=GNUTLS_CLI, role=ROLE_OUR_SERVER).row_note(GNUTLS_CLI_NOTE)
    with listener() as listening:
        stats = counters()
        client = launch.gnutls_cli(listening.getsockname()[1], interop_pki.ca,
                                   priority=gnutls_priority(version, cipher))
        conn = pyopenssl_accept(listening, pyopenssl_server_context(interop_pki.server, version, cipher))
    try:
        check_negotiated(conn, version, cipher, server_side=True)
        end = PyEnd(conn, str(tmp_path))
        # Ours to gnutls-cli's stdout: 0, 1 and one record-boundary size; then every size from its
        # stdin to us.
        exchange_with_pipe(end, client, send_path, recv_path, (0, 1, (16383, 16384, 16385)[index % 3]),
                           seed=index * 1000 + 50, recv_sizes=())
        exchange_with_pipe(end, client, send_path, recv_path, (), seed=index * 1000 + 60, recv_sizes=SIZES)
        stats.expect_installs(1, 1, "our pyOpenSSL server (gnutls-cli in userspace)")
        assert conn.shutdown() is False
        # gnutls-cli answers our close_notify by exiting without its own: pyOpenSSL's own
        # Connection reports that TCP EOF as SysCallError(-1, 'Unexpected EOF'); so must ours.
        assert client.wait() == 0, client.report()
        with pytest.raises(SSL.SysCallError) as raised:
            conn.recv(1)
        assert raised.value.args == (-1, "Unexpected EOF")
    finally:
        conn.close()
    log = read_log(client)
    assert "Peer has closed the GnuTLS connection" in log, log[-2000:]
    check_gnutls_description(log, version, cipher)


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_server_vs_ktls_client(interop_pki, counters, feature, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    send_path, recv_path = paths(index)
    feature(FEATURE, peer=KTLS_CLIENT, role=ROLE_OUR_SERVER)
    ctx = client_context(interop_pki.ca, version, cipher)

    def connect(port: int):
        raw = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
        try:
            return ctx.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    with listener() as listening:
        stats = counters()
        join = in_thread(connect, listening.getsockname()[1])
        conn = pyopenssl_accept(listening, pyopenssl_server_context(interop_pki.server, version, cipher))
    try:
        peer = join(TIMEOUT)
    except BaseException:
        conn.close()
        raise
    try:
        check_negotiated(conn, version, cipher, server_side=True)
        assert (peer.version(), peer.cipher()[0]) == (VERSION_NAME[version], suite_name(version, cipher))
        expect_our_ktls(peer, "the KTLSSocket client")
        end = PyEnd(conn, str(tmp_path))
        exchange_with_ktls_socket(end, peer, send_path, recv_path, SIZES, seed=index * 1000 + 70)
        stats.expect_installs(2, 2, "our pyOpenSSL server and the KTLSSocket client (1 + 1 each)")
        assert conn.shutdown() is False
        peer.unwrap().close()  # reads our close_notify, sends its own
        with pytest.raises(SSL.ZeroReturnError):
            conn.recv(1)
        assert conn.get_shutdown() == BOTH_CLOSED
    finally:
        conn.close()
        peer.close()
