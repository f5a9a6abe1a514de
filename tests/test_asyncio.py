"""ktls_ossl.asyncio: kernel TLS under asyncio and uvloop (issue 17).

Both ends of most connections are ours, under every kernel: on the host the record layer falls
back to OpenSSL in user space (and says why), under the VM kernels it must be the kernel's. The
oracles: SHA-256 of every byte sent, asyncio's own SSL transport (ssl.SSLContext) side by side for
how connections end and fail, the kernel's counters (/proc/net/tls_stat) for rekeys, os.sendfile's
own calls for sendfile, /proc/self/fd for descriptor leaks. Waits are bounded with the machine's
time scale; no packet order depends on a sleep.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import os
import random
import socket
import ssl
import sys
import threading
import time

import pytest

import ktls_ossl.asyncio as kaio
from ktls_ossl import kernel
from ktls_ossl.errors import KTLSRekeyUnsupportedError
from ktls_ossl.keys import TLS_1_3_VERSION, KernelCipher
from ktls_ossl.records import AlertDescription, ContentType

from .conftest import RekeyCounters, kernel_can_rekey
from .test_liveness import _send_half_a_record, connect_to_hostile_peer
from .timing import scaled
from .tlshelpers import COMBINATION_IDS, COMBINATIONS, client_context, server_context

MIB = 1 << 20
BULK = 50 * MIB

LOOPS = ["asyncio", "uvloop"]


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "factory":
        return kaio.new_event_loop()
    if kind == "uvloop":
        pytest.importorskip("uvloop")
        return kaio.new_uvloop_event_loop()
    if kind == "plain-uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()
    raise ValueError(kind)


def run(coro, loop: str = "asyncio", timeout: float = 60.0):
    """Run ``coro`` to completion on a fresh loop of ``loop``'s kind, bounded in time."""
    event_loop = _new_loop(loop)
    try:
        return event_loop.run_until_complete(asyncio.wait_for(coro, scaled(timeout)))
    except asyncio.TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks(event_loop):
            task.print_stack(file=stacks)
        raise AssertionError(f"not done in {scaled(timeout):.0f} s; tasks:\n{stacks.getvalue()}") from None
    finally:
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        event_loop.close()


def expect_kernel(status) -> None:
    """Both directions in the kernel where the kernel has TLS; the reason elsewhere."""
    if kernel.probe().ulp_available:
        assert status.tx and status.rx, str(status)
    else:
        assert not status.tx and not status.rx
        assert "modprobe tls" in status.rx_reason, str(status)


def pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def pump_both_ways(reader, writer, payload: bytes, expected_size: int) -> str:
    """Send ``payload`` while receiving ``expected_size`` bytes: the received bytes' SHA-256."""
    async def send():
        view = memoryview(payload)
        for start in range(0, len(view), MIB):
            writer.write(view[start:start + MIB])
            await writer.drain()

    _, received = await asyncio.gather(send(), receive_digest(reader, expected_size))
    return received


async def receive_digest(reader, size: int) -> str:
    """Exactly ``size`` bytes (what follows stays in the reader): their SHA-256."""
    digest, count = hashlib.sha256(), 0
    while count < size:
        data = await reader.read(min(256 * 1024, size - count))
        assert data, f"EOF after {count} of {size} bytes"
        digest.update(data)
        count += len(data)
    return digest.hexdigest()


@pytest.fixture
def contexts(server_cert, pki):
    return server_context(server_cert), client_context(pki.ca_path)


# --- data both ways, every version and cipher ------------------------------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize(("version", "cipher"), COMBINATIONS, ids=COMBINATION_IDS)
def test_bulk_both_ways_at_once(server_cert, pki, version, cipher):
    """50 MiB each way at the same time through ktls_ossl.asyncio's streams, then an echo: every
    byte checked by SHA-256, both ends in the kernel where it has TLS."""
    server_ctx = server_context(server_cert, version=version, cipher=cipher)
    client_ctx = client_context(pki.ca_path, version=version, cipher=cipher)
    up, down = pseudo_random(BULK, 1), pseudo_random(BULK, 2)
    results = {}

    async def handle(reader, writer):
        results["server"] = await pump_both_ways(reader, writer, down, len(up))
        results["server_status"] = writer.get_extra_info("ktls")
        line = await reader.readline()
        writer.write(line)
        await writer.drain()
        writer.close()

    async def main():
        server = await kaio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await kaio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        results["client"] = await pump_both_ways(reader, writer, up, len(down))
        results["client_status"] = writer.get_extra_info("ktls")
        writer.write(b"echo this\n")
        assert await reader.readline() == b"echo this\n"
        assert await reader.read() == b""  # the server's close_notify
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main(), timeout=25)
    assert results["server"] == hashlib.sha256(up).hexdigest()
    assert results["client"] == hashlib.sha256(down).hexdigest()
    for end in ("server_status", "client_status"):
        expect_kernel(results[end])
        assert results[end].cipher is not None


# --- the ways in: explicit functions on any loop, the loop factory, uvloop -----------------------------

async def _echo_session(open_connection, start_server, server_ctx, client_ctx, rounds: int = 20):
    statuses = []

    async def handle(reader, writer):
        statuses.append(writer.get_extra_info("ktls"))
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    server = await start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    statuses.append(writer.get_extra_info("ktls"))
    for index in range(rounds):
        message = b"%d %s\n" % (index, os.urandom(40).hex().encode())
        writer.write(message)
        assert await reader.readline() == message
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return statuses


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", ["asyncio", "factory", "uvloop", "plain-uvloop"])
def test_echo_with_our_functions_on_any_loop(contexts, loop):
    """ktls_ossl.asyncio.start_server/open_connection on asyncio's loop, on new_event_loop()'s, on
    uvloop's own loop and on new_uvloop_event_loop()'s."""
    statuses = run(_echo_session(kaio.open_connection, kaio.start_server, *contexts), loop)
    assert len(statuses) == 2
    for status in statuses:
        expect_kernel(status)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", ["factory", "uvloop"])
def test_stock_asyncio_functions_under_the_loop_factory(contexts, loop):
    """asyncio.start_server/open_connection themselves, unmodified, with a ktls_ossl.SSLContext."""
    statuses = run(_echo_session(asyncio.open_connection, asyncio.start_server, *contexts), loop)
    for status in statuses:
        expect_kernel(status)


@pytest.mark.ktls_or_fallback
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in Python 3.11")
def test_runner_with_the_loop_factory(contexts):
    with asyncio.Runner(loop_factory=kaio.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), kaio.KTLSEventLoop)
        statuses = runner.run(_echo_session(asyncio.open_connection, asyncio.start_server, *contexts, rounds=3))
    for status in statuses:
        expect_kernel(status)


@pytest.mark.ktls_or_fallback
@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is new in Python 3.12")
def test_asyncio_run_with_the_loop_factory(contexts):
    statuses = asyncio.run(_echo_session(asyncio.open_connection, asyncio.start_server, *contexts, rounds=3),
                           loop_factory=kaio.new_event_loop)
    for status in statuses:
        expect_kernel(status)


def test_stock_loop_refuses_a_ktls_context_at_start_server(contexts):
    """asyncio's own loop cannot carry kernel TLS (memory BIOs): start_server fails at the call,
    not per connection, and says what works."""
    server_ctx, _ = contexts

    async def main():
        with pytest.raises(NotImplementedError, match=r"ktls_ossl\.asyncio") as caught:
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_ctx)
        return str(caught.value)

    message = run(main(), "asyncio")
    assert "new_event_loop" in message and "start_server" in message


def test_stock_loop_open_connection_names_ktls_ossl_asyncio(contexts):
    """asyncio's own open_connection reaches wrap_bio, whose refusal names the way that works;
    the listener here is plain TCP (nothing of ours runs on the other end)."""
    _, client_ctx = contexts

    async def main():
        # (3.12's wait_closed() waits for the server's connections: each is closed when it starts)
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        with pytest.raises(NotImplementedError, match=r"ktls_ossl\.asyncio"):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        listener.close()
        await listener.wait_closed()

    run(main(), "asyncio")
    with pytest.raises(NotImplementedError, match=r"ktls_ossl\.asyncio"):
        client_ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())


def test_explicit_functions_refuse_other_contexts(server_cert):
    stock = server_context(server_cert, ours=False)

    async def main():
        with pytest.raises(TypeError, match="ktls_ossl.SSLContext"):
            await kaio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=stock)

    run(main())


# --- loop.sendfile ----------------------------------------------------------------------------------

async def _serve_file(path: str, send, server_ctx, client_ctx):
    """The server sends the file at ``path`` with ``send(transport, file)``; the client reads to
    EOF. Returns (bytes the client received, what send returned, the server's kTLS status)."""
    result = {}

    async def handle(reader, writer):
        with open(path, "rb") as file:
            result["sent"] = await send(writer.transport, file)
            result["position"] = file.tell()
        result["status"] = writer.get_extra_info("ktls")
        writer.close()

    server = await kaio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await kaio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    received = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return received, result


@pytest.fixture
def big_file(tmp_path):
    content = pseudo_random(20 * MIB + 12345, 3)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    return str(path), content


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", ["factory", "uvloop"])
def test_loop_sendfile_is_os_sendfile_where_the_kernel_sends(contexts, big_file, sendfile_calls, loop):
    """loop.sendfile(transport, file) under the loop factory: os.sendfile into the kernel's TLS
    where the kernel has it (the file never enters Python), the file's bytes written otherwise."""
    path, content = big_file

    async def send(transport, file):
        return await asyncio.get_running_loop().sendfile(transport, file)

    received, result = run(_serve_file(path, send, *contexts), loop)
    assert hashlib.sha256(received).digest() == hashlib.sha256(content).digest()
    assert result["sent"] == len(content) and result["position"] == len(content)
    expect_kernel(result["status"])
    through_sendfile = sum(sent for _, sent in sendfile_calls)
    if kernel.probe().ulp_available:
        assert through_sendfile == len(content), sendfile_calls[:5]
    else:
        assert through_sendfile == 0


@pytest.mark.ktls_or_fallback
def test_loop_sendfile_on_asyncios_own_loop_falls_back(contexts, big_file, sendfile_calls):
    """On asyncio's own loop, loop.sendfile on our transport uses asyncio's read-and-write fallback
    (correct, not native); ktls_ossl.asyncio.sendfile is native there."""
    path, content = big_file

    async def stock(transport, file):
        return await asyncio.get_running_loop().sendfile(transport, file, 1000, len(content) - 2000)

    received, result = run(_serve_file(path, stock, *contexts), "asyncio")
    assert received == content[1000:-1000]
    assert result["sent"] == len(content) - 2000 and result["position"] == len(content) - 1000
    assert not sendfile_calls

    received, result = run(_serve_file(path, kaio.sendfile, *contexts), "asyncio")
    assert hashlib.sha256(received).digest() == hashlib.sha256(content).digest()
    assert sum(sent for _, sent in sendfile_calls) == (len(content) if kernel.probe().ulp_available else 0)


def test_sendfile_checks_its_arguments_as_asyncio_does(contexts, tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"x" * 100)

    async def check(transport, file):
        with open(path) as text:
            with pytest.raises(ValueError, match="binary mode"):
                await kaio.sendfile(transport, text)
        with pytest.raises(ValueError, match="count"):
            await kaio.sendfile(transport, file, 0, 0)
        with pytest.raises(ValueError, match="offset"):
            await kaio.sendfile(transport, file, -1)
        return await kaio.sendfile(transport, file, 10, 50)

    received, result = run(_serve_file(str(path), check, *contexts), "asyncio")
    assert received == b"x" * 50 and result["sent"] == 50


# --- KeyUpdate ----------------------------------------------------------------------------------------

@pytest.mark.ktls_or_fallback
def test_key_updates_both_ways_mid_stream(server_cert, pki):
    """Each end sends a KeyUpdate (the client's requesting the server's) in the middle of 8 MiB
    flowing both ways; every byte arrives. Under kTLS the kernel counts the rekeys; a kernel that
    cannot rekey (before 6.14) refuses with KTLSRekeyUnsupportedError before anything is sent."""
    server_ctx = server_context(server_cert, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_256)
    client_ctx = client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_256)
    size = 8 * MIB
    up, down = pseudo_random(size, 4), pseudo_random(size, 5)
    in_kernel = kernel.probe().ulp_available
    refuses = in_kernel and not kernel_can_rekey()
    counters = RekeyCounters()
    results = {}

    async def exchange(reader, writer, payload, name, request_peer):
        async def send():
            half = len(payload) // 2
            writer.write(payload[:half])
            await writer.drain()
            try:
                writer.transport.key_update(request_peer=request_peer)
            except KTLSRekeyUnsupportedError as exc:
                results[f"{name}_refused"] = exc
            writer.write(payload[half:])
            await writer.drain()

        _, results[name] = await asyncio.gather(send(), receive_digest(reader, size))
        results[f"{name}_status"] = writer.get_extra_info("ktls")

    async def handle(reader, writer):
        await exchange(reader, writer, down, "server", False)
        writer.close()

    async def main():
        server = await kaio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await kaio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        await exchange(reader, writer, up, "client", True)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(main(), timeout=120)
    assert results["server"] == hashlib.sha256(up).hexdigest()
    assert results["client"] == hashlib.sha256(down).hexdigest()
    if refuses:
        assert isinstance(results.get("client_refused"), KTLSRekeyUnsupportedError)
        assert isinstance(results.get("server_refused"), KTLSRekeyUnsupportedError)
        counters.check(0, 0)
        return
    assert "client_refused" not in results and "server_refused" not in results
    if in_kernel:
        # The client's update, the server's own and the server's answer to the client's request;
        # each end installed the other's keys as they came.
        assert results["client_status"].key_updates == 1 and results["server_status"].key_updates == 2
        counters.check(3, 3)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("role", ["client", "server"])
def test_reader_sees_everything_across_peer_key_updates(server_cert, pki, role):
    """The peer sends 8 data records with a KeyUpdate between each two (every other one requesting
    ours) and close_notify, all before our transport reads: on 7.2 the kernel parks each decrypted
    KeyUpdate where poll() does not see it, and a transport that stopped reading before EAGAIN
    would wait forever. On a kernel that cannot rekey the first KeyUpdate ends the connection with
    KTLSRekeyUnsupportedError, after the data before it."""
    sock, peer = connect_to_hostile_peer(server_cert, pki, library="ktls_ossl", version=TLS_1_3_VERSION, role=role)
    chunks = [os.urandom(5000) for _ in range(8)]
    for index, chunk in enumerate(chunks):
        peer.queue_record(ContentType.APPLICATION_DATA, chunk)
        if index < len(chunks) - 1:
            peer.key_update(requested=index % 2 == 0)
    peer.queue_record(ContentType.ALERT, bytes([1, AlertDescription.close_notify]))
    peer.flush()
    kernel_rx = bool(sock.ktls.rx)
    events = []

    class Collect(asyncio.Protocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data):
            events.append(("data", data))

        def eof_received(self):
            events.append(("eof",))

        def connection_lost(self, exc):
            events.append(("lost", exc))
            self.lost.set_result(None)

    async def main():
        sock.setblocking(False)
        protocol = Collect()
        transport = kaio.KTLSTransport(asyncio.get_running_loop(), sock, protocol)
        transport.start()
        await protocol.lost

    try:
        run(main(), timeout=30)
    finally:
        peer.close()
    received = b"".join(event[1] for event in events if event[0] == "data")
    if kernel_rx and not kernel_can_rekey():
        assert received == chunks[0]
        assert isinstance(events[-1][1], KTLSRekeyUnsupportedError), events[-1]
        return
    assert hashlib.sha256(received).digest() == hashlib.sha256(b"".join(chunks)).digest()
    assert events[-1] == ("lost", None), events[-1]
    if _EOF_ON_CLOSE_NOTIFY:
        assert ("eof",) in events


_EOF_ON_CLOSE_NOTIFY = sys.version_info >= (3, 11)


@pytest.mark.ktls_or_fallback
def test_peer_fills_our_send_buffer_while_its_key_update_arrives(server_cert, pki):
    """The peer does not read while we write until our socket is full and our protocol paused; it
    then sends a KeyUpdate requesting ours and data. Our answer cannot go out yet: reading waits for
    room (no busy loop), and once the peer reads, everything arrives both ways."""
    if kernel.probe().ulp_available and not kernel_can_rekey():
        pytest.skip(f"kernel {os.uname().release} cannot rekey (before 6.14): a KeyUpdate ends the connection "
                    "(test_reader_sees_everything_across_peer_key_updates covers the refusal)")
    server_ctx = server_context(server_cert, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_128)
    client_ctx = client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_128)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(scaled(20))
    peer_data = os.urandom(300_000)
    peer_result = {}
    may_read = threading.Event()

    def peer():  # a blocking ktls_ossl server in a thread
        raw, _ = listener.accept()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        raw.settimeout(scaled(30))
        with server_ctx.wrap_socket(raw, server_side=True) as tls:
            may_read.wait(scaled(30))
            tls.key_update(request_peer=True)
            tls.sendall(peer_data)
            digest, count = hashlib.sha256(), 0
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                digest.update(data)
                count += len(data)
            peer_result["digest"], peer_result["count"] = digest.hexdigest(), count
            peer_result["status"] = tls.ktls

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    ours = hashlib.sha256()
    sent = 0

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.paused = asyncio.get_running_loop().create_future()
            self.resumed = asyncio.Event()
            self.received = bytearray()
            self.got_all = asyncio.get_running_loop().create_future()
            self.lost = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

        def pause_writing(self):
            if not self.paused.done():
                self.paused.set_result(None)

        def resume_writing(self):
            self.resumed.set()

        def data_received(self, data):
            self.received += data
            if len(self.received) >= len(peer_data) and not self.got_all.done():
                self.got_all.set_result(None)

    async def main():
        nonlocal sent
        transport, protocol = await kaio.create_connection(Writer, "127.0.0.1", listener.getsockname()[1],
                                                           ssl=client_ctx, server_hostname="localhost")
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        while not protocol.paused.done():
            chunk = os.urandom(65536)
            transport.write(chunk)
            ours.update(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        may_read.set()  # the peer's KeyUpdate and data now meet our full socket
        cpu_before = time.process_time()
        # The peer reads only after sending everything: our reading must wait for room without spinning.
        await asyncio.wait_for(protocol.got_all, scaled(30))
        await protocol.resumed.wait()
        assert time.process_time() - cpu_before < scaled(20)
        assert bytes(protocol.received) == peer_data
        transport.close()  # what is buffered goes out first, then close_notify
        assert await protocol.lost is None

    try:
        run(main(), timeout=60)
    finally:
        thread.join(scaled(30))
        listener.close()
    assert peer_result["count"] == sent and peer_result["digest"] == ours.hexdigest()
    if peer_result["status"].tx:
        assert peer_result["status"].key_updates == 1


# --- how connections end, as asyncio's SSL transport reports it --------------------------------------

def _ending_peer(listener, cert, how: str) -> None:
    """A CPython ssl server: sends b"hello", then ends as ``how`` says."""
    raw, _ = listener.accept()
    raw.settimeout(scaled(20))
    ctx = server_context(cert, ours=False)
    tls = ctx.wrap_socket(raw, server_side=True)
    tls.sendall(b"hello")
    if how == "close_notify":
        try:
            tls.unwrap().close()
        except OSError:  # 3.10's asyncio closes without answering close_notify
            tls.close()
    elif how == "ragged_eof":
        socket.socket.shutdown(tls, socket.SHUT_WR)
        try:  # until the client closes (raw: its close_notify is not ours to decrypt here)
            while socket.socket.recv(tls, 4096):
                pass
        except OSError:
            pass
        tls.close()
    elif how == "reset":
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        tls.close()


class _Events(asyncio.Protocol):
    def __init__(self):
        self.events = []
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        if self.events and self.events[-1][0] == "data":
            self.events[-1] = ("data", self.events[-1][1] + data)
        else:
            self.events.append(("data", data))

    def eof_received(self):
        self.events.append(("eof",))

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None, str(exc) if exc else None))
        self.lost.set_result(None)


def _client_events(server_cert, pki, how: str, ours: bool):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(scaled(20))
    thread = threading.Thread(target=_ending_peer, args=(listener, server_cert, how), daemon=True)
    thread.start()
    ctx = client_context(pki.ca_path, ours=ours)

    async def main():
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Events, "127.0.0.1", listener.getsockname()[1], ssl=ctx,
                                                   server_hostname="localhost")
        await protocol.lost
        return protocol.events

    try:
        return run(main(), "factory" if ours else "asyncio", timeout=60)
    finally:
        thread.join(scaled(20))
        listener.close()


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("how", ["close_notify", "ragged_eof"])
def test_connection_ends_as_asyncio_ssl_reports_it(server_cert, pki, how):
    """The peer's close_notify, or TCP EOF without it: the protocol sees the same calls, in the
    same order, as under asyncio's SSL transport with CPython's ssl."""
    theirs = _client_events(server_cert, pki, how, ours=False)
    mine = _client_events(server_cert, pki, how, ours=True)
    assert mine == theirs


@pytest.mark.ktls_or_fallback
def test_reset_is_reported_as_asyncio_ssl_reports_it(server_cert, pki):
    """A reset (SO_LINGER 0) after data: connection_lost(ConnectionResetError), as asyncio's SSL
    transport reports it; the data before the reset may or may not be delivered (the reset races
    it in both), so only the ending is compared."""
    theirs = _client_events(server_cert, pki, "reset", ours=False)
    mine = _client_events(server_cert, pki, "reset", ours=True)
    assert theirs[-1][:2] == ("lost", "ConnectionResetError"), theirs
    assert mine[-1][:2] == theirs[-1][:2], mine
    assert [event for event in mine if event[0] == "data"] in ([], [("data", b"hello")])


# --- handshakes ----------------------------------------------------------------------------------------

def _handshake_error(server_cert, pki, ours: bool, *, untrusted_ca) -> BaseException:
    server_ctx = server_context(server_cert)
    client_ctx = client_context(untrusted_ca, ours=ours)

    async def main():
        server = await kaio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        except BaseException as exc:  # noqa: BLE001 - the error is the result
            error = exc
        else:
            error = None
        # The server goes on serving after the failed handshake.
        good = client_context(pki.ca_path)
        reader, writer = await kaio.open_connection("127.0.0.1", port, ssl=good, server_hostname="localhost")
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return error

    return run(main(), "factory" if ours else "asyncio")


def test_certificate_failure_is_asyncios(server_cert, pki, tmp_path_factory):
    """An untrusted server: the same exception, with the same verify message, as asyncio with
    CPython's ssl; the server serves the next client."""
    from .certs import CertificateAuthority
    other = CertificateAuthority(str(tmp_path_factory.mktemp("other-ca")))
    mine = _handshake_error(server_cert, pki, True, untrusted_ca=other.ca_path)
    theirs = _handshake_error(server_cert, pki, False, untrusted_ca=other.ca_path)
    assert type(mine) is type(theirs) is ssl.SSLCertVerificationError
    assert mine.verify_message == theirs.verify_message and mine.reason == theirs.reason


def _silent_server_timeout(ours: bool, pki) -> BaseException:
    """A TCP server that accepts and never answers: the client's handshake timeout."""
    ctx = client_context(pki.ca_path, ours=ours)

    async def main():
        kept = []  # a dropped StreamWriter closes its connection (3.13): the server must stay silent
        listener = await asyncio.start_server(lambda r, w: kept.append(w), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ConnectionAbortedError) as caught:
            await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost",
                                          ssl_handshake_timeout=0.5)
        assert time.monotonic() - started < scaled(5)
        listener.close()
        return caught.value

    return run(main(), "factory" if ours else "asyncio")


def test_handshake_timeout_is_asyncios(pki):
    mine, theirs = _silent_server_timeout(True, pki), _silent_server_timeout(False, pki)
    assert str(mine) == str(theirs)


def test_first_probe_runs_off_the_loop(contexts, monkeypatch):
    """The kernel probe (loopback connections, key installs) never runs on the loop's thread."""
    threads = []
    real = kernel._run_probe

    def recording():
        threads.append(threading.current_thread())
        return real()

    monkeypatch.setattr(kernel, "_probe_report", None)
    monkeypatch.setattr(kernel, "_run_probe", recording)
    loop_threads = []

    async def main():
        loop_threads.append(threading.current_thread())
        return await _echo_session(kaio.open_connection, kaio.start_server, *contexts, rounds=1)

    run(main())
    assert threads and all(thread is not loop_threads[0] for thread in threads)


# --- what the transport reports -------------------------------------------------------------------------

def test_extra_info_matches_asyncios_ssl_transport(server_cert, pki):
    """The same get_extra_info answers as asyncio's SSL transport for the same server and client
    settings; plus 'ktls'."""
    names = ("peercert", "cipher", "compression", "peername")

    def client_info(ours: bool):
        ctx = client_context(pki.ca_path, ours=ours)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        server_ctx = server_context(server_cert)
        server_ctx.set_alpn_protocols(["http/1.1"])

        async def main():
            server = await kaio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            info = {name: writer.get_extra_info(name) for name in names}
            info["peername"] = info["peername"][0]
            ssl_object = writer.get_extra_info("ssl_object")
            info["alpn"] = ssl_object.selected_alpn_protocol()
            info["version"] = ssl_object.version()
            info["sslcontext"] = writer.get_extra_info("sslcontext") is ctx
            info["socket"] = writer.get_extra_info("socket").family
            info["ktls"] = writer.get_extra_info("ktls")
            writer.close()
            server.close()
            await server.wait_closed()
            return info

        return run(main(), "factory" if ours else "asyncio")

    mine, theirs = client_info(True), client_info(False)
    assert mine.pop("ktls") is not None and theirs.pop("ktls") is None
    assert mine == theirs


@pytest.mark.ktls_or_fallback
def test_buffered_protocol_and_flow_control(contexts):
    """A BufferedProtocol with a small buffer gets every byte; a peer that does not read pauses our
    writing at the high-water mark and resumes it below the low one."""
    server_ctx, client_ctx = contexts
    payload = pseudo_random(4 * MIB, 6)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(1000)  # smaller than a record: the engine holds the rest
            self.received = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()  # until the sender was paused: then everything flows

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.received += self.buffer[:nbytes]

        def eof_received(self):
            pass

        def connection_lost(self, exc):
            self.done.set_result(exc)

    class Sender(asyncio.Protocol):
        def __init__(self):
            self.pauses = self.resumes = 0
            self.writable = asyncio.Event()
            self.writable.set()

        def pause_writing(self):
            self.pauses += 1
            self.writable.clear()

        def resume_writing(self):
            self.resumes += 1
            self.writable.set()

    async def main():
        receivers = []
        made = asyncio.get_running_loop().create_future()

        def make_receiver():  # after the server's handshake, which may end after the client's
            receivers.append(Buffered())
            made.set_result(None)
            return receivers[-1]

        server = await kaio.create_server(make_receiver, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        transport, sender = await kaio.create_connection(Sender, "127.0.0.1", port, ssl=client_ctx,
                                                         server_hostname="localhost")
        transport.set_write_buffer_limits(high=256 * 1024)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        await made
        for start in range(0, len(payload), 128 * 1024):
            if not sender.writable.is_set():
                receivers[0].transport.resume_reading()
            await sender.writable.wait()
            transport.write(payload[start:start + 128 * 1024])
        receivers[0].transport.resume_reading()  # (where no pause came, the assertion below fails)
        transport.close()
        exc = await receivers[0].done
        server.close()
        await server.wait_closed()
        return receivers[0].received, sender, exc

    received, sender, exc = run(main(), timeout=120)
    assert exc is None
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert sender.pauses >= 1 and sender.resumes >= 1


# --- many connections, and a record that arrives in halves -------------------------------------------

@pytest.mark.ktls_or_fallback
def test_500_connections_on_one_loop_leak_nothing(contexts):
    """500 connections open at once on one loop (1000 TLS ends), each echoing; afterwards the
    process has exactly the descriptors it had before."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server_ctx, client_ctx = contexts
    count = 500
    gc.collect()  # descriptors of earlier tests' garbage are not this test's
    before = len(os.listdir("/proc/self/fd"))

    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line)
        await writer.drain()
        await reader.read()  # until the client's close_notify
        writer.close()

    async def main():
        server = await kaio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx, backlog=count)
        port = server.sockets[0].getsockname()[1]
        semaphore = asyncio.Semaphore(64)  # handshakes in flight at once, not connections

        async def connect(index):
            async with semaphore:
                return await kaio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost",
                                                  ssl_handshake_timeout=scaled(60))

        streams = await asyncio.gather(*(connect(index) for index in range(count)))
        open_now = len(os.listdir("/proc/self/fd"))
        for index, (reader, writer) in enumerate(streams):
            writer.write(b"%d\n" % index)
        for index, (reader, writer) in enumerate(streams):
            assert await reader.readline() == b"%d\n" % index
        statuses = [writer.get_extra_info("ktls") for _, writer in streams]
        for _, writer in streams:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in streams))
        server.close()
        await server.wait_closed()
        for _ in range(100):
            if len(os.listdir("/proc/self/fd")) <= before:
                break
            await asyncio.sleep(0.05)
        return open_now, statuses

    open_now, statuses = run(main(), timeout=300)
    assert open_now >= before + 2 * count
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
    expect_kernel(statuses[0])
    assert all(status.rx == statuses[0].rx and status.tx == statuses[0].tx for status in statuses)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", LOOPS)
def test_half_a_record_does_not_spin_the_loop(server_cert, pki, loop):
    """Half a record in our socket and nothing more for a while: the loop sleeps (6.1 reports such
    a socket readable, so a level-triggered reader would wake without end); the rest then arrives
    and is delivered."""
    sock, peer = connect_to_hostile_peer(server_cert, pki, library="ktls_ossl", version=TLS_1_3_VERSION)
    payload = os.urandom(1000)
    rest = _send_half_a_record(peer, payload)
    stall = 1.0

    class Collect(asyncio.Protocol):
        def __init__(self):
            self.data = asyncio.get_running_loop().create_future()

        def data_received(self, data):
            self.data.set_result(data)

        def connection_lost(self, exc):
            pass

    async def main():
        sock.setblocking(False)
        protocol = Collect()
        transport = kaio.KTLSTransport(asyncio.get_running_loop(), sock, protocol)
        transport.start()
        cpu, started = time.process_time(), time.monotonic()
        await asyncio.sleep(stall)  # measuring the idle CPU share: no packet order depends on it
        share = (time.process_time() - cpu) / (time.monotonic() - started)
        peer.sock.sendall(rest)
        data = await protocol.data
        transport.abort()
        return share, data

    try:
        share, data = run(main(), loop, timeout=30)
    finally:
        peer.close()
    assert data == payload
    assert share < 0.2, f"the loop used {share:.0%} of a CPU waiting for the rest of a record"


# --- tickets and resumption ------------------------------------------------------------------------------

@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_tickets_arrive_and_the_session_resumes(server_cert, pki, version):
    """The server's tickets reach the client through the transport (TLS 1.3: post-handshake
    records that, under kTLS, the kernel hands up and the engine feeds to OpenSSL); the session
    resumes on the next connection (session=), and the server's context counts the hit."""
    tls_version = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}[version]
    server_ctx = server_context(server_cert, maximum_version=tls_version)
    client_ctx = client_context(pki.ca_path, maximum_version=tls_version)

    async def handle(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def connect(port, session=None):
        reader, writer = await kaio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost",
                                                    session=session)
        writer.write(b"ticket please\n")
        assert await reader.readline() == b"ticket please\n"  # tickets came before the answer
        tls = writer.get_extra_info("ssl_object")
        facts = (tls.session, tls.session_reused, writer.get_extra_info("ktls"))
        writer.close()
        await writer.wait_closed()
        return facts

    async def main():
        server = await kaio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        first = await connect(port)
        second = await connect(port, session=first[0])
        server.close()
        await server.wait_closed()
        return first, second

    first, second = run(main())
    assert first[0] is not None and first[0].has_ticket
    assert first[1] is False and second[1] is True
    assert server_ctx.session_stats()["hits"] == 1
    expect_kernel(first[2])
    expect_kernel(second[2])


def test_stock_loop_refuses_a_ktls_context_for_unix_and_accepted_sockets(contexts, tmp_path):
    """The guard covers every stock server entry that would fail per connection."""
    server_ctx, _ = contexts

    async def main():
        with pytest.raises(NotImplementedError, match="TCP sockets only"):
            await asyncio.start_unix_server(lambda r, w: None, str(tmp_path / "sock"), ssl=server_ctx)
        a, b = socket.socketpair()
        with a, b, pytest.raises(NotImplementedError, match=r"ktls_ossl\.asyncio"):
            await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, a, ssl=server_ctx)

    run(main(), "asyncio")
