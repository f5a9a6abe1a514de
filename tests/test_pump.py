"""The record-exact pump (ktls_ossl.pump), driven by hand on a non-blocking socket.

The peer is CPython's ssl, and it is also the oracle for what crossed the wire: its _msg_callback
reports every record header it read and wrote, which must equal the records the pump counted in the
other direction. Under a kernel with TLS the handoff the pump's engine produces goes into the kernel
by hand (TCP_ULP, TLS_RX, TLS_TX), and the connection then carries data both ways, checked with
SHA-256, for TLS 1.2 and 1.3 and all four kernel ciphers.
"""
from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time

import pytest

from ktls_ossl import kernel, pump
from ktls_ossl.handshake import Handshake, Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher
from ktls_ossl.records import ContentType

from .conftest import loopback_pair
from .timing import scaled
from .tlshelpers import COMBINATION_IDS, COMBINATIONS, client_context, server_context, strip_location

HEADER = ssl._TLSContentType.HEADER


class CountingPeer:
    """CPython's ssl on one end, in a thread: counts the record headers it reads and writes up to
    the end of its handshake, then runs ``after(tls_socket)``."""

    def __init__(self, ctx, raw, *, server_side, after=None):
        self.read = self.written = 0
        self.counting = True
        self.result = None
        self.error = None
        ctx._msg_callback = self._on_message
        self.thread = threading.Thread(target=self._run, args=(ctx, raw, server_side, after), daemon=True)
        self.thread.start()

    def _on_message(self, conn, direction, version, content_type, msg_type, data):
        if content_type == HEADER and self.counting:
            if direction == "read":
                self.read += 1
            else:
                self.written += 1

    def _run(self, ctx, raw, server_side, after):
        try:
            tls = ctx.wrap_socket(raw, server_side=server_side,
                                  server_hostname=None if server_side else "localhost")
            self.counting = False
            self.result = after(tls) if after else None
            tls.close()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc
            raw.close()

    def join(self):
        self.thread.join(scaled(20))
        assert not self.thread.is_alive(), "the peer never finished"
        if self.error is not None:
            raise self.error
        return self.result


def drive(the_pump: pump.RecordPump) -> list[int]:
    """Drive the pump by hand: step, and wait for what it wants, as an event loop would. Returns
    the sequence of wants it reported."""
    wants = []
    poller = select.poll()
    while True:
        want = the_pump.step()
        if want == 0:
            return wants
        wants.append(want)
        poller.register(the_pump.sock, select.POLLIN if want == pump.WANT_READ else select.POLLOUT)
        assert poller.poll(int(scaled(10) * 1000)), f"the socket never became ready for {want}"
        poller.unregister(the_pump.sock)


def _contexts(pki, server_cert, version, cipher, ours_role):
    """(our engine's context, the peer's context), both pinned to ``version`` and ``cipher``. The
    peer is CPython's ssl, except for TLS 1.3 CCM, which CPython cannot enable: there it is
    ktls_ossl's SSLContext in user space (Policy.USERSPACE: OpenSSL on the socket, as CPython)."""
    peer_is_cpython = not (version == TLS_1_3_VERSION and cipher is KernelCipher.AES_CCM_128)
    if ours_role == "server":
        ours = server_context(server_cert, version=version, cipher=cipher, num_tickets=0)
        theirs = client_context(pki.ca_path, ours=not peer_is_cpython, version=version, cipher=cipher)
    else:
        ours = client_context(pki.ca_path, version=version, cipher=cipher)
        theirs = server_context(server_cert, ours=not peer_is_cpython, version=version, cipher=cipher,
                                num_tickets=0)
    if not peer_is_cpython:
        theirs.ktls_policy = Policy.USERSPACE
    return ours, theirs


def _handshake(pki, server_cert, version, cipher, ours_role, after=None):
    ours_ctx, theirs_ctx = _contexts(pki, server_cert, version, cipher, ours_role)
    raw_client, raw_server = loopback_pair()
    mine, theirs_raw = (raw_server, raw_client) if ours_role == "server" else (raw_client, raw_server)
    theirs_raw.settimeout(scaled(20))
    peer = CountingPeer(theirs_ctx, theirs_raw, server_side=ours_role == "client", after=after)
    mine.setblocking(False)
    engine = pump.OpenSSLEngine(ours_ctx, server_side=ours_role == "server",
                                server_hostname=None if ours_role == "server" else "localhost")
    the_pump = pump.RecordPump(mine, engine)
    wants = drive(the_pump)
    return the_pump, engine, peer, mine, wants


ROLES = ["client", "server"]
VERSIONS = [(TLS_1_2_VERSION, "tls12"), (TLS_1_3_VERSION, "tls13")]


@pytest.mark.parametrize("version", [v for v, _ in VERSIONS], ids=[n for _, n in VERSIONS])
@pytest.mark.parametrize("ours_role", ROLES)
def test_pump_counts_the_records_the_peer_counted(pki, server_cert, version, ours_role):
    the_pump, engine, peer, sock, wants = _handshake(pki, server_cert, version, KernelCipher.AES_GCM_128, ours_role)
    try:
        peer.join()
        assert the_pump.done and the_pump.state is pump.PumpState.DONE
        assert (the_pump.records_received, the_pump.records_sent) == (peer.written, peer.read)
        assert engine.handshake.is_finished and engine.handshake.protocol_version == version
        assert engine.handshake.incoming_unread == 0
        assert the_pump.step() == 0  # done stays done
    finally:
        sock.close()


def _send_first_data(tls):
    tls.sendall(b"first data after the handshake")
    tls.recv(1)  # until our side closes


@pytest.mark.parametrize("version", [v for v, _ in VERSIONS], ids=[n for _, n in VERSIONS])
@pytest.mark.parametrize("ours_role", ROLES)
def test_nothing_after_the_handshake_leaves_the_socket(pki, server_cert, version, ours_role):
    """The peer's first data record, sent right behind its handshake, is still whole in our
    socket's queue when the pump is done: its header first (application data), and its bytes."""
    the_pump, engine, peer, sock, _ = _handshake(pki, server_cert, version, KernelCipher.AES_GCM_128,
                                                 ours_role, after=_send_first_data)
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        assert poller.poll(int(scaled(10) * 1000))
        header = sock.recv(5, socket.MSG_PEEK)
        content_type, _, length = struct.unpack(">BHH", header)
        assert content_type == ContentType.APPLICATION_DATA
        # The record is the only thing queued, whole (the peer sends nothing more until we close).
        deadline = time.monotonic() + scaled(10)
        while kernel.unread_bytes(sock) < 5 + length:
            assert time.monotonic() < deadline, "the peer's record never arrived whole"
            poller.poll(1)  # more of the same record wakes nothing new: poll the queue size
        assert kernel.unread_bytes(sock) == 5 + length
        assert engine.handshake.incoming_unread == 0
    finally:
        sock.close()
        peer.thread.join(scaled(10))


def test_pump_takes_the_handshake_one_byte_at_a_time(pki, server_cert):
    """The peer's bytes reach our socket one at a time, each only when the pump asked for more
    (the test relays them): partial headers and bodies are kept across calls, every byte costs one
    WANT_READ, and the handshake completes with the record counts the peer counted."""
    ours_ctx, theirs_ctx = _contexts(pki, server_cert, TLS_1_3_VERSION, KernelCipher.AES_GCM_128, "client")
    mine, relay_near = loopback_pair()
    relay_far, theirs_raw = loopback_pair()
    relay_far.settimeout(scaled(10))

    def forward_our_bytes():  # our side to the peer, as they come
        try:
            while data := relay_near.recv(65536):
                relay_far.sendall(data)
        except OSError:
            return

    threading.Thread(target=forward_our_bytes, daemon=True).start()
    theirs_raw.settimeout(scaled(20))
    peer = CountingPeer(theirs_ctx, theirs_raw, server_side=True)
    mine.setblocking(False)
    the_pump = pump.RecordPump(mine, pump.OpenSSLEngine(ours_ctx, server_side=False, server_hostname="localhost"))
    delivered = wants = 0
    poller = select.poll()
    poller.register(mine, select.POLLIN)
    try:
        while (want := the_pump.step()) != 0:
            assert want == pump.WANT_READ  # loopback takes every write at once
            wants += 1
            byte = relay_far.recv(1)
            assert byte, "the peer ended the handshake early"
            relay_near.sendall(byte)
            delivered += 1
            assert poller.poll(int(scaled(10) * 1000)), "a relayed byte never arrived"
        peer.join()
        assert wants == delivered, "the pump must take each byte as it comes, no more"
        assert (the_pump.records_received, the_pump.records_sent) == (peer.written, peer.read)
        assert delivered > 5 * the_pump.records_received
    finally:
        for sock in (mine, relay_near, relay_far):
            sock.close()


def _raw_server_sending(data: bytes):
    """A listening socket whose one connection gets ``data`` and is then closed (FIN)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn, listener:
            try:
                conn.recv(65536)  # the ClientHello
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(65536)
            except OSError:
                pass  # the client may reset once it has its error

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()


def _cpython_error(ctx, address):
    with socket.create_connection(address, timeout=scaled(10)) as raw:
        with pytest.raises(Exception) as caught:
            ctx.wrap_socket(raw, server_hostname="localhost")
    return caught.value


def _pump_error(ctx, address):
    sock = socket.create_connection(address, timeout=scaled(10))
    sock.setblocking(False)
    the_pump = pump.RecordPump(sock, pump.OpenSSLEngine(ctx, server_side=False, server_hostname="localhost"))
    try:
        with pytest.raises(Exception) as caught:
            drive(the_pump)
        assert the_pump.state is pump.PumpState.FAILED
        with pytest.raises(type(caught.value)):
            the_pump.step()  # failures are final
    finally:
        sock.close()
    return caught.value


BAD_SERVERS = {
    # A record header announcing the longest length the format allows, then that many bytes.
    "oversized_record": b"\x16\x03\x03\xff\xff" + bytes(0xFFFF),
    "not_tls": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    "eof_in_header": b"\x16\x03",
    "eof_in_body": b"\x16\x03\x03\x00\x40" + bytes(10),
    "alert": b"\x15\x03\x03\x00\x02\x02\x28",
}


@pytest.mark.parametrize("name", sorted(BAD_SERVERS))
def test_a_bad_peer_fails_the_pump_as_it_fails_cpython(pki, name):
    """The same bytes from a server: the pump ends with the exception type, reason and message
    CPython's ssl raises for them (the pump frames, OpenSSL judges)."""
    data = BAD_SERVERS[name]
    theirs = _cpython_error(client_context(pki.ca_path, ours=False), _raw_server_sending(data))
    mine = _pump_error(client_context(pki.ca_path), _raw_server_sending(data))
    assert type(mine) is type(theirs), (mine, theirs)
    assert getattr(mine, "reason", None) == getattr(theirs, "reason", None), (mine, theirs)
    assert strip_location(str(mine)) == strip_location(str(theirs)), (mine, theirs)


def test_the_pump_refuses_openssls_own_ktls_policy(pki):
    with pytest.raises(ValueError, match="AFTER_CCS"):
        Handshake(client_context(pki.ca_path), None, server_side=False, server_hostname="localhost",
                  policy=Policy.AFTER_CCS)


# --- under a kernel with TLS: the handoff, installed by hand ----------------------------------------

def echo_peer(payload, finish=None):
    """The peer's part after its handshake: ``payload`` with its SHA-256 first, then our echo of
    it back, then ``finish(tls)``; returns the SHA-256 of what came back."""
    def after(tls):
        tls.sendall(hashlib.sha256(payload).digest() + payload)
        echoed = bytearray()
        while len(echoed) < len(payload):
            chunk = tls.recv(65536)
            assert chunk, "our side ended before echoing everything"
            echoed += chunk
        if finish is not None:
            finish(tls)
        return hashlib.sha256(bytes(echoed)).hexdigest()
    return after


def _kernel_recv_exactly(sock, size: int) -> bytes:
    got = bytearray()
    buffer = bytearray(65536)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while len(got) < size:
        try:
            record = kernel.recv_record_into(sock, buffer)
        except BlockingIOError:
            assert poller.poll(int(scaled(10) * 1000)), "the peer's data never arrived"
            continue
        assert record.content_type == ContentType.APPLICATION_DATA, record
        assert record.length, "EOF before all the data"
        got += buffer[:record.length]
    return bytes(got)


def _kernel_send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while view:
        try:
            view = view[os.write(sock.fileno(), view):]
        except BlockingIOError:
            assert poller.poll(int(scaled(10) * 1000)), "the peer never read"


@pytest.mark.ktls
@pytest.mark.parametrize("ours_role", ROLES)
@pytest.mark.parametrize("version, cipher", COMBINATIONS, ids=COMBINATION_IDS)
def test_the_pumps_handoff_carries_data_through_the_kernel(pki, server_cert, version, cipher, ours_role):
    """Handshake through the pump, keys into the kernel by hand, then 256 KiB each way through the
    kernel: the peer's SHA-256 matches ours both ways, and /proc/net/tls_stat counted one more
    software TX and RX connection."""
    payload = os.urandom(256 * 1024)
    before = kernel.tls_stat()
    the_pump, engine, peer, sock, _ = _handshake(pki, server_cert, version, cipher, ours_role,
                                                 after=echo_peer(payload))
    try:
        handoff = engine.handoff()
        assert (handoff.version, handoff.cipher) == (version, cipher)
        if version == TLS_1_2_VERSION:
            # Sequence numbers from the wire: TLS 1.2 counts from ChangeCipherSpec; the Finished is
            # the one record under the new keys in each direction, and nothing came after it.
            assert (handoff.rx.seq, handoff.tx.seq) == (1, 1)
        else:
            assert (handoff.rx.seq, handoff.tx.seq) == (0, 0)  # no tickets either way (num_tickets=0)
        kernel.attach_ulp(sock)
        kernel.install(sock, kernel.Direction.RX, handoff.rx)
        kernel.install(sock, kernel.Direction.TX, handoff.tx)
        received = _kernel_recv_exactly(sock, 32 + len(payload))
        digest, data = received[:32], received[32:]
        assert hashlib.sha256(data).digest() == digest
        _kernel_send_all(sock, data)
        assert peer.join() == hashlib.sha256(payload).hexdigest()
        after = kernel.tls_stat()
        assert after["TlsTxSw"] - before["TlsTxSw"] >= 1 and after["TlsRxSw"] - before["TlsRxSw"] >= 1
    finally:
        sock.close()


@pytest.mark.parametrize("version", [v for v, _ in VERSIONS], ids=[n for _, n in VERSIONS])
@pytest.mark.parametrize("ours_role", ROLES)
def test_pump_wire_counts_give_the_sequence_numbers_openssl_counted(pki, server_cert, version, ours_role):
    """What a front without record counters of its own (pyOpenSSL) derives its sequence numbers
    from: records since each direction's ChangeCipherSpec (TLS 1.2) and the records written in the
    step that completed the handshake (a TLS 1.3 server's tickets), equal to OpenSSL's own counts
    (its message callback, in C) after the last ChangeCipherSpec and after the last Finished."""
    from ktls_ossl.keys import Direction

    ours_ctx, theirs_ctx = _contexts(pki, server_cert, version, KernelCipher.AES_GCM_128, ours_role)
    if ours_role == "server":
        ours_ctx.num_tickets = 2  # the records a TLS 1.3 server writes in its completing step
    raw_client, raw_server = loopback_pair()
    mine, theirs_raw = (raw_server, raw_client) if ours_role == "server" else (raw_client, raw_server)
    peer = CountingPeer(theirs_ctx, theirs_raw, server_side=ours_role == "client")
    mine.setblocking(False)
    engine = pump.OpenSSLEngine(ours_ctx, server_side=ours_role == "server",
                                server_hostname=None if ours_role == "server" else "localhost")
    the_pump = pump.RecordPump(mine, engine)
    try:
        drive(the_pump)
        peer.join()
        capture = engine.handshake.capture
        if version == TLS_1_2_VERSION:
            expected = (capture.records_after_change_cipher_spec(Direction.TX),
                        capture.records_after_change_cipher_spec(Direction.RX))
            assert expected[0] >= 1 and expected[1] >= 1  # at least the Finished, each way
        else:
            expected = (capture.records_after_finished(Direction.TX), capture.records_after_finished(Direction.RX))
            assert expected == ((2, 0) if ours_role == "server" else (0, 0))
        assert the_pump.sequence_numbers(version, server_side=ours_role == "server") == expected
    finally:
        mine.close()
