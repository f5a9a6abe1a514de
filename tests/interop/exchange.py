"""Our side of a transfer: each of KTLSSocket's I/O paths, and byte-exact comparison."""
from __future__ import annotations

import hashlib
import os
import socket
import ssl

import ktls_ossl

from ..tlshelpers import pin, recv_exactly
from .peers import LOOPBACK, SLOWNESS

SIZES = (0, 1, 16383, 16384, 16385, 1 << 20)
BIG = 64 << 20  # once per peer and role
SEND_PATHS = ("send", "sendall", "sendfile", "makefile")
RECV_PATHS = ("recv", "recv_into", "makefile")
# Our servers' write paths (the echo server writes what it read; sendfile goes through the file server).
SERVER_WRITE_PATHS = ("sendall", "send", "makefile")
SERVER_READ_PATHS = ("recv_into", "recv", "makefile")
TIMEOUT = 30.0 * SLOWNESS


def rotation(index: int) -> tuple[str, str]:
    """The (send path, receive path) for the index-th cell of a peer's row: over the eight cells
    every send path runs twice and every receive path at least twice."""
    return SEND_PATHS[index % len(SEND_PATHS)], RECV_PATHS[index % len(RECV_PATHS)]


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_same(what: str, got: bytes, expected: bytes) -> None:
    if len(got) == len(expected) and sha(got) == sha(expected):
        return
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    raise AssertionError(f"{what}: {len(got)} bytes received, {len(expected)} sent; sha256 {sha(got)[:16]} "
                         f"!= {sha(expected)[:16]}; first difference at offset {first}")


def client_context(ca: str, version=None, cipher=None, *, key_type: str = "ecdsa", ours: bool = True, **settings):
    ctx = (ktls_ossl.SSLContext if ours else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if version is not None:
        pin(ctx, version, cipher, key_type)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def server_context(cert, version=None, cipher=None, *, key_type: str = "ecdsa", **settings):
    ctx = ktls_ossl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.chain_path, cert.key_path)
    if version is not None:
        pin(ctx, version, cipher, key_type)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def connect(port: int, ctx, server_hostname: str | None = "localhost", **kwargs):
    raw = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname, **kwargs)
    except BaseException:
        raw.close()
        raise


def send_through_file(sendfile, data: bytes, name: str) -> None:
    """``data`` written to the file ``name``, then sent with ``sendfile(file)`` (all of it)."""
    with open(name, "wb") as out:
        out.write(data)
    with open(name, "rb") as source:
        sent = sendfile(source)
    os.unlink(name)
    assert sent == len(data), f"sendfile sent {sent} of {len(data)} bytes"


class Endpoint:
    """Our end of a connection, reading and writing through a chosen path."""

    def __init__(self, sock, workdir: str):
        self.sock = sock
        self.workdir = workdir
        self._reader = None
        self._writer = None
        self._files = 0

    def send(self, data: bytes, path: str) -> None:
        sock = self.sock
        if path == "send":
            view = memoryview(data)
            while view:
                sent = sock.send(view)
                assert sent > 0, "send() returned 0"
                view = view[sent:]
            if not data:
                assert sock.send(b"") == 0
        elif path == "sendall":
            assert sock.sendall(data) is None
        elif path == "sendfile":
            self._files += 1
            send_through_file(sock.sendfile, data, os.path.join(self.workdir, f"sendfile-{self._files}.bin"))
        elif path == "makefile":
            if self._writer is None:
                self._writer = sock.makefile("wb")
            assert self._writer.write(data) == len(data)
            self._writer.flush()
        else:
            raise ValueError(path)

    def recv_exactly(self, size: int, path: str) -> bytes:
        sock = self.sock
        if path == "makefile" and self._reader is None:
            self._reader = sock.makefile("rb")
        if size == 0:
            # A zero-byte read returns at once with nothing, on every path.
            if path == "recv":
                assert sock.recv(0) == b""
            elif path == "recv_into":
                assert sock.recv_into(bytearray(0)) == 0
            else:
                assert self._reader.read(0) == b""
            return b""
        if path == "recv":
            return recv_exactly(sock, size)
        if path == "recv_into":
            buffer = bytearray(size)
            view = memoryview(buffer)
            got = 0
            while got < size:
                count = sock.recv_into(view[got:], size - got)
                if not count:
                    raise AssertionError(f"EOF after {got} of {size} bytes (recv_into)")
                got += count
            return bytes(buffer)
        if path == "makefile":
            data = self._reader.read(size)
            if len(data) != size:
                raise AssertionError(f"EOF after {len(data)} of {size} bytes (makefile)")
            return data
        raise ValueError(path)

    def sendfile_path(self, path: str) -> int:
        with open(path, "rb") as source:
            return self.sock.sendfile(source)

    def recv_digest(self, size: int, path: str, chunk: int = 1 << 20) -> str:
        """SHA-256 of the next ``size`` bytes, read through ``path`` into a reused buffer."""
        digest = hashlib.sha256()
        buffer = bytearray(chunk)
        view = memoryview(buffer)
        if path == "makefile" and self._reader is None:
            self._reader = self.sock.makefile("rb")
        got = 0
        while got < size:
            want = min(chunk, size - got)
            if path == "recv":
                data = self.sock.recv(want)
                count = len(data)
                digest.update(data)
            else:
                count = (self.sock.recv_into(view, want) if path == "recv_into"
                         else self._reader.readinto(view[:want]))
                digest.update(view[:count])
            if not count:
                raise AssertionError(f"EOF after {got} of {size} bytes ({path})")
            got += count
        return digest.hexdigest()

    def close(self) -> None:
        for stream in (self._reader, self._writer):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.sock.close()
