"""Real TLS peers as subprocesses: openssl s_server/s_client, gnutls-serv/gnutls-cli, curl, wget.

Every peer runs in its own session (process group) so that it and anything it forks can be
killed at once; its stdin is a pipe we keep open (s_server and gnutls-cli end a connection when
their input ends), its stdout is drained by a thread into memory (data for the data-pipe peers,
log text for the others) and its stderr goes to a file. Every wait is bounded, and a failure
message always carries the peer's command line and the tail of its output.
"""
from __future__ import annotations

import functools
import hashlib
import os
import random
import shlex
import signal
import socket
import subprocess
import threading
import time

from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from ..tlshelpers import TLS12_SUITES, TLS13_SUITES

LOOPBACK = "127.0.0.1"
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a peer's process group
UML = bool(os.environ.get("KTLS_VM_KERNEL"))
# Under User-Mode Linux every system call is slow; waits scale with this.
SLOWNESS = 4.0 if UML else 1.0

VERSION_LABEL = {TLS_1_2_VERSION: "TLS 1.2", TLS_1_3_VERSION: "TLS 1.3"}
CIPHER_LABEL = {
    KernelCipher.AES_GCM_128: "AES-128-GCM",
    KernelCipher.AES_GCM_256: "AES-256-GCM",
    KernelCipher.CHACHA20_POLY1305: "CHACHA20-POLY1305",
    KernelCipher.AES_CCM_128: "AES-128-CCM",
}
VERSIONS = (TLS_1_2_VERSION, TLS_1_3_VERSION)
CIPHERS = (KernelCipher.AES_GCM_128, KernelCipher.AES_GCM_256, KernelCipher.CHACHA20_POLY1305,
           KernelCipher.AES_CCM_128)
CELLS = [(version, cipher) for version in VERSIONS for cipher in CIPHERS]
CELL_IDS = [f"{'tls12' if v == TLS_1_2_VERSION else 'tls13'}-{CIPHER_LABEL[c].lower()}" for v, c in CELLS]

# OpenSSL names. TLS 1.2 suites per certificate key type; RFC 7251 defines AES-CCM only with
# ECDHE_ECDSA, so an RSA certificate has no ECDHE CCM suite.
GNUTLS_CIPHER = {
    KernelCipher.AES_GCM_128: "AES-128-GCM",
    KernelCipher.AES_GCM_256: "AES-256-GCM",
    KernelCipher.CHACHA20_POLY1305: "CHACHA20-POLY1305",
    KernelCipher.AES_CCM_128: "AES-128-CCM",
}

# OpenSSL 3.0's own kTLS (Debian 12), measured under both VM kernels: TLS 1.2 offloads both
# directions for all four ciphers; TLS 1.3 offloads only sending, and never for AES-128-CCM
# (ktls_check_supported_cipher refuses CCM with TLS 1.3; receive offload for TLS 1.3 came in 3.2).
def openssl_ktls_offload(version: int, cipher: KernelCipher) -> tuple[int, int]:
    """(TX installs, RX installs) that one OpenSSL 3.0 kTLS endpoint adds to /proc/net/tls_stat."""
    if version == TLS_1_2_VERSION:
        return 1, 1
    if cipher is KernelCipher.AES_CCM_128:
        return 0, 0
    return 1, 0


def openssl_ktls_note(version: int, cipher: KernelCipher) -> str:
    tx, rx = openssl_ktls_offload(version, cipher)
    if tx and rx:
        return "peer kTLS tx+rx"
    if tx:
        return "peer kTLS tx only (OpenSSL 3.0 has no TLS 1.3 RX offload)"
    return "peer in userspace (OpenSSL 3.0 does not offload TLS 1.3 CCM)"


def no_suite_reason(version: int, cipher: KernelCipher, key_type: str) -> str | None:
    """Why a matrix cell has no suite for this certificate key type (a test skips it as n/a)."""
    if version == TLS_1_2_VERSION and (key_type, cipher) not in TLS12_SUITES:
        return ("n/a: TLS 1.2 defines AES-CCM only with ECDHE_ECDSA (RFC 7251); an RSA certificate has "
                "no ECDHE CCM suite")
    return None


def openssl_cipher_args(version: int, cipher: KernelCipher, key_type: str = "ecdsa") -> list[str]:
    """s_server/s_client arguments pinning one protocol version and one suite."""
    if version == TLS_1_2_VERSION:
        return ["-tls1_2", "-cipher", TLS12_SUITES[(key_type, cipher)]]
    return ["-tls1_3", "-ciphersuites", TLS13_SUITES[cipher]]


def gnutls_priority(version: int, cipher: KernelCipher) -> str:
    """A GnuTLS priority string allowing exactly one version and one bulk cipher."""
    vers = "+VERS-TLS1.2" if version == TLS_1_2_VERSION else "+VERS-TLS1.3"
    return f"NORMAL:-VERS-ALL:{vers}:-CIPHER-ALL:+{GNUTLS_CIPHER[cipher]}"


def curl_cipher_args(version: int, cipher: KernelCipher, key_type: str = "ecdsa") -> list[str]:
    if version == TLS_1_2_VERSION:
        return ["--tlsv1.2", "--tls-max", "1.2", "--ciphers", TLS12_SUITES[(key_type, cipher)]]
    return ["--tlsv1.3", "--tls-max", "1.3", "--tls13-ciphers", TLS13_SUITES[cipher]]


def wget_cipher_args(version: int, cipher: KernelCipher) -> list[str]:
    # Debian's wget is built on GnuTLS: --ciphers is a GnuTLS priority string and replaces the
    # whole priority (including --secure-protocol), so it carries the version too.
    return [f"--ciphers={gnutls_priority(version, cipher)}"]


# --- payloads ------------------------------------------------------------------------------------

def payload(size: int, seed: int, *, no_nul: bool = False) -> bytes:
    """Deterministic pseudo-random bytes (no syscalls: getrandom is slow under UML).

    ``no_nul`` maps 0x00 to 0x01, for peers whose echo is C-string based (gnutls-serv)."""
    if size >= 1 << 24:
        return _big_payload(size, seed, no_nul)  # page faults are what is slow under UML: make it once
    data = random.Random(seed).randbytes(size)
    return data.replace(b"\0", b"\1") if no_nul else data


@functools.lru_cache(maxsize=2)
def _big_payload(size: int, seed: int, no_nul: bool) -> bytes:
    data = random.Random(seed).randbytes(size)
    return data.replace(b"\0", b"\1") if no_nul else data


@functools.lru_cache(maxsize=4)
def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fast_tmpdir() -> str:
    """Where big scratch files go: the guest's own tmpfs under UML (the host file system is
    reached through hostfs there, one slow system call per block), else the system's temp dir."""
    import tempfile
    base = "/dev/shm" if UML and os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix="ktls-interop-", dir=base)


# --- processes -----------------------------------------------------------------------------------

class PeerError(AssertionError):
    """A peer did not do what the test needed; the message carries its command and output."""


class _Collector(threading.Thread):
    """Drains a pipe into memory. Consumers take bytes (or only their SHA-256, for large
    transfers) as they arrive; what nobody takes stays for logs. Waits end when the data is
    there, at EOF, or after ``timeout`` seconds without any new byte."""

    def __init__(self, fd: int, name: str):
        super().__init__(name=f"collect-{name}", daemon=True)
        self._file = open(fd, "rb", buffering=0)
        self._data = bytearray()  # unconsumed bytes
        self.total = 0  # bytes received in all
        self._cond = threading.Condition()
        self.eof = False
        self.start()

    def run(self):
        buffer = bytearray(1 << 18)
        view = memoryview(buffer)
        try:
            while True:
                count = self._file.readinto(buffer)
                with self._cond:
                    if not count:
                        break
                    self._data += view[:count]
                    self.total += count
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()
            self._file.close()

    def _wait_progress(self, enough, timeout: float) -> bool:
        """Wait (lock held) until enough() or EOF; gives up after ``timeout`` s without new data."""
        while not enough():
            if self.eof:
                return False
            seen = self.total
            self._cond.wait_for(lambda: enough() or self.eof or self.total != seen, timeout)
            if self.total == seen and not enough() and not self.eof:
                return False
        return True

    def wait_for(self, predicate, timeout: float) -> bool:
        with self._cond:
            return self._wait_progress(lambda: predicate(self._data), timeout)

    def take(self, count: int, timeout: float) -> bytes | None:
        """The next ``count`` bytes, or None if they did not come."""
        with self._cond:
            if not self._wait_progress(lambda: len(self._data) >= count, timeout):
                return None
            chunk = bytes(self._data[:count])
            del self._data[:count]
            return chunk

    def take_until(self, marker: bytes, timeout: float) -> bytes | None:
        """The unconsumed bytes up to and including ``marker``, or None if it did not come."""
        with self._cond:
            if not self._wait_progress(lambda: marker in self._data, timeout):
                return None
            end = self._data.index(marker) + len(marker)
            chunk = bytes(self._data[:end])
            del self._data[:end]
            return chunk

    def take_digest(self, count: int, timeout: float) -> tuple[str, int]:
        """SHA-256 of the next ``count`` bytes, hashed as they arrive (nothing big is kept), and
        how many of them came."""
        digest = hashlib.sha256()
        remaining = count
        with self._cond:
            while remaining:
                if not self._wait_progress(lambda: len(self._data) > 0, timeout):
                    break
                piece = min(remaining, len(self._data))
                digest.update(memoryview(self._data)[:piece])
                del self._data[:piece]
                remaining -= piece
        return digest.hexdigest(), count - remaining

    @property
    def unconsumed(self) -> int:
        with self._cond:
            return len(self._data)

    def text(self) -> str:
        with self._cond:
            return self._data.decode("utf-8", "replace")

    def tail(self, limit: int = 3000) -> str:
        with self._cond:
            data = bytes(self._data[-limit:])
            total = self.total
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in data)
        if data and printable < 0.9 * len(data):
            return f"<{total} bytes in all; the last {len(data)} unconsumed ones are binary>"
        return data.decode("utf-8", "replace")


_LIVE: set["Peer"] = set()
_LIVE_LOCK = threading.Lock()


class Peer:
    """One peer program in its own process group."""

    def __init__(self, name: str, argv: list[str], *, workdir: str, env: dict | None = None,
                 port: int | None = None, stdin: bool = True):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = workdir
        self.port = port
        # By default a peer gets our environment without OPENSSL_CONF (OpenSSL peers that need a
        # configuration get theirs from openssl_env()).
        self.env = dict(os.environ) if env is None else dict(env)
        if env is None:
            self.env.pop("OPENSSL_CONF", None)
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.proc: subprocess.Popen | None = None
        self.stdout: _Collector | None = None
        self._want_stdin = stdin
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self.returncode: int | None = None

    # --- lifecycle ---

    def start(self) -> "Peer":
        read_end, write_end = os.pipe()
        with open(self.stderr_path, "wb") as stderr:
            try:
                self.proc = subprocess.Popen(
                    self.argv, cwd=self.workdir, env=self.env,
                    stdin=subprocess.PIPE if self._want_stdin else subprocess.DEVNULL,
                    stdout=write_end, stderr=stderr, start_new_session=True)
            finally:
                os.close(write_end)
        self.stdout = _Collector(read_end, self.name)
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_listening(self, timeout: float = 10.0) -> "Peer":
        """Ready when a TCP connection to its port succeeds (the probe is closed at once)."""
        deadline = time.monotonic() + timeout * SLOWNESS
        while time.monotonic() < deadline:
            if not self.alive():
                raise PeerError(f"{self.name} exited before listening on port {self.port}\n{self.report()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                    return self
            except OSError:
                time.sleep(0.02)
        raise PeerError(f"{self.name} did not listen on port {self.port} within {timeout} s\n{self.report()}")

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the peer to exit by itself; its exit status."""
        try:
            self.returncode = self.proc.wait(timeout * SLOWNESS)
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name} did not exit within {timeout} s\n{self.report()}") from None
        self._join_output()
        return self.returncode

    def stop(self) -> None:
        """Close its input, then SIGTERM and (after a grace period) SIGKILL its process group."""
        if self.proc is None:
            return
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_GRACE)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it forked that is still around
        except ProcessLookupError:
            pass
        if self.returncode is None:
            self.returncode = self.proc.returncode
        self._join_output()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _join_output(self) -> None:
        if self.stdout is not None:
            self.stdout.join(5)
        if self._writer is not None:
            self._writer.join(5)

    # --- input and output ---

    def write(self, data: bytes, *, wait: bool = False, timeout: float = 60.0) -> None:
        """Feed its stdin from a thread (a peer that is not reading must not block the test)."""
        if self._writer is not None:
            self._writer.join(timeout * SLOWNESS)
            if self._writer.is_alive():
                raise PeerError(f"{self.name} did not read its previous input\n{self.report()}")
        self._raise_writer_error()

        def feed():
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except BaseException as exc:  # reported on the next write or check
                self._writer_error = exc

        self._writer = threading.Thread(target=feed, name=f"feed-{self.name}", daemon=True)
        self._writer.start()
        if wait:
            self.drain_input(timeout)

    def drain_input(self, timeout: float = 60.0) -> None:
        if self._writer is not None:
            self._writer.join(timeout * SLOWNESS)
            if self._writer.is_alive():
                raise PeerError(f"{self.name} did not take its input within {timeout} s\n{self.report()}")
        self._raise_writer_error()

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise PeerError(f"writing to {self.name} failed: {error!r}\n{self.report()}")

    def wait_input_consumed(self, timeout: float = 20.0) -> None:
        """Wait until the peer has read everything we wrote to its stdin (the pipe is empty), so
        that a command letter is read on its own, not together with what follows it."""
        import fcntl
        import struct
        import termios

        self.drain_input(timeout)
        deadline = time.monotonic() + timeout * SLOWNESS
        while True:
            pending = struct.unpack("i", fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4))[0]
            if pending == 0:
                return
            if time.monotonic() > deadline or not self.alive():
                raise PeerError(f"{self.name} left {pending} bytes of its input unread\n{self.report()}")
            time.sleep(0.01)

    def command(self, text: str, timeout: float = 20.0) -> None:
        """Type one command line (s_server's k, K, r, R, q; gnutls-cli's ^rekey^ ...) and wait
        until the peer has read it."""
        self.write(f"{text}\n".encode())
        self.wait_input_consumed(timeout)

    def close_input(self) -> None:
        self.drain_input()
        self.proc.stdin.close()

    def take_output(self, count: int, timeout: float = 30.0) -> bytes:
        """The next ``count`` bytes the peer wrote to stdout (for data-pipe peers)."""
        data = self.stdout.take(count, timeout * SLOWNESS)
        if data is None:
            raise PeerError(f"{self.name} wrote {self.stdout.unconsumed} of the {count} bytes expected "
                            f"(no progress for {timeout} s)\n{self.report()}")
        return data

    def take_output_until(self, marker: bytes, timeout: float = 30.0) -> bytes:
        data = self.stdout.take_until(marker, timeout * SLOWNESS)
        if data is None:
            raise PeerError(f"{self.name} did not write {marker!r} (no progress for {timeout} s)\n{self.report()}")
        return data

    def take_output_digest(self, count: int, timeout: float = 30.0) -> str:
        """SHA-256 of the next ``count`` bytes of its stdout (large transfers)."""
        digest, got = self.stdout.take_digest(count, timeout * SLOWNESS)
        if got != count:
            raise PeerError(f"{self.name} wrote {got} of the {count} bytes expected "
                            f"(no progress for {timeout} s)\n{self.report()}")
        return digest

    def wait_output(self, needle: bytes | str, timeout: float = 20.0) -> str:
        """Wait until its stdout contains ``needle``; the whole stdout as text."""
        needle = needle.encode() if isinstance(needle, str) else needle
        if not self.stdout.wait_for(lambda data: needle in data, timeout * SLOWNESS):
            raise PeerError(f"{self.name} did not print {needle!r} within {timeout} s\n{self.report()}")
        return self.stdout.text()

    def stderr_text(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_stderr(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout * SLOWNESS
        while True:
            text = self.stderr_text()
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise PeerError(f"{self.name} did not print {needle!r} on stderr within {timeout} s\n"
                                f"{self.report()}")
            time.sleep(0.02)

    def report(self, limit: int = 3000) -> str:
        status = "running" if self.alive() else f"exit status {self.proc.returncode if self.proc else None}"
        stderr = self.stderr_text()[-limit:]
        return (f"--- {self.name} ({status}): {shlex.join(self.argv)}\n"
                f"--- stdout (tail):\n{self.stdout.tail(limit) if self.stdout else ''}\n"
                f"--- stderr (tail):\n{stderr}")


def kill_all_live() -> None:
    """Last resort at the end of the session: no peer outlives the test run."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for peer in live:
        peer.stop()


def free_port() -> int:
    """A port that was free a moment ago (peers that lose the race are restarted on another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# --- OpenSSL with its own kTLS ----------------------------------------------------------------------

KTLS_OPENSSL_CNF = """\
# OpenSSL configuration for peers that use OpenSSL's own kernel TLS (SSL_OP_ENABLE_KTLS).
openssl_conf = openssl_init

[openssl_init]
ssl_conf = ssl_configuration

[ssl_configuration]
system_default = ktls_system_default

[ktls_system_default]
Options = KTLS
"""


def openssl_env(workdir: str, ktls: bool) -> dict:
    """The environment for an OpenSSL peer: its own kTLS via OPENSSL_CONF, or plain userspace.

    Userspace peers get an empty configuration file rather than the system's, so that nothing on
    the machine (a system-wide Options = KTLS) silently changes what the peer does."""
    path = os.path.join(workdir, "openssl-ktls.cnf" if ktls else "openssl-userspace.cnf")
    if not os.path.exists(path):
        with open(path, "w") as out:
            out.write(KTLS_OPENSSL_CNF if ktls else "# userspace OpenSSL peer: no system_default\n")
    env = dict(os.environ)
    env["OPENSSL_CONF"] = path
    return env
