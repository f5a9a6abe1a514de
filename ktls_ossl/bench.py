"""Benchmarks: ktls_ossl against CPython's ssl and OpenSSL's own kTLS, in one run on one kernel.

``python -m ktls_ossl bench`` measures ten contenders on six workloads and prints a Markdown
report (``--json`` / ``--markdown`` / ``--chart`` write the JSON, the report and a PNG chart):

contenders (both ends of every connection are the same contender)
    ktls-after-finished  ktls_ossl, Policy.AFTER_FINISHED (exact keys after the verified Finished)
    ktls-after-ccs       ktls_ossl, Policy.AFTER_CCS (OpenSSL's own kTLS; sendfile is SSL_sendfile)
    ktls-userspace       ktls_ossl, Policy.USERSPACE (OpenSSL record layer through ktls_ossl)
    cpython-ssl          CPython's ssl module
    cpython-ssl-ktls     CPython's ssl with SSL_OP_ENABLE_KTLS (1 << 3) in ``options``
    tcp                  plain TCP, no TLS (the ceiling)
    agent-fd             handshakes run by the handshake agent, which gets the socket (handshake
                         workload only: afterwards the kernel carries the data as for
                         ktls-after-finished); one agent process per role
    agent-forward        the same, the application forwarding the records to the agent
    pyopenssl            pyOpenSSL (OpenSSL.SSL.Connection over the socket), its record layer in user
                         space (bulk, file, handshake, latency; skipped without pyOpenSSL)
    pyopenssl-ktls       ktls_ossl.pyopenssl.Connection on the same pyOpenSSL context: the kernel's
                         record layer after the verified Finished (same workloads)

workloads
    bulk       one-way transfer, sendall -> recv_into: throughput, user/system CPU s per GiB per end
    file       a file sent with sock.sendfile() (ktls_ossl: os.sendfile on a kTLS socket, or
               SSL_sendfile under AFTER_CCS; CPython 3.11: read + send; pyOpenSSL, which has no
               sendfile: read + sendall), received with recv_into
    handshake  full handshakes per second, TLS 1.2 and 1.3 x ECDSA P-256 and RSA-2048, counting
               connect + handshake (+ the key handoff) + one byte each way + close
    latency    100-byte request/response round trips: p50, p99
    memory     RSS per idle established connection (each end), N connections at once
    burst      N clients released at once against http.server.ThreadingHTTPServer (listen backlog 5,
               socketserver's default; TLS by wrapping its listening socket, so every handshake runs in
               the accept thread), one HTTPS GET each with http.client: clients served, failed
               connections (resets, refused, timeouts), wall time, the server's peak RSS growth

asyncio section (workloads aio-file, aio-echo, aio-handshake; ``--workloads asyncio`` selects all
three): both ends run an event loop in their own process, with asyncio's streams
    aio-ktls        ktls_ossl.asyncio: loop from ktls_ossl.asyncio.new_event_loop(), a
                    ktls_ossl.SSLContext (AFTER_FINISHED); loop.sendfile is os.sendfile into kTLS
    aio-stock       asyncio's default loop with ssl.SSLContext (loop.sendfile: read + write)
    aio-uvloop      uvloop with ssl.SSLContext (uvloop has no loop.sendfile: read + write + drain;
                    skipped without uvloop)
    aio-aiofastnet  aiofastnet (aio-libs' C transports) on asyncio's loop with SSL_OP_ENABLE_KTLS,
                    so OpenSSL's own kTLS and SSL_sendfile; skipped, with the reason, when aiofastnet
                    is missing or a trial connection shows it cannot turn its kTLS on here
workloads
    aio-file       a file per connection with loop.sendfile(transport, file) (or the read + write
                   fallback above), read by the client, which compares every byte with the file:
                   MiB/s and the server's CPU s per GiB (user+sys)
    aio-echo       100-byte echo round trips: p50, p99
    aio-handshake  connect + handshake + one byte each way + close, per second (ECDSA P-256)
Ratios of the asyncio rows are against aio-stock (the "CPython ssl" reference) and aio-aiofastnet
(the "OpenSSL kTLS" reference).

The data workloads (bulk, file, latency, memory, burst) run in TLS 1.2 and TLS 1.3 (--data-tls), both
with AES-256-GCM. Sizes and counts come from presets (--quick, default, --full; smaller under
User-Mode Linux, where kernel crypto is generic C) and every one can be overridden.

Every run of a workload forks two fresh processes, one per end, each measuring its own CPU time
(getrusage) around the measured phase only (never the handshake of a data workload). Every figure
is the median of ``--runs`` runs, with min and max. Ratios are computed from the medians of this
same run: against CPython's ssl, and against OpenSSL's own kTLS (CPython ssl + SSL_OP_ENABLE_KTLS;
for the file workload SSL_sendfile, i.e. ktls-after-ccs, which CPython 3.11 cannot reach).

Where each end's record layer ran is checked on the socket (getsockopt SOL_TLS TLS_TX / TLS_RX),
not assumed: on a kernel without the tls module the AFTER_FINISHED, AFTER_CCS and pyopenssl-ktls
rows are labelled as the user-space fallback they are.

Traffic goes only to 127.0.0.1; every child process is bounded in time and killed on overrun.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import select
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
import traceback

from . import OPENSSL_VERSION, kernel
from .handshake import Policy
from .progress import Progress

SCHEMA = "ktls_ossl-bench/1"
SSL_OP_ENABLE_KTLS = 1 << 3
MIB = 1 << 20
GIB = 1 << 30
HOST = "127.0.0.1"
SERVER_NAME = "localhost"

# --- contenders ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    label: str
    library: str  # "ktls_ossl", "cpython", "tcp", "agent" or "pyopenssl"
    # ktls_ossl's policy; for library "pyopenssl": None is pyOpenSSL's own Connection, a policy
    # ktls_ossl.pyopenssl.Connection with that policy.
    policy: Policy | None = None
    openssl_ktls: bool = False
    agent_mode: str | None = None  # library "agent": "fd" or "forward"
    workloads: tuple[str, ...] = ("bulk", "file", "handshake", "latency", "memory", "burst")
    loop: str | None = None  # the asyncio contenders' loop: "ktls", "asyncio", "uvloop" or "aiofastnet"

    @property
    def tls(self) -> bool:
        return self.library != "tcp"


ASYNCIO_WORKLOADS = ("aio-file", "aio-echo", "aio-handshake")

CONTENDERS = (
    Contender("ktls-after-finished", "ktls_ossl AFTER_FINISHED", "ktls_ossl", Policy.AFTER_FINISHED),
    Contender("ktls-after-ccs", "ktls_ossl AFTER_CCS (OpenSSL kTLS)", "ktls_ossl", Policy.AFTER_CCS),
    Contender("ktls-userspace", "ktls_ossl USERSPACE", "ktls_ossl", Policy.USERSPACE),
    Contender("cpython-ssl", "CPython ssl", "cpython"),
    # The burst workload (a server under a connection burst) runs for the three ktls_ossl policies
    # and CPython's ssl only: CPython's ssl with OpenSSL's kTLS option adds nothing AFTER_CCS does not
    # show, and plain TCP no TLS to compare.
    Contender("cpython-ssl-ktls", "CPython ssl + OpenSSL kTLS", "cpython", openssl_ktls=True,
              workloads=("bulk", "file", "handshake", "latency", "memory")),
    Contender("tcp", "plain TCP (no TLS)", "tcp", workloads=("bulk", "file", "handshake", "latency", "memory")),
    Contender("agent-fd", "ktls_ossl agent (fd passing)", "agent", Policy.AFTER_FINISHED, agent_mode="fd",
              workloads=("handshake",)),
    Contender("agent-forward", "ktls_ossl agent (record forwarding)", "agent", Policy.AFTER_FINISHED,
              agent_mode="forward", workloads=("handshake",)),
    # The workloads that compare where the record layer runs (data) and what the handoff costs
    # (handshake); the memory workload is not run for them.
    Contender("pyopenssl", "pyOpenSSL", "pyopenssl", workloads=("bulk", "file", "handshake", "latency")),
    Contender("pyopenssl-ktls", "ktls_ossl.pyopenssl AFTER_FINISHED", "pyopenssl", Policy.AFTER_FINISHED,
              workloads=("bulk", "file", "handshake", "latency")),
    # The asyncio section: the library and options decide the context (make_context), ``loop`` the
    # event loop and transports.
    Contender("aio-ktls", "ktls_ossl.asyncio (AFTER_FINISHED)", "ktls_ossl", Policy.AFTER_FINISHED, loop="ktls",
              workloads=ASYNCIO_WORKLOADS),
    Contender("aio-stock", "asyncio + ssl", "cpython", loop="asyncio", workloads=ASYNCIO_WORKLOADS),
    Contender("aio-uvloop", "uvloop + ssl", "cpython", loop="uvloop", workloads=ASYNCIO_WORKLOADS),
    Contender("aio-aiofastnet", "aiofastnet + OpenSSL kTLS", "cpython", openssl_ktls=True, loop="aiofastnet",
              workloads=ASYNCIO_WORKLOADS),
)
CONTENDER_NAMES = tuple(c.name for c in CONTENDERS)
BY_NAME = {c.name: c for c in CONTENDERS}
CPYTHON_REFERENCE = "cpython-ssl"
# "OpenSSL's own kTLS" per workload: CPython's C path with SSL_OP_ENABLE_KTLS, except for files,
# where OpenSSL's kTLS path is SSL_sendfile, which only ktls_ossl's AFTER_CCS calls. Under asyncio:
# aiofastnet, which runs OpenSSL with SSL_OP_ENABLE_KTLS on the socket (and SSL_sendfile).
OPENSSL_KTLS_REFERENCE = {"bulk": "cpython-ssl-ktls", "file": "ktls-after-ccs",
                          "handshake": "cpython-ssl-ktls", "latency": "cpython-ssl-ktls",
                          "memory": "cpython-ssl-ktls", "burst": "ktls-after-ccs", "aio-file": "aio-aiofastnet",
                          "aio-echo": "aio-aiofastnet", "aio-handshake": "aio-aiofastnet"}

SYNC_WORKLOADS = ("bulk", "file", "handshake", "latency", "memory", "burst")
WORKLOADS = SYNC_WORKLOADS + ASYNCIO_WORKLOADS
# "CPython's ssl" per workload: blocking SSLSocket; under asyncio, asyncio's own SSL transport.
CPYTHON_REFERENCE_FOR = dict({w: CPYTHON_REFERENCE for w in SYNC_WORKLOADS},
                             **{w: "aio-stock" for w in ASYNCIO_WORKLOADS})
WORKLOAD_TITLES = {
    "bulk": "Bulk one-way transfer (sendall -> recv_into)",
    "file": "File transfer (sendfile -> recv_into)",
    "handshake": "Handshakes per second",
    "latency": "Request/response latency, 100-byte messages",
    "memory": "Memory per idle established connection",
    "burst": "Connection burst against ThreadingHTTPServer (listen backlog 5)",
    "aio-file": "asyncio: static file per connection (loop.sendfile -> StreamReader)",
    "aio-echo": "asyncio: echo latency, 100-byte messages",
    "aio-handshake": "asyncio: handshakes per second",
}
# The column over each ratio pair: (the "cpython" reference, the "openssl_ktls" reference).
RATIO_TITLES = dict({w: "× CPython ssl / × OpenSSL kTLS" for w in SYNC_WORKLOADS},
                    **{w: "× asyncio ssl / × aiofastnet" for w in ASYNCIO_WORKLOADS})

# (metric key, column title, higher is better, shown with its ratios)
METRICS = {
    "bulk": [("throughput_mib_s", "MiB/s", True, True),
             ("sender_user_s_per_gib", "sender user s/GiB", False, True),
             ("sender_sys_s_per_gib", "sender sys s/GiB", False, False),
             ("receiver_user_s_per_gib", "receiver user s/GiB", False, True),
             ("receiver_sys_s_per_gib", "receiver sys s/GiB", False, False)],
    # Under UML all of a guest process's CPU time is accounted as user time (sys stays 0), so only
    # the total per end means something there.
    "bulk-uml": [("throughput_mib_s", "MiB/s", True, True),
                 ("sender_cpu_s_per_gib", "sender CPU s/GiB (user+sys)", False, True),
                 ("receiver_cpu_s_per_gib", "receiver CPU s/GiB (user+sys)", False, True)],
    "handshake": [("handshakes_per_s", "handshakes/s", True, True),
                  ("client_cpu_ms", "client CPU ms/hs", False, False),
                  ("server_cpu_ms", "server CPU ms/hs", False, False)],
    "latency": [("p50_us", "p50 µs", False, True),
                ("p99_us", "p99 µs", False, True),
                ("client_cpu_us", "client CPU µs/rt", False, False),
                ("server_cpu_us", "server CPU µs/rt", False, False)],
    "memory": [("server_rss_kib", "server RSS KiB/conn", False, True),
               ("client_rss_kib", "client RSS KiB/conn", False, True),
               ("kernel_slab_kib", "kernel slab KiB/conn (both ends, system-wide)", False, False)],
    # Failure counts have no ratio (CPython's is usually 0): the target compares the counts.
    "burst": [("clients_ok", "clients ok", True, False),
              ("failed", "failed", False, False),
              ("resets", "of which resets", False, False),
              ("wall_s", "burst wall s", False, True),
              ("server_rss_growth_mib", "server peak RSS growth MiB", False, True),
              ("server_rss_cold_mib", "same, from a cold start MiB", False, False),
              ("accept_ms", "accept thread ms/conn", False, True),
              ("accept_max_ms", "longest accept ms", False, False),
              ("listen_overflows", "ListenOverflows", False, False)],
}
METRICS["file"] = METRICS["bulk"]
METRICS["file-uml"] = METRICS["bulk-uml"]
# The issue's figure for serving files is the server's CPU per GiB, user+sys (the kernel's
# encryption included): the ratio sits on that total.
METRICS["aio-file"] = [("throughput_mib_s", "MiB/s", True, True),
                       ("server_cpu_s_per_gib", "server CPU s/GiB (user+sys)", False, True),
                       ("server_user_s_per_gib", "server user s/GiB", False, False),
                       ("server_sys_s_per_gib", "server sys s/GiB", False, False),
                       ("client_cpu_s_per_gib", "client CPU s/GiB (user+sys)", False, False)]
METRICS["aio-file-uml"] = [m for m in METRICS["aio-file"] if m[0] not in ("server_user_s_per_gib",
                                                                          "server_sys_s_per_gib")]
METRICS["aio-echo"] = METRICS["latency"]
METRICS["aio-handshake"] = METRICS["handshake"]


def table_metrics(workload: str, uml: bool) -> list:
    return METRICS.get(f"{workload}-uml", METRICS[workload]) if uml else METRICS[workload]

# --- settings ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    preset: str = "default"
    runs: int = 3
    warmup: int = 1  # unmeasured runs at the start of each workload (cold caches, first forks)
    bulk_mib: int = 256
    file_mib: int = 256
    chunk_kib: int = 1024
    handshake_seconds: float = 1.0
    latency_count: int = 2000
    connections: int = 1000
    burst_clients: int = 200
    data_tls: tuple = ("1.2", "1.3")  # TLS versions of the data workloads (bulk, file, latency, memory, burst)
    workloads: tuple = WORKLOADS
    contenders: tuple = CONTENDER_NAMES
    handshake_versions: tuple = ("1.2", "1.3")
    handshake_keys: tuple = ("ecdsa", "rsa")
    file_dir: str | None = None
    trial_timeout: float = 300.0


# Chosen so that the default run takes a few minutes on a 2-core machine, and that `make bench`
# (host + two UML kernels) stays near ten minutes. Under UML the kernel's AES-GCM is generic C
# (~40 MiB/s) and every system call costs tens of microseconds, so sizes and counts are smaller.
# The burst's 200 clients (the issue's figure; --full) cost ~32 s per run everywhere: with backlog 5
# the SYNs the full queue drops are retried after 1, 3, 7, 15 and 31 s, so the last clients end at
# http.client's 30 s timeout. The default presets' 40 (host) and 50 (UML) clients take 1-12 s.
PRESETS = {
    ("quick", False): dict(runs=1, warmup=0, bulk_mib=8, file_mib=8, handshake_seconds=0.15, latency_count=200,
                           connections=20, burst_clients=20),
    ("default", False): dict(runs=3, bulk_mib=256, file_mib=256, handshake_seconds=1.0,
                             latency_count=2000, connections=1000, burst_clients=40),
    ("full", False): dict(runs=5, bulk_mib=256, file_mib=256, handshake_seconds=3.0, latency_count=10000,
                          connections=1000, burst_clients=200),
    ("quick", True): dict(runs=1, warmup=0, bulk_mib=2, file_mib=2, handshake_seconds=0.1, latency_count=50,
                          connections=10, burst_clients=10),
    # Latency and handshake runs long enough that UML's scheduling noise (a 300-round-trip run
    # varied by 30 % between runs) stays inside the min-max columns.
    ("default", True): dict(runs=3, bulk_mib=32, file_mib=32, handshake_seconds=1.0, latency_count=1500,
                            connections=50, burst_clients=50),
    ("full", True): dict(runs=3, bulk_mib=256, file_mib=256, handshake_seconds=2.0, latency_count=2000,
                         connections=1000, burst_clients=200),
}


def in_uml() -> bool:
    """Running under User-Mode Linux (scripts/ktls-vm)?"""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return "User Mode Linux" in info.read(4096)
    except OSError:
        return False


def make_settings(preset: str = "default", uml: bool | None = None, **overrides) -> Settings:
    uml = in_uml() if uml is None else uml
    values = dict(PRESETS[(preset, uml)])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(preset=preset, **values)


# --- measurement helpers (run in the child processes) -------------------------------------------


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _vm_status_kib(name: str) -> int | None:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM, ...), in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return None


def _rss_kib() -> int:
    rss = _vm_status_kib("VmRSS")
    if rss is None:
        raise RuntimeError("no VmRSS in /proc/self/status")
    return rss


def _meminfo_kib(name: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _kernel_direction(sock, optname: int) -> bool:
    """Does the kernel hold keys for this direction of the socket? (4-byte header only: no key.)
    Asked on the descriptor, through a socket object of its own (detached after), since a
    pyOpenSSL Connection is no socket."""
    probe = socket.socket(fileno=sock.fileno())
    try:
        probe.getsockopt(kernel.SOL_TLS, optname, 4)
        return True
    except OSError:
        return False
    finally:
        probe.detach()


def _record_layer(sock) -> dict:
    """Where one end's record layer runs, checked on the socket, plus what the library says."""
    info = {"tx_kernel": _kernel_direction(sock, kernel.Direction.TX.optname),
            "rx_kernel": _kernel_direction(sock, kernel.Direction.RX.optname)}
    pyopenssl = sys.modules.get("OpenSSL.SSL")  # imported only where a pyOpenSSL contender runs
    if isinstance(sock, ssl.SSLSocket):
        info["version"] = sock.version()
        cipher = sock.cipher()
        info["cipher"] = cipher[0] if cipher else None
    elif pyopenssl is not None and isinstance(sock, pyopenssl.Connection):
        info["version"] = sock.get_protocol_version_name()
        info["cipher"] = sock.get_cipher_name()
        # pyOpenSSL runs cryptography's OpenSSL, whose default key exchange may not be the system
        # OpenSSL's (OpenSSL 3.5+ prefers X25519MLKEM768 in TLS 1.3); newer pyOpenSSL tells which.
        if hasattr(sock, "get_group_name"):
            info["group"] = sock.get_group_name()
    status = getattr(sock, "ktls", None)
    if status is not None:
        info["ktls"] = {"tx": status.tx, "rx": status.rx, "tx_reason": status.tx_reason,
                        "rx_reason": status.rx_reason, "text": str(status)}
    return info


def _release_free_heap() -> None:
    """Collect garbage and give free heap pages back to the kernel (glibc malloc_trim), so that an
    RSS baseline does not include free memory inherited from the parent at fork, which later
    allocations would reuse without growing RSS."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors "
                               "needed: lower --connections")


# --- certificates ------------------------------------------------------------------------------


def make_pki(directory: str) -> dict:
    """A CA and a leaf for 'localhost'/127.0.0.1 per key type: {kind: {ca, chain, key}}."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    def new_key(kind):
        if kind == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    result = {}
    for kind in ("ecdsa", "rsa"):
        ca_key, leaf_key = new_key(kind), new_key(kind)
        ca = (x509.CertificateBuilder().subject_name(name(f"ktls_ossl bench CA {kind}"))
              .issuer_name(name(f"ktls_ossl bench CA {kind}")).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        leaf = (x509.CertificateBuilder().subject_name(name(SERVER_NAME)).issuer_name(ca.subject)
                .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        pem = serialization.Encoding.PEM
        paths = {"ca": os.path.join(directory, f"ca-{kind}.pem"),
                 "chain": os.path.join(directory, f"leaf-{kind}.chain.pem"),
                 "key": os.path.join(directory, f"leaf-{kind}.key")}
        with open(paths["ca"], "wb") as out:
            out.write(ca.public_bytes(pem))
        with open(paths["chain"], "wb") as out:
            out.write(leaf.public_bytes(pem) + ca.public_bytes(pem))
        with open(paths["key"], "wb") as out:
            out.write(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        result[kind] = paths
    return result


# TLS 1.2 suites per certificate key: AES-256-GCM, the suite TLS 1.3 negotiates by default (and
# CPython's ssl cannot choose TLS 1.3 suites), so both versions move data with the same cipher.
TLS12_SUITES = {"ecdsa": "ECDHE-ECDSA-AES256-GCM-SHA384", "rsa": "ECDHE-RSA-AES256-GCM-SHA384"}
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def make_context(contender: Contender, server_side: bool, pki: dict, key: str, version: str):
    """The contender's SSLContext for one end (None for plain TCP; an OpenSSL.SSL.Context for pyOpenSSL)."""
    if not contender.tls:
        return None
    if contender.library == "pyopenssl":
        return make_pyopenssl_context(contender, server_side, pki, key, version)
    if contender.library == "agent":
        from .agent import AgentContext
        ctx = AgentContext(pki[key]["agent_server" if server_side else "agent_client"],
                           ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT,
                           mode=contender.agent_mode)
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
        if version == "1.2":
            ctx.set_ciphers(TLS12_SUITES[key])
        return ctx
    if contender.library == "ktls_ossl":
        from .context import SSLContext
        factory = SSLContext
    else:
        factory = ssl.SSLContext
    ctx = factory(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    if server_side:
        ctx.load_cert_chain(pki[key]["chain"], pki[key]["key"])
    else:
        ctx.load_verify_locations(pki[key]["ca"])
    ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[version]
    if version == "1.2":
        ctx.set_ciphers(TLS12_SUITES[key])
    if contender.policy is not None:
        ctx.ktls_policy = contender.policy
    if contender.openssl_ktls:
        ctx.options |= SSL_OP_ENABLE_KTLS
    return ctx


def make_pyopenssl_context(contender: Contender, server_side: bool, pki: dict, key: str, version: str):
    """The pyOpenSSL contenders' OpenSSL.SSL.Context, set up as make_context sets up CPython's: the
    same certificates, one TLS version, the TLS 1.2 suite pinned and TLS 1.3's left at the default
    (AES-256-GCM first, as for the others). The client verifies the chain against the bench CA with
    OpenSSL's own verification (no Python callback per certificate, as in CPython's ssl); pyOpenSSL
    has no API for checking the host name, so unlike CPython's ssl it does not."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    if server_side:
        ctx.use_certificate_chain_file(pki[key]["chain"])
        ctx.use_privatekey_file(pki[key]["key"])
    else:
        ctx.load_verify_locations(pki[key]["ca"])
        ctx.set_verify(SSL.VERIFY_PEER)
    protocol = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[version]
    ctx.set_min_proto_version(protocol)
    ctx.set_max_proto_version(protocol)
    if version == "1.2":
        ctx.set_cipher_list(TLS12_SUITES[key].encode("ascii"))
    if contender.policy is not None:
        from .pyopenssl import prepare_context

        # It takes the context's keylog callback, which pyOpenSSL 26.2+ fixes at the first connection.
        prepare_context(ctx)
    return ctx


# --- the two ends of one run -----------------------------------------------------------------------


class Endpoint:
    """What a child process gets: its role, the contender's contexts, the listener or the port.

    accept() and connect() return the connection after its handshake: a socket, an SSLSocket or a
    pyOpenSSL Connection. The last is no context manager, so the workloads close them all with
    contextlib.closing."""

    def __init__(self, role, contender, params, pki, listener, port, control):
        self.role = role
        self.contender = contender
        self.params = params
        self.pki = pki
        self.listener = listener
        self.port = port
        self.control = control
        self._contexts = {}

    def context(self, key="ecdsa", version=None):
        version = version or self.params["data_tls"]
        if version not in TLS_VERSIONS:
            version = "1.3"  # plain TCP rows carry no TLS version
        if (key, version) not in self._contexts:
            self._contexts[key, version] = make_context(self.contender, self.role == "server", self.pki,
                                                        key, version)
        return self._contexts[key, version]

    # Sockets are blocking (the fastest mode for every contender); a run that hangs is killed by
    # the parent after --timeout.
    def accept(self, key="ecdsa", version=None, nodelay=True):
        raw, _ = self.listener.accept()
        raw.settimeout(None)
        if nodelay:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.context(key, version)
        if ctx is None:
            return raw
        if self.contender.library == "pyopenssl":
            return self._pyopenssl_handshake(ctx, raw, server_side=True)
        return ctx.wrap_socket(raw, server_side=True)

    def connect(self, key="ecdsa", version=None, nodelay=True):
        raw = socket.create_connection((HOST, self.port), timeout=self.params["io_timeout"])
        raw.settimeout(None)
        if nodelay:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self.context(key, version)
        if ctx is None:
            return raw
        try:
            if self.contender.library == "pyopenssl":
                return self._pyopenssl_handshake(ctx, raw, server_side=False)
            return ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
        except BaseException:
            raw.close()
            raise

    def _pyopenssl_handshake(self, ctx, raw, server_side: bool):
        """pyOpenSSL's Connection (ktls_ossl.pyopenssl's, with the contender's policy) over the
        blocking socket, its handshake done, as wrap_socket does for the ssl contenders."""
        if self.contender.policy is None:
            from OpenSSL.SSL import Connection
            connection = Connection(ctx, raw)
        else:
            from .pyopenssl import Connection
            connection = Connection(ctx, raw, policy=self.contender.policy)
        if server_side:
            connection.set_accept_state()
        else:
            connection.set_connect_state()
            connection.set_tlsext_host_name(SERVER_NAME.encode("ascii"))
        connection.do_handshake()
        return connection


def _recv_exactly(sock, view, size: int) -> None:
    got = 0
    while got < size:
        count = sock.recv_into(view[got:size], size - got)
        if not count:
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += count


def _receive_all(sock, size: int, chunk: int) -> int:
    buffer = bytearray(chunk)
    got = 0
    while got < size:
        count = sock.recv_into(buffer)
        if not count:
            raise EOFError(f"connection closed after {got} of {size} bytes")
        got += count
    return got


def _data_result(start, cpu0, size, sock) -> dict:
    elapsed = time.perf_counter() - start
    user, system = _cpu()
    return {"seconds": elapsed, "bytes": size, "user": user - cpu0[0], "sys": system - cpu0[1],
            "record_layer": _record_layer(sock)}


def bulk_server(end: Endpoint) -> dict:
    """Sender: sendall of ``size`` bytes in chunks, then the receiver's one-byte acknowledgement."""
    size, chunk = end.params["bulk_bytes"], end.params["chunk"]
    source = memoryview(bytearray(os.urandom(min(chunk, size))))
    with contextlib.closing(end.accept()) as sock:
        cpu0, start = _cpu(), time.perf_counter()
        remaining = size
        while remaining:
            count = min(len(source), remaining)
            sock.sendall(source[:count])
            remaining -= count
        if sock.recv(1) != b"k":
            raise RuntimeError("no acknowledgement from the receiver")
        return _data_result(start, cpu0, size, sock)


def _receiver(end: Endpoint, size: int) -> dict:
    with contextlib.closing(end.connect()) as sock:
        cpu0, start = _cpu(), time.perf_counter()
        _receive_all(sock, size, end.params["chunk"])
        sock.sendall(b"k")
        return _data_result(start, cpu0, size, sock)


def bulk_client(end: Endpoint) -> dict:
    return _receiver(end, end.params["bulk_bytes"])


def file_server(end: Endpoint) -> dict:
    """Sender: sock.sendfile() of the whole file (each library's own sendfile)."""
    path, size = end.params["file_path"], end.params["file_bytes"]
    with open(path, "rb") as source, contextlib.closing(end.accept()) as sock:
        cpu0, start = _cpu(), time.perf_counter()
        sent = _send_file(end, sock, source)
        if sent != size:
            raise RuntimeError(f"sendfile sent {sent} of {size} bytes")
        if sock.recv(1) != b"k":
            raise RuntimeError("no acknowledgement from the receiver")
        return _data_result(start, cpu0, size, sock)


def _send_file(end: Endpoint, sock, source) -> int:
    """sock.sendfile(source), except for pyOpenSSL's own Connection: it has no sendfile, and the
    one its attribute delegation finds is the TCP socket's, which would send the file in clear.
    Its file goes read + sendall, in the bulk workload's chunks."""
    if end.contender.library != "pyopenssl" or end.contender.policy is not None:
        return sock.sendfile(source)
    buffer = memoryview(bytearray(end.params["chunk"]))
    sent = 0
    while count := source.readinto(buffer):
        sock.sendall(buffer[:count])
        sent += count
    return sent


def file_client(end: Endpoint) -> dict:
    return _receiver(end, end.params["file_bytes"])


def latency_server(end: Endpoint) -> dict:
    size, total = end.params["message"], end.params["latency_total"]
    buffer = memoryview(bytearray(size))
    with contextlib.closing(end.accept(nodelay=True)) as sock:
        cpu0 = _cpu()
        for _ in range(total):
            _recv_exactly(sock, buffer, size)
            sock.sendall(buffer)
        user, system = _cpu()
        return {"cpu": user + system - sum(cpu0), "record_layer": _record_layer(sock)}


def latency_client(end: Endpoint) -> dict:
    size, total, warmup = end.params["message"], end.params["latency_total"], end.params["latency_warmup"]
    request = os.urandom(size)
    buffer = memoryview(bytearray(size))
    samples = []
    clock = time.perf_counter_ns
    with contextlib.closing(end.connect(nodelay=True)) as sock:
        for index in range(total):
            if index == warmup:
                cpu0 = _cpu()
            started = clock()
            sock.sendall(request)
            _recv_exactly(sock, buffer, size)
            samples.append(clock() - started)
            if buffer != request:
                raise RuntimeError("the echo differs from the request")
        user, system = _cpu()
        measured = sorted(samples[warmup:])
        return {"samples_ns": measured, "cpu": user + system - sum(cpu0), "record_layer": _record_layer(sock)}


def _handshake_variant(end: Endpoint):
    return end.params["hs_key"], end.params["hs_version"]


def handshake_server(end: Endpoint) -> dict:
    """Accept, handshake (and hand keys to the kernel), send one byte, close; until told to stop."""
    key, version = _handshake_variant(end)
    end.context(key, version)
    count, layer = 0, None
    cpu0 = last = _cpu()
    while True:
        ready, _, _ = select.select([end.listener, end.control], [], [], end.params["io_timeout"])
        if end.control in ready or not ready:
            break
        with contextlib.closing(end.accept(key, version, nodelay=True)) as sock:
            sock.sendall(b"k")
            if sock.recv(1) != b"c":
                raise RuntimeError("no byte from the client after the handshake")
            if layer is None:
                layer = _record_layer(sock)
        count += 1
        last = _cpu()
    return {"count": count, "cpu": sum(last) - sum(cpu0), "record_layer": layer}


def handshake_client(end: Endpoint) -> dict:
    key, version = _handshake_variant(end)
    end.context(key, version)
    duration, minimum = end.params["hs_seconds"], end.params["hs_minimum"]
    count, layer = 0, None
    cpu0, start = _cpu(), time.perf_counter()
    while True:
        with contextlib.closing(end.connect(key, version, nodelay=True)) as sock:
            if sock.recv(1) != b"k":
                raise RuntimeError("no byte from the server after the handshake")
            if layer is None:
                layer = _record_layer(sock)
            sock.sendall(b"c")
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= duration and count >= minimum:
            break
    user, system = _cpu()
    return {"count": count, "seconds": elapsed, "cpu": user + system - sum(cpu0), "record_layer": layer}


def _memory_end(end: Endpoint, open_one) -> dict:
    count = end.params["connections"]
    _raise_nofile(count + 64)
    # One connection first, so that everything lazily set up on first use is already in the baseline.
    open_one().close()
    _release_free_heap()
    rss0, slab0 = _rss_kib(), _meminfo_kib("Slab")
    kept = [open_one() for _ in range(count)]
    gc.collect()
    rss1, slab1 = _rss_kib(), _meminfo_kib("Slab")
    result = {"rss_kib": (rss1 - rss0) / count, "record_layer": _record_layer(kept[-1]),
              "slab_kib": None if slab0 is None or slab1 is None else (slab1 - slab0) / count}
    # Stay established and idle until the other end has measured too.
    end.control.send(("measured", result))
    end.control.recv()
    for sock in kept:
        sock.close()
    return result


def memory_server(end: Endpoint) -> dict:
    return _memory_end(end, end.accept)


def memory_client(end: Endpoint) -> dict:
    return _memory_end(end, end.connect)


# --- the burst workload: a production-style HTTPS server under a connection burst ------------------
#
# The server is http.server.ThreadingHTTPServer as its users run it: socketserver's listen backlog
# (request_queue_size, 5) and TLS added by wrapping the listening socket, so that SSLSocket.accept()
# runs every handshake (and ktls_ossl's key handoff) in the one accept thread before a handler
# thread starts. While that thread is busy, connections pile up in the kernel's listen queues; what
# overflows them (dropped SYNs and ACKs, requests the kernel gives up on and answers with a reset
# later) is what the clients count. The two ends take turns through the parent ("relay" messages):
# listening -> one warm-up request -> the server's baseline -> the burst -> "stop".

BURST_CLIENT_TIMEOUT = 30.0  # http.client's timeout per client (connect, and each read and write)
BURST_BODY_BYTES = 1024


def burst_body() -> bytes:
    """The body the server sends for GET: 1 KiB, the same in every run (not compressible to
    nothing, not random either)."""
    return bytes((index * 7 + index // 256) % 251 for index in range(BURST_BODY_BYTES))


def burst_params(body: bytes | None = None, expected: bytes | None = None) -> dict:
    """What the burst workload's ends need: the body the server sends and, separately, the length
    and SHA-256 the clients check against (the same body unless a test says otherwise)."""
    import hashlib

    body = burst_body() if body is None else body
    expected = body if expected is None else expected
    return {"burst_body": body, "burst_body_length": len(expected),
            "burst_body_sha256": hashlib.sha256(expected).hexdigest()}


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux 4.0+: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _tcp_ext_counters(names=("ListenOverflows", "ListenDrops")) -> dict | None:
    """TcpExt counters from /proc/net/netstat: this network namespace's, all its sockets together."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return None
    for header, values in zip(lines, lines[1:]):
        if header.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:]))
            if all(name in table for name in names):
                return {name: int(table[name]) for name in names}
    return None


def _tcp_sysctls() -> dict:
    """The settings that decide what an overflowing listen queue does to a connection."""
    values = {}
    for name in ("net/ipv4/tcp_abort_on_overflow", "net/ipv4/tcp_syncookies", "net/core/somaxconn",
                 "net/ipv4/tcp_max_syn_backlog", "net/ipv4/tcp_synack_retries", "net/ipv4/tcp_syn_retries"):
        try:
            with open(f"/proc/sys/{name}", encoding="ascii") as value:
                values[name.rsplit("/", 1)[1]] = int(value.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return values


def _count_exception(table: dict, exc: BaseException) -> None:
    name = type(exc).__name__
    table[name] = table.get(name, 0) + 1


def _burst_respond(handler, body: bytes) -> None:
    """The server's answer to GET: 200 with the fixed body."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _relay_wait(end: Endpoint, expected: str) -> None:
    """Wait for the other end's turn, relayed by the parent (which bounds the whole run)."""
    got = end.control.recv()
    if got != expected:
        raise RuntimeError(f"expected {expected!r} from the parent, got {got!r}")


class _PeakSampler:
    """Where VmHWM cannot be reset: the highest VmRSS seen every 5 ms (a lower bound of the peak)."""

    def __init__(self):
        import threading

        self.peak = _rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_kib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_kib())


def burst_server(end: Endpoint) -> dict:
    """ThreadingHTTPServer on the bench's listener, listening with socketserver's own backlog and
    wrapped with the contender's server context; its peak RSS growth over the burst and what its
    accept thread and handlers did (counted; socketserver's behaviour is left as it is)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = end.params["burst_body"]
    _raise_nofile(end.params["burst_clients"] + 64)
    lock = threading.Lock()
    state = {"served": 0, "accepted": 0, "accept_seconds": 0.0, "accept_max": 0.0, "accept_errors": {},
             "handler_errors": {}, "layer": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            _burst_respond(self, body)
            with lock:
                state["served"] += 1
                if state["layer"] is None:
                    state["layer"] = _record_layer(self.connection)

        def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
            pass

    class Server(ThreadingHTTPServer):
        def get_request(self):
            # The accept thread: accept() and, the listener being an SSLSocket, the handshake.
            started = time.perf_counter()
            try:
                return super().get_request()
            except OSError as exc:  # socketserver drops the connection silently; counted here
                with lock:
                    _count_exception(state["accept_errors"], exc)
                raise
            finally:
                elapsed = time.perf_counter() - started
                with lock:
                    state["accepted"] += 1
                    state["accept_seconds"] += elapsed
                    state["accept_max"] = max(state["accept_max"], elapsed)

        def handle_error(self, request, client_address):  # instead of a traceback per failed request
            with lock:
                _count_exception(state["handler_errors"], sys.exc_info()[1])

    httpd = Server((HOST, end.port), Handler, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = end.listener  # bound to (HOST, port) by the parent
    httpd.server_activate()  # listen(request_queue_size): socketserver's 5
    ctx = end.context()
    if ctx is not None:
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    failure = []

    def serve():
        try:
            httpd.serve_forever(poll_interval=0.05)
        except BaseException:
            failure.append(traceback.format_exc())

    thread = threading.Thread(target=serve, name="accept", daemon=True)
    thread.start()
    try:
        # The cold baseline: before the first connection, whose handshake and handler set up
        # whatever each library sets up on first use (what a freshly started server pays once).
        _release_free_heap()
        rss_cold = _rss_kib()
        hwm_resets = _reset_peak_rss()
        end.control.send(("relay", "listening"))
        _relay_wait(end, "warmed")
        deadline = time.monotonic() + 10
        while state["served"] < 1 and time.monotonic() < deadline:  # the warm-up handler's count
            time.sleep(0.005)
        if state["served"] < 1:
            raise RuntimeError("the warm-up request was not counted as served")
        peak_warm = _vm_status_kib("VmHWM") if hwm_resets else _rss_kib()
        _release_free_heap()
        with lock:
            state.update(served=0, accepted=0, accept_seconds=0.0, accept_max=0.0, accept_errors={},
                         handler_errors={})
        rss0 = _rss_kib()
        sampler = None if _reset_peak_rss() else _PeakSampler()
        counters0 = _tcp_ext_counters()
        end.control.send(("relay", "measured"))
        _relay_wait(end, "stop")
        peak = _vm_status_kib("VmHWM") if sampler is None else sampler.stop()
        rss1 = _rss_kib()
        counters1 = _tcp_ext_counters()
        if failure or not thread.is_alive():
            raise RuntimeError("the server's accept thread ended during the burst:\n"
                               + (failure[0] if failure else "(no exception)"))
    finally:
        if thread.is_alive():
            httpd.shutdown()
        thread.join(10)
        httpd.server_close()
    with lock:
        result = {"served": state["served"], "accepted": state["accepted"],
                  "accept_seconds": state["accept_seconds"], "accept_max": state["accept_max"],
                  "accept_errors": dict(state["accept_errors"]),
                  "handler_errors": dict(state["handler_errors"]), "record_layer": state["layer"]}
    result.update(rss_cold_kib=rss_cold, peak_warm_kib=peak_warm, rss0_kib=rss0, peak_kib=peak, rss1_kib=rss1,
                  peak_from="VmHWM" if sampler is None else "VmRSS sampled every 5 ms",
                  tcp_sysctls=_tcp_sysctls(), backlog=httpd.request_queue_size)
    if counters0 is not None and counters1 is not None:
        result["tcp_ext"] = {name: counters1[name] - counters0[name] for name in counters0}
    return result


class BodyMismatch(Exception):
    """A response whose status, length or SHA-256 is not the server's known body's."""


def _burst_outcome(exc: BaseException) -> str:
    """One failed client's outcome: reset, refused, timeout, bad_body or other."""
    import errno

    if isinstance(exc, BodyMismatch):
        return "bad_body"
    # A reset or the peer's vanishing in the middle of the TLS handshake: CPython's ssl (and
    # ktls_ossl, like it) reports ECONNRESET there as SSLEOFError up to 3.12.
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    code = getattr(exc, "errno", None)
    if code in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    if code == errno.ECONNREFUSED:
        return "refused"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "other"


BURST_OUTCOMES = ("ok", "reset", "refused", "timeout", "bad_body", "other")


def burst_client(end: Endpoint) -> dict:
    """``burst_clients`` threads, released together by a barrier, each one HTTPS GET with
    http.client and the body checked (status, length, SHA-256); every client's outcome counted."""
    import hashlib
    import http.client
    import threading

    clients = end.params["burst_clients"]
    length, digest = end.params["burst_body_length"], end.params["burst_body_sha256"]
    _raise_nofile(clients + 64)
    ctx = end.context()
    layers = []

    def get():
        if ctx is None:
            conn = http.client.HTTPConnection(HOST, end.port, timeout=BURST_CLIENT_TIMEOUT)
        else:
            conn = http.client.HTTPSConnection(HOST, end.port, timeout=BURST_CLIENT_TIMEOUT, context=ctx)
        try:
            conn.connect()  # TCP connect and the handshake (the server's record layer verifies the IP SAN)
            if not layers:
                layers.append(_record_layer(conn.sock))
            conn.request("GET", "/")
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status != 200 or len(data) != length or hashlib.sha256(data).hexdigest() != digest:
            raise BodyMismatch(f"status {response.status}, {len(data)} bytes (expected 200, {length} bytes "
                               "with the known SHA-256)")

    _relay_wait(end, "listening")
    get()  # the warm-up request: it must succeed, and the server's baseline comes after it
    end.control.send(("relay", "warmed"))
    _relay_wait(end, "measured")

    barrier = threading.Barrier(clients + 1)
    outcomes, durations, errors = [None] * clients, [None] * clients, {}
    errors_lock = threading.Lock()

    def one(index):
        try:
            barrier.wait(BURST_CLIENT_TIMEOUT)
        except threading.BrokenBarrierError:
            outcomes[index] = "barrier"
            return
        started = time.perf_counter()
        try:
            get()
            outcome = "ok"
        except Exception as exc:
            outcome = _burst_outcome(exc)
            with errors_lock:
                _count_exception(errors, exc)
        durations[index] = time.perf_counter() - started
        outcomes[index] = outcome

    threads = [threading.Thread(target=one, args=(index,), name=f"client-{index}", daemon=True)
               for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait(BURST_CLIENT_TIMEOUT)
    started = time.perf_counter()
    # Each client is bounded by its timeouts (connect, then every read and write); a client still
    # running long after those is a hang, and fails the run.
    deadline = time.monotonic() + 4 * BURST_CLIENT_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - started
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        raise RuntimeError(f"{hung} of {clients} clients still running {wall:.0f} s after the burst started")
    if "barrier" in outcomes or None in outcomes:
        raise RuntimeError("not every client was released by the barrier")
    counts = {outcome: outcomes.count(outcome) for outcome in BURST_OUTCOMES}
    return {"clients": clients, "counts": counts, "errors": errors, "wall": wall,
            "durations": sorted(durations), "record_layer": layers[0] if layers else None}


def check_burst(results: dict) -> None:
    """Consistency of one burst run's two accounts: every client has exactly one outcome, and the
    server sent at least as many responses as the clients accepted."""
    server, client = results["server"], results["client"]
    counts = client["counts"]
    if sum(counts.values()) != client["clients"]:
        raise BenchError(f"burst: {sum(counts.values())} outcomes for {client['clients']} clients: {counts}")
    if server["served"] < counts["ok"]:
        raise BenchError(f"burst: the clients counted {counts['ok']} good responses, the server sent "
                         f"{server['served']}")


# --- the asyncio section: both ends on an event loop (run in the child processes) ------------------


def _ensure_ktls_option_name() -> bool:
    """aiofastnet asks for kTLS when ``context.options & ssl.OP_ENABLE_KTLS``, a name CPython's ssl
    has only from 3.12 (its value, SSL_OP_ENABLE_KTLS, is OpenSSL's and works on every version, as
    the cpython-ssl-ktls contender shows). Where the name is missing it is defined here, in the
    aiofastnet processes only; returns whether it had to be."""
    if hasattr(ssl, "OP_ENABLE_KTLS"):
        return False
    ssl.OP_ENABLE_KTLS = ssl.Options(SSL_OP_ENABLE_KTLS)
    return True


def _aio_new_loop(contender: Contender):
    import asyncio

    if contender.loop == "ktls":
        from .asyncio import new_event_loop
        return new_event_loop()
    if contender.loop == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if contender.loop == "aiofastnet":
        import logging

        import aiofastnet
        _ensure_ktls_option_name()
        # Its per-connection warnings (TLS 1.3 RX stays in user space with OpenSSL 3.0) would flood
        # the report's stderr: asyncio_probe keeps what it says, the rows say where the layer ran.
        logging.getLogger("aiofastnet").setLevel(logging.ERROR)
        return aiofastnet.loop_factory()()
    return asyncio.new_event_loop()


def _aio_run(end: Endpoint, main) -> dict:
    """Run ``main(end)`` on a fresh loop of the contender's kind and close the loop."""
    import asyncio

    loop = _aio_new_loop(end.contender)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main(end))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _aio_record_layer(transport) -> dict:
    """_record_layer for an asyncio transport: the socket's TLS_TX / TLS_RX, the negotiated
    version and cipher, and what the library says (ktls_ossl's KTLSStatus, aiofastnet's flags).
    Asked as soon as the connection is made: a transport closes its socket as soon as the peer's
    close_notify arrives, which may be in the same read as the last data."""
    sock = transport.get_extra_info("socket")
    info = {"tx_kernel": _kernel_direction(sock, kernel.Direction.TX.optname),
            "rx_kernel": _kernel_direction(sock, kernel.Direction.RX.optname)}
    cipher = transport.get_extra_info("cipher")
    if cipher:
        info["cipher"], info["version"] = cipher[0], cipher[1]
    status = transport.get_extra_info("ktls")
    if status is not None:
        info["ktls"] = {"tx": status.tx, "rx": status.rx, "tx_reason": status.tx_reason,
                        "rx_reason": status.rx_reason, "text": str(status)}
    send = transport.get_extra_info("ktls_send_enabled")
    if send is not None:  # aiofastnet's own account (BIO_get_ktls_send / BIO_get_ktls_recv)
        info["aiofastnet_ktls"] = {"tx": bool(send), "rx": bool(transport.get_extra_info("ktls_recv_enabled"))}
    return info


def _aio_listen_nodelay(end: Endpoint) -> None:
    """TCP_NODELAY on the listener, which accepted sockets inherit (Linux), so that it is on
    before the handshake, as on the client's side, for every loop: asyncio sets it only where the
    socket's proto is IPPROTO_TCP, which a listener from socket.create_server (proto 0) is not, and
    without it each handshake of asyncio's transport waited ~40 ms for a delayed ACK."""
    end.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _aio_nodelay(writer) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _aio_close(writer) -> None:
    """Close with close_notify both ways, bounded; a peer that closed first is no failure."""
    import asyncio

    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 10)
    except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
        pass


async def _aio_accept(end: Endpoint):
    """The server: asyncio.start_server on the parent's listener (the loop's own function, which
    each contender's loop routes to its transports); returns the first connection's streams after
    its handshake and stops listening."""
    import asyncio

    accepted = asyncio.get_running_loop().create_future()

    def connected(reader, writer):
        if accepted.done():
            writer.close()
        else:
            accepted.set_result((reader, writer))

    _aio_listen_nodelay(end)
    server = await asyncio.start_server(connected, sock=end.listener, ssl=end.context())
    try:
        reader, writer = await asyncio.wait_for(accepted, end.params["io_timeout"])
    finally:
        server.close()
    _aio_nodelay(writer)
    return reader, writer


async def _aio_connect(end: Endpoint, key: str = "ecdsa", version: str | None = None, nodelay: bool = True):
    import asyncio

    reader, writer = await asyncio.open_connection(HOST, end.port, ssl=end.context(key, version),
                                                   server_hostname=SERVER_NAME)
    if nodelay:
        _aio_nodelay(writer)
    return reader, writer


async def _aio_send_file(end: Endpoint, writer, source, size: int) -> tuple[int, str]:
    """loop.sendfile(transport, file), as aiohttp's FileResponse calls it; where the loop has no
    sendfile for this transport (uvloop; aiofastnet without kTLS TX) the application's read +
    write + drain, as aiohttp falls back. Returns (bytes sent, how)."""
    import asyncio

    loop = asyncio.get_running_loop()
    transport = writer.transport
    try:
        sent = await loop.sendfile(transport, source)
    except NotImplementedError:
        source.seek(0)
        chunk, sent = end.params["chunk"], 0
        while data := source.read(chunk):
            writer.write(data)
            await writer.drain()
            sent += len(data)
        return sent, "read + write + drain (the loop has no sendfile for this transport)"
    if sent is None:  # aiofastnet's sendfile returns nothing; the client counts and compares every byte
        sent = size
    loop_kind = end.contender.loop
    if loop_kind == "ktls":
        status = transport.get_extra_info("ktls")
        how = ("os.sendfile into kTLS" if status is not None and status.tx
               else "read + write (ktls_ossl.asyncio fallback: TX not in the kernel)")
    elif loop_kind == "aiofastnet":
        how = "SSL_sendfile (OpenSSL kTLS)" if transport.get_extra_info("ktls_send_enabled") else "aiofastnet"
    else:
        how = "read + write (asyncio's sendfile fallback)"
    return sent, how


def _aio_data_result(start, cpu0, size, layer) -> dict:
    elapsed = time.perf_counter() - start
    user, system = _cpu()
    return {"seconds": elapsed, "bytes": size, "user": user - cpu0[0], "sys": system - cpu0[1],
            "record_layer": layer}


async def _aio_file_server(end: Endpoint) -> dict:
    """Sender: the whole file with loop.sendfile, then the client's one-byte acknowledgement.
    Measured from the connection's first byte (its handshake is done) to the acknowledgement."""
    path, size = end.params["file_path"], end.params["file_bytes"]
    reader, writer = await _aio_accept(end)
    layer = _aio_record_layer(writer.transport)
    with open(path, "rb") as source:
        cpu0, start = _cpu(), time.perf_counter()
        sent, how = await _aio_send_file(end, writer, source, size)
        if sent != size:
            raise RuntimeError(f"sendfile sent {sent} of {size} bytes")
        if await reader.readexactly(1) != b"k":
            raise RuntimeError("no acknowledgement from the receiver")
        result = _aio_data_result(start, cpu0, size, layer)
    result["file_sent_by"] = how
    await _aio_close(writer)
    return result


async def _aio_file_client(end: Endpoint) -> dict:
    """Receiver: reads the file from the StreamReader and compares every byte with the file
    itself (a slice of an mmap: a copy and a memcmp, far cheaper than decryption), so that a lost,
    repeated or corrupted byte fails the run; then sends the acknowledgement."""
    import mmap

    path, size, chunk = end.params["file_path"], end.params["file_bytes"], end.params["chunk"]
    reader, writer = await _aio_connect(end)
    layer = _aio_record_layer(writer.transport)
    with open(path, "rb") as source, mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as expected:
        if len(expected) != size:
            raise RuntimeError(f"the file has {len(expected)} bytes, not {size}")
        cpu0, start = _cpu(), time.perf_counter()
        got = 0
        while got < size:
            data = await reader.read(chunk)
            if not data:
                raise EOFError(f"connection closed after {got} of {size} bytes")
            if expected[got:got + len(data)] != data:
                raise RuntimeError(f"the bytes received at offset {got} (+{len(data)}) differ from the file")
            got += len(data)
        writer.write(b"k")
        await writer.drain()
        result = _aio_data_result(start, cpu0, size, layer)
    result["verified_bytes"] = got
    await _aio_close(writer)
    return result


async def _aio_echo_server(end: Endpoint) -> dict:
    size, total = end.params["message"], end.params["latency_total"]
    reader, writer = await _aio_accept(end)
    layer = _aio_record_layer(writer.transport)
    cpu0 = _cpu()
    for _ in range(total):
        writer.write(await reader.readexactly(size))
    user, system = _cpu()
    result = {"cpu": user + system - sum(cpu0), "record_layer": layer}
    await _aio_close(writer)
    return result


async def _aio_echo_client(end: Endpoint) -> dict:
    size, total, warmup = end.params["message"], end.params["latency_total"], end.params["latency_warmup"]
    request = os.urandom(size)
    samples = []
    clock = time.perf_counter_ns
    reader, writer = await _aio_connect(end)
    layer = _aio_record_layer(writer.transport)
    for index in range(total):
        if index == warmup:
            cpu0 = _cpu()
        started = clock()
        writer.write(request)
        answer = await reader.readexactly(size)
        samples.append(clock() - started)
        if answer != request:
            raise RuntimeError("the echo differs from the request")
    user, system = _cpu()
    result = {"samples_ns": sorted(samples[warmup:]), "cpu": user + system - sum(cpu0), "record_layer": layer}
    await _aio_close(writer)
    return result


async def _aio_handshake_server(end: Endpoint) -> dict:
    """Every accepted connection: send one byte, read one, close (close_notify both ways); until
    the parent says stop. A failed connection fails the run (asyncio would only log it)."""
    import asyncio

    key, version = _handshake_variant(end)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_reader(end.control.fileno(), lambda: stop.done() or stop.set_result(None))
    state = {"count": 0, "layer": None, "error": None}
    cpu0 = _cpu()
    state["last"] = cpu0
    serving = set()

    async def connected(reader, writer):
        serving.add(asyncio.current_task())
        try:
            # Read before the client's byte: its close_notify may follow that byte at once, and
            # the transport then closes the socket.
            if state["layer"] is None:
                state["layer"] = _aio_record_layer(writer.transport)
            writer.write(b"k")
            if await reader.readexactly(1) != b"c":
                raise RuntimeError("no byte from the client after the handshake")
            await _aio_close(writer)
        except Exception:
            if state["error"] is None:
                state["error"] = traceback.format_exc()
            writer.close()
            return
        finally:
            serving.discard(asyncio.current_task())
        state["count"] += 1
        state["last"] = _cpu()

    _aio_listen_nodelay(end)
    server = await asyncio.start_server(connected, sock=end.listener, ssl=end.context(key, version))
    try:
        await stop
    finally:
        loop.remove_reader(end.control.fileno())
        server.close()
    # The client's last connection may still be closing here: let it end, bounded.
    if serving:
        _, pending = await asyncio.wait(set(serving), timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.sleep(0)
    if state["error"]:
        raise RuntimeError(f"a connection failed on the server:\n{state['error']}")
    return {"count": state["count"], "cpu": sum(state["last"]) - sum(cpu0), "record_layer": state["layer"]}


async def _aio_handshake_client(end: Endpoint) -> dict:
    key, version = _handshake_variant(end)
    end.context(key, version)
    duration, minimum = end.params["hs_seconds"], end.params["hs_minimum"]
    count, layer = 0, None
    cpu0, start = _cpu(), time.perf_counter()
    while True:
        reader, writer = await _aio_connect(end, key, version)
        if layer is None:
            layer = _aio_record_layer(writer.transport)
        if await reader.readexactly(1) != b"k":
            raise RuntimeError("no byte from the server after the handshake")
        writer.write(b"c")
        await _aio_close(writer)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= duration and count >= minimum:
            break
    user, system = _cpu()
    return {"count": count, "seconds": elapsed, "cpu": user + system - sum(cpu0), "record_layer": layer}


def _aio_role(main):
    def role(end: Endpoint) -> dict:
        return _aio_run(end, main)
    role.__name__ = main.__name__.lstrip("_")
    return role


ROLES = {
    "bulk": (bulk_server, bulk_client),
    "file": (file_server, file_client),
    "latency": (latency_server, latency_client),
    "handshake": (handshake_server, handshake_client),
    "memory": (memory_server, memory_client),
    "burst": (burst_server, burst_client),
    "aio-file": (_aio_role(_aio_file_server), _aio_role(_aio_file_client)),
    "aio-echo": (_aio_role(_aio_echo_server), _aio_role(_aio_echo_client)),
    "aio-handshake": (_aio_role(_aio_handshake_server), _aio_role(_aio_handshake_client)),
}


def _child(role, workload, contender, params, pki, listener, port, control) -> None:
    try:
        if role == "client":
            listener.close()
            listener = None
        end = Endpoint(role, contender, params, pki, listener, port, control)
        server_fn, client_fn = ROLES[workload]
        result = (server_fn if role == "server" else client_fn)(end)
        control.send(("done", result))
    except BaseException:
        try:
            control.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        control.close()


class BenchError(RuntimeError):
    pass


def run_trial(workload: str, contender: Contender, params: dict, pki: dict, timeout: float) -> dict:
    """One run: a server process and a client process on 127.0.0.1; returns both results."""
    mp = multiprocessing.get_context("fork")
    listener = socket.create_server((HOST, 0), backlog=min(4096, socket.SOMAXCONN))
    port = listener.getsockname()[1]
    pipes = {role: mp.Pipe() for role in ("server", "client")}
    processes = {}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for role in ("server", "client"):
            processes[role] = mp.Process(
                target=_child, name=f"bench-{workload}-{contender.name}-{role}", daemon=True,
                args=(role, workload, contender, params, pki, listener, port, pipes[role][1]))
            processes[role].start()
            pipes[role][1].close()
        listener.close()
        results = _collect(workload, pipes, processes, timeout)
        if workload == "burst":
            check_burst(results)
    finally:
        listener.close()
        for process in processes.values():
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for parent_end, child_end in pipes.values():
            parent_end.close()
            child_end.close()
    return results


def _collect(workload, pipes, processes, timeout) -> dict:
    deadline = time.monotonic() + timeout
    results, measured = {}, {}
    waiting = {pipes[role][0]: role for role in pipes}
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{workload}: no result within {timeout:.0f} s "
                             f"(still waiting for {', '.join(sorted(waiting.values()))})")
        for conn in multiprocessing.connection.wait(list(waiting), timeout=min(remaining, 1.0)):
            role = waiting[conn]
            try:
                kind, payload = conn.recv()
            except EOFError:
                raise BenchError(f"{workload}: the {role} process died "
                                 f"(exit code {processes[role].exitcode})") from None
            if kind == "error":
                raise BenchError(f"{workload}: the {role} failed:\n{payload}")
            if kind == "relay":  # burst: the ends take turns (listening, warmed, measured)
                for other in pipes:
                    if other != role:
                        _tell(pipes[other][0], payload)
                continue
            if kind == "measured":  # memory: both ends hold their connections until both measured
                measured[role] = payload
                if len(measured) == 2:
                    for other in pipes:
                        pipes[other][0].send("release")
                continue
            results[role] = payload
            del waiting[conn]
            if workload in ("handshake", "aio-handshake", "burst") and role == "client":
                _tell(pipes["server"][0], "stop")
    return results


def _tell(conn, message) -> None:
    """Send to a child; one that has died is reported when its own pipe is read (EOF), not here."""
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError):
        pass


# --- per-run metrics ------------------------------------------------------------------------------


def _percentile(sorted_values, fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def run_metrics(workload: str, results: dict) -> dict:
    server, client = results["server"], results["client"]
    if workload == "aio-file":
        gib = server["bytes"] / GIB
        return {"throughput_mib_s": server["bytes"] / MIB / server["seconds"],
                "server_cpu_s_per_gib": (server["user"] + server["sys"]) / gib,
                "server_user_s_per_gib": server["user"] / gib, "server_sys_s_per_gib": server["sys"] / gib,
                "client_cpu_s_per_gib": (client["user"] + client["sys"]) / gib}
    workload = {"aio-echo": "latency", "aio-handshake": "handshake"}.get(workload, workload)
    if workload in ("bulk", "file"):
        gib = server["bytes"] / GIB
        return {"throughput_mib_s": server["bytes"] / MIB / server["seconds"],
                "sender_user_s_per_gib": server["user"] / gib, "sender_sys_s_per_gib": server["sys"] / gib,
                "receiver_user_s_per_gib": client["user"] / gib, "receiver_sys_s_per_gib": client["sys"] / gib,
                "sender_cpu_s_per_gib": (server["user"] + server["sys"]) / gib,
                "receiver_cpu_s_per_gib": (client["user"] + client["sys"]) / gib}
    if workload == "handshake":
        count = client["count"]
        return {"handshakes_per_s": count / client["seconds"], "client_cpu_ms": client["cpu"] * 1e3 / count,
                "server_cpu_ms": server["cpu"] * 1e3 / max(server["count"], 1)}
    if workload == "latency":
        samples = client["samples_ns"]
        count = len(samples)
        return {"p50_us": _percentile(samples, 0.50) / 1e3, "p99_us": _percentile(samples, 0.99) / 1e3,
                "client_cpu_us": client["cpu"] * 1e6 / count, "server_cpu_us": server["cpu"] * 1e6 / count}
    if workload == "burst":
        counts, durations = client["counts"], client["durations"]
        metrics = {"clients_ok": counts["ok"], "failed": client["clients"] - counts["ok"],
                   "resets": counts["reset"], "refused": counts["refused"], "timeouts": counts["timeout"],
                   "bad_bodies": counts["bad_body"], "other_errors": counts["other"], "wall_s": client["wall"],
                   "slowest_client_s": durations[-1] if durations else 0.0,
                   "median_client_s": _percentile(durations, 0.50) if durations else 0.0,
                   "server_rss_growth_mib": max(0, server["peak_kib"] - server["rss0_kib"]) / 1024,
                   "server_rss_cold_mib": max(0, max(server["peak_kib"], server["peak_warm_kib"])
                                              - server["rss_cold_kib"]) / 1024,
                   "server_served": server["served"],
                   "accept_ms": server["accept_seconds"] * 1e3 / max(server["accepted"], 1),
                   "accept_max_ms": server["accept_max"] * 1e3}
        tcp_ext = server.get("tcp_ext")
        if tcp_ext is not None:
            metrics["listen_overflows"] = tcp_ext["ListenOverflows"]
            metrics["listen_drops"] = tcp_ext["ListenDrops"]
        return metrics
    if workload == "memory":
        metrics = {"server_rss_kib": server["rss_kib"], "client_rss_kib": client["rss_kib"]}
        if server.get("slab_kib") is not None:
            metrics["kernel_slab_kib"] = server["slab_kib"]
        return metrics
    raise ValueError(workload)


def summarize(values: list[float]) -> dict:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "runs": values}


def _layer_summary(results: dict) -> dict:
    return {role: results[role].get("record_layer") for role in ("server", "client")}


def describe_layer(layers: dict, sender: str = "server") -> str:
    """'kernel' / 'user space' / 'no TLS' per end: sender / receiver (server / client)."""
    def one(layer):
        if layer is None:
            return "?"
        if "version" not in layer:
            return "no TLS"
        tx, rx = layer["tx_kernel"], layer["rx_kernel"]
        if tx and rx:
            return "kernel"
        if tx or rx:
            return "kernel TX" if tx else "kernel RX"
        return "user space"
    receiver = "client" if sender == "server" else "server"
    return f"{one(layers.get(sender))} / {one(layers.get(receiver))}"


# --- the run ---------------------------------------------------------------------------------------


def _cases(workload: str, settings: Settings, contenders) -> list[tuple[Contender, dict]]:
    """(contender, variant) pairs of a workload, grouped by variant so that rows compare down a table."""
    contenders = [c for c in contenders if workload in c.workloads]
    if workload == "aio-handshake":  # what differs here is the loop and transport, not the key type
        return [(c, {"hs_version": v, "hs_key": "ecdsa"}) for v in settings.handshake_versions for c in contenders]
    if workload == "handshake":
        variants = [{"hs_version": v, "hs_key": k} for v in settings.handshake_versions
                    for k in settings.handshake_keys]
        cases = [(c, v) for v in variants for c in contenders if c.tls]
        return cases + [(c, {"hs_version": "-", "hs_key": "ecdsa"}) for c in contenders if not c.tls]
    return [(c, {"data_tls": v}) for v in settings.data_tls for c in contenders]


def _variant_label(variant: dict) -> str:
    if "data_tls" in variant:
        return f"TLS {variant['data_tls']}"
    if variant.get("hs_version") == "-":
        return "TCP connect only"
    return f"TLS {variant['hs_version']} {'ECDSA P-256' if variant['hs_key'] == 'ecdsa' else 'RSA-2048'}"


def _make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, "bench-payload.bin")
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            count = min(len(block), remaining)
            out.write(block[:count])
            remaining -= count
    with open(path, "rb") as warm:  # in the page cache before the first run
        while warm.read(4 * MIB):
            pass
    return path


def _file_directory(settings: Settings) -> str:
    if settings.file_dir:
        return settings.file_dir
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * settings.file_mib * MIB:
            return shm
    except OSError:
        pass
    return tempfile.gettempdir()


def _pyopenssl_versions(sender) -> None:
    """pyopenssl_probe's child: imports pyOpenSSL and sends what pyopenssl_probe returns."""
    try:
        import OpenSSL
        from OpenSSL import SSL
    except ImportError as exc:
        sender.send((None, f"pyOpenSSL cannot be imported ({exc}; pip install 'ktls_ossl[pyopenssl]')"))
    else:
        openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        sender.send((f"pyOpenSSL {OpenSSL.__version__}, {openssl}", None))
    finally:
        sender.close()


def pyopenssl_probe() -> tuple[str | None, str | None]:
    """pyOpenSSL's version and its OpenSSL's (cryptography's own build, not the system's), or why
    it cannot be imported (the pyOpenSSL contenders are then skipped): (version, None) or (None, why).

    Asked in a child process, so that this process, which every measured one is forked from, never
    imports pyOpenSSL: with it imported here, the ktls-after-finished handshakes under UML 7.2 took
    1.5 to 2 times the CPU (alternating runs, nothing else changed)."""
    mp = multiprocessing.get_context("fork")
    receiver, sender = mp.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    process = mp.Process(target=_pyopenssl_versions, args=(sender,), name="bench-pyopenssl-probe", daemon=True)
    process.start()
    sender.close()
    try:
        if receiver.poll(60):
            return receiver.recv()
        return None, "importing pyOpenSSL took more than 60 s"
    except EOFError:
        process.join(5)
        return None, f"the process importing pyOpenSSL died (exit code {process.exitcode})"
    finally:
        receiver.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)


def _aiofastnet_trial(pki: dict, version: str) -> dict:
    """One aiofastnet connection on 127.0.0.1 with SSL_OP_ENABLE_KTLS (as the aio-aiofastnet rows
    make it), one byte each way; where each end's record layer ran (getsockopt, and aiofastnet's
    own flags), and what aiofastnet logged about kTLS."""
    import asyncio
    import logging

    import aiofastnet

    contender = BY_NAME["aio-aiofastnet"]
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("aiofastnet").addHandler(handler)

    async def trial():
        layers = {}
        done = asyncio.get_running_loop().create_future()

        async def connected(reader, writer):
            try:
                layers["server"] = _aio_record_layer(writer.transport)
                writer.write(await reader.readexactly(1))
                await _aio_close(writer)
            finally:
                if not done.done():
                    done.set_result(None)

        server = await asyncio.start_server(connected, HOST, 0,
                                            ssl=make_context(contender, True, pki, "ecdsa", version))
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(HOST, port, server_hostname=SERVER_NAME,
                                                       ssl=make_context(contender, False, pki, "ecdsa", version))
        layers["client"] = _aio_record_layer(writer.transport)
        writer.write(b"p")
        await reader.readexactly(1)
        await _aio_close(writer)
        await asyncio.wait_for(done, 10)
        server.close()
        return layers

    loop = aiofastnet.loop_factory()()
    try:
        layers = loop.run_until_complete(asyncio.wait_for(trial(), 30))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        logging.getLogger("aiofastnet").removeHandler(handler)
    return {"server": layers.get("server"), "client": layers.get("client"), "log": messages}


def _asyncio_versions(sender, pki: dict, versions) -> None:
    """asyncio_probe's child: uvloop's and aiofastnet's versions, and aiofastnet's kTLS on trial."""
    out = {"uvloop": None, "uvloop_unavailable_reason": None, "aiofastnet": None,
           "aiofastnet_unavailable_reason": None, "aiofastnet_trials": {}, "aiofastnet_note": None}
    try:
        try:
            import uvloop
        except ImportError as exc:
            out["uvloop_unavailable_reason"] = f"uvloop cannot be imported ({exc})"
        else:
            out["uvloop"] = f"uvloop {uvloop.__version__}"
        try:
            import aiofastnet
        except ImportError as exc:
            out["aiofastnet_unavailable_reason"] = f"aiofastnet cannot be imported ({exc})"
        else:
            out["aiofastnet"] = f"aiofastnet {aiofastnet.__version__}"
            if _ensure_ktls_option_name():
                out["aiofastnet_note"] = (f"Python {platform.python_version()}'s ssl has no OP_ENABLE_KTLS, which "
                                          "aiofastnet reads to decide on kTLS: the bench defines it (OpenSSL's "
                                          "SSL_OP_ENABLE_KTLS) in the aiofastnet processes")
            if aiofastnet.OPENSSL_DYN_LIBS is None:
                out["aiofastnet_unavailable_reason"] = (
                    "aiofastnet runs its fallback engine here (CPython's _ssl is linked statically), which has "
                    "no kTLS")
            else:
                for version in versions:
                    try:
                        out["aiofastnet_trials"][version] = _aiofastnet_trial(pki, version)
                    except Exception as exc:
                        out["aiofastnet_trials"][version] = {"error": f"{type(exc).__name__}: {exc}"}
                kernel_somewhere = [v for v, t in out["aiofastnet_trials"].items()
                                    if any((t.get(end) or {}).get("tx_kernel") or (t.get(end) or {}).get("rx_kernel")
                                           for end in ("server", "client"))]
                if not kernel_somewhere:
                    said = sorted({m for t in out["aiofastnet_trials"].values() for m in t.get("log", ())}
                                  | {t["error"] for t in out["aiofastnet_trials"].values() if "error" in t})
                    out["aiofastnet_unavailable_reason"] = (
                        "aiofastnet could not turn its kTLS on here: a trial connection per TLS version had "
                        "neither direction in the kernel (getsockopt SOL_TLS)"
                        + (f"; aiofastnet said: {' / '.join(said)}" if said else ""))
    finally:
        sender.send(out)
        sender.close()


def asyncio_probe(pki: dict, versions) -> dict:
    """What the asyncio contenders need (uvloop, aiofastnet and whether aiofastnet's kTLS turns
    on), asked in a child process so that this one, which every measured one is forked from,
    never imports them (see pyopenssl_probe)."""
    mp = multiprocessing.get_context("fork")
    receiver, sender = mp.Pipe(duplex=False)
    sys.stdout.flush()
    sys.stderr.flush()
    process = mp.Process(target=_asyncio_versions, args=(sender, pki, tuple(versions)), name="bench-asyncio-probe",
                         daemon=True)
    process.start()
    sender.close()
    failed = {"uvloop": None, "aiofastnet": None, "aiofastnet_trials": {}, "aiofastnet_note": None}
    try:
        if receiver.poll(120):
            return receiver.recv()
        why = "the asyncio probe took more than 120 s"
    except EOFError:
        process.join(5)
        why = f"the asyncio probe process died (exit code {process.exitcode})"
    finally:
        receiver.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
    return dict(failed, uvloop_unavailable_reason=why, aiofastnet_unavailable_reason=why)


def machine_info() -> dict:
    cpu = "unknown"
    host_line = None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and cpu == "unknown":
                    cpu = value.strip()
                elif key == "host" and host_line is None:  # UML: the host's uname
                    host_line = value.strip()
    except OSError:
        pass
    report = kernel.probe()
    uml = in_uml()
    pyopenssl, pyopenssl_unavailable = pyopenssl_probe()
    return {
        "kernel_label": os.environ.get("KTLS_VM_KERNEL") or ("uml" if uml else "host"),
        "kernel_release": os.uname().release,
        "uml": uml,
        "uml_host": host_line,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mib": (_meminfo_kib("MemTotal") or 0) // 1024,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "openssl_ktls_ossl": OPENSSL_VERSION,
        "openssl_cpython": ssl.OPENSSL_VERSION,
        "pyopenssl": pyopenssl,
        "pyopenssl_unavailable_reason": pyopenssl_unavailable,
        "ktls_available": report.ulp_available,
        "ktls_unavailable_reason": None if report.ulp_available else report.ulp_message,
    }


def run(settings: Settings, progress: bool = True) -> dict:
    """Run every selected workload for every selected contender; returns the JSON document."""
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    info = machine_info()  # also runs (and caches) the kTLS probe before any child is forked
    contenders = [BY_NAME[name] for name in settings.contenders]
    skipped = {}
    if not kernel.probe().ulp_available:
        # The agent installs the keys in the kernel or fails the handshake: nothing to measure.
        skipped.update({c.name: f"the handshake agent needs kernel TLS ({kernel.probe().ulp_message})"
                        for c in contenders if c.library == "agent"})
    if info["pyopenssl"] is None:  # an optional dependency
        skipped.update({c.name: info["pyopenssl_unavailable_reason"] for c in contenders
                        if c.library == "pyopenssl"})
    scratch = tempfile.mkdtemp(prefix="ktls-bench-")
    try:
        pki = make_pki(scratch)
        if any(c.loop for c in contenders if c.name not in skipped) and set(settings.workloads) & set(ASYNCIO_WORKLOADS):
            info["asyncio"] = asyncio_probe(pki, sorted({*settings.data_tls, *settings.handshake_versions}))
            for c in contenders:
                if c.loop in ("uvloop", "aiofastnet") and not info["asyncio"][c.loop]:
                    skipped[c.name] = info["asyncio"][f"{c.loop}_unavailable_reason"]
                elif c.loop == "aiofastnet" and info["asyncio"]["aiofastnet_unavailable_reason"]:
                    skipped[c.name] = info["asyncio"]["aiofastnet_unavailable_reason"]
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    contenders = [c for c in contenders if c.name not in skipped]
    plan = [case for w in settings.workloads for case in _cases(w, settings, contenders)]
    # On stderr: stdout is the report, which is often redirected while a person watches.
    bar = Progress(len(plan) * settings.runs + len(settings.workloads) * settings.warmup,
                   f"bench [{info['kernel_label']}]", stream=sys.stderr, unit="runs", enabled=progress)
    document = {"schema": SCHEMA, "started": started_at.isoformat(timespec="seconds"), "machine": info,
                "settings": dataclasses.asdict(settings), "contenders": [
                    {"name": c.name, "label": c.label} for c in contenders], "skipped_contenders": skipped,
                "references": {"cpython": CPYTHON_REFERENCE, "openssl_ktls": OPENSSL_KTLS_REFERENCE,
                               "cpython_for": CPYTHON_REFERENCE_FOR},
                "workloads": {}}
    file_dir = None
    agents: list = []
    try:
        params = {"data_tls": settings.data_tls[0], "chunk": settings.chunk_kib * 1024, "message": 100,
                  "bulk_bytes": settings.bulk_mib * MIB, "file_bytes": settings.file_mib * MIB,
                  "latency_total": settings.latency_count + max(10, settings.latency_count // 10),
                  "latency_warmup": max(10, settings.latency_count // 10),
                  "hs_seconds": settings.handshake_seconds, "hs_minimum": 3,
                  "connections": settings.connections, "io_timeout": min(60.0, settings.trial_timeout),
                  "burst_clients": settings.burst_clients, **burst_params()}
        if "handshake" in settings.workloads and any(c.library == "agent" for c in contenders):
            agents = _start_agents(scratch, pki, settings.handshake_keys)
        if {"file", "aio-file"} & set(settings.workloads):
            file_dir = tempfile.mkdtemp(prefix="ktls-bench-", dir=_file_directory(settings))
            params["file_path"] = _make_file(file_dir, params["file_bytes"])
        for workload in settings.workloads:
            rows = _measure_workload(workload, contenders, settings, params, pki, bar)
            document["workloads"][workload] = {"title": WORKLOAD_TITLES[workload], "rows": rows,
                                               "detail": _workload_detail(workload, settings)}
            add_ratios(document, workload)
    finally:
        bar.close(f"bench [{info['kernel_label']}] {bar.done} runs in {time.monotonic() - started:.0f} s")
        for agent in agents:
            agent.terminate()
            agent.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)
        if file_dir:
            shutil.rmtree(file_dir, ignore_errors=True)
    document["seconds"] = time.monotonic() - started
    document["targets"] = evaluate_targets(document)
    return document


def _start_agents(directory: str, pki: dict, keys) -> list:
    """Handshake agents for the agent contenders, per key type one for the server ends (holding
    the key) and one for the client ends (so that, as with the other contenders, the two ends'
    handshakes run in separate processes); their socket paths go into ``pki``."""
    import subprocess

    from .agent_server import start_process

    processes = []
    for key in keys:
        for role in ("server", "client"):
            path = os.path.join(directory, f"agent-{key}-{role}.sock")
            try:
                processes.append(start_process(path, [(pki[key]["chain"], pki[key]["key"])], ca=pki[key]["ca"],
                                               options=("--max-per-uid", "1024"), stderr=subprocess.DEVNULL))
            except RuntimeError as exc:
                raise BenchError(str(exc)) from None
            pki[key][f"agent_{role}"] = path
    return processes


def _measure_workload(workload, contenders, settings, params, pki, bar) -> list[dict]:
    """All runs of one workload, interleaved (run 1 of every contender, then run 2, ...) so that
    a disturbance on the machine spreads over the contenders instead of hitting one of them."""
    cases = _cases(workload, settings, contenders)
    runs = [[] for _ in cases]
    layers = [None] * len(cases)
    extras = [{} for _ in cases]
    failures = [None] * len(cases)
    for index in range(settings.warmup if cases else 0):
        contender, variant = cases[0]
        bar.advance(text=f"{workload} warm-up {index + 1}/{settings.warmup}: {contender.name}")
        try:
            run_trial(workload, contender, dict(params, **variant), pki, settings.trial_timeout)
        except BenchError:
            pass  # the measured runs will report it
    for index in range(settings.runs):
        for case, (contender, variant) in enumerate(cases):
            label = _variant_label(variant)
            bar.advance(text=f"{workload} run {index + 1}/{settings.runs}: {label + ' ' if label else ''}{contender.name}")
            if failures[case]:
                continue
            try:
                results = run_trial(workload, contender, dict(params, **variant), pki, settings.trial_timeout)
            except BenchError as exc:
                failures[case] = str(exc)
                continue
            runs[case].append(run_metrics(workload, results))
            layers[case] = _layer_summary(results)
            _collect_extras(extras[case], results)
    rows = []
    for case, (contender, variant) in enumerate(cases):
        label = _variant_label(variant)
        keys = runs[case][0] if runs[case] else {}
        row = {"contender": contender.name, "label": contender.label, "variant": variant or None,
               "variant_label": label or None, "record_layer": layers[case],
               "record_layer_text": describe_layer(layers[case]) if layers[case] else None,
               "metrics": {key: summarize([r.get(key) for r in runs[case]]) for key in keys}}
        row.update(extras[case])
        if failures[case]:
            row["error"] = failures[case]
        rows.append(row)
    return rows


def _collect_extras(extras: dict, results: dict) -> None:
    """What a run reports besides its figures: how the asyncio file server sent the file (every
    run's way, deduplicated), the fewest bytes a client compared with the file, the burst's errors."""
    how = results["server"].get("file_sent_by")
    if how is not None:
        ways = extras.setdefault("file_sent_by", [])
        if how not in ways:
            ways.append(how)
    verified = results["client"].get("verified_bytes")
    if verified is not None:
        extras["verified_bytes"] = min(verified, extras.get("verified_bytes", verified))
    # burst: the failed clients' exceptions and the server's accept-thread and handler errors, by
    # class, summed over the runs; the kernel settings that decide what an overflowing queue does.
    for role, key, name in (("client", "errors", "client_errors"),
                            ("server", "accept_errors", "accept_errors"),
                            ("server", "handler_errors", "handler_errors")):
        table = results[role].get(key)
        if table is not None:
            total = extras.setdefault(name, {})
            for error, count in table.items():
                total[error] = total.get(error, 0) + count
    if results["server"].get("tcp_sysctls") is not None:
        extras["tcp_sysctls"] = results["server"]["tcp_sysctls"]
        extras["server_peak_from"] = results["server"]["peak_from"]


def _workload_detail(workload: str, settings: Settings) -> str:
    tls = ("AES-256-GCM in both TLS versions (TLS 1.2: ECDHE-ECDSA-AES256-GCM-SHA384, TLS 1.3: "
           "TLS_AES_256_GCM_SHA384), ECDSA P-256 certificate")
    if workload == "bulk":
        return (f"{settings.bulk_mib} MiB one way, sendall of {settings.chunk_kib} KiB chunks -> "
                f"recv_into a {settings.chunk_kib} KiB buffer; {tls}")
    if workload == "file":
        return (f"{settings.file_mib} MiB file (page cache) with sock.sendfile() -> recv_into; {tls}. "
                "ktls_ossl: os.sendfile with TX in the kernel, SSL_sendfile under AFTER_CCS, else read + "
                "send; CPython 3.11's SSLSocket.sendfile always reads + sends; pyOpenSSL has no sendfile: "
                f"read + sendall of {settings.chunk_kib} KiB blocks; ktls_ossl.pyopenssl's sendfile: "
                "os.sendfile with TX in the kernel, else read + send")
    if workload == "handshake":
        return (f"sequential full handshakes for {settings.handshake_seconds:g} s per run: TCP connect, "
                "handshake with certificate verification, the key handoff (ktls_ossl AFTER_FINISHED), "
                "one byte of application data each way (so that neither end closes before the other "
                "has handed off: the kernel attaches the tls ULP to established connections only), "
                "close; default cipher per version; TCP_NODELAY on both "
                "ends (without it, OpenSSL's kTLS option stalls every TLS 1.2 handshake for about 40 ms: "
                "it writes ChangeCipherSpec and Finished in separate segments, so Nagle waits for the "
                "peer's delayed ACK)")
    if workload == "latency":
        return (f"{settings.latency_count} round trips of 100 bytes each way (after "
                f"{max(10, settings.latency_count // 10)} unmeasured ones), one connection; {tls}")
    aio = ("both ends asyncio streams (asyncio.start_server on the bench's listener, "
           "asyncio.open_connection), each in its own process with the contender's loop")
    if workload == "aio-file":
        return (f"{settings.file_mib} MiB file (page cache) per connection with "
                "loop.sendfile(transport, file) -> StreamReader.read, the client comparing every byte with "
                f"the file; {aio}; {tls}. ktls_ossl.asyncio: os.sendfile with TX in the kernel; stock asyncio: "
                "its read + write fallback; uvloop (no loop.sendfile): read + write + drain of "
                f"{settings.chunk_kib} KiB blocks, as aiohttp falls back; aiofastnet: SSL_sendfile with kTLS TX. "
                "Server CPU: its process's user+sys from the first byte to the client's acknowledgement")
    if workload == "aio-echo":
        return (f"{settings.latency_count} round trips of 100 bytes each way (after "
                f"{max(10, settings.latency_count // 10)} unmeasured ones), one connection, "
                f"write -> readexactly on both ends; {aio}; {tls}")
    if workload == "aio-handshake":
        return (f"sequential full handshakes for {settings.handshake_seconds:g} s per run: "
                "asyncio.open_connection (TCP connect, handshake with certificate verification, the key "
                "handoff for ktls_ossl), one byte each way, writer.close() + wait_closed() (close_notify "
                f"both ways); the server's streams answer each connection; {aio}; ECDSA P-256, default "
                "cipher per version")
    if workload == "burst":
        return (f"{settings.burst_clients} client threads released at once by a barrier, each one "
                "http.client.HTTPS GET (timeout 30 s) of a 1 KiB body, checked (status, length, SHA-256), "
                "against http.server.ThreadingHTTPServer with its default listen backlog "
                "(request_queue_size 5) and TLS added as its users add it (httpd.socket = "
                "ctx.wrap_socket(httpd.socket, server_side=True)), so the handshakes (and ktls_ossl's key "
                "handoff) run in the accept thread; after one warm-up request. 'failed': clients without "
                "a good response (resets, incl. TLS EOF during the handshake; refused; timeouts; other). "
                "Wall: barrier release to the last client's end. Server peak RSS growth: VmHWM (reset "
                "after the warm-up) - VmRSS before the burst; from a cold start: the same peak (or the "
                "warm-up's, if higher) - VmRSS before the warm-up request, i.e. with what the first "
                "connection sets up. Accept thread ms/conn: its time in "
                "socketserver's get_request (accept + handshake) per accepted connection, and the longest "
                "(one client slow to send its ClientHello holds up every connection behind it). ListenOverflows: "
                f"the network namespace's TcpExt counter over the burst; {tls}")
    return (f"{settings.connections} idle established connections at once; RSS growth of each end's "
            f"process divided by the count; {tls}")


# --- ratios and targets ------------------------------------------------------------------------------


def _row(document, workload, contender, variant):
    for row in document["workloads"].get(workload, {}).get("rows", []):
        if row["contender"] == contender and row["variant"] == variant:
            return row
    return None


def _median(row, key):
    if row is None or row.get("error"):
        return None
    return row["metrics"].get(key, {}).get("median")


def add_ratios(document: dict, workload: str) -> None:
    """ratio = this row's median / the reference row's median (same run, same variant)."""
    references = {"cpython": CPYTHON_REFERENCE_FOR[workload], "openssl_ktls": OPENSSL_KTLS_REFERENCE[workload]}
    for row in document["workloads"][workload]["rows"]:
        row["ratios"] = {}
        for name, reference in references.items():
            ref = _row(document, workload, reference, row["variant"])
            ratios = {}
            for key in row["metrics"]:
                mine, theirs = _median(row, key), _median(ref, key)
                if mine is not None and theirs:
                    ratios[key] = mine / theirs
            row["ratios"][name] = {"reference": reference, "values": ratios}


def _fully_kernel(row) -> bool:
    layers = (row or {}).get("record_layer") or {}
    ends = [layers.get("server"), layers.get("client")]
    return all(end and end.get("tx_kernel") and end.get("rx_kernel") for end in ends)


def evaluate_targets(document: dict) -> list[dict]:
    """The issue's targets, evaluated on this run (reported, never asserted)."""
    out = []
    uml = document["machine"]["uml"]

    def add(name, goal, row, name_ref, key, ok, notes=(), fallback_too=False):
        """``fallback_too``: the target holds for the user-space fallback as well (issue 18:
        handshakes, latency, memory and the burst on a kernel without kTLS), so a row that fell
        back is judged, with a note, instead of being n/a."""
        value = None
        if row is not None and not row.get("error"):
            value = row.get("ratios", {}).get(name_ref, {}).get("values", {}).get(key)
        notes = [n for n in notes if n]
        met = None if value is None else ok(value)
        if row is not None and row.get("error"):
            notes = ["the run failed"]
        elif row is not None and not _fully_kernel(row):
            if fallback_too:
                notes = ["user-space fallback (no kTLS here)"] + notes
            else:
                notes = ["n/a: AFTER_FINISHED fell back to user space here"]
                met = None
        out.append({"target": name, "goal": goal, "value": value, "met": met, "note": "; ".join(notes)})

    def rows(workload):
        data = document["workloads"].get(workload) or {}
        return [r for r in data.get("rows", []) if r["contender"] == "ktls-after-finished"]

    def reference_note(workload, row):
        ref = _row(document, workload, OPENSSL_KTLS_REFERENCE[workload], row["variant"])
        if ref is not None and _fully_kernel(row) and not _fully_kernel(ref):
            return f"the OpenSSL kTLS reference ran {ref.get('record_layer_text')} (server / client)"
        return ""

    for workload in ("bulk", "file"):
        for row in rows(workload):
            add(f"{workload} {row['variant_label']}: AFTER_FINISHED throughput vs OpenSSL kTLS "
                f"({OPENSSL_KTLS_REFERENCE[workload]})", ">= 1.00x", row, "openssl_ktls", "throughput_mib_s",
                lambda v: v >= 1.0, [reference_note(workload, row)])
    for row in rows("file"):
        if uml:
            add(f"file {row['variant_label']}: AFTER_FINISHED sender CPU/GiB vs CPython ssl "
                "(user+sys: UML cannot split them)", "user CPU <= 0.10x", row, "cpython",
                "sender_cpu_s_per_gib", lambda v: None,
                ["n/a: a proxy only, it includes the kernel's encryption (generic C under UML), "
                 "which the target leaves out"])
        else:
            add(f"file {row['variant_label']}: AFTER_FINISHED sender user CPU/GiB vs CPython ssl", "<= 0.10x",
                row, "cpython", "sender_user_s_per_gib", lambda v: v <= 0.10)
    # Issue 18: handshakes, latency and idle memory at least as good as CPython's ssl, on a kTLS
    # kernel (handoff included) and in the user-space fallback.
    for row in rows("handshake"):
        add(f"handshake {row['variant_label']}: AFTER_FINISHED (with handoff) vs CPython ssl", ">= 1.00x",
            row, "cpython", "handshakes_per_s", lambda v: v >= 1.0, fallback_too=True)
    for row in rows("latency"):
        for key in ("p50_us", "p99_us"):
            add(f"latency {row['variant_label']} {key[:3]}: AFTER_FINISHED vs CPython ssl", "<= 1.00x",
                row, "cpython", key, lambda v: v <= 1.0, fallback_too=True)
    for row in rows("memory"):
        for key, end in (("server_rss_kib", "server"), ("client_rss_kib", "client")):
            add(f"memory {row['variant_label']}: idle RSS per connection ({end}) vs CPython ssl", "<= 1.00x",
                row, "cpython", key, lambda v: v <= 1.0, fallback_too=True)

    # The burst (a ThreadingHTTPServer with backlog 5): no more failed connections than CPython's
    # ssl, compared as counts (CPython's is often 0, which no ratio can be taken against), and no
    # more peak memory growth.
    for row in rows("burst"):
        ref = _row(document, "burst", CPYTHON_REFERENCE_FOR["burst"], row["variant"])
        ours, theirs = _median(row, "failed"), _median(ref, "failed")
        before = len(out)
        add(f"burst {row['variant_label']}: failed connections with backlog 5 vs CPython ssl",
            "<= CPython's", row, "cpython", "failed", lambda v: None, fallback_too=True)
        target = out[before]
        if ours is not None and theirs is not None:
            target["value"] = ours / theirs if theirs else None
            target["value_text"] = f"{ours:g} vs {theirs:g}"
            if target["met"] is None and "the run failed" not in target["note"]:
                target["met"] = ours <= theirs
        add(f"burst {row['variant_label']}: server RSS growth vs CPython ssl", "<= 1.00x", row, "cpython",
            "server_rss_growth_mib", lambda v: v <= 1.0, fallback_too=True)

    # The asyncio section (issue 17): ahead of aiofastnet (OpenSSL's kTLS) on serving files and
    # server CPU per GiB, no worse than asyncio's own SSL on echo latency.
    def aio_rows(workload):
        data = document["workloads"].get(workload) or {}
        return [r for r in data.get("rows", []) if r["contender"] == "aio-ktls"]

    def aiofastnet_note(workload, row):
        ref = _row(document, workload, OPENSSL_KTLS_REFERENCE[workload], row["variant"])
        if ref is None:
            skipped = document.get("skipped_contenders", {}).get(OPENSSL_KTLS_REFERENCE[workload])
            return f"aiofastnet did not run ({skipped})" if skipped else "aiofastnet did not run"
        if _fully_kernel(row) and not _fully_kernel(ref):
            return f"aiofastnet ran {ref.get('record_layer_text')} (server / client)"
        return ""

    for row in aio_rows("aio-file"):
        add(f"aio-file {row['variant_label']}: ktls_ossl.asyncio throughput vs aiofastnet", "> 1.00x", row,
            "openssl_ktls", "throughput_mib_s", lambda v: v > 1.0, [aiofastnet_note("aio-file", row)])
        add(f"aio-file {row['variant_label']}: ktls_ossl.asyncio server CPU/GiB (user+sys) vs aiofastnet",
            "< 1.00x", row, "openssl_ktls", "server_cpu_s_per_gib", lambda v: v < 1.0,
            [aiofastnet_note("aio-file", row)])
    for row in aio_rows("aio-echo"):
        for key in ("p50_us", "p99_us"):
            add(f"aio-echo {row['variant_label']} {key[:3]}: ktls_ossl.asyncio vs asyncio ssl", "<= 1.00x",
                row, "cpython", key, lambda v: v <= 1.0)
    return out


# --- output --------------------------------------------------------------------------------------


def target_value_text(target: dict) -> str:
    """A target's figure: its own text (counts compared), else the ratio."""
    if target.get("value_text"):
        return target["value_text"]
    return "-" if target["value"] is None else f"{target['value']:.2f}x"


def _fmt(value) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(metric: dict | None) -> str:
    if not metric or metric.get("median") is None:
        return "-"
    median, low, high = metric["median"], metric["min"], metric["max"]
    if all(isinstance(v, int) for v in metric["runs"]):  # counts (the burst's clients)
        return f"{median:g}" if low == high else f"{median:g} ({low:g}–{high:g})"
    if len([v for v in metric["runs"] if v is not None]) <= 1:
        return _fmt(median)
    return f"{_fmt(median)} ({_fmt(low)}–{_fmt(high)})"


def _ratio_cell(row, name, key) -> str:
    value = row.get("ratios", {}).get(name, {}).get("values", {}).get(key)
    return "-" if value is None else f"{value:.2f}x"


def kernel_title(machine: dict) -> str:
    if machine["uml"]:
        return f"VM kernel {machine['kernel_label']} (User-Mode Linux, Linux {machine['kernel_release']})"
    return f"Host kernel (Linux {machine['kernel_release']})"


def render_markdown(document: dict, heading: str = "##") -> str:
    machine, settings = document["machine"], document["settings"]
    lines = [f"{heading} {kernel_title(machine)}", ""]
    if machine["ktls_available"]:
        lines.append("kTLS available: the kernel rows below were carried by the kernel where the "
                     "'record layer' column says so (checked with getsockopt on each socket).")
    else:
        lines.append(f"**No kTLS on this kernel** ({machine['ktls_unavailable_reason']}): the "
                     "AFTER_FINISHED, AFTER_CCS, CPython+kTLS, ktls_ossl.pyopenssl and ktls_ossl.asyncio rows "
                     "fell back to user-space OpenSSL (pyOpenSSL's for ktls_ossl.pyopenssl) and are labelled "
                     "so; they measure the fallback, not kernel TLS.")
    cpu = machine["cpu"] + (f" (UML guest; host: {machine['uml_host']})" if machine["uml"] else "")
    lines += ["", f"- machine: {cpu}, {machine['cpus']} CPU(s), {machine['memory_mib']} MiB; "
                  f"{machine['machine']}, Python {machine['python']}",
              f"- OpenSSL: {machine['openssl_ktls_ossl']} (ktls_ossl), {machine['openssl_cpython']} (CPython ssl)"
              + (f"; {machine['pyopenssl']} (the pyOpenSSL rows)" if machine.get("pyopenssl") else ""),
              f"- run: {document['started']}, preset `{settings['preset']}`, {settings['runs']} run(s) per "
              f"figure (after {settings['warmup']} unmeasured warm-up run(s) per workload), "
              f"{document.get('seconds', 0):.0f} s; figures are median (min–max)",
              "- every run: a fresh server process and client process (each measures its own CPU with "
              "getrusage), one connection on 127.0.0.1, blocking sockets (the asyncio section: non-blocking, "
              "on each end's event loop), TCP_NODELAY on both ends"]
    aio = machine.get("asyncio")
    if aio:
        libraries = ", ".join(v for v in (aio.get("uvloop"), aio.get("aiofastnet")) if v)
        lines.append(f"- asyncio section: {libraries or 'neither uvloop nor aiofastnet'}"
                     + _aiofastnet_trial_text(aio))
        if aio.get("aiofastnet_note"):
            lines.append(f"- {aio['aiofastnet_note']}")
    lines += [f"- skipped: {name} ({reason})" for name, reason in document.get("skipped_contenders", {}).items()]
    lines.append("")
    if machine["uml"]:
        lines += ["Under UML the kernel's crypto is generic C and system calls are slow: compare the "
                  "contenders of this section with each other (ratios), never with another kernel's "
                  "figures. UML accounts all of a guest process's CPU time as user time (system time "
                  "stays 0), so CPU is shown as user+sys per end, and that total includes the kernel's "
                  "encryption on the kTLS rows.", ""]
    asyncio_heading = False
    for index, workload in enumerate(WORKLOADS, 1):
        data = document["workloads"].get(workload)
        if not data:
            continue
        if workload in ASYNCIO_WORKLOADS and not asyncio_heading:
            asyncio_heading = True
            lines += [f"{heading}# asyncio section", "", ASYNCIO_SECTION_NOTE, ""]
        lines += [f"{heading}# {index}. {data['title']}", "", data["detail"] + ".", ""]
        metrics = table_metrics(workload, machine["uml"])
        columns = ["contender", "variant" if workload in ("handshake", "aio-handshake") else "TLS"]
        columns.append("record layer (server / client)")
        for key, title, _, with_ratio in metrics:
            columns.append(title)
            if with_ratio:
                columns.append(RATIO_TITLES[workload])
        if workload == "aio-file":
            columns.append("file sent by (server)")
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in data["rows"]:
            cells = [row["label"], row["variant_label"] or "-"]
            if row.get("error"):
                cells.append("FAILED")
                cells += ["-"] * (len(columns) - len(cells))
                lines.append("| " + " | ".join(cells) + " |")
                continue
            cells.append(row["record_layer_text"] or "-")
            for key, _, _, with_ratio in metrics:
                cells.append(_cell(row["metrics"].get(key)))
                if with_ratio:
                    cells.append(f"{_ratio_cell(row, 'cpython', key)} / {_ratio_cell(row, 'openssl_ktls', key)}")
            if workload == "aio-file":
                cells.append("; ".join(row.get("file_sent_by") or ["-"]))
            lines.append("| " + " | ".join(cells) + " |")
        errors = [row for row in data["rows"] if row.get("error")]
        for row in errors:
            first = row["error"].strip().splitlines()[-1]
            lines.append(f"\n{row['label']} {row['variant_label'] or ''}: failed: `{first}`")
        notes = {
            "bulk": "Ratios: this row's median / the median of the reference in the same TLS version "
                    "(throughput: higher is better; CPU: lower is better). OpenSSL kTLS reference: CPython "
                    "ssl + SSL_OP_ENABLE_KTLS. OpenSSL 3.0 offloads only the sending direction of TLS 1.3 "
                    "to the kernel (the record layer column shows 'kernel TX'); TLS 1.2 is offloaded both "
                    "ways, so TLS 1.2 is the like-for-like comparison of the kernel data paths. Plain TCP "
                    "rows ran with each TLS version's set of runs.",
            "file": "OpenSSL kTLS reference: ktls_ossl AFTER_CCS, whose sendfile is OpenSSL's SSL_sendfile.",
            "handshake": "One connection at a time; CPU ms per handshake is each end's process CPU "
                         "divided by the handshakes it completed.",
            "latency": "Lower is better.",
            "aio-file": "Ratios: against asyncio's own SSL (aio-stock) and aiofastnet with OpenSSL's kTLS "
                        "(aio-aiofastnet), in the same TLS version; MiB/s higher is better, CPU lower. Every "
                        "run's client compared all the bytes it received with the file.",
            "aio-echo": "Lower is better; ratios against aio-stock / aio-aiofastnet in the same TLS version.",
            "aio-handshake": "One connection at a time; ratios against aio-stock / aio-aiofastnet.",
            "burst": "Each run a fresh server and client process; ratios against CPython ssl / ktls_ossl "
                     "AFTER_CCS (OpenSSL's kTLS) in the same TLS version, lower is better; failure counts "
                     "are compared as counts in the targets. A client that hangs or a server that dies "
                     "fails the run (FAILED), it is not counted as a failed connection.",
            "memory": "RSS is user-space memory only: keys and record state that kTLS keeps in the "
                      "kernel show in the slab column (system-wide /proc/meminfo Slab growth, both "
                      "ends together; noisy on a shared host, and it stayed at 0 under the 7.2 UML kernel, whose "
                      "slab caches absorbed the growth: there 0 means 'not measured').",
        }
        lines += ["", notes[workload], ""]
        if workload == "burst":
            lines += _burst_notes(data["rows"], machine)
        if workload == "handshake" and any(row["contender"].startswith("pyopenssl") for row in data["rows"]):
            lines += [_pyopenssl_handshake_note(data["rows"], machine), ""]
    targets = document.get("targets") or []
    if targets:
        lines += [f"{heading}# Targets", "", "| target | goal | this run | met |", "|---|---|---|---|"]
        for target in targets:
            value = target_value_text(target)
            met = {True: "yes", False: "no", None: "-"}[target["met"]]
            if target["note"]:
                met += f" ({target['note']})"
            lines.append(f"| {target['target']} | {target['goal']} | {value} | {met} |")
        lines.append("")
    return "\n".join(lines)


def _burst_notes(rows: list[dict], machine: dict) -> list[str]:
    """Under the burst table: the kernel settings, where ListenOverflows comes from, and what failed."""
    lines = []
    sysctls = next((row["tcp_sysctls"] for row in rows if row.get("tcp_sysctls")), None)
    if sysctls:
        lines.append("Kernel settings (what a full listen queue does to a connection): "
                     + ", ".join(f"{name}={value}" for name, value in sysctls.items()) + ".")
    where = ("the VM's own network namespace (only this bench's traffic)" if machine["uml"] else
             "this network namespace: on a shared host it counts other listeners too")
    lines.append(f"ListenOverflows: SYNs and handshake ACKs the full accept queue dropped, from {where}.")
    for row in rows:
        parts = []
        for key, title in (("client_errors", "clients"), ("accept_errors", "server accept thread"),
                           ("handler_errors", "server handlers")):
            if row.get(key):
                parts.append(f"{title}: " + ", ".join(f"{name} x{count}" for name, count in
                                                      sorted(row[key].items(), key=lambda item: -item[1])))
        if parts:
            lines.append(f"- {row['label']} {row['variant_label']} (all runs): " + "; ".join(parts))
    return lines + [""]


ASYNCIO_SECTION_NOTE = (
    "Both ends run asyncio's streams on an event loop, server and client in separate processes: "
    "ktls_ossl.asyncio (ktls_ossl.asyncio.new_event_loop(), a ktls_ossl.SSLContext, AFTER_FINISHED), "
    "stock asyncio with ssl.SSLContext, uvloop with ssl.SSLContext, and aiofastnet (aio-libs' C "
    "transports on asyncio's loop, with SSL_OP_ENABLE_KTLS so that OpenSSL puts the keys in the "
    "kernel where it can). The record layer column is read from each end's socket (getsockopt SOL_TLS "
    "TLS_TX / TLS_RX), not taken from the library. Ratios: × asyncio ssl = this row / aio-stock, "
    "× aiofastnet = this row / aio-aiofastnet (medians of this run).")


def _aiofastnet_trial_text(aio: dict) -> str:
    """'; aiofastnet's kTLS on trial: TLS 1.2 kernel / kernel, ...' from asyncio_probe's trials."""
    trials = aio.get("aiofastnet_trials") or {}
    parts = []
    for version, trial in sorted(trials.items()):
        if "error" in trial:
            parts.append(f"TLS {version} failed ({trial['error']})")
        else:
            parts.append(f"TLS {version} {describe_layer(trial)}")
    return f"; aiofastnet's kTLS on a trial connection (server / client): {', '.join(parts)}" if parts else ""


def _pyopenssl_handshake_note(rows: list[dict], machine: dict) -> str:
    """What the pyOpenSSL rows' handshakes do differently from the other rows'."""
    groups = sorted({f"{layer['version']} {layer['group']}" for row in rows
                     if row["contender"].startswith("pyopenssl")
                     for layer in (row.get("record_layer") or {}).values() if layer and layer.get("group")})
    return (f"pyOpenSSL rows: the handshake is run by cryptography's OpenSSL ({machine.get('pyopenssl')}), "
            "with its default key exchange" + (f" (negotiated: {', '.join(groups)})" if groups else "")
            + ", where the other rows use the system OpenSSL's; the client verifies the certificate chain "
            "but not the host name (pyOpenSSL has no API for that). ktls_ossl.pyopenssl AFTER_FINISHED "
            "includes the key handoff.")


CHART_GROUPS = [("bulk", "throughput_mib_s", "bulk: MiB/s (higher is better)"),
                ("bulk", "cpu", "bulk: CPU s/GiB (lower is better)"),
                ("file", "throughput_mib_s", "file (sendfile): MiB/s"),
                ("file", "cpu", "file (sendfile): CPU s/GiB")]
CPU_PARTS = [("sender_user_s_per_gib", "sender user"), ("sender_sys_s_per_gib", "sender sys"),
             ("receiver_user_s_per_gib", "receiver user"), ("receiver_sys_s_per_gib", "receiver sys")]
CPU_PARTS_UML = [("sender_cpu_s_per_gib", "sender (user+sys)"), ("receiver_cpu_s_per_gib", "receiver (user+sys)")]


def render_chart(documents: list[dict], path: str) -> bool:
    """A PNG with throughput and CPU per GiB for each run (one row of panels per kernel).

    Returns False, with a note on stderr, when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("bench: matplotlib is not installed (pip install 'ktls_ossl[bench]'); "
                         f"chart {path} skipped\n")
        return False
    documents = [d for d in documents if any(w in d["workloads"] for w in ("bulk", "file"))]
    if not documents:
        return False
    figure, axes = plt.subplots(len(documents), 4, figsize=(26, 6 * len(documents)), squeeze=False)
    colors = ["#4c72b0", "#a6bddb", "#dd8452", "#fdd0a2"]
    for row_axes, document in zip(axes, documents):
        title = kernel_title(document["machine"])
        if not document["machine"]["ktls_available"]:
            title += " - no kTLS: kernel rows fell back to user space"
        for ax, (workload, metric, label) in zip(row_axes, CHART_GROUPS):
            data = document["workloads"].get(workload)
            ax.set_title(f"{label}\n{title}", fontsize=9)
            if not data:
                ax.set_axis_off()
                continue
            rows = [r for r in data["rows"] if not r.get("error") and r["contender"] != "tcp"]
            ceiling = [r["metrics"][metric]["median"] for r in data["rows"]
                       if r["contender"] == "tcp" and not r.get("error") and metric in r["metrics"]]
            if ceiling:  # plain TCP would dwarf the TLS bars: its figure goes in the title instead
                ax.set_title(f"{label} - plain TCP (not drawn): {_fmt(max(ceiling))}\n{title}", fontsize=9)
            names = [f"{r['contender']} {r['variant_label'] if r['contender'] != 'tcp' else ''}"
                     f"\n[{r['record_layer_text']}]" for r in rows]
            positions = range(len(rows))
            if metric == "cpu":
                bottom = [0.0] * len(rows)
                parts = CPU_PARTS_UML if document["machine"]["uml"] else CPU_PARTS
                for (key, part), color in zip(parts, colors[::2] if len(parts) == 2 else colors):
                    values = [(r["metrics"].get(key) or {}).get("median") or 0.0 for r in rows]
                    ax.bar(positions, values, bottom=bottom, color=color, label=part)
                    bottom = [b + v for b, v in zip(bottom, values)]
                ax.legend(fontsize=7)
                ax.set_ylabel("CPU seconds per GiB")
            else:
                medians = [r["metrics"][metric]["median"] for r in rows]
                low = [m - r["metrics"][metric]["min"] for m, r in zip(medians, rows)]
                high = [r["metrics"][metric]["max"] - m for m, r in zip(medians, rows)]
                ax.bar(positions, medians, yerr=[low, high], capsize=3, color="#4c72b0")
                ax.set_ylabel("MiB/s (median, min-max)")
            ax.set_xticks(list(positions))
            ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


# --- command line ----------------------------------------------------------------------------------


def _csv(choices):
    def parse(text):
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return values
    return parse


def _workloads_arg(text):
    """--workloads: names from WORKLOADS, 'asyncio' standing for ASYNCIO_WORKLOADS; in WORKLOADS' order."""
    chosen = _csv(WORKLOADS + ("asyncio",))(text)
    expanded = {w for name in chosen for w in (ASYNCIO_WORKLOADS if name == "asyncio" else (name,))}
    return tuple(w for w in WORKLOADS if w in expanded)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="CI smoke run: tiny sizes, one run each (seconds)")
    size.add_argument("--full", dest="preset", action="store_const", const="full",
                      help="real numbers: full sizes, more runs, longer handshake and latency runs")
    parser.set_defaults(preset="default")
    parser.add_argument("--runs", type=int, help="runs per figure (median, min, max)")
    parser.add_argument("--warmup", type=int, help="unmeasured runs before each workload")
    parser.add_argument("--bulk-mib", type=int, help="bulk transfer size")
    parser.add_argument("--file-mib", type=int, help="file size for the sendfile workload")
    parser.add_argument("--chunk-kib", type=int, help="sendall chunk and recv_into buffer (default 1024)")
    parser.add_argument("--handshake-seconds", type=float, help="duration of each handshake run")
    parser.add_argument("--latency-count", type=int, help="measured round trips per latency run")
    parser.add_argument("--connections", type=int, help="idle connections for the memory workload")
    parser.add_argument("--burst-clients", type=int,
                        help="clients released at once in the burst workload (default 40, --full 200; UML: 50)")
    parser.add_argument("--data-tls", type=_csv(tuple(TLS_VERSIONS)),
                        help="TLS versions of bulk, file, latency, memory, burst, aio-file and aio-echo "
                             "(default 1.2,1.3)")
    parser.add_argument("--workloads", type=_workloads_arg,
                        help=f"subset of {','.join(WORKLOADS)}; 'asyncio' stands for the three aio-* workloads")
    parser.add_argument("--contenders", type=_csv(CONTENDER_NAMES),
                        help=f"subset of {','.join(CONTENDER_NAMES)}")
    parser.add_argument("--file-dir", help="where the sendfile payload is written (default /dev/shm)")
    parser.add_argument("--timeout", type=float, dest="trial_timeout", help="limit per run, seconds")
    parser.add_argument("--uml", choices=("auto", "yes", "no"), default="auto",
                        help="use the User-Mode Linux defaults (auto: when running under UML)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the Markdown report here too")
    parser.add_argument("--chart", metavar="PATH", help="write a PNG chart (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def settings_from_args(args) -> Settings:
    uml = {"auto": None, "yes": True, "no": False}[args.uml]
    return make_settings(args.preset, uml, runs=args.runs, warmup=args.warmup, bulk_mib=args.bulk_mib, file_mib=args.file_mib,
                         chunk_kib=args.chunk_kib, handshake_seconds=args.handshake_seconds,
                         latency_count=args.latency_count, connections=args.connections,
                         burst_clients=args.burst_clients,
                         data_tls=args.data_tls, workloads=args.workloads, contenders=args.contenders,
                         file_dir=args.file_dir, trial_timeout=args.trial_timeout)


def main(args) -> int:
    settings = settings_from_args(args)
    for name in ("runs", "bulk_mib", "file_mib", "chunk_kib", "latency_count", "connections", "burst_clients"):
        if getattr(settings, name) < 1:
            raise SystemExit(f"bench: --{name.replace('_', '-')} must be at least 1")
    document = run(settings, progress=not args.no_progress)
    text = render_markdown(document)
    print(text)
    if args.json:
        _write(args.json, json.dumps(document, indent=1) + "\n")
    if args.markdown:
        _write(args.markdown, text + "\n")
    if args.chart:
        render_chart([document], args.chart)
    failed = [row for data in document["workloads"].values() for row in data["rows"] if row.get("error")]
    return 1 if failed else 0


def _write(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(path + ".tmp", path)


__all__ = ["ASYNCIO_WORKLOADS", "CONTENDERS", "WORKLOADS", "Settings", "make_settings", "run", "render_markdown",
           "render_chart", "add_arguments", "main"]
