"""Fault injection for the reliability suite (issue 19): a TCP relay between a real TLS client and a
real TLS server that breaks the connection toward one end (the victim) at a chosen point, and the
harness that runs one case with ktls_ossl or CPython's ssl as the victim.

Theory of operation. The relay owns the two TCP connections in the middle (victim <-> relay and
relay <-> peer) and forwards whole TLS records, parsed from the 5-byte headers with
ktls_ossl.records, so that it can stop at a record boundary or inside a record. One select() loop
does everything (no threads of its own), which lets the same code run in a thread of the test
process or in a forked child that the test then kills with SIGKILL. Where it stops:

- ``handshake``: the first record the peer sends after the victim has sent its first flight is
  withheld. A client victim has sent its ClientHello and waits for the ServerHello; a server
  victim has sent its whole first flight (the client's answer proves it arrived) and waits for the
  client's Finished. Either way the victim is in the middle of its handshake, waiting to read, and
  nothing it still has to write can race the fault.
- ``after_handoff``: the test arms the relay once both handshakes have completed (before any data
  is sent); the first application-data record in the data direction is forwarded, then the fault.
- ``mid_record`` / ``mid_sendfile``: a number of whole data records, then the first half of the
  next one, then the fault.

Before it acts, the relay waits until the other TCPs have acknowledged everything it forwarded
(SIOCOUTQ 0), so that what the victim can read is in its receive queue before the fault reaches
it: the outcome is then the same every run, and comparable with CPython's. The relay counts the
plaintext bytes of the whole data records it forwarded (ciphertext length less the AEAD overhead),
so the test can hold the victim to "a prefix of whole records, never part of one".

Actions toward the victim: ``rst`` (SO_LINGER {1, 0}, close: the victim's TCP gets a reset; the
relay keeps draining the peer), ``fin`` (shutdown(SHUT_WR) toward the victim, and the relay keeps
reading both ends), ``stall`` (nothing more forwarded or read; the connection stays open) and
``kill`` (the relay is a forked child: at the point it stops, tells the parent, and the parent
SIGKILLs it, so that the kernel closes its sockets as it does for a crashed peer: a FIN where the
relay had read everything, a reset where bytes were left unread).
"""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import ssl
import struct
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field

from ktls_ossl import kernel
from ktls_ossl.keys import TLS_1_2_VERSION, KernelCipher
from ktls_ossl.records import HEADER_SIZE, TLS12_EXPLICIT_NONCE, ContentType, parse_header

from ..conftest import loopback_pair
from ..timing import scaled
from ..tlshelpers import client_context, server_context
from .conftest import open_fds

HANDSHAKE, AFTER_HANDOFF, MID_RECORD, MID_SENDFILE = "handshake", "after_handoff", "mid_record", "mid_sendfile"
POINTS = [HANDSHAKE, AFTER_HANDOFF, MID_RECORD, MID_SENDFILE]
DATA_POINTS = [AFTER_HANDOFF, MID_RECORD, MID_SENDFILE]
RST, FIN, KILL, STALL = "rst", "fin", "kill", "stall"
ACTIONS = [RST, FIN, KILL, STALL]

AEAD_TAG = 16  # every kernel cipher's tag (AES-GCM, AES-CCM, ChaCha20-Poly1305)
RECORD_SIZE = 1000  # plaintext bytes per send() of the numbered data stream
WHOLE_RECORDS = {AFTER_HANDOFF: 1, MID_RECORD: 4, MID_SENDFILE: 2}  # forwarded whole before the cut
RECORDS_SENT = 8  # the numbered stream: more than the relay forwards before any cut
SENDFILE_SIZE = 1 << 20  # more than the victim's and the relay's socket buffers hold together
SMALL_BUFFER = 32 << 10  # SO_SNDBUF / SO_RCVBUF where the victim sends the file (see run_case)

CIPHER = KernelCipher.AES_GCM_128  # every case's: aead_overhead() is AES-GCM's

VICTIM, PEER = "victim", "peer"
_OTHER = {VICTIM: PEER, PEER: VICTIM}


def numbered(size: int) -> bytes:
    """The data stream: numbered RECORD_SIZE-byte blocks, so any misplaced byte shows."""
    blocks = []
    for index in range((size + RECORD_SIZE - 1) // RECORD_SIZE):
        head = b"record %08d " % index
        blocks.append(head + bytes([index % 251]) * (RECORD_SIZE - len(head)))
    return b"".join(blocks)[:size]


def aead_overhead(version: int) -> int:
    """Ciphertext bytes of one AES-GCM record beyond its plaintext: TLS 1.2 an explicit nonce and
    the tag; TLS 1.3 the tag and the inner content type (no padding: neither OpenSSL nor the
    kernel pads)."""
    return TLS12_EXPLICIT_NONCE + AEAD_TAG if version == TLS_1_2_VERSION else AEAD_TAG + 1


@dataclass(frozen=True)
class Plan:
    """Where the relay acts and what it does."""
    point: str
    action: str
    data_from_victim: bool  # the data stream flows victim -> peer (the victim sends the file)
    overhead: int

    @property
    def whole_records(self) -> int:
        return WHOLE_RECORDS.get(self.point, 0)

    @property
    def cut_half(self) -> bool:
        return self.point in (MID_RECORD, MID_SENDFILE)


@dataclass
class Fault:
    """What the relay reported at the fault: when (time.monotonic(), the same clock in every
    process), and the plaintext boundaries of the whole data records it forwarded (0 first)."""
    at: float
    boundaries: list[int]


# --- the relay's loop (a thread of the test, or a forked child) ---------------------------------------

class _RelayLoop:
    def __init__(self, victim: socket.socket, peer: socket.socket, plan: Plan, control: int, notify: int):
        self.plan = plan
        self.ends = {VICTIM: victim, PEER: peer}
        self.open = {VICTIM: victim, PEER: peer}  # ends still read from
        self.pending = {VICTIM: bytearray(), PEER: bytearray()}  # received, not yet forwarded
        self.control = control
        self.notify = notify
        self.armed = False
        self.victim_spoke = False
        self.data_records = 0
        self.boundaries = [0]
        self.state = "forwarding"  # then "draining" (rst, fin), "stalled" (stall, kill) or "done"

    def run(self) -> None:
        try:
            while self.state != "done":
                watched = [self.control]
                if self.state in ("forwarding", "draining"):
                    watched += list(self.open.values())
                ready, _, _ = select.select(watched, [], [])
                if self.control in ready:  # first: an arm written before data arrives acts before it
                    self._command(os.read(self.control, 16))
                for side, sock in list(self.open.items()):
                    if sock in ready and self.state in ("forwarding", "draining"):
                        self._receive(side, sock)
        finally:
            for sock in self.ends.values():
                sock.close()

    def _command(self, text: bytes) -> None:
        if b"a" in text:
            self.armed = True
        if b"q" in text or not text:
            self.state = "done"

    def _receive(self, side: str, sock: socket.socket) -> None:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            del self.open[side]
            if self.state == "forwarding":
                self._shutdown_write(_OTHER[side])  # pass the end on, as a transparent relay would
            return
        if self.state != "forwarding":
            return  # draining after the fault: read and dropped
        self.pending[side] += data
        self._forward(side)

    def _shutdown_write(self, side: str) -> None:
        try:
            self.ends[side].shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _send(self, side: str, data: bytes) -> None:
        try:
            self.ends[side].sendall(data)
        except OSError:
            self.open.pop(side, None)

    def _forward(self, side: str) -> None:
        buffer = self.pending[side]
        while self.state == "forwarding" and len(buffer) >= HEADER_SIZE:
            header = parse_header(bytes(buffer[:HEADER_SIZE]))
            size = HEADER_SIZE + header.length
            if len(buffer) < size:
                return
            record = bytes(buffer[:size])
            del buffer[:size]
            if self._withheld(side):
                self._fault()
                return
            is_data = (self.armed and header.content_type == ContentType.APPLICATION_DATA
                       and (side == VICTIM) == self.plan.data_from_victim)
            if is_data and self.plan.cut_half and self.data_records == self.plan.whole_records:
                self._send(_OTHER[side], record[: size // 2])
                self._fault()
                return
            self._send(_OTHER[side], record)
            if side == VICTIM:
                self.victim_spoke = True
            if is_data:
                self.data_records += 1
                self.boundaries.append(self.boundaries[-1] + header.length - self.plan.overhead)
                if not self.plan.cut_half and self.data_records == self.plan.whole_records:
                    self._fault()

    def _withheld(self, side: str) -> bool:
        """At ``handshake``: the peer's first record after the victim's first flight."""
        return self.plan.point == HANDSHAKE and side == PEER and self.victim_spoke

    def _wait_acknowledged(self) -> None:
        """Until both TCPs have acknowledged all the relay sent them: an acknowledgement wakes
        nothing one could wait on, so this polls (bounded)."""
        deadline = time.monotonic() + scaled(10)
        for sock in self.ends.values():
            while time.monotonic() < deadline:
                try:
                    if kernel.unacknowledged_bytes(sock) <= 0:
                        break
                except OSError:
                    break
                select.select([], [], [], 0.001)

    def _fault(self) -> None:
        self._wait_acknowledged()
        action = self.plan.action
        victim = self.ends[VICTIM]
        if action == RST:
            victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.close()
            self.open.pop(VICTIM, None)
            self.state = "draining"
        elif action == FIN:
            self._shutdown_write(VICTIM)
            self.state = "draining"
        else:  # stall, kill: nothing more is read or forwarded; kill waits here for SIGKILL
            self.state = "stalled"
        self._tell({"event": "fault", "at": time.monotonic(), "boundaries": self.boundaries})

    def _tell(self, message: dict) -> None:
        os.write(self.notify, json.dumps(message).encode() + b"\n")


# --- the relay as the test sees it --------------------------------------------------------------------

class FaultRelay:
    """Owns the relay's two sockets (victim-facing, peer-facing) from start() on."""

    def __init__(self, victim_end: socket.socket, peer_end: socket.socket, plan: Plan):
        self.plan = plan
        self._ends = (victim_end, peer_end)
        self._control_r, self._control_w = os.pipe()
        self._notify_r, self._notify_w = os.pipe()
        self._loop = _RelayLoop(victim_end, peer_end, plan, self._control_r, self._notify_w)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.pid: int | None = None
        self._received = b""

    def start(self) -> None:
        if self.plan.action == KILL:
            self._fork()
        else:
            self._thread = threading.Thread(target=self._run_in_thread, name="fault-relay", daemon=True)
            self._thread.start()

    def _run_in_thread(self) -> None:
        try:
            self._loop.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
            self._error = exc

    def _fork(self) -> None:
        keep = {sock.fileno() for sock in self._ends} | {self._control_r, self._notify_w}
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a threaded process; the child runs only this
            # select() loop over its own fds (no lock another thread could hold) and _exit()s.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child
            status = 0
            try:
                _close_all_but(keep)
                self._loop.run()
            except BaseException:  # noqa: BLE001 - a child must never return into pytest
                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        self.pid = pid
        # Only the child holds the relay's sockets now: when it dies the kernel closes them.
        for sock in self._ends:
            sock.close()
        os.close(self._control_r)
        os.close(self._notify_w)
        self._control_r = self._notify_w = -1

    def arm(self) -> None:
        """Both handshakes have completed: application data from now on."""
        os.write(self._control_w, b"a")

    def wait_fault(self, timeout: float) -> Fault:
        """The relay's fault report; for ``kill``, the child is then SIGKILLed and reaped, and the
        fault is that moment (its sockets are closed by then)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._received:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._notify_r], [], [], max(0.0, remaining))
            if not ready:
                raise AssertionError(f"the relay never reached its fault point ({self.plan}) in {timeout:.0f} s")
            chunk = os.read(self._notify_r, 4096)
            if not chunk:
                raise AssertionError(f"the relay ended before its fault point ({self.plan}): {self._error!r}")
            self._received += chunk
        line, self._received = self._received.split(b"\n", 1)
        report = json.loads(line)
        fault = Fault(report["at"], report["boundaries"])
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
            fault.at = time.monotonic()
        return fault

    def finish(self, timeout: float) -> None:
        """Stop the relay (its sockets closed) and release everything it held."""
        if self.pid is not None:  # never reached its point: kill it all the same
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
        if self._thread is not None:
            os.write(self._control_w, b"q")
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the relay thread did not stop"
        for fd in (self._control_r, self._control_w, self._notify_r, self._notify_w):
            if fd >= 0:
                os.close(fd)
        self._control_r = self._control_w = self._notify_r = self._notify_w = -1
        for sock in self._ends:
            sock.close()
        if self._error is not None:
            raise self._error


def _close_all_but(keep: set[int]) -> None:
    """In the forked child: every inherited fd but stdio and ``keep`` closed, so that no other
    connection of the test process stays open (un-FINned) because the child holds a copy."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


# --- one case, one victim -------------------------------------------------------------------------------

def describe(exc: BaseException) -> tuple:
    """What is compared with CPython's: the type, and for SSL errors the library and reason, for
    other OSErrors the errno's name."""
    if isinstance(exc, ssl.SSLError):
        return (type(exc).__name__, exc.library, exc.reason)
    if isinstance(exc, OSError) and exc.errno is not None:
        return (type(exc).__name__, errno.errorcode.get(exc.errno, exc.errno))
    return (type(exc).__name__,)


def outcome_text(steps: list) -> str:
    return "; ".join(f"{step} {'/'.join(str(part) for part in result if part)}" if isinstance(result, tuple)
                     else f"{step} {result}" for step, result in steps)


@dataclass
class Outcome:
    """What the victim saw in one run."""
    library: str
    steps: list = field(default_factory=list)  # (operation, describe(exception) or "EOF"/"completed")
    received: bytearray = field(default_factory=bytearray)
    fault: Fault | None = None
    ended: float | None = None  # time.monotonic() when the victim's last operation ended
    cpu_at_fault: float | None = None  # the victim thread's CPU clock at the fault
    cpu_ended: float | None = None
    last_wait: tuple[float, float] | None = None  # (wall, CPU) of the recv that ended the reads
    ktls: object = None  # sock.ktls after the handshake (ours)
    fds_leaked: int = 0

    @property
    def fault_to_end(self) -> float:
        return self.ended - self.fault.at

    @property
    def stall_cpu_share(self) -> float:
        return (self.cpu_ended - self.cpu_at_fault) / max(self.fault_to_end, 1e-6)


@dataclass(frozen=True)
class Case:
    action: str
    point: str
    role: str  # the victim's: "client" (the fault on the server's side) or "server"
    version: int
    suppress_ragged_eofs: bool = True

    @property
    def victim_sends(self) -> bool:
        """mid_sendfile with a server victim: the victim sends the file; otherwise it reads."""
        return self.point == MID_SENDFILE and self.role == "server"


def _contexts(case: Case, ours: bool, server_cert, pki):
    settings = dict(version=case.version, cipher=CIPHER)
    server = server_context(server_cert, ours=ours if case.role == "server" else False, **settings)
    server.num_tickets = 0  # nothing flows after the handshake but the numbered stream
    client = client_context(pki.ca_path, ours=ours if case.role == "client" else False, **settings)
    return (client, server) if case.role == "client" else (server, client)


def run_case(case: Case, library: str, server_cert, pki, file_path: str, *, stall: float, long: float,
             count_fds: bool = True) -> Outcome:
    """One run of ``case`` with ``library`` (ktls_ossl or cpython) as the victim and CPython's ssl
    as the peer; everything closed on return, and (``count_fds``: nothing else runs meanwhile) the
    process's fd count compared with the one before."""
    outcome = Outcome(library)
    fds_before = open_fds()
    victim_ctx, peer_ctx = _contexts(case, library == "ktls_ossl", server_cert, pki)
    victim_raw, relay_victim = loopback_pair()
    relay_peer, peer_raw = loopback_pair()
    if case.victim_sends:
        # Small buffers, so that the file cannot fit between the victim and the relay's cut:
        # the victim is still inside sendfile() when the fault reaches it.
        victim_raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        relay_victim.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    plan = Plan(case.point, case.action, case.victim_sends, aead_overhead(case.version))
    relay = FaultRelay(relay_victim, relay_peer, plan)
    victim_ready, peer_ready, go, fault_seen = (threading.Event() for _ in range(4))
    stalls = case.action == STALL
    data = numbered(RECORD_SIZE * RECORDS_SENT)
    sendfile = open(file_path, "rb")  # noqa: SIM115 - closed below, after both threads

    def wrap(ctx, raw, role):
        if role == "server":
            return ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=case.suppress_ragged_eofs)
        return ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=case.suppress_ragged_eofs)

    def victim_main():
        sock = None
        try:
            victim_raw.settimeout(stall if stalls and case.point == HANDSHAKE else long)
            try:
                sock = wrap(victim_ctx, victim_raw, case.role)
            except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
                outcome.steps.append(("handshake", describe(exc)))
                return
            outcome.ktls = getattr(sock, "ktls", None)
            victim_ready.set()
            if case.victim_sends:
                sock.settimeout(stall if stalls else long)
                go.wait(long)
                try:
                    sock.sendfile(sendfile)
                    outcome.steps.append(("sendfile", "completed"))
                except Exception as exc:  # noqa: BLE001
                    outcome.steps.append(("sendfile", describe(exc)))
                    return
            elif stalls:
                # The victim starts reading once the relay has stalled: the forwarded records are
                # then all queued, and its one long wait is the stall (the timeout under test).
                fault_seen.wait(long)
                sock.settimeout(stall)
            _read_until_the_end(sock, outcome)
        finally:
            outcome.ended = time.monotonic()
            outcome.cpu_ended = time.thread_time()
            if sock is not None:
                sock.close()
            victim_raw.close()

    def peer_main():
        sock = None
        try:
            peer_raw.settimeout(long)
            sock = wrap(peer_ctx, peer_raw, "server" if case.role == "client" else "client")
            peer_ready.set()
            go.wait(long)
            if case.point == MID_SENDFILE and not case.victim_sends:
                sock.sendfile(sendfile)
            elif case.point in DATA_POINTS and not case.victim_sends:
                for index in range(RECORDS_SENT):
                    sock.sendall(data[index * RECORD_SIZE:(index + 1) * RECORD_SIZE])
            while sock.recv(1 << 16):  # until the relay ends the connection
                pass
        except (OSError, ValueError):
            pass  # the peer's end is not under test; it only has to end
        finally:
            if sock is not None:
                sock.close()
            peer_raw.close()

    peer = threading.Thread(target=peer_main, name="fault-peer", daemon=True)
    victim = threading.Thread(target=victim_main, name="fault-victim", daemon=True)
    relay.start()
    try:
        peer.start()
        victim.start()
        if case.point != HANDSHAKE:
            for name, ready in (("victim", victim_ready), ("peer", peer_ready)):
                assert ready.wait(long), f"the {name}'s handshake did not complete: {outcome.steps}"
            relay.arm()
            go.set()
        try:
            outcome.fault = relay.wait_fault(long)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {library} as the {case.role} had: {outcome.steps}") from None
        try:
            outcome.cpu_at_fault = time.clock_gettime(time.pthread_getcpuclockid(victim.ident))
        except (OSError, ValueError):
            outcome.cpu_at_fault = None  # the victim had ended already (not a stall)
        fault_seen.set()
        victim.join((stall if stalls else long) + scaled(5))
        hung = victim.is_alive()
    finally:
        relay.finish(long)
        go.set()
        fault_seen.set()
        peer.join(long)
        victim.join(long)
        sendfile.close()
    assert not hung, f"{library} as the {case.role} was still blocked after the fault ({case})"
    assert not peer.is_alive(), "the peer did not end after the relay closed"
    if count_fds:
        outcome.fds_leaked = open_fds() - fds_before
    return outcome


def _read_until_the_end(sock, outcome: Outcome) -> None:
    while True:
        wall, cpu = time.monotonic(), time.thread_time()
        try:
            chunk = sock.recv(1 << 16)
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            outcome.last_wait = (time.monotonic() - wall, time.thread_time() - cpu)
            outcome.steps.append(("recv", describe(exc)))
            return
        if not chunk:
            outcome.steps.append(("recv", "EOF"))
            return
        outcome.received += chunk

