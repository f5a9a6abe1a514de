"""The bulk-data matrix with ktls_ossl as the server (ktls_ossl.serve, in-process): openssl s_client
(userspace and with OpenSSL's own kTLS) and gnutls-cli against the echo server, curl and wget
against the HTTPS file server; every version x kernel cipher, with our server's I/O path rotated.

Each cell checks the bytes on both ends (what the client printed / saved, and the SHA-256 our
server computed over what it read), the negotiated version and suite as the client reports it,
our side's kTLS status, and in the VM the exact number of kTLS installations (ours plus, for
OpenSSL's kTLS, the peer's). 64 MiB runs once per peer, as an HTTP download through sendfile.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import KTLS, expect_our_ktls, port_of, read_log
from .coverage import ROLE_OUR_SERVER
from .exchange import (
    BIG,
    SERVER_READ_PATHS,
    SERVER_WRITE_PATHS,
    SIZES,
    TIMEOUT,
    assert_same,
    server_context,
    sha,
)
from ..tlshelpers import TLS12_SUITES, TLS13_SUITES
from .peers import (
    CELL_IDS,
    CELLS,
    GNUTLS_CIPHER,
    curl_cipher_args,
    gnutls_priority,
    openssl_cipher_args,
    openssl_ktls_note,
    openssl_ktls_offload,
    payload,
    wget_cipher_args,
)

pytestmark = pytest.mark.ktls_or_fallback

S_CLIENT = {False: "openssl s_client (userspace)", True: "openssl s_client (OpenSSL kTLS)"}
GNUTLS_CLI = "gnutls-cli"
CURL = "curl (OpenSSL)"
WGET = "wget (GnuTLS)"
VERSION_NAME = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}
GNUTLS_VERSION = {TLS_1_2_VERSION: "TLS1.2", TLS_1_3_VERSION: "TLS1.3"}
HTTP_SEND_PATHS = ("sendfile", "sendall", "send", "makefile")
HTTP_RECV_PATHS = ("makefile", "recv", "recv_into")


def _sha256_of(file) -> str:
    """hashlib.file_digest(file, "sha256").hexdigest() (3.11+), on every supported Python."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: file.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def suite_name(version, cipher) -> str:
    return TLS12_SUITES[("ecdsa", cipher)] if version == TLS_1_2_VERSION else TLS13_SUITES[cipher]


def server_paths(index: int) -> tuple[str, str]:
    return SERVER_READ_PATHS[index % 3], SERVER_WRITE_PATHS[(index + index // 3) % 3]


def check_server_record(record: dict, version, cipher, expected: bytes | None = None) -> None:
    """What our echo server recorded for the connection: no error, the suite, kTLS, the bytes."""
    assert record["error"] is None, f"our server failed: {record['error']!r}"
    assert record["version"] == VERSION_NAME[version]
    assert record["cipher"][0] == suite_name(version, cipher)
    expect_our_ktls(record["ktls"], "our server")
    if expected is not None:
        assert record["bytes"] == len(expected), f"our server read {record['bytes']} of {len(expected)} bytes"
        assert record["sha256"] == sha(expected), "our server read other bytes than the client sent"


def echo_through_client(peer, sizes, seed: int) -> bytes:
    """Each size into the client's stdin; it must come back on its stdout (via our echo server)."""
    sent = []
    for number, size in enumerate(sizes):
        data = payload(size, seed + number)
        if data:
            peer.write(data)
        assert_same(f"{size} bytes echoed by our server", peer.take_output(size), data)
        sent.append(data)
    return b"".join(sent)


def read_http_response(peer) -> tuple[bytes, int, str]:
    """One HTTP response from a pipe client's stdout: (head, body length, body SHA-256)."""
    head = peer.take_output_until(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    return head, length, peer.take_output_digest(length)


def http_get_through_pipe(peer, path: str) -> tuple[bytes, str]:
    """Type a GET into a pipe client (s_client, gnutls-cli); (status+headers, body SHA-256)."""
    peer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    head, _, digest = read_http_response(peer)
    return head, digest


def post_through_pipe(peer, data: bytes, via: str) -> dict:
    peer.write(f"POST /upload?via={via} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n"
               f"Content-Type: application/octet-stream\r\n\r\n".encode() + data)
    head = peer.take_output_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    return json.loads(peer.take_output(length))


# --- openssl s_client -------------------------------------------------------------------------------

@pytest.mark.parametrize("ktls_peer", [False, True], ids=["userspace", "openssl-ktls"])
@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_s_client(launch, our_servers, interop_pki, counters, cell, version, cipher, ktls_peer):
    index = CELLS.index((version, cipher))
    read_path, write_path = server_paths(index + ktls_peer)
    entry = cell(peer=S_CLIENT[ktls_peer], role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.paths(f"{read_path}/{write_path}")
    server = our_servers.echo(server_context(interop_pki.server, version, cipher),
                              read_path=read_path, write_path=write_path)
    stats = counters()
    client = launch.s_client(port_of(server), interop_pki.ca, ktls=ktls_peer,
                             cipher_args=openssl_cipher_args(version, cipher))
    sent = echo_through_client(client, SIZES, seed=index * 1000 + 500)
    summary = client.wait_stderr("Ciphersuite:")
    assert f"Protocol version: {VERSION_NAME[version]}" in summary
    assert f"Ciphersuite: {suite_name(version, cipher)}" in summary
    assert "Verification: OK" in summary
    peer_tx, peer_rx = openssl_ktls_offload(version, cipher) if ktls_peer else (0, 0)
    if ktls_peer and KTLS:
        # OpenSSL's own report of its offload (the config typo check, next to tls_stat below).
        assert ("Using Kernel TLS for sending" in summary) == bool(peer_tx), summary
        assert ("Using Kernel TLS for receiving" in summary) == bool(peer_rx), summary
        entry.note(openssl_ktls_note(version, cipher))
    stats.expect_installs(1 + peer_tx, 1 + peer_rx, f"our server and {S_CLIENT[ktls_peer]}")
    client.stop()  # TCP closes under the server's read
    check_server_record(server.wait_records(1, TIMEOUT)[0], version, cipher, sent)


@pytest.mark.parametrize("ktls_peer", [False, True], ids=["userspace", "openssl-ktls"])
def test_s_client_64mib_get_by_sendfile(launch, our_servers, interop_pki, counters, cell, big_file, ktls_peer):
    version, cipher = (TLS_1_2_VERSION, KernelCipher.CHACHA20_POLY1305) if ktls_peer else \
        (TLS_1_3_VERSION, KernelCipher.AES_GCM_256)
    entry = cell(peer=S_CLIENT[ktls_peer], role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.note("64 MiB GET, server sendfile")
    server = our_servers.files(server_context(interop_pki.server, version, cipher), big_file.directory)
    stats = counters()
    client = launch.s_client(port_of(server), interop_pki.ca, ktls=ktls_peer,
                             cipher_args=openssl_cipher_args(version, cipher))
    head, digest = http_get_through_pipe(client, f"/{big_file.name}")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert digest == big_file.sha256, "s_client received other bytes than the file's"
    record = server.wait_records(1, TIMEOUT)[0]
    assert (record["via"], record["bytes"]) == ("sendfile", BIG)
    expect_our_ktls(record["status"], "our file server")
    peer_tx, peer_rx = openssl_ktls_offload(version, cipher) if ktls_peer else (0, 0)
    stats.expect_installs(1 + peer_tx, 1 + peer_rx, f"our server and {S_CLIENT[ktls_peer]}")


# --- gnutls-cli ---------------------------------------------------------------------------------------

def check_gnutls_description(log: str, version, cipher) -> None:
    """gnutls-cli's own description of the session names the version and the bulk cipher."""
    match = re.search(r"- Description: \((TLS1\.\d)-[^)]*\)-.*-\(([A-Z0-9-]+)\)\s*$", log, re.M)
    assert match, f"gnutls-cli did not describe the session:\n{log[-2000:]}"
    assert match.group(1) == GNUTLS_VERSION[version]
    assert match.group(2) == GNUTLS_CIPHER[cipher]


# gnutls-cli writes what it receives to stdout one byte per write(2) (856670 writes for 856670 bytes,
# measured with strace; stdbuf does not change it): a MiB takes seconds on the host and minutes
# under UML, 16 KiB over a second. So every size goes up through it (POST), and the downloads are
# 0 and 1 byte plus one record-boundary size per cell, rotated (16383, 16384, 16385).
def gnutls_cli_downloads(index: int) -> tuple[int, ...]:
    return (0, 1, (16383, 16384, 16385)[index % 3])


GNUTLS_CLI_NOTE = ("every size up; down 0, 1 and one of 16383/16384/16385 "
                   "(gnutls-cli writes its stdout one byte per syscall)")


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_gnutls_cli(launch, our_servers, interop_pki, counters, cell, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    get_via, post_via = HTTP_SEND_PATHS[(index + 2) % 4], HTTP_RECV_PATHS[(index + 2) % 3]
    entry = cell(peer=GNUTLS_CLI, role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.paths(f"GET {get_via}, POST {post_via}")
    entry.row_note(GNUTLS_CLI_NOTE)
    root = tmp_path / "root"
    root.mkdir()
    gets = write_files(root, gnutls_cli_downloads(index), seed=index * 1000 + 600)
    server = our_servers.files(server_context(interop_pki.server, version, cipher), str(root))
    stats = counters()
    client = launch.gnutls_cli(port_of(server), interop_pki.ca, priority=gnutls_priority(version, cipher))
    posts = []
    for number, size in enumerate(SIZES):
        data = payload(size, index * 1000 + 650 + number)
        answer = post_through_pipe(client, data, post_via)
        assert (answer["bytes"], answer["sha256"]) == (size, sha(data)), f"POST of {size} bytes: {answer}"
        posts.append((f"post-{size}", data))
    for name, data in gets:
        client.write(f"GET /{name}?via={get_via} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        head, length, digest = read_http_response(client)
        assert head.startswith(b"HTTP/1.1 200 ") and (length, digest) == (len(data), sha(data)), head
    stats.expect_installs(1, 1, "our server, one connection for every request (gnutls-cli in userspace)")
    client.close_input()  # gnutls-cli ends the session and exits (and only then flushes its log)
    assert client.wait() == 0, client.report()
    check_gnutls_description(read_log(client), version, cipher)
    check_http_records(server, gets, posts, get_via, post_via, version, cipher)


def test_gnutls_cli_64mib_post(launch, our_servers, interop_pki, counters, cell, tmp_path, big_file):
    version, cipher = TLS_1_2_VERSION, KernelCipher.AES_GCM_128
    entry = cell(peer=GNUTLS_CLI, role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.note("64 MiB POST, server makefile")
    server = our_servers.files(server_context(interop_pki.server, version, cipher), str(tmp_path))
    stats = counters()
    client = launch.gnutls_cli(port_of(server), interop_pki.ca, priority=gnutls_priority(version, cipher))
    answer = post_through_pipe(client, big_file.data, "makefile")
    assert (answer["bytes"], answer["sha256"]) == (BIG, big_file.sha256)
    record = server.wait_records(1, TIMEOUT)[0]
    assert (record["method"], record["via"], record["bytes"]) == ("POST", "makefile", BIG)
    expect_our_ktls(record["status"], "our file server")
    stats.expect_installs(1, 1, "our server (gnutls-cli in userspace)")


# --- curl and wget against the file server ---------------------------------------------------------------

def write_files(root, sizes, seed: int) -> list[tuple[str, bytes]]:
    files = []
    for number, size in enumerate(sizes):
        data = payload(size, seed + number)
        name = f"f{number}-{size}.bin"
        with open(os.path.join(root, name), "wb") as out:
            out.write(data)
        files.append((name, data))
    return files


def check_http_records(server, gets, posts, get_via: str, post_via: str, version, cipher) -> None:
    records = server.wait_records(len(gets) + len(posts), TIMEOUT)
    for record in records:
        expect_our_ktls(record["status"], "our file server")
        assert record["status"].version == VERSION_NAME[version]
    get_records = [r for r in records if r["method"] == "GET"]
    post_records = [r for r in records if r["method"] == "POST"]
    assert [(r["via"], r["bytes"]) for r in get_records] == [(get_via, len(d)) for _, d in gets]
    assert [(r["via"], r["bytes"], r["sha256"]) for r in post_records] == [
        (post_via, len(d), sha(d)) for _, d in posts]


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_curl(launch, our_servers, interop_pki, counters, cell, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    get_via, post_via = HTTP_SEND_PATHS[index % 4], HTTP_RECV_PATHS[index % 3]
    entry = cell(peer=CURL, role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.paths(f"GET {get_via}, POST {post_via}")
    root = tmp_path / "root"
    root.mkdir()
    gets = write_files(root, SIZES, seed=index * 1000 + 700)
    posts = write_files(tmp_path, SIZES, seed=index * 1000 + 800)
    server = our_servers.files(server_context(interop_pki.server, version, cipher), str(root))
    base = f"https://localhost:{port_of(server)}"
    common = ["--silent", "--show-error", "--fail", "--cacert", interop_pki.ca, "--http1.1",
              "--resolve", f"localhost:{port_of(server)}:127.0.0.1", "--max-time", str(int(TIMEOUT)),
              *curl_cipher_args(version, cipher)]
    argv = ["curl", "--verbose"]
    for number, (name, _) in enumerate(gets):
        argv += [*common, "-o", str(tmp_path / f"got-{number}"), f"{base}/{name}?via={get_via}", "--next"]
    for number, (name, _) in enumerate(posts):
        argv += [*common, "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                 "--data-binary", f"@{tmp_path / name}", "-o", str(tmp_path / f"answer-{number}"),
                 f"{base}/upload?via={post_via}", "--next"]
    stats = counters()
    peer = launch.run("curl", argv[:-1], stdin=False)
    assert peer.wait(120) == 0, peer.report()
    for number, (name, data) in enumerate(gets):
        assert_same(f"curl GET {name}", (tmp_path / f"got-{number}").read_bytes(), data)
    for number, (name, data) in enumerate(posts):
        answer = json.loads((tmp_path / f"answer-{number}").read_bytes())
        assert (answer["bytes"], answer["sha256"]) == (len(data), sha(data)), f"POST {name}: {answer}"
    log = peer.stderr_text()
    assert f"SSL connection using {VERSION_NAME[version]} / {suite_name(version, cipher)}" in log
    reused = log.count("Re-using existing connection")
    assert reused >= len(gets) + len(posts) - 1, f"curl opened new connections:\n{log[-3000:]}"
    check_http_records(server, gets, posts, get_via, post_via, version, cipher)
    stats.expect_installs(1, 1, "our server, one connection for every request (curl in userspace)")


def test_curl_64mib_get_and_post(launch, our_servers, interop_pki, counters, cell, tmp_path, big_file):
    version, cipher = TLS_1_3_VERSION, KernelCipher.AES_CCM_128
    entry = cell(peer=CURL, role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.note("64 MiB GET (sendfile) and POST (recv_into)")
    server = our_servers.files(server_context(interop_pki.server, version, cipher), big_file.directory)
    base = f"https://localhost:{port_of(server)}"
    common = ["--silent", "--show-error", "--fail", "--cacert", interop_pki.ca, "--http1.1",
              "--resolve", f"localhost:{port_of(server)}:127.0.0.1", "--max-time", str(int(TIMEOUT * 4)),
              *curl_cipher_args(version, cipher)]
    stats = counters()
    peer = launch.run("curl", ["curl", *common, "-o", str(tmp_path / "got"), f"{base}/{big_file.name}",
                               "--next", *common, "-H", "Expect:", "--data-binary", f"@{big_file.path}",
                               "-o", str(tmp_path / "answer"), f"{base}/upload?via=recv_into"], stdin=False)
    assert peer.wait(240) == 0, peer.report()
    with open(tmp_path / "got", "rb") as got:
        digest = _sha256_of(got)
    assert digest == big_file.sha256, "curl saved other bytes than the file's"
    answer = json.loads((tmp_path / "answer").read_bytes())
    assert (answer["bytes"], answer["sha256"]) == (BIG, big_file.sha256)
    records = server.wait_records(2, TIMEOUT)
    assert [(r["method"], r["via"], r["bytes"]) for r in records] == [("GET", "sendfile", BIG),
                                                                       ("POST", "recv_into", BIG)]
    stats.expect_installs(1, 1, "our server (curl in userspace)")


@pytest.mark.parametrize("version, cipher", CELLS, ids=CELL_IDS)
def test_wget(launch, our_servers, interop_pki, counters, cell, tmp_path, version, cipher):
    index = CELLS.index((version, cipher))
    get_via, post_via = HTTP_SEND_PATHS[(index + 1) % 4], HTTP_RECV_PATHS[(index + 1) % 3]
    entry = cell(peer=WGET, role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.paths(f"GET {get_via}, POST {post_via}; POST sizes {SIZES[index % (len(SIZES) - 1)]} + 1 MiB")
    entry.row_note("wget posts one body per run: 1 MiB in every cell, the small sizes rotated over the row")
    root = tmp_path / "root"
    root.mkdir()
    gets = write_files(root, SIZES, seed=index * 1000 + 900)
    server = our_servers.files(server_context(interop_pki.server, version, cipher), str(root))
    base = f"https://localhost:{port_of(server)}"
    common = ["wget", "--inet4-only", "--no-verbose", f"--ca-certificate={interop_pki.ca}",
              f"--timeout={int(TIMEOUT)}", "--tries=1", *wget_cipher_args(version, cipher)]
    stats = counters()
    # All GETs in one run: wget keeps the connection alive between them; -O concatenates the bodies.
    peer = launch.run("wget", [*common, "-O", str(tmp_path / "all-gets"),
                               *[f"{base}/{name}?via={get_via}" for name, _ in gets]], stdin=False)
    assert peer.wait(120) == 0, peer.report()
    assert_same("wget GETs, concatenated", (tmp_path / "all-gets").read_bytes(), b"".join(d for _, d in gets))
    # One POST per run (wget posts the same file to every URL of a run): 1 MiB in every cell, and
    # the small sizes rotated over the cells (each one at least once in the row).
    post_sizes = sorted({SIZES[index % (len(SIZES) - 1)], SIZES[-1]})
    posts = write_files(tmp_path, post_sizes, seed=index * 1000 + 950)
    for number, (name, data) in enumerate(posts):
        peer = launch.run("wget", [*common, f"--post-file={tmp_path / name}", "-O",
                                   str(tmp_path / f"answer-{number}"), f"{base}/upload?via={post_via}"],
                          stdin=False)
        assert peer.wait(120) == 0, peer.report()
        answer = json.loads((tmp_path / f"answer-{number}").read_bytes())
        assert (answer["bytes"], answer["sha256"]) == (len(data), sha(data)), f"POST {name}: {answer}"
    check_http_records(server, gets, posts, get_via, post_via, version, cipher)
    stats.expect_installs(1 + len(posts), 1 + len(posts),
                          "our server: one connection for the GETs, one per POST (wget in userspace)")


def test_wget_64mib_get_by_sendfile(launch, our_servers, interop_pki, counters, cell, tmp_path, big_file):
    version, cipher = TLS_1_2_VERSION, KernelCipher.AES_CCM_128
    entry = cell(peer=WGET, role=ROLE_OUR_SERVER, version=version, cipher=cipher)
    entry.note("64 MiB GET, server sendfile")
    server = our_servers.files(server_context(interop_pki.server, version, cipher), big_file.directory)
    stats = counters()
    peer = launch.run("wget", ["wget", "--inet4-only", "--no-verbose", f"--ca-certificate={interop_pki.ca}",
                               f"--timeout={int(TIMEOUT)}", "--tries=1", *wget_cipher_args(version, cipher),
                               "-O", str(tmp_path / "got"),
                               f"https://localhost:{port_of(server)}/{big_file.name}"], stdin=False)
    assert peer.wait(240) == 0, peer.report()
    with open(tmp_path / "got", "rb") as got:
        assert _sha256_of(got) == big_file.sha256
    record = server.wait_records(1, TIMEOUT)[0]
    assert (record["via"], record["bytes"]) == ("sendfile", BIG)
    expect_our_ktls(record["status"], "our file server")
    stats.expect_installs(1, 1, "our server (wget in userspace)")
