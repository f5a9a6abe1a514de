"""Load (issue 19): many concurrent connections held open at once on one ktls_ossl server.

The server runs in this process, thread-per-connection (KTLSSocket) or on ktls_ossl.asyncio; the
clients run in a child process (tests/soak/loadclient.py: CPython's ssl under asyncio), so that this
process's memory grows by the server's connections only. Every connection moves data both ways with
SHA-256 compared at both ends, TLS 1.3 and 1.2 alternate. Short scale (make test): 32 connections;
full (make soak): 1,000.

RSS before and after are taken after malloc_trim (trimmed_rss_kib), the peak as it is: the growth
is what the connections made resident, not what the allocator kept from earlier cases.
"""
from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading

import pytest

import ktls_ossl.asyncio as kaio
from ktls_ossl import kernel

from ..timing import scaled
from ..tlshelpers import recv_exactly, server_context
from .conftest import open_fds, raise_fd_limit, rss_kib, soak_scale

SCALE = soak_scale()
COUNT = SCALE.pick(32, 1000)
PAYLOAD = 16 << 10  # each way, per connection: small, so that 1,000 connections finish under UML
CONCURRENCY = 50  # handshakes the client keeps in flight
# One phase (all handshakes, all exchanges, all closes) on an idle machine: a few ms per connection.
PHASE_TIMEOUT = scaled(60 + COUNT * 0.05)
CASE_TIMEOUT = max(300, int(4 * PHASE_TIMEOUT))
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadclient.py")


def trimmed_rss_kib() -> int:
    """RSS after glibc handed its free memory back (malloc_trim): what earlier cases freed but the
    allocator kept would otherwise be reused silently and hide what these connections cost."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except AttributeError:  # not glibc: RSS as it is
        pass
    return rss_kib()


class Tally:
    """What the server's connections report, from any thread, and a way to wait for a count."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.verified = self.closed = self.mismatches = 0
        self.errors: list[str] = []
        self.statuses: list = []
        self.versions: dict[str, int] = {}

    def handshake_done(self, status, version: str) -> None:
        with self.changed:
            self.statuses.append(status)
            self.versions[version] = self.versions.get(version, 0) + 1

    def exchanged(self, intact: bool) -> None:
        with self.changed:
            self.verified += 1
            self.mismatches += not intact
            self.changed.notify_all()

    def failed(self, exc: BaseException) -> None:
        with self.changed:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.changed.notify_all()

    def ended(self) -> None:
        with self.changed:
            self.closed += 1
            self.changed.notify_all()

    def wait_for(self, what: str, count: int, timeout: float) -> None:
        with self.changed:
            done = self.changed.wait_for(lambda: getattr(self, what) + len(self.errors) >= count, timeout)
        assert done, f"{getattr(self, what)} of {count} connections {what} in {timeout:.0f} s; errors: {self.errors[:5]}"


def serve_exchange_blocking(tls, tally: Tally) -> None:
    """The server's half of loadclient.py's exchange, on a KTLSSocket."""
    tally.handshake_done(tls.ktls, tls.version())
    theirs = recv_exactly(tls, PAYLOAD)
    mine = os.urandom(PAYLOAD)
    tls.sendall(hashlib.sha256(theirs).digest() + mine)
    tally.exchanged(recv_exactly(tls, 32) == hashlib.sha256(mine).digest())
    rest = tls.recv(1)  # the client closes once the test has measured: close_notify, then EOF
    assert rest == b"", f"unexpected data after the exchange: {rest!r}"


class ThreadServer:
    """A thread per connection, each with its KTLSSocket: what socketserver.ThreadingTCPServer
    does, plus accepting exactly COUNT connections so that no thread is left blocked in accept()."""

    def __init__(self, ctx, tally: Tally) -> None:
        self.ctx, self.tally = ctx, tally
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=COUNT)
        self.listener.settimeout(PHASE_TIMEOUT)
        self.address = self.listener.getsockname()
        self.handlers: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, name="load-accept", daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        try:
            for _ in range(COUNT):
                sock, _ = self.listener.accept()
                handler = threading.Thread(target=self._handle, args=(sock,), daemon=True)
                self.handlers.append(handler)
                handler.start()
        except Exception as exc:
            self.tally.failed(exc)

    def _handle(self, sock) -> None:
        try:
            sock.settimeout(PHASE_TIMEOUT)
            with self.ctx.wrap_socket(sock, server_side=True) as tls:
                serve_exchange_blocking(tls, self.tally)
        except Exception as exc:
            sock.close()
            self.tally.failed(exc)
        finally:
            self.tally.ended()

    def stop(self) -> None:
        self.acceptor.join(PHASE_TIMEOUT)
        for handler in self.handlers:
            handler.join(PHASE_TIMEOUT)
        assert not self.acceptor.is_alive() and not any(handler.is_alive() for handler in self.handlers)
        self.listener.close()


class AsyncServer:
    """ktls_ossl.asyncio.start_server on a loop from ktls_ossl.asyncio.new_event_loop(), run by a
    thread of its own while this one drives the client."""

    def __init__(self, ctx, tally: Tally) -> None:
        self.tally = tally
        self.loop = kaio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="load-loop", daemon=True)
        self.thread.start()
        self.server = self._call(kaio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx, backlog=COUNT))
        self.address = self.server.sockets[0].getsockname()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(PHASE_TIMEOUT)

    async def _handle(self, reader, writer) -> None:
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            self.tally.handshake_done(writer.get_extra_info("ktls"), ssl_object.version())
            theirs = await asyncio.wait_for(reader.readexactly(PAYLOAD), PHASE_TIMEOUT)
            mine = os.urandom(PAYLOAD)
            writer.write(hashlib.sha256(theirs).digest() + mine)
            await asyncio.wait_for(writer.drain(), PHASE_TIMEOUT)
            echo = await asyncio.wait_for(reader.readexactly(32), PHASE_TIMEOUT)
            self.tally.exchanged(echo == hashlib.sha256(mine).digest())
            rest = await asyncio.wait_for(reader.read(), PHASE_TIMEOUT)
            assert rest == b"", f"unexpected data after the exchange: {rest[:16]!r}"
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), PHASE_TIMEOUT)
        except Exception as exc:
            writer.close()
            self.tally.failed(exc)
        finally:
            self.tally.ended()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(PHASE_TIMEOUT)
        assert not self.thread.is_alive()
        self.loop.close()


class Client:
    """loadclient.py in a child process: its JSON lines arrive through a queue."""

    def __init__(self, address, ca_path: str, stderr) -> None:
        config = dict(host=address[0], port=address[1], ca=ca_path, count=COUNT, payload=PAYLOAD,
                      concurrency=CONCURRENCY, timeout=PHASE_TIMEOUT)
        self.proc = subprocess.Popen([sys.executable, CLIENT, json.dumps(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="load-client-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, event: str) -> dict:
        try:
            line = self.lines.get(timeout=PHASE_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"the client said nothing for {PHASE_TIMEOUT:.0f} s (waiting for {event!r})")
        assert line is not None, f"the client exited (status {self.proc.wait()}) before {event!r}"
        report = json.loads(line)
        assert report["event"] == event, report
        return report

    def tell(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        """Wait for the child; its pipes are closed (they are fds of this process)."""
        try:
            status = self.proc.wait(PHASE_TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(PHASE_TIMEOUT)
            self.proc.stdin.close()
            self.proc.stdout.close()
        return status


class RssSampler:
    """This process's RSS every few hundredths of a second, in a thread: the peak between samples
    is what the figures call peak."""

    def __init__(self) -> None:
        self.peak = rss_kib()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.05):
            self.peak = max(self.peak, rss_kib())

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join()
        return max(self.peak, rss_kib())


@pytest.mark.ktls_or_fallback
@pytest.mark.timeout(CASE_TIMEOUT)
@pytest.mark.parametrize("front", ["threads", "asyncio"])
def test_concurrent_connections_move_data_both_ways(front, server_cert, pki, tmp_path, reliability):
    """Many concurrent connections held open at once on one server, each moving data both ways:
    no errors, no mismatches, no fd leaked; the server's RSS per connection."""
    raise_fd_limit(2 * COUNT + 256)  # the child inherits it: each side holds COUNT sockets
    ctx = server_context(server_cert)
    kernel.probe()  # once per process, with its own sockets: not part of what is counted
    tally = Tally()
    fds_before = open_fds()
    server = (ThreadServer if front == "threads" else AsyncServer)(ctx, tally)
    rss_before = trimmed_rss_kib()
    sampler = RssSampler()
    with open(tmp_path / "client.stderr", "w") as stderr:
        client = Client(server.address, pki.ca_path, stderr)
    try:
        established = client.expect("established")
        exchanged = client.expect("exchanged")
        tally.wait_for("verified", COUNT, PHASE_TIMEOUT)
        rss_held = rss_kib()  # every connection open, its data moved
        client.tell("close")
        done = client.expect("done")
        tally.wait_for("closed", COUNT, PHASE_TIMEOUT)
        status = client.finish()
    finally:
        if client.proc.poll() is None:  # a failure above: the server's connections end with it
            client.proc.kill()
            client.finish()
        rss_peak = sampler.stop()
        server.stop()
    fds_after = open_fds()
    rss_after = trimmed_rss_kib()

    per_connection = (max(rss_peak, rss_held) - rss_before) / COUNT
    reliability.figure("connections", COUNT)
    reliability.figure("versions", dict(sorted(tally.versions.items())))
    reliability.figure("handshake seconds", established["seconds"])
    reliability.figure("kernel-carried connections", sum(1 for status in tally.statuses if status.active))
    reliability.figure("errors", len(tally.errors) + done["errors"])
    reliability.figure("mismatches", tally.mismatches + done["mismatches"])
    reliability.figure("fds leaked", fds_after - fds_before)
    reliability.figure("RSS before (KiB)", rss_before)
    reliability.figure("RSS peak (KiB)", max(rss_peak, rss_held))
    reliability.figure("RSS per connection (KiB)", round(per_connection, 1))
    reliability.figure("RSS after close (KiB)", rss_after)

    client_stderr = (tmp_path / "client.stderr").read_text()
    assert status == 0, f"the client exited with {status}: {client_stderr[-2000:]}"
    assert established["connected"] == COUNT, established
    assert (done["errors"], exchanged["errors"]) == (0, 0), done["quoted"]
    assert tally.errors == [], tally.errors[:5]
    assert tally.verified == COUNT and tally.mismatches == 0 and done["mismatches"] == 0
    assert tally.versions == {"TLSv1.3": COUNT - COUNT // 2, "TLSv1.2": COUNT // 2}
    if kernel.probe().ulp_available:
        carried = [status for status in tally.statuses if status.tx and status.rx]
        assert len(carried) == COUNT, [str(status) for status in tally.statuses if not status.active][:5]
    else:
        assert all("modprobe tls" in status.tx_reason and "modprobe tls" in status.rx_reason
                   for status in tally.statuses)
    assert fds_after == fds_before, f"{fds_after - fds_before} fds leaked"
