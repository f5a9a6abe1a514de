"""Helpers of the network cases (tests/soak/test_network.py): netem on lo, the kernel's TCP
counters, a relay that re-segments a TLS stream, a full-duplex bulk exchange with KeyUpdates, and a
connection burst against a small listen backlog.
"""
from __future__ import annotations

import collections
import hashlib
import json
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field

from ktls_ossl.bench import BURST_OUTCOMES, BodyMismatch, _burst_outcome, _reset_peak_rss, _vm_status_kib, burst_body

from ..timing import scaled

MiB = 1 << 20
CHUNK = 64 << 10  # what the bulk exchange hands to sendall / asks recv_into for at a time
HEADER = 5  # bytes of a TLS record header: type, version (2), length (2)


# --- netem on lo -------------------------------------------------------------------------------------

class NetemUnavailable(Exception):
    """The qdisc could not be set up; the message is what tc said."""


def _run(program: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``program`` (tc, ip) with ``args``; never raises for the program's own failure (the
    caller reads returncode and stderr)."""
    path = shutil.which(program) or f"/usr/sbin/{program}"
    try:
        return subprocess.run([path, *args], capture_output=True, text=True, timeout=scaled(10))
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess([path, *args], 127, "", str(exc))


def _said(done: subprocess.CompletedProcess) -> str:
    return (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"


class Netem:
    """A netem root qdisc on lo, and lo's MTU and GSO size for as long as it is there.

    ``add()`` raises NetemUnavailable with what tc (or ip) said when the kernel or the sandbox
    refuses; ``remove()`` puts lo back as it was (noqueue, its own MTU and GSO size). A qdisc sees
    lo's packets as the stack hands them over: with lo's 64 KiB MTU and GSO, a MiB is a few dozen
    packets, and 1 % of them is nothing; an Ethernet MTU without GSO aggregation makes every
    1448-byte segment a packet that netem may drop or hold back.
    """

    DEVICE = "lo"

    def __init__(self, *parameters: str, mtu: int | None = None, gso_max_size: int | None = None):
        self.parameters = parameters
        self.link = {name: value for name, value in (("mtu", mtu), ("gso_max_size", gso_max_size))
                     if value is not None}
        self.added = False
        self.saved_link: dict[str, int] = {}

    @property
    def command(self) -> str:
        return " ".join(["tc", "qdisc", "add", "dev", self.DEVICE, "root", "netem", *self.parameters])

    def add(self) -> None:
        done = _run("tc", "qdisc", "add", "dev", self.DEVICE, "root", "netem", *self.parameters)
        if done.returncode != 0:
            raise NetemUnavailable(f"`{self.command}` failed: {_said(done)}")
        self.added = True
        if not self.link:
            return
        try:
            shown = _run("ip", "-d", "-j", "link", "show", "dev", self.DEVICE)
            if shown.returncode != 0:
                raise NetemUnavailable(f"`ip -d -j link show dev {self.DEVICE}` failed: {_said(shown)}")
            current = json.loads(shown.stdout)[0]
            saved = {name: int(current[name]) for name in self.link}
            settings = [str(word) for name, value in self.link.items() for word in (name, value)]
            done = _run("ip", "link", "set", "dev", self.DEVICE, *settings)
            if done.returncode != 0:
                raise NetemUnavailable(f"`ip link set dev {self.DEVICE} {' '.join(settings)}` failed: {_said(done)}")
            self.saved_link = saved
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Restore lo, then remove the qdisc; raises where either fails (the rest of the run would
        go through a changed lo), after trying both."""
        problems = []
        if self.saved_link:
            settings = [str(word) for name, value in self.saved_link.items() for word in (name, value)]
            done = _run("ip", "link", "set", "dev", self.DEVICE, *settings)
            if done.returncode != 0:
                problems.append(f"could not restore {self.DEVICE} ({' '.join(settings)}): {_said(done)}")
            else:
                self.saved_link = {}
        if self.added:
            done = _run("tc", "qdisc", "del", "dev", self.DEVICE, "root")
            if done.returncode != 0:
                problems.append(f"could not remove netem from {self.DEVICE}: {_said(done)}")
            else:
                self.added = False
        if problems:
            raise RuntimeError("; ".join(problems))

    def stats(self) -> dict[str, int]:
        """The netem qdisc's counters (``tc -s qdisc show``): sent packets and dropped packets."""
        done = _run("tc", "-s", "qdisc", "show", "dev", self.DEVICE)
        if done.returncode != 0:
            raise RuntimeError(f"tc -s qdisc show dev {self.DEVICE}: {_said(done)}")
        return parse_netem_stats(done.stdout)


def parse_netem_stats(text: str) -> dict[str, int]:
    """{"sent": packets, "dropped": packets} of the netem qdisc in ``tc -s qdisc show`` output:
        qdisc netem 8001: root refcnt 2 limit 1000 delay 1ms loss 1% ...
         Sent 123 bytes 4 pkt (dropped 1, overlimits 0 requeues 0)"""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("qdisc netem"):
            words = " ".join(lines[index + 1:index + 2]).replace(",", " ").replace("(", " ").split()
            sent = words.index("Sent")
            return {"sent": int(words[sent + 3]), "dropped": int(words[words.index("dropped") + 1])}
    raise RuntimeError(f"no netem qdisc in:\n{text}")


# --- the kernel's TCP counters (this network namespace, all sockets) ---------------------------------

def _proc_tables(path: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp and /proc/net/netstat: pairs of lines "Prefix: names..." / "Prefix: values..."."""
    with open(path, encoding="ascii") as table:
        lines = table.read().splitlines()
    tables = {}
    for header, values in zip(lines[::2], lines[1::2]):
        prefix = header.split(":", 1)[0]
        tables[prefix] = {name: int(value) for name, value in zip(header.split()[1:], values.split()[1:])}
    return tables


TCP_COUNTERS = (
    ("Tcp", "RetransSegs"),  # segments retransmitted (loss, and reordering taken for loss)
    ("Tcp", "OutSegs"),
    ("TcpExt", "TCPOFOQueue"),  # segments that arrived out of order and were queued
    ("TcpExt", "TCPSACKReorder"),  # reordering the sender saw through SACK
    ("TcpExt", "TCPTSReorder"),
    ("TcpExt", "TCPLostRetransmit"),
    ("TcpExt", "TCPLossProbes"),
    ("TcpExt", "TCPSlowStartRetrans"),
    ("TcpExt", "TCPFastRetrans"),
)


def tcp_counters() -> dict[str, int]:
    tables = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        tables.update(_proc_tables(path))
    return {name: tables.get(prefix, {}).get(name, 0) for prefix, name in TCP_COUNTERS}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


# --- the re-segmenting relay ---------------------------------------------------------------------------

class RecordTracker:
    """Where the TLS records of one direction begin, learnt from their headers as the bytes pass:
    every record start is known once the previous record's header has been seen (the first is at
    0), so any offset already seen can be told apart as a record boundary, a cut inside a 5-byte
    header, or a cut inside a record body."""

    def __init__(self):
        self.seen = 0  # bytes fed so far
        self.starts = collections.deque([0])  # known record starts, ascending; the last one's header may be partial
        self.partial = b""  # what arrived of the last start's header so far

    def feed(self, data: bytes) -> None:
        begin = self.seen
        self.seen += len(data)
        while True:
            start = self.starts[-1]
            index = start - begin + len(self.partial)  # where in ``data`` the missing header bytes begin
            if index >= len(data):
                return
            header = self.partial + data[index:index + HEADER - len(self.partial)]
            if len(header) < HEADER:
                self.partial = header
                return
            self.partial = b""
            self.starts.append(start + HEADER + int.from_bytes(header[3:5], "big"))

    def forget_before(self, offset: int) -> None:
        """Drop starts that no later offset ≥ ``offset`` can belong to."""
        while len(self.starts) > 1 and self.starts[1] <= offset:
            self.starts.popleft()

    def where(self, offset: int) -> str:
        """"boundary", "header" or "body": where a cut at ``offset`` (≥ the last forget_before) falls."""
        start = max(s for s in self.starts if s <= offset)
        if offset == start:
            return "boundary"
        return "header" if offset - start < HEADER else "body"


@dataclass
class DirectionStats:
    segments: int = 0
    bytes: int = 0
    cuts: dict = field(default_factory=lambda: {"boundary": 0, "header": 0, "body": 0})


class ResegmentingRelay:
    """A TCP relay for one connection: the client connects to ``address``, the relay connects to
    ``target``, and each direction is forwarded in random pieces (seeded): a cut inside the next
    record header (1 to 4 bytes in), a cut exactly at a record boundary, a few bytes, or up to
    ``max_piece`` bytes. TCP_NODELAY on both of its sockets sends every piece as its own segment, so
    the receiving end's reads see headers and bodies split every way a network can split them."""

    def __init__(self, target, seed: int, max_piece: int = 4096, timeout: float | None = None):
        self.target = target
        self.seed = seed
        self.max_piece = max_piece
        self.timeout = scaled(30) if timeout is None else timeout
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(self.timeout)
        self.address = self.listener.getsockname()
        self.stats = {"client->server": DirectionStats(), "server->client": DirectionStats()}
        self.errors: list[BaseException] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        try:
            downstream, _ = self.listener.accept()
            upstream = socket.create_connection(self.target, timeout=self.timeout)
        except BaseException as exc:
            self.errors.append(exc)
            return
        for sock in (downstream, upstream):
            sock.settimeout(self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets.append(sock)
        for name, source, sink, seed in (("client->server", downstream, upstream, self.seed),
                                         ("server->client", upstream, downstream, self.seed + 1)):
            thread = threading.Thread(target=self._pump, args=(source, sink, random.Random(seed), self.stats[name]),
                                      name=f"relay {name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _cut(self, rng: random.Random, tracker: RecordTracker, position: int, end: int) -> int:
        """Where the piece that starts at ``position`` ends (≤ ``end``, the bytes in hand)."""
        choice = rng.random()
        ahead = [start for start in tracker.starts if start + HEADER - 1 > position and start < end]
        if choice < 0.3 and ahead:  # inside the next header (1 to 4 bytes of it before the cut)
            cut = rng.randint(max(ahead[0], position) + 1, ahead[0] + HEADER - 1)
        elif choice < 0.45 and ahead and ahead[0] > position:  # exactly at the next record boundary
            cut = ahead[0]
        elif choice < 0.6:
            cut = position + rng.randint(1, 8)
        else:
            cut = position + rng.randint(1, self.max_piece)
        return min(cut, end)

    def _pump(self, source: socket.socket, sink: socket.socket, rng: random.Random, stats: DirectionStats) -> None:
        tracker = RecordTracker()
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                base = tracker.seen
                tracker.feed(data)
                position, end = base, tracker.seen
                while position < end:
                    cut = self._cut(rng, tracker, position, end)
                    sink.sendall(data[position - base:cut - base])
                    stats.segments += 1
                    stats.bytes += cut - position
                    stats.cuts[tracker.where(cut)] += 1
                    position = cut
                    tracker.forget_before(position)
        except BaseException as exc:
            self.errors.append(exc)
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self, check: bool = True) -> None:
        """Wait for both directions to end (each ends at its source's EOF), then close. With
        ``check``, raises what went wrong in the relay."""
        self._acceptor.join(self.timeout)
        for thread in self._threads:
            thread.join(self.timeout)
        hung = [thread.name for thread in self._threads if thread.is_alive()]
        for sock in [*self._sockets, self.listener]:
            sock.close()
        if not check:
            return
        if hung:
            raise AssertionError(f"relay threads still running: {hung}")
        if self.errors:
            raise self.errors[0]


# --- the bulk exchange ----------------------------------------------------------------------------------

def _send_stream(sock, seed: int, size: int, key_update_every: int | None) -> tuple[str, int]:
    """Send ``size`` seeded random bytes; KeyUpdate(request_peer=True) every ``key_update_every``
    bytes (never after the last). Returns (SHA-256 of what was sent, key updates sent)."""
    # Random bytes cost more CPU than the TLS under them: a seeded random block, numbered per chunk
    # (so that a chunk delivered twice or lost changes the digest), keeps the sender at the
    # socket's pace, where a reader and a writer on one connection meet.
    base = random.Random(seed).randbytes(CHUNK)
    digest = hashlib.sha256()
    sent = since = updates = 0
    while sent < size:
        chunk = ((sent // CHUNK).to_bytes(8, "big") + base[8:])[:size - sent]
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
        since += len(chunk)
        if key_update_every and since >= key_update_every and sent < size:
            sock.key_update(request_peer=True)
            updates += 1
            since = 0
    return digest.hexdigest(), updates


def _receive_stream(sock, size: int) -> str:
    """Read exactly ``size`` bytes; the SHA-256 of what arrived."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    received = 0
    while received < size:
        count = sock.recv_into(view, min(CHUNK, size - received))
        if not count:
            raise AssertionError(f"EOF after {received} of {size} bytes")
        digest.update(view[:count])
        received += count
    return digest.hexdigest()


def _recv_exactly(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


@dataclass
class BulkResult:
    size: int  # bytes each way
    client_requested: int  # KeyUpdates the client sent with request_peer=True
    server_requested: int


def bulk_exchange(client, server, size: int, key_update_every: int | None, join_timeout: float, *,
                  duplex: bool = False) -> BulkResult:
    """``size`` seeded random bytes each way, each sender sending KeyUpdate(request_peer=True) every
    ``key_update_every`` bytes when it is given; each receiver's SHA-256 must equal its sender's.
    One direction after the other, or with ``duplex`` both at once (a sender and a receiver thread
    on each socket, so that KeyUpdates, and the answers they request, cross data in flight both
    ways). Ends with a round trip ("done" / "fin!") that comes after every KeyUpdate either end sent,
    so that both have taken in all of them."""
    from ..tlshelpers import in_thread

    directions = ((client, server, 1, "client", "server"), (server, client, 2, "server", "client"))
    updates = {}
    if duplex:
        receivers = [in_thread(_receive_stream, receiver, size) for _, receiver, _, _, _ in directions]
        senders = [in_thread(_send_stream, sender, seed, size, key_update_every)
                   for sender, _, seed, _, _ in directions]
        outcomes = [(join(join_timeout), receive(join_timeout)) for join, receive in zip(senders, receivers)]
    else:
        outcomes = []
        for sender, receiver, seed, _, _ in directions:
            receive = in_thread(_receive_stream, receiver, size)
            outcomes.append((_send_stream(sender, seed, size, key_update_every), receive(join_timeout)))
    for ((sent, count), got), (_, _, _, source, sink) in zip(outcomes, directions):
        assert got == sent, f"what the {sink} received differs from what the {source} sent (SHA-256)"
        updates[source] = count
    client.sendall(b"done")
    assert _recv_exactly(server, 4) == b"done"
    server.sendall(b"fin!")
    assert _recv_exactly(client, 4) == b"fin!"
    return BulkResult(size, updates["client"], updates["server"])


def handshake(client_ctx, server_ctx, raw_client, raw_server, join_timeout: float):
    """Both handshakes at once (the server's in a thread); (client, server) TLS sockets."""
    from ..tlshelpers import in_thread

    join = in_thread(server_ctx.wrap_socket, raw_server, True)
    try:
        client = client_ctx.wrap_socket(raw_client, server_hostname="localhost")
    except BaseException:
        raw_client.close()
        raise
    return client, join(join_timeout)


# --- the connection burst -------------------------------------------------------------------------------

REQUEST = b"GET /burst\r\n\r\n"
BURST_BACKLOG = 5  # socketserver's request_queue_size: what a small server listens with


def _outcome(exc: BaseException) -> str:
    """The bench's classification (reset, refused, timeout, bad_body, other), with TLS errors other
    than an EOF (which the bench counts as a reset) counted apart."""
    outcome = _burst_outcome(exc)
    if outcome == "other" and isinstance(exc, ssl.SSLError):
        return "tls_error"
    return outcome


OUTCOMES = (*BURST_OUTCOMES, "tls_error")


@dataclass
class BurstResult:
    clients: int
    counts: dict
    errors: dict  # client exception type -> count
    server_errors: dict  # handler exception type -> count
    served: int
    wall: float
    server_status: object  # the first served connection's ``ktls`` (None for CPython's ssl)
    rss_peak_kib: int  # growth of this process's RSS (clients and server) from after the warm-up
    rss_after_kib: int  # to the burst's peak (VmHWM, where it can be reset) and to its end

    @property
    def failures(self) -> int:
        return self.clients - self.counts["ok"]


def _count(table: dict, exc: BaseException) -> None:
    name = type(exc).__name__
    table[name] = table.get(name, 0) + 1


def run_burst(server_ctx, client_ctx, clients: int, io_timeout: float) -> BurstResult:
    """``clients`` threads, released at once by a barrier, each: connect, handshake, send REQUEST,
    read the 1 KiB answer, check its SHA-256, close. The server listens with backlog 5, accepts in
    one thread and runs each connection's handshake and answer in a thread of its own."""
    body = burst_body()
    digest = hashlib.sha256(body).digest()
    listener = socket.create_server(("127.0.0.1", 0), backlog=BURST_BACKLOG)
    address = listener.getsockname()
    lock = threading.Lock()
    server_errors: dict = {}
    served = [0]
    statuses: list = []
    handlers: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:
        try:
            conn.settimeout(io_timeout)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                assert _recv_exactly(tls, len(REQUEST)) == REQUEST
                tls.sendall(body)
                status = getattr(tls, "ktls", None)
            with lock:
                served[0] += 1
                statuses.append(status)
        except BaseException as exc:
            with lock:
                _count(server_errors, exc)
        finally:
            conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shutdown() below: the burst is over
                return
            thread = threading.Thread(target=handle, args=(conn,), name="burst-handler", daemon=True)
            with lock:
                handlers.append(thread)
            thread.start()

    def get() -> None:
        with socket.create_connection(address, timeout=io_timeout) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(REQUEST)
                answer = _recv_exactly(tls, len(body))
        if hashlib.sha256(answer).digest() != digest:
            raise BodyMismatch("the answer's SHA-256 is not the known body's")

    acceptor = threading.Thread(target=accept, name="burst-accept", daemon=True)
    acceptor.start()
    try:
        get()  # warm-up: each library sets up what it sets up on first use before the burst
        hwm_resets = _reset_peak_rss()
        rss_before = _vm_status_kib("VmRSS")
        barrier = threading.Barrier(clients + 1)
        outcomes: list = [None] * clients
        errors: dict = {}

        def one(index: int) -> None:
            barrier.wait(io_timeout)
            try:
                get()
                outcomes[index] = "ok"
            except Exception as exc:
                outcomes[index] = _outcome(exc)
                with lock:
                    _count(errors, exc)

        threads = [threading.Thread(target=one, args=(index,), name=f"burst-client-{index}", daemon=True)
                   for index in range(clients)]
        for thread in threads:
            thread.start()
        barrier.wait(io_timeout)
        started = time.monotonic()
        # Every client is bounded by its timeouts (connect, each read and write, both handshakes'
        # steps); one still running well past them is a hang.
        deadline = started + 4 * io_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        wall = time.monotonic() - started
        hung = sum(thread.is_alive() for thread in threads)
        assert not hung, f"{hung} of {clients} burst clients still running after {wall:.0f} s"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        acceptor.join(io_timeout)
        listener.close()
    assert not acceptor.is_alive(), "the accept thread did not end when its listener was shut down"
    with lock:
        running = list(handlers)
    for thread in running:
        thread.join(io_timeout)
    rss_after = _vm_status_kib("VmRSS")
    rss_peak = _vm_status_kib("VmHWM") if hwm_resets else rss_after
    counts = {outcome: outcomes.count(outcome) for outcome in OUTCOMES}
    assert sum(counts.values()) == clients, f"unclassified outcomes: {outcomes}"
    with lock:
        return BurstResult(clients, counts, errors, dict(server_errors), served[0] - 1, wall,
                           statuses[0] if statuses else None, rss_peak - rss_before, rss_after - rss_before)
