"""Soak (issue 19): connections open and close continuously for a while, against one server, with
this process's RSS and fd count sampled.

A few client threads (ktls_ossl on both ends, in this process) each loop: connect, alternately a full
handshake and a resumption of the session from the connection before (TLS 1.3 tickets, TLS 1.2
session reuse), a little data both ways checked by echo, a KeyUpdate on kernels that rekey (TLS 1.3),
more data, close_notify both ways, close. Short scale (make test): ~15 s; full (make soak):
KTLS_SOAK_MINUTES (30).
"""
from __future__ import annotations

import os
import socket
import statistics
import struct
import threading
import time

import pytest

from ktls_ossl import kernel
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION

from ..conftest import RekeyCounters, kernel_can_rekey
from ..timing import scaled
from ..tlshelpers import client_context, recv_exactly, server_context, versioned
from .conftest import open_fds, rss_kib, soak_scale

SCALE = soak_scale()
DURATION = SCALE.pick(15.0, SCALE.minutes * 60)
SAMPLE_EVERY = SCALE.pick(1.0, min(10.0, DURATION / 12))  # a short full run (KTLS_SOAK_MINUTES=1) still has a trend
WORKER_VERSIONS = (TLS_1_3_VERSION, TLS_1_2_VERSION, TLS_1_3_VERSION, TLS_1_2_VERSION)
IO_TIMEOUT = scaled(30)
CASE_TIMEOUT = int(DURATION + max(300, scaled(120)))
SHOWN_SAMPLES = 30  # the curve kept for docs/RELIABILITY.md: every Nth sample, at most this many
FLAT_SLACK_KIB, FLAT_SLACK_SHARE = 2048, 0.03


class Counts:
    """What the workers and the server did, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = self.full = self.resumed = self.key_updates = self.requested = 0
        self.errors: list[str] = []

    def add(self, **figures) -> None:
        with self.lock:
            for name, value in figures.items():
                setattr(self, name, getattr(self, name) + value)

    def failed(self, who: str, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{who}: {type(exc).__name__}: {exc}")


def message(sock) -> bytes:
    """One length-prefixed message."""
    (size,) = struct.unpack(">I", recv_exactly(sock, 4))
    return recv_exactly(sock, size)


class EchoServer:
    """Thread-per-connection ktls_ossl server: echoes each length-prefixed message until the peer's
    close_notify, answers with its own, closes."""

    def __init__(self, ctx, counts: Counts) -> None:
        self.ctx, self.counts = ctx, counts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.stopping = False
        self.handlers: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, name="soak-accept", daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            if self.stopping:  # stop()'s own connection, made to wake this accept()
                sock.close()
                return
            self.handlers = [handler for handler in self.handlers if handler.is_alive()]
            handler = threading.Thread(target=self._handle, args=(sock,), daemon=True)
            self.handlers.append(handler)
            handler.start()

    def _handle(self, sock) -> None:
        try:
            sock.settimeout(IO_TIMEOUT)
            with self.ctx.wrap_socket(sock, server_side=True) as tls:
                while True:
                    header = tls.recv(4)
                    if not header:
                        break  # close_notify
                    header += recv_exactly(tls, 4 - len(header))
                    (size,) = struct.unpack(">I", header)
                    tls.sendall(header + recv_exactly(tls, size))
                tls.unwrap()  # our close_notify: the client waits for it
        except Exception as exc:
            sock.close()
            self.counts.failed("server", exc)

    def stop(self) -> None:
        self.stopping = True
        socket.create_connection(self.address, timeout=IO_TIMEOUT).close()
        self.acceptor.join(IO_TIMEOUT)
        for handler in self.handlers:
            handler.join(IO_TIMEOUT)
        assert not self.acceptor.is_alive() and not any(handler.is_alive() for handler in self.handlers)
        self.listener.close()


def worker(address, ctx, version: int, deadline: float, counts: Counts) -> None:
    """Connections one after another until the deadline; every other one resumes the session of
    the connection before it."""
    rekey = version == TLS_1_3_VERSION and kernel_can_rekey()
    session = None
    number = 0
    while time.monotonic() < deadline:
        resume = number % 2 == 1 and session is not None
        number += 1
        try:
            raw = socket.create_connection(address, timeout=IO_TIMEOUT)
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session if resume else None) as tls:
                assert tls.session_reused == resume, \
                    f"{'resumption' if resume else 'full handshake'} expected, session_reused={tls.session_reused}"
                for round_number in range(2):
                    if round_number and rekey:
                        tls.key_update(request_peer=True)
                    data = os.urandom(1024 + (number * 509) % 7168)
                    tls.sendall(struct.pack(">I", len(data)) + data)
                    assert message(tls) == data, "the echo differs from what was sent"
                # Read after the data (TLS 1.3 tickets come after the handshake): the session to resume.
                session = tls.session
                if kernel.probe().ulp_available:
                    assert tls.ktls.active, str(tls.ktls)
                updates = tls.ktls.key_updates  # the kernel's TX key changes (0 in user space)
                tls.unwrap()
            counts.add(connections=1, full=int(not resume), resumed=int(resume), key_updates=updates,
                       requested=int(rekey))
        except Exception as exc:
            counts.failed(f"client TLS {version:#06x} connection {number}", exc)
            return


def flat(samples: list[int]) -> tuple[float, float]:
    """(median of the second quarter, median of the last quarter): the first quarter is warm-up
    (allocator pools, caches filling), the trend is judged after it."""
    quarter = len(samples) // 4
    return statistics.median(samples[quarter:2 * quarter]), statistics.median(samples[3 * quarter:])


@pytest.mark.ktls_or_fallback
@pytest.mark.timeout(CASE_TIMEOUT)
def test_connections_opening_and_closing_continuously_leak_nothing(server_cert, pki, reliability, soak):
    """Connections open and close continuously (full handshakes, resumption, KeyUpdate, data, clean
    close): no connection fails, the fd count ends where it started, and (full scale) RSS stays flat.

    Short scale runs ~15 s: enough to prove the case works and that fds come back, too short to
    judge a memory trend, so there it only reports RSS; full scale (KTLS_SOAK_MINUTES) requires RSS
    growth from the median of the second quarter of samples to that of the last quarter <=
    max(2 MiB, 3 %)."""
    kernel.probe()  # once per process, with its own sockets: not part of what is sampled
    counts = Counts()
    server_ctx = server_context(server_cert)
    contexts = {version: versioned(client_context(pki.ca_path), version) for version in set(WORKER_VERSIONS)}
    fds_first, rss = open_fds(), [rss_kib()]
    fds = [fds_first]
    rekeys = RekeyCounters()
    server = EchoServer(server_ctx, counts)
    deadline = time.monotonic() + DURATION
    threads = [threading.Thread(target=worker, args=(server.address, contexts[version], version, deadline, counts),
                                name=f"soak-worker-{n}", daemon=True)
               for n, version in enumerate(WORKER_VERSIONS)]
    for thread in threads:
        thread.start()
    # Sample until the deadline (a worker that fails ends early; the others carry on).
    stop_sampling = threading.Event()
    next_sample = time.monotonic() + SAMPLE_EVERY
    while not stop_sampling.wait(max(0.0, next_sample - time.monotonic())):
        rss.append(rss_kib())
        fds.append(open_fds())
        next_sample += SAMPLE_EVERY
        if next_sample > deadline:
            stop_sampling.set()
    for thread in threads:
        thread.join(IO_TIMEOUT)
    server.stop()
    workers_alive = [thread.name for thread in threads if thread.is_alive()]
    fds_last, rss_last = open_fds(), rss_kib()
    rss.append(rss_last)
    fds.append(fds_last)

    every = max(1, len(rss) // SHOWN_SAMPLES)
    reliability.figure("seconds", round(DURATION))
    reliability.figure("connections", counts.connections)
    reliability.figure("handshakes full", counts.full)
    reliability.figure("handshakes resumed", counts.resumed)
    reliability.figure("key updates requested", counts.requested)
    reliability.figure("kernel rekeys (tx, rx)", list(rekeys.delta()))
    reliability.figure("errors", len(counts.errors))
    reliability.figure("RSS first (KiB)", rss[0])
    reliability.figure("RSS peak (KiB)", max(rss))
    reliability.figure("RSS last (KiB)", rss_last)
    reliability.figure("fd first", fds_first)
    reliability.figure("fd last", fds_last)
    reliability.figure("samples", len(rss))
    reliability.figure("RSS curve step (s)", every * SAMPLE_EVERY)
    reliability.figure("RSS curve (KiB)", rss[::every])
    if len(rss) >= 8:
        early, late = flat(rss)
        reliability.figure("RSS Q2 -> Q4 median growth (KiB)", round(late - early))

    assert not workers_alive, f"still running after the deadline: {workers_alive}"
    assert counts.errors == [], counts.errors[:5]
    assert counts.connections > 0 and counts.resumed > 0 and counts.full > 0
    if kernel_can_rekey() and kernel.probe().ulp_available:
        # Per rekeyed connection: the client's KeyUpdate (client TX, server RX) and the server's
        # answer, sent before its echo (server TX, client RX, read with the echo).
        assert counts.key_updates == counts.requested > 0
        rekeys.check(2 * counts.requested, 2 * counts.requested)
    else:
        rekeys.check(0, 0)  # no kernel rekey here: none counted (user space changed the keys, if any)
    assert fds_last == fds_first, f"fds: {fds_first} at the start, {fds_last} at the end"
    if soak.full:
        early, late = flat(rss)
        allowed = max(FLAT_SLACK_KIB, FLAT_SLACK_SHARE * early)
        assert late - early <= allowed, \
            f"RSS grew {late - early:.0f} KiB (median {early:.0f} -> {late:.0f} KiB), more than {allowed:.0f} KiB"
