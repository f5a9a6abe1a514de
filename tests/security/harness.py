"""Runs one hostile-peer case against ktls_ossl and measures what happened, from the kernel's side
where it matters (receive keys, records the kernel decrypted) rather than from the library's flags.
"""
from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from ktls_ossl import kernel
from ktls_ossl.errors import KernelTLSError
from ktls_ossl.handshake import Policy
from ktls_ossl.kernel import Direction
from ktls_ossl.keys import TLS_1_3_VERSION, KernelCipher, TrafficKeys

from ..conftest import REKEY_COUNTERS, loopback_pair
from ..hostile.peer import Observed, PeerError, hostile_endpoint
from ..timing import scaled
from ..tlshelpers import client_context, server_context
from .cases import FORGED, READY, Case, Control

# Every timeout here is written for an idle development machine and multiplied by the machine's time
# scale (tests/timing.py: about 10 under User-Mode Linux, more on a loaded machine), so that a slow run
# stays a slow run instead of becoming a timeout, and a different outcome than docs/SECURITY.md's.
IO_TIMEOUT = scaled(5.0)  # our socket timeout: bounds every case that does not stall on purpose
# Our socket timeout where the peer stalls on purpose: it must fire, so it is kept short; but it must
# exceed the peer's longest honest pause before the stall (it times every recv, not the case), or a
# slow machine would time out before, say, the peer's ChangeCipherSpec arrives.
STALL_TIMEOUT = max(0.5, scaled(0.25))
STALL_SLACK = scaled(3.0)  # how long after STALL_TIMEOUT a stalled case may take to end
PEER_TIMEOUT = scaled(10.0)  # the hostile peer's socket timeout (it outlasts ours)
JOIN_TIMEOUT = PEER_TIMEOUT + scaled(5.0)  # for the peer's thread, which drains for PEER_TIMEOUT
VERSION_LABEL = {0x0303: "TLS 1.2", TLS_1_3_VERSION: "TLS 1.3"}


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def kernel_rx_key(sock) -> TrafficKeys | None:
    """What the kernel holds as this socket's receive key (None: no key), asked of the kernel."""
    try:
        return kernel.read_crypto_info(sock, Direction.RX)
    except KernelTLSError:
        return None


def read_fd_raw(sock) -> list[tuple[int, bytes]]:
    """Everything queued on the fd, read the way any holder of the fd could, bypassing the library:
    (record type, bytes) from the kernel; type 0 means raw TCP bytes (no receive key)."""
    found = []
    buffer = bytearray(70000)
    for _ in range(16):
        try:
            record = kernel.recv_record_into(sock.fileno(), buffer, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        except OSError as exc:
            found.append((-1, f"{type(exc).__name__}: {exc}".encode()))
            break
        if record.length == 0 and record.content_type == 0:
            break
        found.append((record.content_type, bytes(buffer[: record.length])))
    return found


@dataclass
class Measurement:
    case: Case
    our_role: str
    version: int
    policy: Policy
    error: BaseException | None = None
    failed_in: str | None = None  # "handshake" or "read"
    second: object = None  # what a further recv() gave after the failure (exception or bytes)
    delivered: bytes = b""
    orderly_eof: bool = False
    rx_key: TrafficKeys | None = None  # the kernel's receive key right after the failure / EOF
    fd_records: list = field(default_factory=list)  # read_fd_raw right after a handshake failure
    events: list = field(default_factory=list)
    status: object = None
    observed: Observed | None = None
    peer_error: BaseException | None = None
    seconds: float = 0.0
    leaked_fds: set = field(default_factory=set)
    rx_installs: int = 0  # TlsRxSw delta
    tx_rekeys: int = 0  # TlsTxRekeyOk delta (the peer is not kTLS: these are ours)
    rx_rekeys: int = 0  # TlsRxRekeyOk delta
    closed: bool = False
    cipher: KernelCipher = KernelCipher.AES_GCM_128
    extra: dict = field(default_factory=dict)  # what an ``ours`` step of run_case noted

    @property
    def exposed_plaintext(self) -> bytes:
        """Plaintext the kernel decrypted for anyone reading the fd (typed records)."""
        return b"".join(data for kind, data in self.fd_records if kind > 0)


def our_context(our_role: str, cert, ca_path: str, version: int, policy: Policy,
                cipher: KernelCipher = KernelCipher.AES_GCM_128):
    if our_role == "client":
        return client_context(ca_path, version=version, cipher=cipher, ktls_policy=policy)
    return server_context(cert, version=version, cipher=cipher, ktls_policy=policy)


def read_to_eof(sock, m: Measurement, limit: int = 1 << 20) -> None:
    """Read into m.delivered until EOF (m.orderly_eof) or ``limit`` bytes; errors propagate."""
    while len(m.delivered) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            m.orderly_eof = True
            break
        m.delivered += chunk


def run_case(case: Case, our_role: str, version: int, policy: Policy, cert, ca_path: str, *,
             cipher: KernelCipher = KernelCipher.AES_GCM_128, ours=None, setup=None,
             peer_options=None, timeout: float | None = None) -> Measurement:
    """Play ``case`` against our side and measure. Keyword extensions (defaults: what every case of
    cases.py runs with): ``cipher`` for both sides; ``setup(context)`` prepares our context beyond
    case.settings (a certificate to load); ``ours(sock, m)`` replaces our side's part after the
    handshake (by default: READY for a record-phase case, then read until EOF or error), appending
    what it reads to m.delivered, setting m.orderly_eof and noting facts in m.extra; an exception
    it raises counts as a read failure; ``peer_options`` go to hostile_endpoint (they may replace
    cert and key: the hostile client's own certificate); ``timeout``: our socket's, instead of
    IO_TIMEOUT (or STALL_TIMEOUT for a stalling case)."""
    m = Measurement(case, our_role, version, policy, cipher=cipher)
    kernel.probe()  # its own installs must not count below
    fds_before = open_fds()
    stat_before = kernel.tls_stat()
    ours_raw, peer_raw = loopback_pair()
    control = Control()
    endpoint_options = {"cert": cert.cert, "key": cert.key, **(peer_options or {})}
    peer = hostile_endpoint("server" if our_role == "client" else "client", peer_raw, version,
                            cipher=cipher, timeout=PEER_TIMEOUT, **endpoint_options)
    outcome = {}

    def run_peer():
        try:
            case.script(peer, control)
        except (PeerError, OSError) as exc:  # our side refused and closed: expected for most cases
            outcome["error"] = exc
        try:
            outcome["observed"] = peer.drain(PEER_TIMEOUT)
        except OSError as exc:
            outcome["observed"] = Observed(end=f"{type(exc).__name__}: {exc}")
        finally:
            peer.close()

    thread = threading.Thread(target=run_peer, daemon=True, name=f"hostile-{case.name}")
    thread.start()
    ours_raw.settimeout(timeout if timeout is not None else STALL_TIMEOUT if case.stall else IO_TIMEOUT)
    context = our_context(our_role, cert, ca_path, version, policy, cipher)
    for name, value in case.settings:  # e.g. post_handshake_auth for a post-handshake CertificateRequest
        setattr(context, name, value)
    if setup is not None:
        setup(context)
    sock = context.wrap_socket(ours_raw, server_side=our_role == "server",
                               server_hostname="localhost" if our_role == "client" else None,
                               do_handshake_on_connect=False, suppress_ragged_eofs=False)
    started = time.monotonic()
    try:
        try:
            sock.do_handshake()
        except Exception as exc:
            m.error, m.failed_in = exc, "handshake"
        else:
            try:
                if ours is not None:
                    ours(sock, m)
                else:
                    if case.phase == "record":
                        sock.sendall(READY)
                    read_to_eof(sock, m)
            except Exception as exc:
                m.error, m.failed_in = exc, "read"
        m.seconds = time.monotonic() - started
        m.rx_key = kernel_rx_key(sock)
        if m.failed_in == "handshake":
            m.fd_records = read_fd_raw(sock)
        if m.error is not None and not isinstance(m.error, TimeoutError):
            try:
                m.second = sock.recv(100)
            except Exception as exc:
                m.second = exc
        m.status = sock.ktls
    finally:
        sock.close()
        m.closed = sock.fileno() == -1
        m.events = sock.ktls_events  # the audit trail outlives the socket
        control.release.set()
        thread.join(JOIN_TIMEOUT)
    if thread.is_alive():
        raise AssertionError(f"the hostile peer of {case.name} did not finish")
    m.observed = outcome.get("observed")
    m.peer_error = outcome.get("error")
    stat_after = kernel.tls_stat()
    m.rx_installs = stat_after.get("TlsRxSw", 0) - stat_before.get("TlsRxSw", 0)
    m.tx_rekeys, m.rx_rekeys = (stat_after.get(name, 0) - stat_before.get(name, 0) for name in REKEY_COUNTERS)
    m.leaked_fds = open_fds() - fds_before
    return m


def describe_error(exc: BaseException | None) -> str:
    """A stable one-line description: exception type, and for ssl errors library and reason."""
    if exc is None:
        return "none"
    text = str(exc)
    if isinstance(exc, ssl.SSLError):
        text = text.replace(" (ktls_ossl)", "")
    return f"{type(exc).__name__}: {text}"


def run_against_oracle(run) -> tuple[Measurement, Measurement]:
    """``run(policy)`` twice on the same input: Policy.USERSPACE (plain OpenSSL, the oracle), then
    Policy.AFTER_FINISHED; checks what holds for both (the kernel carries RX where it can, nothing
    forged delivered, no fd leaked, the socket closed) and returns (oracle, measured)."""
    oracle = run(Policy.USERSPACE)
    measured = run(Policy.AFTER_FINISHED)
    assert oracle.status is not None and not oracle.status.rx
    if kernel.probe().ulp_available:
        assert measured.status is not None and measured.status.rx, f"the kernel should carry RX here: {measured.status}"
    for m in (oracle, measured):
        assert FORGED not in m.delivered
        assert not m.leaked_fds and m.closed
    return oracle, measured
