"""The only module that talks to kernel TLS: probe, attach, install, rekey, record I/O, counters.

Everything else in ktls_ossl reaches the kernel through these functions, so that every errno a
kTLS socket can produce is turned into a specific exception with advice in one place.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import socket
import struct
import sys
import termios
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from ._ossl import ffi, lib
from .errors import (
    KernelTLSError,
    KTLSCipherUnavailableError,
    KTLSKeyExpiredError,
    KTLSRecordError,
    KTLSRekeyUnsupportedError,
    KTLSUnavailableError,
)
from . import records
from .records import ContentType
from .keys import TLS_1_2_VERSION, TLS_1_3_VERSION, VERSION_NAMES, Direction, KernelCipher, TrafficKeys

if TYPE_CHECKING:
    # typeshed's buffer names exist only for type checkers; the annotations that use them are
    # never evaluated at run time (postponed by the __future__ import).
    from _typeshed import ReadableBuffer, WriteableBuffer

SOL_TLS = lib.SOL_TLS
TCP_ULP = lib.TCP_ULP
TLS_STAT_PATH = "/proc/net/tls_stat"

# The largest plaintext a record may carry; a receive buffer this big always holds a whole record.
MAX_RECORD_PLAINTEXT = 16384

_STRUCTS = {
    KernelCipher.AES_GCM_128: "struct tls12_crypto_info_aes_gcm_128",
    KernelCipher.AES_GCM_256: "struct tls12_crypto_info_aes_gcm_256",
    KernelCipher.AES_CCM_128: "struct tls12_crypto_info_aes_ccm_128",
    KernelCipher.CHACHA20_POLY1305: "struct tls12_crypto_info_chacha20_poly1305",
}

# Where a cipher's crypto_info size is what the kernel checks optlen against.
CRYPTO_INFO_SIZES = {cipher: ffi.sizeof(name) for cipher, name in _STRUCTS.items()}

# The crypto modules each kernel cipher needs (what "modprobe" would have to load).
_CIPHER_MODULES = {
    KernelCipher.AES_GCM_128: "gcm, ghash-generic (or ghash-clmulni), aes",
    KernelCipher.AES_GCM_256: "gcm, ghash-generic (or ghash-clmulni), aes",
    KernelCipher.AES_CCM_128: "ccm, ctr, aes",
    KernelCipher.CHACHA20_POLY1305: "chacha20poly1305, chacha20, poly1305",
}


# The functions that take a socket reach its fd through _fileno(), so they take a bare fd as well.
def _fileno(sock: socket.socket | int) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _setsockopt(sock: socket.socket | int, level: int, optname: int, value: bytes) -> None:
    """setsockopt on the fd itself (no socket object, no dup); raises OSError."""
    if lib.setsockopt(_fileno(sock), level, optname, value, len(value)) != 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))


def _getsockopt(sock: socket.socket | int, level: int, optname: int, size: int) -> bytes | int:
    """getsockopt on the fd itself: the option's bytes, or the errno (no exception, since the
    audit trail's sample of a missing key fails on every handshake)."""
    buffer = ffi.new("unsigned char[]", size)
    length = ffi.new("socklen_t *", size)
    if lib.getsockopt(_fileno(sock), level, optname, buffer, length) != 0:
        return ffi.errno
    return bytes(ffi.buffer(buffer, length[0]))


# --- Attaching and installing keys ---------------------------------------------------------------

# TCP_ULP, the socket option that attaches the tls upper-layer protocol, exists since Linux 4.13.
TCP_ULP_SINCE = (4, 13)


def release_at_least(version: tuple[int, int], release: str | None = None) -> bool:
    """Whether a kernel release string ("6.1.0-25-amd64", default: this kernel's) is at least
    (major, minor); False where it does not start with major.minor."""
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= version


def ulp_advice(err: int, release: str | None = None) -> str:
    """Why setsockopt(TCP_ULP, "tls") failed with ``err`` and what to do, as one plain sentence
    (no errno): what the probe reports and what ``require_ktls`` errors quote."""
    release = release if release is not None else os.uname().release
    if err == errno.ENOPROTOOPT:
        if not release_at_least(TCP_ULP_SINCE, release):
            return (f"Linux {release} has no TCP_ULP socket option, so the tls module cannot be "
                    "attached: kernel TLS needs Linux 4.13 or later")
        return ("this socket does not accept the TCP_ULP option: kernel TLS works only on a "
                "connected TCP socket (IPv4 or IPv6)")
    return {
        errno.ENOENT: "the kernel has no 'tls' upper-layer protocol: load it with 'modprobe tls' "
                      "as root, on a kernel built with CONFIG_TLS",
        errno.ENOTCONN: "the TCP connection is not established: attach the tls ULP after "
                        "connect() or accept() has returned",
        errno.EEXIST: "an upper-layer protocol (tls or another one) is already attached to this "
                      "socket: attach tls once, to a socket no other ULP uses",
        errno.EOPNOTSUPP: "this socket does not support the TCP_ULP option: kernel TLS works only "
                          "on a connected TCP socket (IPv4 or IPv6)",
        errno.EPERM: "the kernel did not permit attaching the tls ULP (a security module, seccomp "
                     "or BPF policy may forbid it): allow setsockopt TCP_ULP for this process",
    }.get(err, "the kernel refused to attach the tls ULP to this socket: check that it is a "
               "connected TCP socket and that 'modprobe tls' has been run")


def ulp_error(err: int, release: str | None = None) -> KTLSUnavailableError:
    """The exception for a failed setsockopt(TCP_ULP, "tls")."""
    return KTLSUnavailableError(err, f"cannot attach the tls ULP: {ulp_advice(err, release)}",
                                "ULP_UNAVAILABLE")


def ulp_not_attached_error(err: int, direction: Direction) -> KTLSUnavailableError:
    """setsockopt(SOL_TLS, TLS_TX/TLS_RX) on a socket that has no tls ULP attached."""
    return KTLSUnavailableError(
        err, f"cannot install {direction.name} keys: the tls ULP is not attached to this "
             "socket; call kernel.attach_ulp() on the connected socket before installing keys",
        "ULP_UNAVAILABLE")


def shutdown(sock: socket.socket | int, how: int) -> None:
    """shutdown(2) on a connection's descriptor, which stays open (no socket object owns it here);
    a socket that is not connected any more has nothing to shut down."""
    try:
        owner = socket.socket(fileno=_fileno(sock))
    except OSError:
        return
    try:
        owner.shutdown(how)
    except OSError:
        pass
    finally:
        owner.detach()


def attach_ulp(sock: socket.socket | int) -> None:
    """setsockopt(TCP_ULP, "tls") on a connected TCP socket."""
    try:
        _setsockopt(sock, socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as exc:
        raise ulp_error(exc.errno) from None


def crypto_info_bytes(keys: TrafficKeys) -> bytes:
    """The exact struct the kernel expects, built through the compiled struct definition."""
    info = ffi.new(_STRUCTS[keys.cipher] + " *")
    info.info.version = keys.version
    info.info.cipher_type = int(keys.cipher)
    ffi.memmove(info.iv, keys.iv, len(keys.iv))
    ffi.memmove(info.key, keys.key, len(keys.key))
    if keys.salt:
        ffi.memmove(info.salt, keys.salt, len(keys.salt))
    ffi.memmove(info.rec_seq, keys.rec_seq, 8)
    return bytes(ffi.buffer(info))


def _install_error(err: int, direction: Direction, keys: TrafficKeys, *, update: bool) -> KernelTLSError:
    what = f"{VERSION_NAMES[keys.version]} {keys.cipher.display_name} {direction.name}"
    if update and err == errno.EBUSY:
        return KTLSRekeyUnsupportedError(
            err, f"the kernel cannot replace {what} keys on a live socket; TLS 1.3 rekey needs "
                 f"Linux 6.14 or later (running {os.uname().release})", "REKEY_UNSUPPORTED")
    if update and err == errno.EINVAL and keys.version != TLS_1_3_VERSION:
        return KTLSRekeyUnsupportedError(err, f"rekeying is defined for TLS 1.3 only, not for {what}",
                                         "REKEY_UNSUPPORTED")
    advice = {
        errno.ENOENT: f"the kernel crypto for {keys.cipher.display_name} is missing: load "
                      f"{_CIPHER_MODULES[keys.cipher]}",
        errno.EINVAL: f"the kernel rejected {what} (cipher or version not supported by this kernel, "
                      "or TX and RX would differ in version or cipher): use a combination that "
                      "'python -m ktls_ossl probe' lists as usable, the same for both directions",
        errno.EBUSY: f"{what} keys are already installed on this socket: install keys once per "
                     "direction (TLS 1.3 replaces them with kernel.rekey())",
        errno.ENOMEM: "the kernel is out of memory for a kTLS context",
    }.get(err, f"installing {what} keys failed")
    return KTLSCipherUnavailableError(err, advice, "CIPHER_UNAVAILABLE")


def install(sock: socket.socket | int, direction: Direction, keys: TrafficKeys) -> None:
    """Hand one direction's keys to the kernel (TLS_TX / TLS_RX). The ULP must be attached."""
    _set_keys(sock, direction, keys, update=False)


def rekey(sock: socket.socket | int, direction: Direction, keys: TrafficKeys) -> None:
    """Replace the keys of a direction after a TLS 1.3 KeyUpdate (Linux 6.14+)."""
    if keys.version != TLS_1_3_VERSION:
        raise KTLSRekeyUnsupportedError(errno.EINVAL, "rekeying is defined for TLS 1.3 only", "REKEY_UNSUPPORTED")
    _set_keys(sock, direction, keys, update=True)


def _set_keys(sock: socket.socket | int, direction: Direction, keys: TrafficKeys, *, update: bool) -> None:
    try:
        _setsockopt(sock, SOL_TLS, direction.optname, crypto_info_bytes(keys))
    except OSError as exc:
        # SOL_TLS options reach the tls module only through an attached ULP; without one the
        # TCP layer answers ENOPROTOOPT (EOPNOTSUPP for a socket that is not TCP at all).
        if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            raise ulp_not_attached_error(exc.errno, direction) from None
        raise _install_error(exc.errno, direction, keys, update=update) from None


def read_crypto_info(sock: socket.socket | int, direction: Direction) -> TrafficKeys:
    """What the kernel holds for a direction, with the live iv and rec_seq (includes the key).

    The kernel wants either the 4-byte header size (version and cipher only) or the exact size of
    the cipher's struct, so this asks twice.
    """
    header = _crypto_info_header(sock, direction)
    if isinstance(header, int):
        raise _crypto_info_error(header, direction)
    return _crypto_info_after_header(sock, direction, header)


def records_processed(sock: socket.socket | int, direction: Direction) -> int | None:
    """The kernel's record sequence number for a direction, None when it holds no key there
    (also when the tls ULP is not attached). Sampled inside every handshake by the audit trail,
    so a missing key costs one failed getsockopt and no exception."""
    header = _crypto_info_header(sock, direction)
    if isinstance(header, int):
        return None
    try:
        return _crypto_info_after_header(sock, direction, header).seq
    except (KernelTLSError, ValueError):
        return None


def _crypto_info_header(sock: socket.socket | int, direction: Direction) -> bytes | int:
    return _getsockopt(sock, SOL_TLS, direction.optname, ffi.sizeof("struct tls_crypto_info"))


def _crypto_info_error(err: int, direction: Direction) -> KernelTLSError:
    return KernelTLSError(err, f"reading the {direction.name} crypto info failed "
                               "(are keys installed?)", "GETSOCKOPT_FAILED")


def _crypto_info_after_header(sock: socket.socket | int, direction: Direction, header: bytes) -> TrafficKeys:
    version, cipher_type = struct.unpack("=HH", header)
    cipher = KernelCipher(cipher_type)
    raw = _getsockopt(sock, SOL_TLS, direction.optname, CRYPTO_INFO_SIZES[cipher])
    if isinstance(raw, int):
        raise _crypto_info_error(raw, direction)
    info = ffi.from_buffer(_STRUCTS[cipher] + " *", raw)
    return TrafficKeys(
        version=version,
        cipher=cipher,
        key=bytes(info.key),
        iv=bytes(info.iv),
        salt=bytes(ffi.buffer(info.salt, cipher.salt_size)),
        seq=int.from_bytes(bytes(info.rec_seq), "big"),
    )


def set_rx_expect_no_pad(sock: socket.socket | int, enabled: bool = True) -> None:
    """TLS 1.3 only: promise the peer sends no record padding, so the kernel decrypts in place."""
    try:
        _setsockopt(sock, SOL_TLS, lib.TLS_RX_EXPECT_NO_PAD, struct.pack("=I", int(enabled)))
    except OSError as exc:
        raise KernelTLSError(exc.errno, "TLS_RX_EXPECT_NO_PAD was refused (needs Linux 6.0+, "
                                        "TLS 1.3 and RX keys installed)", "NO_PAD_UNAVAILABLE") from None


# --- Record I/O -----------------------------------------------------------------------------------

class ReceivedRecord(NamedTuple):
    """What one recvmsg took (a NamedTuple: every read makes one, and a frozen dataclass costs
    several times as much to make)."""
    content_type: int
    length: int
    msg_flags: int

    @property
    def control_truncated(self) -> bool:
        return bool(self.msg_flags & lib.MSG_CTRUNC)

    @property
    def end_of_record(self) -> bool:
        return bool(self.msg_flags & lib.MSG_EOR)


def _receive_error(err: int) -> OSError:
    if err == errno.EBADMSG:
        return KTLSRecordError(err, "the kernel could not authenticate a received record (wrong key, "
                                    "tampering, or lost record sync); the connection is unusable",
                               "DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    if err == errno.EMSGSIZE:
        return KTLSRecordError(err, "the peer sent a record longer than TLS allows",
                               "ENCRYPTED_LENGTH_TOO_LONG")
    if err == errno.EINVAL:
        return KTLSRecordError(err, "the peer sent a record with an invalid header (version or "
                                    "length)", "WRONG_VERSION_NUMBER")
    if err == errno.EKEYEXPIRED:
        return KTLSKeyExpiredError(err, "the peer updated its keys; reception is paused until the next "
                                        "RX key is installed", "KEY_UPDATE_PENDING")
    return OSError(err, os.strerror(err))


def recv_record_into(sock: socket.socket | int, buffer: WriteableBuffer, flags: int = 0) -> ReceivedRecord:
    """One recvmsg with the record-type cmsg into ``buffer`` (any writable buffer).

    Returns either application data (possibly several records' worth) or exactly one control
    record. content_type 0 means the socket had no TLS RX (no cmsg came). Raises BlockingIOError on
    EAGAIN and the specific kernel errors above; EINTR is retried here so that Python's signal
    handlers run in between.
    """
    fd = _fileno(sock)
    record_type, msg_flags = _receive_results()
    # Positional (keywords cost more than the call). The caller's buffer is released before
    # anything is raised: a kept exception's traceback must not hold an export of it (in a
    # reference cycle that crashed the garbage collector).
    view = ffi.from_buffer(_BYTES, buffer, True)
    while True:
        n = lib.ktls_recv_record(fd, view, len(view), flags, record_type, msg_flags)
        if n >= 0:
            return ReceivedRecord(record_type[0], n, msg_flags[0])
        if -n != errno.EINTR:
            break
    ffi.release(view)
    raise _receive_error(-n)


_BYTES = ffi.typeof("char[]")
_per_thread = threading.local()


def _receive_results():
    """The record type and flags that ktls_recv_record fills in: one pair per thread, made once
    (two allocations per read before)."""
    results = getattr(_per_thread, "receive_results", None)
    if results is None:
        results = _per_thread.receive_results = (ffi.new("unsigned char *"), ffi.new("int *"))
    return results


def recv_record(sock: socket.socket | int, bufsize: int = MAX_RECORD_PLAINTEXT,
                flags: int = 0) -> tuple[int, bytes]:
    """(content_type, payload) of the next record (or run of data records) on a kTLS socket."""
    buffer = bytearray(bufsize)
    record = recv_record_into(sock, buffer, flags)
    return record.content_type, bytes(memoryview(buffer)[: record.length])


def send_record(sock: socket.socket | int, content_type: int, data: ReadableBuffer, flags: int = 0) -> int:
    """Send ``data`` as one record of ``content_type`` (alert 21, handshake 22, ...) through TLS_TX."""
    if not 0 < content_type < 256:
        raise ValueError(f"invalid TLS content type {content_type}")
    fd = _fileno(sock)
    with ffi.from_buffer(data) as payload:  # released before anything is raised (see above)
        empty_control = len(payload) == 0 and content_type != ContentType.APPLICATION_DATA
        while not empty_control:
            n = lib.ktls_send_record(fd, payload, len(payload), content_type, flags)
            if n >= 0 or -n != errno.EINTR:
                break
    if empty_control:
        # The kernel sends nothing for an empty sendmsg, and TLS forbids empty control records.
        raise ValueError("a control record cannot be empty")
    if n >= 0:
        return n
    err = -n
    if err == errno.EINVAL and flags & lib.MSG_MORE:
        raise ValueError("MSG_MORE cannot be combined with a record type")
    raise OSError(err, os.strerror(err))


def take_pending_error(sock: socket.socket | int) -> int:
    """Take the error the kernel holds pending on the socket (getsockopt SO_ERROR reads and clears
    it); 0 when there is none.

    Why this matters after a refused record: when decryption fails (a wrong tag, or a TLS 1.3
    record without a content type) tls_sw_recvmsg returns EBADMSG *and* leaves it in sk_err
    (tls_err_abort), and every later send fails with it (tls_sw_sendmsg returns -sk->sk_err while
    it is set), so the fatal alert could not go out. A framing error (a record too long, too
    short, or with a bad header) is found by the record parser instead, and the recvmsg that
    reports it takes sk_err itself (sock_error), leaving nothing pending. Either way the caller
    already has the error; taking it here lets the alert through."""
    value = _getsockopt(sock, socket.SOL_SOCKET, socket.SO_ERROR, 4)
    if isinstance(value, int):
        return 0  # the getsockopt itself failed (fd gone): nothing to take
    return int.from_bytes(value, sys.byteorder, signed=True)


def unread_bytes(sock: socket.socket | int) -> int:
    """Bytes in the TCP receive queue that nobody has read (SIOCINQ); on a kTLS socket, what the
    kernel has not yet consumed as records."""
    return struct.unpack("i", fcntl.ioctl(_fileno(sock), termios.FIONREAD, b"\0\0\0\0"))[0]


def unacknowledged_bytes(sock: socket.socket | int) -> int:
    """Bytes sent or queued that the peer's TCP has not acknowledged yet (SIOCOUTQ), a FIN
    counting as one."""
    return struct.unpack("i", fcntl.ioctl(_fileno(sock), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


# --- Counters -------------------------------------------------------------------------------------

def tls_stat(path: str = TLS_STAT_PATH) -> dict[str, int]:
    """/proc/net/tls_stat as {name: value}; empty when the tls module is not loaded."""
    try:
        with open(path, encoding="ascii") as stat:
            lines = stat.read().splitlines()
    except FileNotFoundError:
        return {}
    counters = {}
    for line in lines:
        name, _, value = line.partition(" ")
        if name and value.strip().isdigit():
            counters[name] = int(value)
    return counters


def decrypt_error_count(path: str = TLS_STAT_PATH) -> int | None:
    """TlsDecryptError of this network namespace (records whose authentication failed), read
    without building the whole table; None when the counter is not there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    for line in text.split(b"\n"):
        if line.startswith(b"TlsDecryptError"):
            value = line[len(b"TlsDecryptError"):].strip()
            return int(value) if value.isdigit() else None
    return None


# --- Probe ----------------------------------------------------------------------------------------

PROBE_VERSIONS = (TLS_1_2_VERSION, TLS_1_3_VERSION)
PROBE_CIPHERS = tuple(KernelCipher)


@dataclass(frozen=True)
class CipherSupport:
    version: int
    cipher: KernelCipher
    tx: bool
    rx: bool
    round_trip: bool
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.tx and self.rx and self.round_trip


@dataclass(frozen=True)
class ProbeReport:
    kernel_release: str
    ulp_available: bool
    ulp_errno: int | None
    ulp_message: str | None  # a plain sentence (what is missing, what to do), errno in ulp_errno
    ciphers: tuple[CipherSupport, ...] = ()
    rekey_supported: bool | None = None  # both directions replaced and a record carried across
    rekey_detail: str | None = None  # what was verified, or which direction was refused and why
    rx_expect_no_pad: bool | None = None
    tls_stat_available: bool = False
    notes: tuple[str, ...] = field(default=())

    def support(self, version: int, cipher: KernelCipher) -> CipherSupport | None:
        for entry in self.ciphers:
            if entry.version == version and entry.cipher == cipher:
                return entry
        return None

    def unavailable_reason(self, version: int, cipher: KernelCipher, direction: Direction) -> str | None:
        """None when the kernel can carry that direction, else why not (for sock.ktls)."""
        if not self.ulp_available:
            return self.ulp_message or "kernel TLS unavailable"
        entry = self.support(version, cipher)
        if entry is None:
            return f"{VERSION_NAMES.get(version, hex(version))} {KernelCipher(cipher).display_name} was not probed"
        ok = entry.tx if direction is Direction.TX else entry.rx
        if ok and entry.round_trip:
            return None
        return entry.error or (f"the kernel cannot {direction.name} "
                               f"{VERSION_NAMES[version]} {entry.cipher.display_name}")

    def as_dict(self) -> dict:
        return {
            "kernel_release": self.kernel_release,
            "ulp_available": self.ulp_available,
            "ulp_errno": self.ulp_errno,
            "ulp_message": self.ulp_message,
            "ciphers": [
                {"version": VERSION_NAMES[c.version], "cipher": c.cipher.display_name, "tx": c.tx,
                 "rx": c.rx, "round_trip": c.round_trip, "error": c.error}
                for c in self.ciphers
            ],
            "rekey_supported": self.rekey_supported,
            "rekey_detail": self.rekey_detail,
            "rx_expect_no_pad": self.rx_expect_no_pad,
            "tls_stat_available": self.tls_stat_available,
            "notes": list(self.notes),
        }

    def format_table(self) -> str:
        def mark(value):
            return "yes" if value else ("-" if value is None else "no")

        lines = [f"kernel {self.kernel_release}"]
        if self.ulp_available:
            lines.append("tls ULP: available")
        else:
            lines.append(f"tls ULP: UNAVAILABLE - {self.ulp_message}")
        if self.ciphers:
            lines.append("")
            lines.append(f"{'version':<8} {'cipher':<18} {'TX':<4} {'RX':<4} {'data':<5} note")
            for c in self.ciphers:
                lines.append(
                    f"{VERSION_NAMES[c.version]:<8} {c.cipher.display_name:<18} {mark(c.tx):<4} "
                    f"{mark(c.rx):<4} {mark(c.round_trip):<5} {c.error or ''}".rstrip()
                )
            lines.append("")
        lines.append(f"TLS 1.3 rekey (KeyUpdate): {mark(self.rekey_supported)}"
                     + (f" - {self.rekey_detail}" if self.rekey_detail else ""))
        lines.append(f"TLS_RX_EXPECT_NO_PAD: {mark(self.rx_expect_no_pad)}")
        lines.append(f"/proc/net/tls_stat: {'present' if self.tls_stat_available else 'absent'}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _loopback_pair(timeout: float = 5.0) -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=timeout)
        server, _ = listener.accept()
    client.settimeout(timeout)
    server.settimeout(timeout)
    return client, server


def _probe_keys(version: int, cipher: KernelCipher, fill: int) -> TrafficKeys:
    return TrafficKeys(version, cipher, bytes([fill]) * cipher.key_size,
                       bytes([fill ^ 0x5A]) * cipher.iv_size, bytes([fill ^ 0xA5]) * cipher.salt_size, 0)


def _wait_readable(sock, timeout: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def _probe_cipher(version: int, cipher: KernelCipher) -> CipherSupport:
    keys = _probe_keys(version, cipher, 0x11 + int(cipher))
    client, server = _loopback_pair()
    with client, server:
        attach_ulp(client)
        attach_ulp(server)
        tx = rx = False
        error = None
        # The report keeps plain sentences: callers quote them inside their own messages.
        try:
            install(client, Direction.TX, keys)
            tx = True
        except KernelTLSError as exc:
            error = exc.message
        try:
            install(server, Direction.RX, keys)
            rx = True
        except KernelTLSError as exc:
            error = error or exc.message
        round_trip = False
        if tx and rx:
            message = b"ktls_ossl probe"
            try:
                client.sendall(message)
                if _wait_readable(server, 5.0):
                    content_type, payload = recv_record(server, 64, lib.MSG_DONTWAIT)
                    round_trip = content_type == ContentType.APPLICATION_DATA and payload == message
                if not round_trip:
                    error = "keys installed but a record did not round-trip"
            except OSError as exc:
                why = _errno_text(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
                error = f"keys installed but a record did not round-trip ({why})"
        return CipherSupport(version, cipher, tx, rx, round_trip, error)


def _errno_name(err: int | None) -> str:
    return errno.errorcode.get(err, str(err)) if err else "no errno"


def _errno_text(err: int | None) -> str:
    """"ENAME: strerror" for a message that names an errno inside a sentence."""
    return f"{_errno_name(err)}: {os.strerror(err)}" if err else "no errno"


def _rekey_refusal(refused: list[tuple[Direction, KernelTLSError]]) -> str:
    """Which direction(s) the kernel would not rekey, and why, as one sentence."""
    directions = " and ".join(f"{d.name} ({_errno_name(exc.errno)})" for d, exc in refused)
    if all(exc.errno == errno.EBUSY for _, exc in refused):
        return (f"the kernel refused new TLS 1.3 keys for {directions} on a live socket: key updates "
                f"(KeyUpdate) need Linux 6.14 or later (running {os.uname().release})")
    return "; ".join(f"the kernel refused the new {d.name} key: {exc.message} "
                     f"({_errno_text(exc.errno)})" for d, exc in refused)


def _probe_rekey(ciphers: tuple[CipherSupport, ...]) -> tuple[bool | None, str]:
    """Both directions for real, in the order a TLS 1.3 KeyUpdate takes: the sender sends the
    KeyUpdate record under its old key, then replaces its TX key; the receiver reads the KeyUpdate
    (from 6.14 the kernel then pauses reception, EKEYEXPIRED, until a new RX key is in), replaces
    its RX key; a data record sealed under the new TX key must then come out of the new RX key."""
    usable = [c.cipher for c in ciphers if c.version == TLS_1_3_VERSION and c.usable]
    if not usable:
        return None, "not tried: no TLS 1.3 cipher works in this kernel"
    cipher = KernelCipher.AES_GCM_128 if KernelCipher.AES_GCM_128 in usable else usable[0]
    old_keys = _probe_keys(TLS_1_3_VERSION, cipher, 0x42)
    new_keys = _probe_keys(TLS_1_3_VERSION, cipher, 0x43)
    what = f"TLS 1.3 {cipher.display_name}"
    client, server = _loopback_pair()
    refused: list[tuple[Direction, KernelTLSError]] = []
    with client, server:
        attach_ulp(client)
        attach_ulp(server)
        install(client, Direction.TX, old_keys)
        install(server, Direction.RX, old_keys)
        key_update = records.key_update_message(False)
        try:
            send_record(client, ContentType.HANDSHAKE, key_update)
            try:
                rekey(client, Direction.TX, new_keys)
            except KernelTLSError as exc:
                refused.append((Direction.TX, exc))
            if not _wait_readable(server, 5.0):
                return False, f"{what}: the KeyUpdate record sent under the old key did not arrive"
            received = recv_record(server, 64, lib.MSG_DONTWAIT)
            if received != (ContentType.HANDSHAKE, key_update):
                return False, f"{what}: the KeyUpdate record did not arrive intact under the old key"
            try:
                rekey(server, Direction.RX, new_keys)
            except KernelTLSError as exc:
                refused.append((Direction.RX, exc))
            if refused:
                return False, _rekey_refusal(refused)
            message = b"ktls_ossl rekey probe"
            client.sendall(message)
            if not _wait_readable(server, 5.0):
                return False, (f"{what}: new TX and RX keys were accepted, but no record sent under "
                               "the new TX key arrived through the new RX key")
            if recv_record(server, 64, lib.MSG_DONTWAIT) != (ContentType.APPLICATION_DATA, message):
                return False, (f"{what}: new TX and RX keys were accepted, but a record sent under "
                               "the new TX key did not come out of the new RX key intact")
        except OSError as exc:
            why = _errno_text(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
            return False, f"{what}: the key update test failed ({why})"
    return True, (f"verified with {what}: after a KeyUpdate record, new TX and RX keys were "
                  "installed and a record sent under the new TX key was decrypted with the new RX key")


def _probe_no_pad() -> bool:
    keys = _probe_keys(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, 0x44)
    client, server = _loopback_pair()
    with client, server:
        attach_ulp(server)
        install(server, Direction.RX, keys)
        try:
            set_rx_expect_no_pad(server, True)
        except KernelTLSError:
            return False
    return True


_probe_lock = threading.Lock()
_probe_report: ProbeReport | None = None


def _run_probe() -> ProbeReport:
    release = os.uname().release
    # ulp_message is a plain sentence (what is missing, what to do; no errno, which is ulp_errno):
    # sock.ktls and the require_ktls error quote it inside their own messages.
    try:
        client, server = _loopback_pair()
    except OSError as exc:
        return ProbeReport(release, False, exc.errno,
                           "kernel TLS could not be probed: no TCP connection to 127.0.0.1 could be "
                           "opened; check that the loopback interface is up")
    with client, server:
        try:
            attach_ulp(client)
        except KTLSUnavailableError as exc:
            return ProbeReport(release, False, exc.errno, ulp_advice(exc.errno, release),
                               tls_stat_available=os.path.exists(TLS_STAT_PATH))
    ciphers = tuple(_probe_cipher(v, c) for v in PROBE_VERSIONS for c in PROBE_CIPHERS)
    rekey_supported, rekey_detail = _probe_rekey(ciphers)
    return ProbeReport(
        kernel_release=release,
        ulp_available=True,
        ulp_errno=None,
        ulp_message=None,
        ciphers=ciphers,
        rekey_supported=rekey_supported,
        rekey_detail=rekey_detail,
        rx_expect_no_pad=_probe_no_pad(),
        tls_stat_available=os.path.exists(TLS_STAT_PATH),
    )


def probe_done() -> bool:
    """Whether probe() has its report already (a call then returns at once, without I/O)."""
    return _probe_report is not None


def probe(refresh: bool = False) -> ProbeReport:
    """What this kernel's TLS can do, found by trying it on loopback (cached per process)."""
    global _probe_report
    report = _probe_report
    if report is not None and not refresh:
        return report  # every handoff asks: no lock (a clock read each) once the report exists
    with _probe_lock:
        if refresh or _probe_report is None:
            _probe_report = _run_probe()
        return _probe_report
