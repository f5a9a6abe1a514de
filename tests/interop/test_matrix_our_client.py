"""The bulk-data matrix with ktls_ossl as the client: openssl s_server (userspace and with OpenSSL's
own kTLS) and gnutls-serv --echo, every version x kernel cipher, with the I/O path rotated.

Each cell: a fresh peer pinned to one version and suite, our context pinned the same; payloads of
0, 1, 16383, 16384, 16385 bytes and 1 MiB in both directions, SHA-256 compared on our side and on
the peer's (what s_server wrote to its stdout / what gnutls-serv echoed back); sock.ktls and, in the
VM, the exact number of kTLS installations in /proc/net/tls_stat (ours, plus the peer's own when
it runs OpenSSL's kTLS). 64 MiB runs once per peer.
"""
from __future__ import annotations

import hashlib
import random

import pytest

from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import KTLS, expect_our_ktls
from .coverage import ROLE_OUR_CLIENT
from .exchange import BIG, SIZES, Endpoint, assert_same, client_context, connect, rotation
from ..tlshelpers import TLS12_SUITES, TLS13_SUITES
from .peers import (
    CELL_IDS,
    CELLS,
    gnutls_priority,
    openssl_cipher_args,
    openssl_ktls_note,
    openssl_ktls_offload,
    payload,
)

pytestmark = pytest.mark.ktls_or_fallback

S_SERVER = {False: "openssl s_server (userspace)", True: "openssl s_server (OpenSSL kTLS)"}
GNUTLS_SERV = "gnutls-serv --echo"
VERSION_NAME = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}


def suite_name(version, cipher, key_type="ecdsa") -> str:
    return TLS12_SUITES[(key_type, cipher)] if version == TLS_1_2_VERSION else TLS13_SUITES[cipher]


def check_negotiated(sock, version, cipher) -> None:
    assert sock.version() == VERSION_NAME[version]
    assert sock.cipher()[0] == suite_name(version, cipher)
    expect_our_ktls(sock)


def exchange_with_pipe(end: Endpoint, peer, send_path: str, recv_path: str, sizes, seed: int) -> None:
    """Each size up (peer's stdout must carry exactly our bytes) and down (peer's stdin to us)."""
    for number, size in enumerate(sizes):
        up = payload(size, seed + number)
        end.send(up, send_path)
        assert_same(f"{size} bytes to the peer via {send_path}", peer.take_output(size), up)
        down = payload(size, seed + 100 + number)
        if down:
            peer.write(down)
        assert_same(f"{size} bytes from the peer via {recv_path}", end.recv_exactly(size, recv_path), down)
    assert peer.stdout.unconsumed == 0, f"{peer.stdout.unconsumed} unexpected bytes reached the peer"


def line_chunk(rng, size: int) -> bytes:
    """A burst for gnutls-serv's echo, which is line- and C-string-based: it echoes what it has
    gathered once a LF arrives, up to the first NUL. So: no NUL, and the burst ends in LF."""
    data = bytearray(rng.randbytes(size).replace(b"\0", b"\1"))
    data[-1] = 0x0A
    return bytes(data)


def exchange_with_echo(end: Endpoint, send_path: str, recv_path: str, sizes, seed: int, *,
                       chunk: int = 1 << 14) -> None:
    """Each size through an echo peer in bursts of at most one record (one socket, one thread:
    send a burst, read its echo), compared burst by burst and by SHA-256 over the whole size."""
    for number, size in enumerate(sizes):
        rng = random.Random(seed + number)
        sent, echoed = hashlib.sha256(), hashlib.sha256()
        if not size:
            end.send(b"", send_path)
            assert end.recv_exactly(0, recv_path) == b""
        for offset in range(0, size, chunk):
            burst = line_chunk(rng, min(chunk, size - offset))
            end.send(burst, send_path)
            back = end.recv_exactly(len(burst), recv_path)
            assert_same(f"burst at {offset} of {size} bytes echoed (sent via {send_path}, read via {recv_path})",
                        back, burst)
            sent.update(burst)
            echoed.update(back)
        assert echoed.hexdigest() == sent.hexdigest()


# --- openssl s_server -------------------------------------------------------------------------------

@pytest.mark.parametrize("ktls_peer", [False, True], ids=["userspace", "openssl-ktls"])
@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_s_server(launch, interop_pki, counters, cell, tmp_path, version, cipher, ktls_peer):
    entry = cell(peer=S_SERVER[ktls_peer], role=ROLE_OUR_CLIENT, version=version, cipher=cipher)
    send_path, recv_path = rotation(CELLS.index((version, cipher)) + ktls_peer)
    entry.paths(f"{send_path}/{recv_path}")
    server = launch.s_server(interop_pki.server, mode="data", ktls=ktls_peer,
                             cipher_args=openssl_cipher_args(version, cipher))
    stats = counters()
    end = Endpoint(connect(server.port, client_context(interop_pki.ca, version, cipher)), str(tmp_path))
    try:
        check_negotiated(end.sock, version, cipher)
        exchange_with_pipe(end, server, send_path, recv_path, SIZES, seed=CELLS.index((version, cipher)) * 1000)
        peer_tx, peer_rx = openssl_ktls_offload(version, cipher) if ktls_peer else (0, 0)
        stats.expect_installs(1 + peer_tx, 1 + peer_rx, f"our client and {S_SERVER[ktls_peer]}")
        summary = server.wait_stderr("Ciphersuite:")  # s_server's own view of the session
        assert f"Protocol version: {VERSION_NAME[version]}" in summary, summary
        assert f"Ciphersuite: {suite_name(version, cipher)}" in summary, summary
        assert ("Using Kernel TLS for sending" in summary) == bool(peer_tx and KTLS), summary
        assert ("Using Kernel TLS for receiving" in summary) == bool(peer_rx and KTLS), summary
        if ktls_peer and KTLS:
            entry.note(openssl_ktls_note(version, cipher))
    finally:
        end.close()


def test_s_server_userspace_64mib_up_by_sendfile(launch, interop_pki, counters, cell, tmp_path, big_file):
    """64 MiB from our kernel TX (sendfile: the file's pages never enter Python) into s_server."""
    version, cipher = TLS_1_3_VERSION, KernelCipher.AES_GCM_128
    entry = cell(peer=S_SERVER[False], role=ROLE_OUR_CLIENT, version=version, cipher=cipher)
    entry.note("64 MiB up via sendfile")
    server = launch.s_server(interop_pki.server, mode="data", cipher_args=openssl_cipher_args(version, cipher))
    stats = counters()
    end = Endpoint(connect(server.port, client_context(interop_pki.ca, version, cipher)), str(tmp_path))
    try:
        check_negotiated(end.sock, version, cipher)
        assert end.sendfile_path(big_file.path) == BIG
        assert server.take_output_digest(BIG) == big_file.sha256, "s_server received other bytes"
        stats.expect_installs(1, 1, "our client (s_server in userspace)")
    finally:
        end.close()


def test_s_server_ktls_64mib_down_from_www_sendfile(launch, interop_pki, counters, cell, tmp_path, big_file):
    """64 MiB from s_server -WWW -sendfile: OpenSSL's kTLS sendfile into our kernel RX."""
    version, cipher = TLS_1_2_VERSION, KernelCipher.AES_GCM_256
    entry = cell(peer=S_SERVER[True], role=ROLE_OUR_CLIENT, version=version, cipher=cipher)
    entry.note("64 MiB down from -WWW -sendfile")
    server = launch.s_server(interop_pki.server, mode="WWW", ktls=True, cwd=big_file.directory,
                             cipher_args=openssl_cipher_args(version, cipher), extra=["-sendfile"])
    stats = counters()
    end = Endpoint(connect(server.port, client_context(interop_pki.ca, version, cipher)), str(tmp_path))
    try:
        check_negotiated(end.sock, version, cipher)
        end.send(f"GET /{big_file.name} HTTP/1.0\r\n\r\n".encode(), "sendall")
        header = b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\n"
        assert end.recv_exactly(len(header), "recv") == header
        assert end.recv_digest(BIG, "recv_into") == big_file.sha256, "other bytes than the file's"
        peer_tx, peer_rx = openssl_ktls_offload(version, cipher)
        stats.expect_installs(1 + peer_tx, 1 + peer_rx, "our client and s_server -WWW with OpenSSL kTLS")
        if KTLS:
            assert f"KTLS SENDFILE '{big_file.name}' OK" in server.stdout.text() + server.stderr_text(), (
                "s_server did not report its kTLS sendfile")
    finally:
        end.close()


# --- gnutls-serv ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_gnutls_serv(launch, interop_pki, counters, cell, tmp_path, version, cipher):
    entry = cell(peer=GNUTLS_SERV, role=ROLE_OUR_CLIENT, version=version, cipher=cipher)
    send_path, recv_path = rotation(CELLS.index((version, cipher)) + 2)
    entry.paths(f"{send_path}/{recv_path}")
    entry.row_note("gnutls-serv's echo is line- and C-string-based: bursts of at most 16 KiB, no NUL, each ending in LF")
    server = launch.gnutls_serv(interop_pki.server, priority=gnutls_priority(version, cipher))
    stats = counters()
    end = Endpoint(connect(server.port, client_context(interop_pki.ca, version, cipher)), str(tmp_path))
    try:
        check_negotiated(end.sock, version, cipher)
        exchange_with_echo(end, send_path, recv_path, SIZES, seed=CELLS.index((version, cipher)) * 1000 + 7)
        stats.expect_installs(1, 1, "our client (gnutls-serv in userspace)")
    finally:
        end.close()


def test_gnutls_serv_64mib_echo(launch, interop_pki, counters, cell, tmp_path):
    version, cipher = TLS_1_3_VERSION, KernelCipher.CHACHA20_POLY1305
    entry = cell(peer=GNUTLS_SERV, role=ROLE_OUR_CLIENT, version=version, cipher=cipher)
    entry.note("64 MiB echoed")
    server = launch.gnutls_serv(interop_pki.server, priority=gnutls_priority(version, cipher))
    stats = counters()
    end = Endpoint(connect(server.port, client_context(interop_pki.ca, version, cipher)), str(tmp_path))
    try:
        check_negotiated(end.sock, version, cipher)
        exchange_with_echo(end, "sendall", "recv_into", [BIG], seed=99)
        stats.expect_installs(1, 1, "our client (gnutls-serv in userspace)")
    finally:
        end.close()
