"""One OpenSSL SSL object per connection: the handshake, secret capture, record accounting, handoff.

OpenSSL runs and verifies the handshake over a socket BIO with read-ahead off, so it reads exactly
the handshake records. Two callbacks, written in C (cffi_build/callbacks.py), watch it: the keylog
callback captures the TLS 1.3 traffic secrets (TLS 1.2 master secrets come from the session), and
the message callback counts records per direction since the last key change, so the kernel gets
the exact next sequence numbers instead of assumed ones; it passes the messages the audit trail
records (ChangeCipherSpec, alerts, Finished, KeyUpdate) on to Python. After SSL_do_handshake
succeeds, ``handoff()`` turns this into the kernel's TrafficKeys; the SSL object then stays for
everything OpenSSL still owns (certificates, session, post-handshake messages).
"""
from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import errors, keys
from .audit import AuditTrail
from ._ossl import ffi, lib
from .keys import TLS_1_2_VERSION, TLS_1_3_VERSION, Direction, KernelCipher, TrafficKeys

_BYTES = ffi.typeof("char[]")  # the view of a buffer that a data call passes to OpenSSL

if TYPE_CHECKING:
    from .context import SSLContext  # context imports this module: a run-time import would be circular

# The audit trail of every connection (what Handshake.record_event keeps in sock.ktls_events).
log = logging.getLogger("ktls_ossl")


class Policy(enum.Enum):
    """When (and whether) traffic keys go to the kernel."""

    AFTER_FINISHED = "after-finished"  # default: exact keys after the peer's Finished is verified
    AFTER_CCS = "after-ccs"  # OpenSSL's own kTLS (SSL_OP_ENABLE_KTLS): TLS 1.2 keys at ChangeCipherSpec
    USERSPACE = "userspace"  # never kTLS: plain OpenSSL, like CPython's ssl


WANT_READ = lib.SSL_ERROR_WANT_READ
WANT_WRITE = lib.SSL_ERROR_WANT_WRITE

_FINISHED = 20
_KEY_UPDATE = 24
_CHANGE_CIPHER_SPEC = lib.SSL3_RT_CHANGE_CIPHER_SPEC
_HANDSHAKE = lib.SSL3_RT_HANDSHAKE
_ALERT = lib.SSL3_RT_ALERT
_HEADER = lib.SSL3_RT_HEADER
_INNER_CONTENT_TYPE = lib.SSL3_RT_INNER_CONTENT_TYPE


@dataclass(frozen=True)
class Handoff:
    """Everything the kernel needs to take over the record layer of one connection."""

    version: int
    cipher: KernelCipher
    suite: str  # IANA name of the negotiated suite
    hash_name: str
    tx: TrafficKeys
    rx: TrafficKeys
    # TLS 1.3 application traffic secrets, kept for KeyUpdate (None for TLS 1.2).
    tx_secret: bytes | None = None
    rx_secret: bytes | None = None

    def __repr__(self) -> str:
        return f"Handoff({keys.VERSION_NAMES[self.version]}, {self.suite}, tx={self.tx!r}, rx={self.rx!r})"

    @classmethod
    def from_tls13_secrets(cls, cipher: KernelCipher, suite: str, hash_name: str, *, tx_secret: bytes,
                           rx_secret: bytes, tx_seq: int, rx_seq: int) -> Handoff:
        """A TLS 1.3 handoff: each direction's keys from its application traffic secret, starting at
        the first record number not yet used under it."""
        return cls(TLS_1_3_VERSION, cipher, suite, hash_name,
                   keys.tls13_traffic_keys(tx_secret, cipher, hash_name, tx_seq),
                   keys.tls13_traffic_keys(rx_secret, cipher, hash_name, rx_seq), tx_secret, rx_secret)


class KeyUpdateRecord(tuple):
    """(content type, payload) of a record OpenSSL wrote that ends with its KeyUpdate: whoever
    sends it must change the send key right behind it, to ``next_keys``."""

    next_keys: TrafficKeys

    @property
    def update_requested(self) -> bool:
        return self[1][-1:] == b"\x01"


@dataclass(frozen=True)
class HandshakeHooks:
    """What the front that owns a Handshake wants to hear from inside OpenSSL's callbacks. The
    engine calls only these, never up into a front: data flows down, and the front hands down the
    callables it wants called.

    ``message(sent, version, content_type, data)``: every message OpenSSL reports, record headers
    and TLS 1.3 inner content types included (a Python call per message: None unless wanted).
    What it raises is kept in ``Handshake.application_error`` and raised by the front once the
    operation has ended.
    ``servername(raw_name)``: a server's client sent SNI (the name as sent, None for none). It
    returns None to go on, or the alert description the handshake fails with; it must not raise.
    """

    message: Callable[[bool, int, int, bytes], None] | None = None
    servername: Callable[[bytes | None], int | None] | None = None


@functools.lru_cache(maxsize=None)
def _standard_suite_names() -> dict[str, str]:
    """{OpenSSL's name of a cipher suite: its IANA name}, from the system OpenSSL's full list (the
    names are the same in every OpenSSL 3 build, so they translate a name that another build of
    OpenSSL reported, such as pyOpenSSL's)."""
    context = lib.SSL_CTX_new(lib.TLS_method())
    if context == ffi.NULL:
        raise MemoryError("SSL_CTX_new failed")
    try:
        lib.SSL_CTX_set_security_level(context, 0)
        lib.SSL_CTX_set_cipher_list(context, b"ALL:COMPLEMENTOFALL")
        suites = lib.SSL_CTX_get_ciphers(context)
        names = {}
        for index in range(lib.sk_SSL_CIPHER_num(suites)):
            pointer = lib.sk_SSL_CIPHER_value(suites, index)
            names[ffi.string(lib.SSL_CIPHER_get_name(pointer)).decode("ascii")] = \
                ffi.string(lib.SSL_CIPHER_standard_name(pointer)).decode("ascii")
        return names
    finally:
        lib.SSL_CTX_free(context)
        lib.ERR_clear_error()  # a name the cipher string does not know leaves nothing for later calls


def standard_suite_name(openssl_name: str) -> str | None:
    """The IANA name of the cipher suite OpenSSL calls ``openssl_name`` (None: unknown here)."""
    if openssl_name.startswith("TLS_"):
        return openssl_name  # TLS 1.3 suites: OpenSSL uses the IANA names
    return _standard_suite_names().get(openssl_name)


class HandoffUnavailable(Exception):
    """The negotiated connection cannot be carried by the kernel; ``reason`` says why."""


class Session:
    """A TLS session for resumption (the counterpart of ssl.SSLSession)."""

    def __init__(self, pointer: ffi.CData, context: SSLContext | None) -> None:
        # pointer: an SSL_SESSION * that this Session owns (and frees).
        self._pointer = ffi.gc(pointer, lib.SSL_SESSION_free)
        self._context = weakref.ref(context) if context is not None else None

    @property
    def id(self) -> bytes:
        length = ffi.new("unsigned int *")
        data = lib.SSL_SESSION_get_id(self._pointer, length)
        return bytes(ffi.buffer(data, length[0]))

    @property
    def time(self) -> int:
        return lib.SSL_SESSION_get_time(self._pointer)

    @property
    def timeout(self) -> int:
        return lib.SSL_SESSION_get_timeout(self._pointer)

    @property
    def ticket_lifetime_hint(self) -> int:
        return lib.SSL_SESSION_get_ticket_lifetime_hint(self._pointer)

    @property
    def has_ticket(self) -> bool:
        return bool(lib.SSL_SESSION_has_ticket(self._pointer))

    @property
    def resumable(self) -> bool:
        return bool(lib.SSL_SESSION_is_resumable(self._pointer))

    def __eq__(self, other):
        if not isinstance(other, Session):
            return NotImplemented
        return self.id == other.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<ktls_ossl Session id={self.id.hex()[:16]}... has_ticket={self.has_ticket}>"


_IP_CHARACTERS = frozenset("0123456789abcdefABCDEF.:%")


def _is_ip_address(hostname: str) -> bool:
    # Host names nearly always contain a letter beyond a-f, which rules an address out cheaply.
    if not _IP_CHARACTERS.issuperset(hostname):
        return False
    try:
        ipaddress.ip_address(hostname)
        return True
    except ValueError:
        return False


def handshake_of(ssl_pointer) -> Handshake | None:
    """The Handshake of an SSL object, for C callbacks (None once it was released)."""
    data = lib.SSL_get_app_data(ssl_pointer)
    if data == ffi.NULL:
        return None
    return ffi.from_handle(data)


@ffi.def_extern()
def ktls_msg_cb(write_p, version, content_type, buf, length, ssl_pointer, arg):
    handshake = handshake_of(ssl_pointer)
    if handshake is not None:
        handshake._on_message(write_p, version, content_type, buf, length)


# The ex_data slot through which the C callbacks find a connection's state: allocated once, here,
# while the import lock keeps other threads out.
if lib.ktls_state_index_init() < 0:
    raise ImportError("OpenSSL refused an SSL ex_data index for ktls_ossl's handshake state")


@ffi.def_extern()
def ktls_servername_cb(ssl_pointer, alert, arg):
    handshake = handshake_of(ssl_pointer)
    if handshake is None:
        return lib.SSL_TLSEXT_ERR_OK
    return handshake._on_servername(alert)


def memory_bio():
    bio = lib.BIO_new(lib.BIO_s_mem())
    if bio == ffi.NULL:
        raise MemoryError("BIO_new failed")
    lib.BIO_set_mem_eof_return(bio, -1)  # empty means "no more yet", not EOF
    return bio


class SecretCapture:
    """What the C callbacks (cffi_build/callbacks.py) keep for one SSL object, and the Handoff made
    from it: records per direction (in total, after the last Finished, after the last
    ChangeCipherSpec) and the TLS 1.3 traffic secrets. OpenSSL 3 reports a received
    ChangeCipherSpec to no callback, so the Finished, always the first record under TLS 1.2's new
    keys, is the marker for both versions."""

    def __init__(self, ssl_object) -> None:
        self.state = ffi.new("struct ktls_handshake_state *")
        if not lib.ktls_attach_state(ssl_object, self.state):
            raise errors.ssl_error_from_code(errors.pop_error_code())

    @property
    def records(self) -> tuple[int, int]:
        """Records OpenSSL has read and written, indexed by Direction."""
        return self.state.records[0], self.state.records[1]

    def records_after_finished(self, direction: Direction) -> int:
        """Records since the last Finished message ended: TLS 1.3's first application record
        is number 0."""
        return self.state.since_finished[int(direction)]

    def records_after_change_cipher_spec(self, direction: Direction) -> int:
        """Records since the last ChangeCipherSpec record: TLS 1.2's epoch under the new keys,
        which starts with the Finished (one record or several, possibly after empty ones)."""
        return self.state.since_ccs[int(direction)]

    def traffic_secret(self, client: bool) -> bytes | None:
        """CLIENT_/SERVER_TRAFFIC_SECRET_0 as OpenSSL logged it (TLS 1.3), None if it did not."""
        state = self.state
        if client:
            length, secret = state.client_traffic_secret_len, state.client_traffic_secret
        else:
            length, secret = state.server_traffic_secret_len, state.server_traffic_secret
        return bytes(ffi.buffer(secret, length)) if length else None

    def tls13_handoff(self, cipher: KernelCipher, suite: str, hash_name: str, *, server_side: bool) -> Handoff:
        """Keys from the captured traffic secrets, sequence numbers counted since each Finished."""
        tx_secret = self.traffic_secret(client=not server_side)
        rx_secret = self.traffic_secret(client=server_side)
        if tx_secret is None or rx_secret is None:
            raise HandoffUnavailable("OpenSSL did not report the TLS 1.3 traffic secrets")
        handoff = Handoff.from_tls13_secrets(cipher, suite, hash_name, tx_secret=tx_secret, rx_secret=rx_secret,
                                             tx_seq=self.records_after_finished(Direction.TX),
                                             rx_seq=self.records_after_finished(Direction.RX))
        self.forget_secrets()
        return handoff

    def tls12_handoff(self, ssl_object, cipher: KernelCipher, suite: str, hash_name: str, *,
                      server_side: bool) -> Handoff:
        """Keys from the session's master secret, sequence numbers counted since each
        ChangeCipherSpec."""
        session = lib.SSL_get_session(ssl_object)
        master = ffi.new("unsigned char[48]")
        if session == ffi.NULL or lib.SSL_SESSION_get_master_key(session, master, 48) != 48:
            raise HandoffUnavailable("OpenSSL did not provide the TLS 1.2 master secret")
        client_random = ffi.new("unsigned char[32]")
        server_random = ffi.new("unsigned char[32]")
        lib.SSL_get_client_random(ssl_object, client_random, 32)
        lib.SSL_get_server_random(ssl_object, server_random, 32)
        tx, rx = keys.tls12_connection_keys(
            bytes(master), bytes(client_random), bytes(server_random), cipher, hash_name,
            server_side=server_side,
            # The new TLS 1.2 epoch starts after ChangeCipherSpec: the Finished's record(s) and
            # anything before it under the new keys have used its first sequence numbers.
            tx_seq=self.records_after_change_cipher_spec(Direction.TX),
            rx_seq=self.records_after_change_cipher_spec(Direction.RX),
        )
        self.forget_secrets()
        return Handoff(TLS_1_2_VERSION, cipher, suite, hash_name, tx, rx)

    def forget_secrets(self) -> None:
        state = self.state
        for secret in (state.client_traffic_secret, state.server_traffic_secret):
            ffi.memmove(secret, bytes(len(secret)), len(secret))
        state.client_traffic_secret_len = state.server_traffic_secret_len = 0


class Handshake:
    """An OpenSSL SSL object with its secrets and record counters, bound to a socket fd, or (fd
    None) to memory BIOs that a driver fills and empties (ktls_ossl.pump.RecordPump)."""

    def __init__(self, context, fd: int | None, *, server_side: bool, server_hostname: str | None,
                 policy: Policy, hooks: HandshakeHooks = HandshakeHooks(), session=None):
        self.context = context
        self._session_context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.policy = policy
        self.hooks = hooks
        pointer = lib.SSL_new(context._ssl_ctx)
        if pointer == ffi.NULL:
            raise errors.ssl_error_from_code(errors.pop_error_code())
        self.ssl = ffi.gc(pointer, lib.SSL_free)
        self._handle = ffi.new_handle(self)
        lib.SSL_set_app_data(self.ssl, self._handle)
        # Record counts and TLS 1.3 traffic secrets, for the handoff's exact keys and sequence numbers.
        self.capture = SecretCapture(self.ssl)
        self._state = self.capture.state
        self.finished_received = False
        self.events = AuditTrail()  # bounded: a peer decides how many events there are
        self._label = f"{'server' if server_side else 'client'} {'memory' if fd is None else f'fd={fd}'}"
        # Called as observer(write_p, content_type, data) from inside OpenSSL's message callback,
        # after the record accounting: the moment to sample what the kernel holds. They see the
        # audited messages (ChangeCipherSpec, alerts, Finished, KeyUpdate); every handshake
        # message after watch_every_message().
        self.observers: list = []
        self.callback_error: BaseException | None = None
        # What the context's _msg_callback (CPython's debug hook) raised last: raised, as CPython
        # does, once the handshake, read or write during which it was called has ended.
        self.application_error: BaseException | None = None
        # What each read and each write left, one struct per direction: a read in one thread and a
        # write in another run at the same time (the C call releases the GIL), and a shared struct
        # would hand each the other's byte count.
        self._read_result = ffi.new("struct ktls_io_result *")
        self._write_result = ffi.new("struct ktls_io_result *")
        if hooks.message is not None:
            self._state.forward_to_application = 1

        self._memory = fd is None
        if fd is None:
            if policy is Policy.AFTER_CCS:
                raise ValueError("Policy.AFTER_CCS is OpenSSL's own kTLS, which needs OpenSSL on the socket")
            lib.SSL_set_bio(self.ssl, memory_bio(), memory_bio())
        elif lib.SSL_set_fd(self.ssl, fd) != 1:
            raise errors.ssl_error_from_code(errors.pop_error_code())
        # Read-ahead off is what keeps every record after the handshake in the kernel's queue.
        lib.SSL_set_read_ahead(self.ssl, 0)
        if policy is Policy.AFTER_CCS:
            lib.SSL_set_options(self.ssl, lib.SSL_OP_ENABLE_KTLS)
        else:
            lib.SSL_clear_options(self.ssl, lib.SSL_OP_ENABLE_KTLS)
        if server_side:
            lib.SSL_set_accept_state(self.ssl)
        else:
            lib.SSL_set_connect_state(self.ssl)
            if server_hostname is not None:
                self._configure_hostname(server_hostname)
        self._configure_post_handshake_auth()
        if session is not None:
            self.set_session(session)

    # --- setup ------------------------------------------------------------------------------

    def _configure_hostname(self, hostname: str) -> None:
        """SNI for names (not for IP addresses) and, with check_hostname, the name to verify."""
        if hostname.startswith("."):
            raise ValueError("server_hostname cannot start with a dot")
        if "\x00" in hostname:
            raise ValueError("server_hostname cannot contain NUL")
        is_ip = _is_ip_address(hostname)
        encoded = hostname.encode("ascii")
        if not is_ip and lib.SSL_set_tlsext_host_name(self.ssl, encoded) != 1:
            raise errors.ssl_error_from_code(errors.pop_error_code())
        if self.context.check_hostname:
            param = lib.SSL_get0_param(self.ssl)
            if is_ip:
                ok = lib.X509_VERIFY_PARAM_set1_ip_asc(param, encoded)
            else:
                ok = lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded))
            if ok != 1:
                raise errors.ssl_error_from_code(errors.pop_error_code())

    def _configure_post_handshake_auth(self) -> None:
        """As CPython: clients offer it; servers may request it only when they verify peers."""
        if not self.context.post_handshake_auth:
            return
        if self.server_side:
            mode = lib.SSL_get_verify_mode(self.ssl)
            if mode & lib.SSL_VERIFY_PEER:
                lib.SSL_set_verify(self.ssl, mode | lib.SSL_VERIFY_POST_HANDSHAKE, ffi.NULL)
        else:
            lib.SSL_set_post_handshake_auth(self.ssl, 1)

    # --- callbacks ----------------------------------------------------------------------------

    def watch_every_message(self) -> None:
        """Pass every handshake-layer message to _on_message and the observers, not only the
        audited ones (costs a Python call per message)."""
        self._state.forward_all_messages = 1

    @property
    def records(self) -> tuple[int, int]:
        """Records OpenSSL has read and written, indexed by Direction."""
        return self.capture.records

    def stop_counting(self) -> None:
        """No more per-record callbacks once the handshake is over (they cost a call per record
        where OpenSSL keeps the record layer)."""
        lib.ktls_stop_counting(self.ssl)

    def _on_message(self, write_p: int, version: int, content_type: int, buf, length: int) -> None:
        if content_type in (_HEADER, _INNER_CONTENT_TYPE):  # only ever for the application
            self._to_application(write_p, version, content_type, buf, length)
            return
        direction = Direction.TX if write_p else Direction.RX
        if content_type == _CHANGE_CIPHER_SPEC:
            self._event("change_cipher_spec " + ("sent" if write_p else "received"))
        elif content_type == _HANDSHAKE and length > 0:
            if ffi.cast("unsigned char *", buf)[0] == _FINISHED:
                if direction is Direction.RX:
                    self.finished_received = True
                self._event("finished " + ("sent" if write_p else "received"))
            elif ffi.cast("unsigned char *", buf)[0] == _KEY_UPDATE:
                self._event("KeyUpdate " + ("sent" if write_p else "received") + " by OpenSSL")
        elif content_type == _ALERT and length >= 2:
            data = ffi.cast("unsigned char *", buf)
            self._event(f"alert {'sent' if write_p else 'received'} level={data[0]} description={data[1]}")
        if self.observers:
            data = bytes(ffi.buffer(buf, length)) if length > 0 else b""
            for observer in list(self.observers):
                try:
                    observer(write_p, content_type, data)
                except BaseException as exc:  # a callback cannot raise: reported by the caller
                    if self.callback_error is None:
                        self.callback_error = exc
        if self._state.forward_to_application:
            self._to_application(write_p, version, content_type, buf, length)

    def _to_application(self, write_p: int, version: int, content_type: int, buf, length: int) -> None:
        hook = self.hooks.message
        if hook is None:
            return
        try:
            hook(bool(write_p), version, content_type, bytes(ffi.buffer(buf, length)) if length > 0 else b"")
        except BaseException as exc:
            self.application_error = exc

    def raise_application_error(self) -> None:
        """After an operation that succeeded: what the _msg_callback raised during it."""
        exc, self.application_error = self.application_error, None
        if exc is not None:
            raise exc

    def _on_servername(self, alert) -> int:
        """The SNI a client sent, to the servername hook: go on, or fail with the alert it names."""
        hook = self.hooks.servername
        if hook is None:
            return lib.SSL_TLSEXT_ERR_OK
        name = lib.SSL_get_servername(self.ssl, lib.TLSEXT_NAMETYPE_host_name)
        try:
            description = hook(ffi.string(name) if name != ffi.NULL else None)
        except BaseException as exc:  # a hook must not raise: no exception can cross OpenSSL
            errors.report_callback_error(exc, hook, None)
            description = lib.SSL_AD_INTERNAL_ERROR
        if description is None:
            return lib.SSL_TLSEXT_ERR_OK
        alert[0] = description
        return lib.SSL_TLSEXT_ERR_ALERT_FATAL

    def _event(self, what: str) -> None:
        self.record_event("openssl", what)

    def record_event(self, source: str, what: str) -> None:
        """One entry of the connection's audit trail: kept in order, within the trail's bound
        (sock.ktls_events, ktls_ossl/audit.py), and logged to the "ktls_ossl" logger."""
        self.events.append((source, what))
        if log.isEnabledFor(logging.INFO):  # a call less per event when logging is off
            log.info("%s %s: %s", self._label, source, what)

    # --- handshake and user-space I/O ----------------------------------------------------------

    # --- memory BIOs (fd None) --------------------------------------------------------------------

    def give_incoming(self, data: bytes) -> None:
        """Bytes from the peer, for OpenSSL to read (memory BIOs only)."""
        if data and lib.BIO_write(lib.SSL_get_rbio(self.ssl), data, len(data)) != len(data):
            raise MemoryError("OpenSSL's memory BIO refused the bytes")

    def give_incoming_eof(self) -> None:
        """The peer closed TCP: OpenSSL's next read finds EOF instead of "no more yet"."""
        lib.BIO_set_mem_eof_return(lib.SSL_get_rbio(self.ssl), 0)

    @property
    def incoming_unread(self) -> int:
        """Bytes given to OpenSSL that it has not read yet."""
        return lib.BIO_ctrl_pending(lib.SSL_get_rbio(self.ssl))

    def take_outgoing(self) -> bytes:
        """What OpenSSL wrote for the peer since the last call (memory BIOs: the pump's, and the
        write BIO of a connection whose TX the kernel took)."""
        wbio = lib.SSL_get_wbio(self.ssl)
        pending = lib.BIO_ctrl_pending(wbio)
        if not pending:
            return b""
        buffer = ffi.new("unsigned char[]", pending)
        got = lib.BIO_read(wbio, buffer, pending)
        return bytes(ffi.buffer(buffer, max(got, 0)))

    def step(self) -> int:
        """One SSL_do_handshake: 0 when complete, WANT_READ/WANT_WRITE to wait, else raises."""
        lib.ERR_clear_error()
        result = lib.SSL_do_handshake(self.ssl)
        if result == 1:
            return 0
        return self.wants_or_raise(result)

    def wants_or_raise(self, result: int) -> int:
        """After an SSL_* call that failed: WANT_READ/WANT_WRITE, or the exception CPython raises."""
        saved_errno = ffi.errno
        code = lib.SSL_get_error(self.ssl, result)
        if code in (WANT_READ, WANT_WRITE):
            return code
        raise self.error_for(code, result, saved_errno)

    def error_for(self, code: int, result: int, saved_errno: int = 0) -> BaseException:
        """The exception for a failed SSL_* call: what a callback raised inside it (a keylog write),
        else what CPython raises for SSL_get_error's ``code`` (errors.for_failed_call)."""
        if self.callback_error is not None:
            exc, self.callback_error = self.callback_error, None
            lib.ERR_clear_error()
        else:
            exc = errors.for_failed_call(code, result, saved_errno, verify_result=lib.SSL_get_verify_result(self.ssl),
                                         hostname=self.server_hostname)
        if self.application_error is not None:  # CPython chains it to the operation's error
            exc.__context__, self.application_error = self.application_error, None
        return exc

    def read_into(self, buffer, nbytes: int) -> int:
        """SSL_read_ex into ``buffer``: the byte count, or -WANT_READ/-WANT_WRITE; raises on error."""
        io = self._read_result
        target = ffi.from_buffer(_BYTES, buffer, True)  # positional: keywords cost more than the call
        if lib.ktls_ssl_read(self.ssl, target, min(nbytes, len(target)), io):
            return io.count
        # Released before anything is raised: a kept exception must not pin the caller's buffer.
        ffi.release(target)
        return -self._wants_or_raise(io)

    def write(self, data) -> int:
        """SSL_write_ex of ``data``: bytes written, or -WANT_READ/-WANT_WRITE; raises on error."""
        io = self._write_result
        if type(data) is bytes:  # cffi passes bytes as they are; other buffers need a view
            ok = lib.ktls_ssl_write(self.ssl, data, len(data), io)
        else:
            source = ffi.from_buffer(_BYTES, data)
            ok = lib.ktls_ssl_write(self.ssl, source, len(source), io)
            ffi.release(source)  # before anything is raised (see read_into)
        if ok:
            return io.count
        return -self._wants_or_raise(io)

    def _wants_or_raise(self, io) -> int:
        """After a data call that failed: WANT_READ/WANT_WRITE, or the exception CPython raises."""
        code = io.code
        if code == WANT_READ or code == WANT_WRITE:
            return code
        raise self.error_for(code, 0, io.saved_errno)

    def sendfile(self, fd: int, offset: int, size: int) -> int:
        """SSL_sendfile (OpenSSL's own kTLS TX): bytes sent, or -WANT_*; raises on error."""
        lib.ERR_clear_error()
        sent = lib.SSL_sendfile(self.ssl, fd, offset, size, 0)
        if sent >= 0:
            return sent
        return -self.wants_or_raise(-1)

    def shutdown_step(self) -> int:
        """SSL_shutdown: 1 done, 0 sent close_notify (call again to wait for the peer's)."""
        lib.ERR_clear_error()
        result = lib.SSL_shutdown(self.ssl)
        if result >= 0:
            return result
        return -self.wants_or_raise(result)

    def pending(self) -> int:
        return lib.SSL_pending(self.ssl)

    def received_shutdown_only(self) -> bool:
        """The peer's close_notify arrived and we have not sent ours (CPython then reads b"")."""
        return lib.SSL_get_shutdown(self.ssl) == lib.SSL_RECEIVED_SHUTDOWN

    def key_update(self, request_peer: bool) -> None:
        """A user-space TLS 1.3 KeyUpdate: OpenSSL sends it with its next write or handshake call."""
        lib.ERR_clear_error()
        kind = lib.SSL_KEY_UPDATE_REQUESTED if request_peer else lib.SSL_KEY_UPDATE_NOT_REQUESTED
        if lib.SSL_key_update(self.ssl, kind) != 1:
            raise errors.ssl_error_from_code(errors.pop_error_code())
        while True:
            want = self.step()
            if want == 0:
                return
            raise errors.want_read_error() if want == WANT_READ else errors.want_write_error()

    def has_pending(self) -> bool:
        return bool(lib.SSL_has_pending(self.ssl))

    # --- handoff -------------------------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return bool(lib.SSL_is_init_finished(self.ssl))

    @property
    def protocol_version(self) -> int:
        return lib.SSL_version(self.ssl)

    def handoff(self) -> Handoff:
        """Exact kernel keys for both directions, from the captured secrets and record counts.

        Raises HandoffUnavailable (with the reason) when the connection cannot move to the kernel.
        """
        if not self.is_finished:
            raise HandoffUnavailable("the handshake is not complete")
        if self.has_pending() or (self._memory and self.incoming_unread):
            # OpenSSL already took bytes past the handshake out of the kernel (or was given them
            # on memory BIOs): they cannot go back.
            raise HandoffUnavailable("OpenSSL holds received data past the handshake")
        if lib.SSL_get_current_compression(self.ssl) != ffi.NULL:
            raise HandoffUnavailable("TLS compression is in use; the kernel does not decompress")
        version = self.protocol_version
        if version not in (TLS_1_2_VERSION, TLS_1_3_VERSION):
            raise HandoffUnavailable(f"protocol {self.version()} has no kernel TLS support")
        cipher_pointer = lib.SSL_get_current_cipher(self.ssl)
        suite = ffi.string(lib.SSL_CIPHER_standard_name(cipher_pointer)).decode("ascii")
        try:
            cipher = keys.kernel_cipher_for_suite(suite)
        except keys.UnsupportedCipher as exc:
            raise HandoffUnavailable(str(exc)) from None
        digest = lib.SSL_CIPHER_get_handshake_digest(cipher_pointer)
        hash_name = ffi.string(lib.EVP_MD_get0_name(digest)).decode("ascii").lower().replace("-", "")
        if version == TLS_1_3_VERSION:
            return self.capture.tls13_handoff(cipher, suite, hash_name, server_side=self.server_side)
        return self.capture.tls12_handoff(self.ssl, cipher, suite, hash_name, server_side=self.server_side)

    @property
    def in_handshake(self) -> bool:
        """OpenSSL is inside a (post-)handshake exchange that has not completed."""
        return bool(lib.SSL_in_init(self.ssl))

    def openssl_offload(self) -> tuple[bool, bool]:
        """(TX, RX) that OpenSSL's own kTLS (SSL_OP_ENABLE_KTLS) put in the kernel."""
        wbio, rbio = lib.SSL_get_wbio(self.ssl), lib.SSL_get_rbio(self.ssl)
        tx = wbio != ffi.NULL and bool(lib.BIO_get_ktls_send(wbio))
        rx = rbio != ffi.NULL and bool(lib.BIO_get_ktls_recv(rbio))
        return tx, rx

    # --- information ---------------------------------------------------------------------------

    def version(self) -> str | None:
        if not self.is_finished:
            return None
        return ffi.string(lib.SSL_get_version(self.ssl)).decode("ascii")

    # --- sessions ------------------------------------------------------------------------------

    def get_session(self) -> Session | None:
        """A copy of the current session. A copy, as CPython makes one: OpenSSL marks the session
        object itself unresumable when a connection is freed without a close_notify sent, and a
        session handed to the application must not change under it when that happens."""
        current = lib.SSL_get_session(self.ssl)
        if current == ffi.NULL:
            return None
        return Session(_duplicate_session(current), self.context)

    def release(self) -> None:
        """Free the SSL object now (the socket was closed), as CPython does, instead of whenever
        the garbage collector gets to it: what OpenSSL does at SSL_free (e.g. dropping the server
        session of a connection that was not shut down) must not depend on GC timing."""
        if self.ssl is not None:
            lib.SSL_set_app_data(self.ssl, ffi.NULL)
            self.capture.forget_secrets()
            ffi.release(self.ssl)
            self.ssl = None
            self._handle = None  # it refers to this object: freed with it, not by a collection

    def set_session(self, session) -> None:
        if not isinstance(session, Session):
            raise TypeError("Value is not a SSLSession.")
        if session._context is not None and session._context() is not self.context:
            raise ValueError("Session refers to a different SSLContext.")
        if self.server_side:
            raise ValueError("Cannot set session for server-side SSLSocket.")
        if self.is_finished:
            raise ValueError("Cannot set session after handshake.")
        # A copy again, as CPython's session setter makes one (_ssl_session_dup): the connection
        # must not change the application's session object, which OpenSSL marks unresumable when
        # this connection is freed without a close_notify; the same Session resumes any number
        # of connections, as CPython's does.
        copy = _duplicate_session(session._pointer)
        try:
            ok = lib.SSL_set_session(self.ssl, copy)  # takes its own reference
        finally:
            lib.SSL_SESSION_free(copy)
        if ok != 1:
            raise errors.ssl_error_from_code(errors.pop_error_code())

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None:
        """The kernel carried a close_notify: tell OpenSSL, which keeps a server-side session
        cached at SSL_free only for a connection it knows was shut down properly."""
        flags = (lib.SSL_SENT_SHUTDOWN if sent else 0) | (lib.SSL_RECEIVED_SHUTDOWN if received else 0)
        lib.SSL_set_shutdown(self.ssl, lib.SSL_get_shutdown(self.ssl) | flags)

    def forget_session(self) -> None:
        """A connection that ended badly must not be resumed (RFC 5246 7.2.2; what OpenSSL does
        itself when it sees the failure): drop its session from the cache it was added to, the
        context the connection started with (an SNI switch does not move the cache)."""
        session = lib.SSL_get_session(self.ssl)
        if session != ffi.NULL:
            lib.SSL_CTX_remove_session(self._session_context._ssl_ctx, session)

    @property
    def session_reused(self) -> bool:
        return bool(lib.SSL_session_reused(self.ssl))

    def set_context(self, context) -> None:
        """Switch SSL_CTX (an SNI callback choosing the server's certificate)."""
        lib.SSL_set_SSL_CTX(self.ssl, context._ssl_ctx)
        self.context = context

    def verify_client_post_handshake(self) -> None:
        lib.ERR_clear_error()
        if lib.SSL_verify_client_post_handshake(self.ssl) != 1:
            raise errors.ssl_error_from_code(errors.pop_error_code())


def _duplicate_session(pointer):
    """A new SSL_SESSION equal to ``pointer``'s, owned by the caller and in no cache: an i2d/d2i
    round trip, as CPython's _ssl_session_dup makes it: the encoding carries what resumption needs
    and none of the in-memory state (the not-resumable mark among it) that the copy is there to
    shed."""
    length = lib.i2d_SSL_SESSION(pointer, ffi.NULL)
    if length <= 0:
        raise errors.ssl_error_from_code(errors.pop_error_code())
    encoded = ffi.new("unsigned char[]", length)
    lib.i2d_SSL_SESSION(pointer, ffi.new("unsigned char **", encoded))
    copy = lib.d2i_SSL_SESSION(ffi.NULL, ffi.new("const unsigned char **", encoded), length)
    if copy == ffi.NULL:
        raise errors.ssl_error_from_code(errors.pop_error_code())
    return copy
