"""Helpers for tests that run real TLS connections over loopback."""
from __future__ import annotations

import re
import ssl
import threading
from dataclasses import dataclass

import ktls_ossl
from ktls_ossl import kernel
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import loopback_pair

VERSION_RANGE = {TLS_1_2_VERSION: ssl.TLSVersion.TLSv1_2, TLS_1_3_VERSION: ssl.TLSVersion.TLSv1_3}

# OpenSSL names of one suite per kernel cipher: TLS 1.2 per certificate key type (no ECDHE-RSA CCM
# suite exists: RFC 7251 defines CCM with ECDSA only), TLS 1.3 for any key.
TLS12_SUITES = {
    ("ecdsa", KernelCipher.AES_GCM_128): "ECDHE-ECDSA-AES128-GCM-SHA256",
    ("ecdsa", KernelCipher.AES_GCM_256): "ECDHE-ECDSA-AES256-GCM-SHA384",
    ("ecdsa", KernelCipher.CHACHA20_POLY1305): "ECDHE-ECDSA-CHACHA20-POLY1305",
    ("ecdsa", KernelCipher.AES_CCM_128): "ECDHE-ECDSA-AES128-CCM",
    ("rsa", KernelCipher.AES_GCM_128): "ECDHE-RSA-AES128-GCM-SHA256",
    ("rsa", KernelCipher.AES_GCM_256): "ECDHE-RSA-AES256-GCM-SHA384",
    ("rsa", KernelCipher.CHACHA20_POLY1305): "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13_SUITES = {
    KernelCipher.AES_GCM_128: "TLS_AES_128_GCM_SHA256",
    KernelCipher.AES_GCM_256: "TLS_AES_256_GCM_SHA384",
    KernelCipher.CHACHA20_POLY1305: "TLS_CHACHA20_POLY1305_SHA256",
    KernelCipher.AES_CCM_128: "TLS_AES_128_CCM_SHA256",
}
COMBINATIONS = [(version, cipher) for version in (TLS_1_2_VERSION, TLS_1_3_VERSION) for cipher in TLS13_SUITES]
COMBINATION_IDS = [f"{'tls12' if v == TLS_1_2_VERSION else 'tls13'}-{c.name.lower()}" for v, c in COMBINATIONS]


def pin(ctx, version: int, cipher: KernelCipher, key_type: str = "ecdsa"):
    """Restrict a context (ours or CPython's) to one version and kernel cipher."""
    versioned(ctx, version)
    if version == TLS_1_2_VERSION:
        ctx.set_ciphers(TLS12_SUITES[(key_type, cipher)])
    elif isinstance(ctx, ktls_ossl.SSLContext):
        ctx.set_ciphersuites(TLS13_SUITES[cipher])
    elif cipher is KernelCipher.AES_CCM_128:
        raise ValueError("CPython's ssl cannot enable TLS 1.3 CCM suites")
    return ctx


def server_context(cert, *, ours=True, version=None, cipher=None, **settings):
    ctx = (ktls_ossl.SSLContext if ours else ssl.SSLContext)(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.chain_path, cert.key_path)
    if version is not None:
        pin(ctx, version, cipher)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def client_context(ca_path, *, ours=True, version=None, cipher=None, **settings):
    ctx = (ktls_ossl.SSLContext if ours else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_path)
    if version is not None:
        pin(ctx, version, cipher)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


@dataclass
class Pair:
    client: ssl.SSLSocket
    server: ssl.SSLSocket

    def close(self):
        for sock in (self.client, self.server):
            try:
                sock.close()
            except OSError:
                pass


def tls_pair(client_ctx, server_ctx, *, server_hostname="localhost", timeout=10.0,
             client_kwargs=None, server_kwargs=None) -> Pair:
    """Handshake client and server over loopback (the server in a thread); raises what the client
    raised, else what the server raised."""
    raw_client, raw_server = loopback_pair()
    raw_client.settimeout(timeout)
    raw_server.settimeout(timeout)
    result = {}

    def serve():
        try:
            result["server"] = server_ctx.wrap_socket(raw_server, server_side=True, **(server_kwargs or {}))
        except BaseException as exc:
            result["server_error"] = exc
            raw_server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = client_ctx.wrap_socket(raw_client, server_hostname=server_hostname, **(client_kwargs or {}))
    except BaseException:
        thread.join(timeout)
        raw_client.close()
        if "server" in result:
            result["server"].close()
        raise
    thread.join(timeout)
    if "server_error" in result:
        client.close()
        raise result["server_error"]
    return Pair(client, result["server"])


def expect_ktls(sock) -> None:
    """On a kernel with TLS both directions must be in the kernel; elsewhere the reason says why."""
    status = sock.ktls
    if kernel.probe().ulp_available:
        assert status.tx and status.rx, str(status)
        assert status.tx_reason is None and status.rx_reason is None
    else:
        assert not status.tx and not status.rx
        assert "modprobe tls" in status.rx_reason and "modprobe tls" in status.tx_reason


def versioned(ctx, version: int):
    """Pin a context (ours or CPython's) to one TLS version."""
    ctx.minimum_version = ctx.maximum_version = VERSION_RANGE[version]
    return ctx


def strip_location(message: str) -> str:
    """CPython ends SSL messages with (_ssl.c:NNNN), ktls_ossl with (ktls_ossl); the rest must match."""
    return re.sub(r" \((_ssl\.c:\d+|ktls_ossl)\)$", "", message)


def same_error(mine: BaseException, theirs: BaseException) -> None:
    """ktls_ossl raised what CPython's ssl raised for the same input: type, code, names, message."""
    assert type(mine) is type(theirs), f"{type(mine).__name__}: {mine} != {type(theirs).__name__}: {theirs}"
    for attribute in ("library", "reason", "verify_code", "verify_message"):
        assert getattr(mine, attribute, None) == getattr(theirs, attribute, None), attribute
    assert mine.args[0] == theirs.args[0]
    assert strip_location(str(mine)) == strip_location(str(theirs))


def recv_exactly(sock, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF with {remaining} of {size} bytes missing")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def in_thread(function, *args):
    """Run function(*args) in a thread; join() re-raises its exception and returns its result."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout=30.0):
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"{function.__name__} did not finish in {timeout} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    return join


def handshake_errors(server_ctx, client_ctx, server_hostname="localhost"):
    """(what the client's handshake raised, what the server's raised) over loopback, None where it
    succeeded; on the server's side, whatever escaped its handshake."""
    raw_client, raw_server = loopback_pair()
    try:
        join = in_thread(server_ctx.wrap_socket, raw_server, True)
        client_error = server_error = None
        try:
            client_ctx.wrap_socket(raw_client, server_hostname=server_hostname).close()
        except ssl.SSLError as exc:
            client_error = exc
        raw_client.close()  # the server sees EOF if it still waits for the client
        try:
            join().close()
        except BaseException as exc:
            server_error = exc
        return client_error, server_error
    finally:
        raw_client.close()
        raw_server.close()
