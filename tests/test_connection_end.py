"""Every way a peer can end a connection, side by side: what recv() returns on a CPython ssl
socket and on ours (Policy.AFTER_FINISHED: under kTLS where the kernel has it) must be the same
sequence, every run.

The peer is CPython's ssl on the other end. Its end is ordered by acknowledgements, never by
sleeps: what it sent before a reset is acknowledged by our TCP (SIOCOUTQ 0 on its socket) before
it resets, and our side reads only once its own socket shows the end (POLLHUP for a reset,
POLLRDHUP for a FIN). In TLS 1.3 a client peer never reads the server's session tickets, so where
it closes its kernel resets the connection, as a real client that closes right after the
handshake does.
"""
from __future__ import annotations

import select
import socket
import ssl
import struct
import time

import pytest

from ktls_ossl import kernel
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .timing import scaled
from .tlshelpers import client_context, server_context, strip_location, tls_pair

RUNS = 5
READS = 3
CIPHER = KernelCipher.AES_GCM_128
ENDS = ["fin", "fin_then_rst", "close_notify_fin", "close_notify_rst", "rst"]


def _wait_delivered(sock) -> None:
    """Until the other side's TCP has acknowledged everything ``sock`` sent, a FIN included."""
    deadline = time.monotonic() + scaled(10)
    poller = select.poll()
    while kernel.unacknowledged_bytes(sock) > 0:
        assert time.monotonic() < deadline, "the other side never acknowledged what the peer sent"
        poller.poll(1)  # an acknowledgement wakes nothing one could wait on


def _send_close_notify(peer: ssl.SSLSocket) -> None:
    """close_notify without waiting for ours: SSL_shutdown's first step on a non-blocking socket."""
    peer.setblocking(False)
    try:
        peer.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.setblocking(True)


def _reset(peer) -> None:
    socket.socket.setsockopt(peer, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket.close(peer)


def _end(peer, how: str, data: bytes) -> None:
    if data:
        peer.sendall(data)
    if how.startswith("close_notify"):
        _send_close_notify(peer)
    if how in ("fin", "fin_then_rst", "close_notify_fin"):
        socket.socket.shutdown(peer, socket.SHUT_WR)
    _wait_delivered(peer)
    if how.endswith("rst"):
        _reset(peer)


def _wait_for_end(sock, how: str) -> None:
    """Until our socket shows the peer's end (its data and FIN are acknowledged already)."""
    wanted = select.POLLHUP if how.endswith("rst") else select.POLLRDHUP
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
    deadline = time.monotonic() + scaled(10)
    while not any(events & wanted for _, events in poller.poll(10)):
        assert time.monotonic() < deadline, f"the peer's end ({how}) never showed on our socket"


def _outcome(sock):
    try:
        return sock.recv(1024)
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return (type(exc).__name__, getattr(exc, "library", None), getattr(exc, "reason", None),
                exc.args[0] if exc.args else None, strip_location(str(exc)))


def _run(server_cert, pki, *, ours, our_role, version, how, data, suppress):
    kwargs = {"suppress_ragged_eofs": suppress}
    if our_role == "client":
        client_ctx = client_context(pki.ca_path, ours=ours, version=version, cipher=CIPHER)
        server_ctx = server_context(server_cert, ours=False, version=version, cipher=CIPHER)
        pair = tls_pair(client_ctx, server_ctx, client_kwargs=kwargs)
        mine, peer = pair.client, pair.server
    else:
        client_ctx = client_context(pki.ca_path, ours=False, version=version, cipher=CIPHER)
        server_ctx = server_context(server_cert, ours=ours, version=version, cipher=CIPHER)
        pair = tls_pair(client_ctx, server_ctx, server_kwargs=kwargs)
        mine, peer = pair.server, pair.client
    try:
        if ours and kernel.probe().ulp_available:
            assert mine.ktls.rx, str(mine.ktls)
        _end(peer, how, data)
        _wait_for_end(mine, how)
        return [_outcome(mine) for _ in range(READS)]
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("suppress", [True, False], ids=["suppress", "ragged"])
@pytest.mark.parametrize("data", [b"", b"last words"], ids=["quiet", "data"])
@pytest.mark.parametrize("how", ENDS)
@pytest.mark.parametrize("our_role", ["client", "server"])
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
def test_peer_end_reads_as_with_cpython(server_cert, pki, version, our_role, how, data, suppress):
    settings = dict(our_role=our_role, version=version, how=how, data=data, suppress=suppress)
    theirs = [_run(server_cert, pki, ours=False, **settings) for _ in range(RUNS)]
    mine = [_run(server_cert, pki, ours=True, **settings) for _ in range(RUNS)]
    assert all(run == theirs[0] for run in theirs), f"CPython's ssl is not deterministic here: {theirs}"
    assert all(run == theirs[0] for run in mine), f"ours {mine} != CPython's {theirs[0]}"
    if data:
        assert theirs[0][0] == data


def _send_outcome(sock):
    try:
        sock.sendall(b"after the end" * 100)
        return "sent"
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return (type(exc).__name__, getattr(exc, "library", None), getattr(exc, "reason", None),
                exc.args[0] if exc.args else None, strip_location(str(exc)))


def _run_sends(server_cert, pki, *, ours, our_role, version, how, order):
    if our_role == "client":
        pair = tls_pair(client_context(pki.ca_path, ours=ours, version=version, cipher=CIPHER),
                        server_context(server_cert, ours=False, version=version, cipher=CIPHER))
        mine, peer = pair.client, pair.server
    else:
        pair = tls_pair(client_context(pki.ca_path, ours=False, version=version, cipher=CIPHER),
                        server_context(server_cert, ours=ours, version=version, cipher=CIPHER))
        mine, peer = pair.server, pair.client
    try:
        if ours and kernel.probe().ulp_available:
            assert mine.ktls.tx, str(mine.ktls)
        _end(peer, how, b"")
        _wait_for_end(mine, how)
        steps = {"send": _send_outcome, "recv": _outcome}
        return [steps[step](mine) for step in order]
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("order", [("send", "send", "recv"), ("recv", "send", "send", "recv")],
                         ids=["send-first", "recv-first"])
@pytest.mark.parametrize("how", ENDS)
@pytest.mark.parametrize("our_role", ["client", "server"])
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
def test_send_after_a_peer_reset_as_with_cpython(server_cert, pki, version, our_role, how, order):
    """Sends on a connection the peer has reset, before or after a read took the reset: each
    outcome as CPython's ssl gives it on the running Python (up to 3.12 SSLEOFError; 3.13 the
    errno: ConnectionResetError first, then BrokenPipeError as TCP gives it; never a send that
    succeeds into a dead connection)."""
    settings = dict(our_role=our_role, version=version, how=how, order=order)
    theirs = [_run_sends(server_cert, pki, ours=False, **settings) for _ in range(RUNS)]
    mine = [_run_sends(server_cert, pki, ours=True, **settings) for _ in range(RUNS)]
    assert all(run == theirs[0] for run in theirs), f"CPython's ssl is not deterministic here: {theirs}"
    assert all(run == theirs[0] for run in mine), f"ours {mine} != CPython's {theirs[0]}"
