"""Bulk transfer (issue 19): random data per TLS version x kernel cipher x I/O path, SHA-256 checked
at both ends.

The client sends, the server receives; each side hashes what it handled, independently: the sender
what it handed to the socket, the receiver what the socket gave it. On kernels that rekey the
sender requests a KeyUpdate (request_peer=True) every few MiB of TLS 1.3, so the data crosses key
changes in both directions, and the kernel's own counters (/proc/net/tls_stat) say how many keys it
installed. Short scale (make test): 2 MiB per case; full (make soak): 1 GiB per case.
"""
from __future__ import annotations

import hashlib
import os
import struct
import time

import pytest

from ktls_ossl.keys import TLS_1_3_VERSION

from ..conftest import RekeyCounters, kernel_can_rekey
from ..timing import scaled
from ..tlshelpers import COMBINATION_IDS, COMBINATIONS, client_context, expect_ktls, in_thread, server_context, tls_pair
from .conftest import soak_scale

MiB = 1 << 20
BLOCK = 256 << 10  # the unit the sender hands over (and rekeys between)
BASE = 1 * MiB  # one random block, varied per BLOCK: random data without the cost of urandom per byte
SCALE = soak_scale()
SIZE = SCALE.pick(2 * MiB, 1024 * MiB)
REKEY_EVERY = SCALE.pick(512 << 10, 4 * MiB)
# A slow run must end in a failure, never in pytest-timeout's 300 s: idle machine, kTLS under UML
# runs ~45 MiB/s (the time scale says how much slower this machine is than that idle one).
CASE_TIMEOUT = max(300, int(scaled(30 + SIZE / (20 * MiB))))
IO_TIMEOUT = scaled(30)

# (sender, receiver): the I/O paths an application uses.
PATHS = {
    "send-recv": ("send", "recv"),
    "sendall-recv_into": ("sendall", "recv_into"),
    "sendfile-recv_into": ("sendfile", "recv_into"),
    "makefile": ("makefile_write", "makefile_read"),
}


class Stream:
    """The data of one case: SIZE bytes in BLOCKs; block i is a window of a random base at an offset
    that moves with i, led by i itself, so that no two blocks are alike (a block lost, repeated or
    reordered changes the hash, not only the count)."""

    def __init__(self, size: int):
        assert size % BLOCK == 0
        self.blocks = size // BLOCK
        self.base = os.urandom(BASE + BLOCK)

    def block(self, index: int) -> bytes:
        offset = (index * 4099) % BASE
        return struct.pack(">Q", index) + self.base[offset:offset + BLOCK - 8]


class Sender:
    """One of the sending paths over ``sock``: ``send_block`` per block, ``flush`` before a
    KeyUpdate (what a buffered path holds must go out under the current key), ``finish`` at the
    end."""

    def __init__(self, sock, path: str, tmp_path):
        self.sock, self.path = sock, path
        self.file = sock.makefile("wb") if path == "makefile_write" else None
        # sendfile: each block is written to one of two files and sent from there. Alternating lets a
        # file be rewritten only after a later sendfile went out, so the kernel has closed (and
        # encrypted) every record that read the file's pages before they change.
        # Unbuffered: a buffered file could serve its stale buffer after os.pwrite.
        self.files = [open(tmp_path / f"block{n}", "w+b", buffering=0) for n in range(2)] if path == "sendfile" else []
        self.sent_blocks = 0

    def send_block(self, data: bytes) -> None:
        if self.path == "send":
            view = memoryview(data)
            while view:
                view = view[self.sock.send(view):]
        elif self.path == "sendall":
            self.sock.sendall(data)
        elif self.path == "makefile_write":
            self.file.write(data)
        else:
            file = self.files[self.sent_blocks % 2]
            os.pwrite(file.fileno(), data, 0)
            file.seek(0)  # as CPython's, sendfile leaves the position at the end of what it sent
            sent = self.sock.sendfile(file, 0, len(data))
            assert sent == len(data), f"sendfile sent {sent} of {len(data)} bytes"
        self.sent_blocks += 1

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def finish(self) -> None:
        if self.file is not None:
            self.file.close()  # flushes; the socket stays open (makefile holds a reference only)
        for file in self.files:
            file.close()


def receive(sock, path: str, size: int) -> tuple[bytes, int]:
    """Read ``size`` bytes through ``path``; then tell the sender the digest and count (the sender
    reads them, and with them the answers to its KeyUpdates). Returns (digest, bytes received)."""
    digest = hashlib.sha256()
    received = 0
    if path == "recv":
        while received < size:
            chunk = sock.recv(min(size - received, MiB))
            if not chunk:
                raise AssertionError(f"EOF after {received} of {size} bytes")
            digest.update(chunk)
            received += len(chunk)
    elif path == "recv_into":
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        while received < size:
            count = sock.recv_into(buffer, min(size - received, len(buffer)))
            if not count:
                raise AssertionError(f"EOF after {received} of {size} bytes")
            digest.update(view[:count])
            received += count
    else:
        with sock.makefile("rb") as reader:
            while received < size:
                chunk = reader.read(min(size - received, BLOCK))
                if not chunk:
                    raise AssertionError(f"EOF after {received} of {size} bytes")
                digest.update(chunk)
                received += len(chunk)
    sock.sendall(digest.digest() + struct.pack(">Q", received))
    return digest.digest(), received


@pytest.mark.ktls_or_fallback
@pytest.mark.timeout(CASE_TIMEOUT)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("version,cipher", COMBINATIONS, ids=COMBINATION_IDS)
def test_bulk_data_arrives_intact(version, cipher, path, server_cert, pki, tmp_path, reliability,
                                  sendfile_calls):
    """Random data through each TLS version, kernel cipher and I/O path arrives intact: equal
    SHA-256 and byte counts at both ends, KeyUpdates every few MiB of TLS 1.3 on kernels that
    rekey."""
    send_path, receive_path = PATHS[path]
    stream = Stream(SIZE)
    rekeys = version == TLS_1_3_VERSION and kernel_can_rekey()
    blocks_per_rekey = REKEY_EVERY // BLOCK
    pair = tls_pair(client_context(pki.ca_path, version=version, cipher=cipher),
                    server_context(server_cert, version=version, cipher=cipher), timeout=IO_TIMEOUT)
    try:
        counters = RekeyCounters()
        receiver = in_thread(receive, pair.server, receive_path, SIZE)
        sender = Sender(pair.client, send_path, tmp_path)
        sent_digest = hashlib.sha256()
        requested = 0
        started = time.monotonic()
        for index in range(stream.blocks):
            data = stream.block(index)
            sent_digest.update(data)
            sender.send_block(data)
            if rekeys and (index + 1) % blocks_per_rekey == 0 and index + 1 < stream.blocks:
                sender.flush()
                pair.client.key_update(request_peer=True)
                requested += 1
        sender.finish()
        # The receiver's report: reading it also takes in every KeyUpdate the receiver answered with.
        reply = b""
        while len(reply) < 40:
            chunk = pair.client.recv(40 - len(reply))
            assert chunk, "EOF before the receiver's digest"
            reply += chunk
        elapsed = time.monotonic() - started
        received_digest, received = receiver(CASE_TIMEOUT)
        assert reply == received_digest + struct.pack(">Q", received)

        mismatch = received_digest != sent_digest.digest()
        sender_updates, answers = pair.client.ktls.key_updates, pair.server.ktls.key_updates
        kernel_rekeys = counters.delta()
        reliability.figure("bytes checked", received)
        reliability.figure("MiB/s", round(received / MiB / elapsed, 1))
        reliability.figure("key updates requested", requested)
        reliability.figure("key updates answered", answers)
        reliability.figure("kernel rekeys (tx, rx)", list(kernel_rekeys))
        reliability.figure("mismatches", int(mismatch))

        assert received == SIZE
        assert not mismatch, "the SHA-256 of what arrived differs from that of what was sent"
        expect_ktls(pair.client)
        expect_ktls(pair.server)
        kernel_carried = pair.client.ktls.tx
        if send_path == "sendfile":
            # Where the kernel sends, sendfile is os.sendfile: the file's pages, encrypted by it.
            assert sum(sent for _, sent in sendfile_calls) == (SIZE if kernel_carried else 0)
        if not kernel_carried:
            assert kernel_rekeys == (0, 0)  # no kernel TLS here: OpenSSL changed the keys
        elif rekeys:
            # Each KeyUpdate the sender sent changed its TX key and the receiver's RX key; each
            # answer (requests that arrive together are answered once) the other way round.
            assert sender_updates >= requested > 0
            assert 1 <= answers <= sender_updates
            counters.check(sender_updates + answers, sender_updates + answers)
        else:
            assert (sender_updates, answers) == (0, 0)
            counters.check(0, 0)
    finally:
        pair.close()
