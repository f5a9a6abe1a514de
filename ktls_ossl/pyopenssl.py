"""pyOpenSSL with the kernel's record layer after a verified Finished: ``Connection``.

``ktls_ossl.pyopenssl.Connection(context, sock)`` is an ``OpenSSL.SSL.Connection``, built from the
user's own ``OpenSSL.SSL.Context``, with pyOpenSSL's methods and exceptions; after the handshake the
kernel carries the records, so ``send``/``recv``/``sendfile`` are system calls on the TCP socket.

Theory of operation
-------------------
pyOpenSSL runs cryptography's bundled OpenSSL, a different build from the system OpenSSL the rest of
ktls_ossl uses (built without kTLS, and with its own structure layouts): its ``SSL*`` is never handed
to this project's C code. Instead the pyOpenSSL object (this class's own base) runs on memory BIOs
(``Connection(context, None)``), and the engine drives it (ktls_ossl/pyopenssl_engine.py):

- The handshake is ``pump.RecordPump`` over ``PyOpenSSLEngine``: the peer's records go into
  pyOpenSSL's BIO one at a time, never a byte past the record that completes the handshake, so
  everything after it is still in the kernel's queue when the receive key goes in.
- The keys come from what pyOpenSSL reports publicly: TLS 1.3 traffic secrets through the context's
  keylog callback (``prepare_context`` owns it and chains the user's), TLS 1.2's master secret and
  randoms; the sequence numbers are counted from the wire by the pump.
- After the handoff the kernel session (session.KernelSession) owns the socket; post-handshake
  messages go to ``PyOpenSSLPostHandshake`` (KeyUpdate from the traffic secrets, tickets re-fed to
  pyOpenSSL so that ``get_session()`` resumes, post-handshake authentication and renegotiation
  refused).
- Where the kernel cannot carry the connection (no tls module, a cipher it lacks, policy
  USERSPACE), pyOpenSSL keeps the record layer (``PyOpenSSLRecordLayer``) and ``ktls`` says why.
- What pyOpenSSL's users see is pyOpenSSL's: the engine's exceptions become pyOpenSSL's
  (``pyopenssl_error``), worded by pyOpenSSL's own OpenSSL.

Blocking follows pyOpenSSL: on a socket in blocking mode (no timeout) calls block; on a socket with a
timeout or in non-blocking mode (the descriptor is non-blocking in both cases, and pyOpenSSL's SSL
calls then fail with WantReadError/WantWriteError) every wait is WantReadError/WantWriteError, and
the caller waits for readiness and calls again.
"""
from __future__ import annotations

import contextlib
import errno as errno_module
import functools
import os
import re
import socket as _socket
import ssl
import threading
from typing import TYPE_CHECKING, Any, Callable

try:
    from OpenSSL import SSL
except ImportError as exc:  # an optional dependency: say which, and how to get it
    raise ImportError("ktls_ossl's pyOpenSSL front needs pyOpenSSL: pip install 'ktls_ossl[pyopenssl]'") from exc

from . import errors, kernel, keys
from .audit import AuditTrail
from .connection import BeforeHandshake, ConnectionState, KTLSStatus, RecordConnection, _guarded, _Waiter
from .errors import KernelTLSError, KTLSRecordError, KTLSUnavailableError
from .handshake import HandoffUnavailable, Policy
from .keys import TLS_1_3_VERSION, Direction
from .pump import NoWaitSocket, RecordPump
from .pyopenssl_engine import PyOpenSSLEngine, PyOpenSSLPostHandshake, PyOpenSSLRecordLayer, SecretLog
from .session import KernelSession, hand_over

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["Connection", "KTLSOptions", "prepare_context", "pyopenssl_error"]

_FILE_CHUNK = 1 << 18  # sendfile where the kernel does not send: the file goes through sendall() in these


# --- the context: the keylog callback ------------------------------------------------------------

class _KeylogChain:
    """The context's keylog callback: the secrets of each ktls_ossl connection, then the user's."""

    def __init__(self) -> None:
        self.user_callback: Callable[[SSL.Connection, bytes], None] | None = None

    def __call__(self, connection: SSL.Connection, line: bytes) -> None:
        secrets = getattr(connection, "_ktls_secrets", None)
        if secrets is not None:
            try:
                secrets.add(line)
            except ValueError:
                pass  # not a line we know: the handoff then says the secrets are missing
        if self.user_callback is not None:
            self.user_callback(connection, line)


_PREPARING = threading.Lock()


def prepare_context(context: SSL.Context, keylog_callback: Callable[[SSL.Connection, bytes], None] | None = None
                    ) -> SSL.Context:
    """Make ``context`` ready for kernel TLS connections (``Connection`` does it on first use).

    ktls_ossl takes the TLS 1.3 traffic secrets from the context's keylog callback, so it owns that
    callback; yours is chained after it: pass it here, or call ``context.set_keylog_callback`` after
    this (it is then chained, not replaced). pyOpenSSL 26.2 and later refuse to change a context
    after its first connection, so prepare it before that."""
    if not isinstance(context, SSL.Context):
        raise TypeError(f"context must be an OpenSSL.SSL.Context, not {type(context).__name__}")
    with _PREPARING:  # two first connections in two threads: one prepares, the other sees it done
        chain = context.__dict__.get("_ktls_keylog")
        if chain is None:
            chain = _take_keylog_callback(context)
    if keylog_callback is not None:
        chain.user_callback = keylog_callback
    return context


def _take_keylog_callback(context: SSL.Context) -> _KeylogChain:
    """Install the chain as ``context``'s keylog callback, and make later set_keylog_callback
    calls set the user's part of it."""
    if getattr(context, "_keylog_callback", None) is not None:
        raise ValueError("this OpenSSL.SSL.Context already has a keylog callback, and kernel TLS needs that "
                         "callback for the TLS 1.3 traffic secrets: set yours after ktls_ossl.pyopenssl."
                         "prepare_context(context), or pass it as its keylog_callback (it is chained)")
    chain = _KeylogChain()
    set_callback = SSL.Context.set_keylog_callback
    try:
        set_callback(context, chain)
    except ValueError as exc:
        raise ValueError("this OpenSSL.SSL.Context was used for a connection before ktls_ossl.pyopenssl "
                         "prepared it, and pyOpenSSL no longer lets its keylog callback change: call "
                         "ktls_ossl.pyopenssl.prepare_context(context) before the context's first "
                         "connection") from exc

    def set_keylog_callback(callback: Callable[[SSL.Connection, bytes], None]) -> None:
        """pyOpenSSL's, chained after ktls_ossl's own (see ktls_ossl.pyopenssl.prepare_context)."""
        set_callback(context, chain)  # pyOpenSSL's own checks: a context already used refuses
        chain.user_callback = callback

    context.set_keylog_callback = set_keylog_callback
    context._ktls_keylog = chain
    return chain


class _NoTimeout:
    """What RecordConnection's waits ask of the socket, with pyOpenSSL's meaning of blocking: a
    socket with a timeout has a non-blocking descriptor, and pyOpenSSL's calls then do not wait."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock

    def gettimeout(self) -> float | None:
        return None if self._sock.gettimeout() is None else 0.0


class KTLSOptions:
    """A kernel connection's settings that are not the pyOpenSSL context's (RecordConnection reads
    them as a context's)."""

    post_handshake_auth = False

    def __init__(self, policy: Policy, require_ktls: bool, key_update_records: int | None,
                 control_record_callback: Callable[[Any, int, bytes], None] | None) -> None:
        if policy is Policy.AFTER_CCS:
            raise ValueError("Policy.AFTER_CCS is OpenSSL's own kTLS, which pyOpenSSL's OpenSSL is built without")
        self.ktls_policy = policy
        self.require_ktls = require_ktls
        self.key_update_records = key_update_records
        self.control_record_callback = control_record_callback


class PyOpenSSLRecordConnection(RecordConnection):
    """The record layer of one ``Connection`` (connection.RecordConnection does the rest: lifetime,
    waits, reads, writes, sendfile, KeyUpdate, shutdown, status).

    ``known_reason``: why the kernel cannot take this connection, where that is known before the
    handshake (no tls module, policy USERSPACE): pyOpenSSL then runs on the socket itself, as it
    does without ktls_ossl. None: the handshake runs through the pump on memory BIOs, and the
    handoff decides between the kernel's session and pyOpenSSL's record layer."""

    def __init__(self, front: Connection, sock: _socket.socket, options: KTLSOptions, server_side: bool, *,
                 known_reason: str | None) -> None:
        self._front = front
        self._timeouts = _NoTimeout(sock)
        self._known_reason = known_reason
        self._view = NoWaitSocket(sock.fileno()) if known_reason is None else None
        events = AuditTrail()
        super().__init__(options, sock, server_side, None, self._timeouts, policy=options.ktls_policy,
                         events=events, record_event=lambda source, what: events.append((source, what)),
                         free=self._view.close if self._view is not None else lambda: None)
        self._rx = self._tx = BeforeHandshake()
        self._userspace = None
        self._pump = None
        if known_reason is None:
            self._engine = PyOpenSSLEngine(front, front._ktls_secrets, server_side=server_side)
            self._pump = RecordPump(self._view, self._engine)
        else:
            self._userspace = self._pyopenssl_layer(known_reason)

    def _pyopenssl_layer(self, reason: str) -> PyOpenSSLRecordLayer:
        return PyOpenSSLRecordLayer(self._front, self._view, rx_reason=reason, check_open=self._check_open,
                                    waiter_for=self._waiter_factory())

    def _negotiated_version(self) -> int:
        return SSL.Connection.get_protocol_version(self._front)

    @property
    def _callback_subject(self) -> Connection:
        return self._front  # the pyOpenSSL connection, as pyOpenSSL's callbacks get it

    @_guarded
    def do_handshake(self) -> None:
        with self._lock:
            if self._stage is not ConnectionState.HANDSHAKING:
                if self._failure is not None:
                    raise self._failure
                return
            if self._pump is None and self._context.require_ktls:
                self._fail_for_kernel(self._known_reason)
            with _Waiter(self, "handshake") as waiter:
                while True:
                    try:
                        want = self._pump.step() if self._pump is not None else self._userspace.handshake(waiter)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        raise  # pyOpenSSL on a non-blocking socket: call again when it is ready
                    except BaseException as exc:
                        self._check_open()
                        self._failure, self._stage = exc, ConnectionState.FAILED
                        self._event(f"handshake failed: {exc!r}")
                        raise
                    if not want:
                        break
                    waiter.wait(want)
            self._event("handshake complete: pyOpenSSL verified the peer's Finished")
            self._take_record_layer()

    def _take_record_layer(self) -> None:
        """The kernel's session where it can carry both directions, else pyOpenSSL's record layer
        (or KTLSUnavailableError with require_ktls)."""
        version = keys.VERSION_NAMES.get(self._negotiated_version())
        reason = self._known_reason or self._kernel_unavailable_reason()
        session = None
        if reason is None:
            try:
                session = hand_over(self._fd, self._post_handshake, event=self._event, **self._session_options())
            except (HandoffUnavailable, KernelTLSError) as exc:  # nothing is in the kernel yet
                reason = getattr(exc, "message", None) or str(exc)
        if session is None:
            if self._context.require_ktls:
                self._fail_for_kernel(reason)
            self._rx = self._tx = self._userspace or self._pyopenssl_layer(reason)
            self._status = KTLSStatus(self.policy, False, False, reason, reason,
                                      SSL.Connection.get_cipher_name(self._front), version)
            self._stage = ConnectionState.OPENSSL
            self._event(f"pyOpenSSL keeps the record layer: {reason}")
            return
        self._session = session
        self._rx = self._tx = session
        handoff = self._handoff = session.handoff
        self._status = KTLSStatus(self.policy, True, True, None, None,
                                  f"{handoff.cipher.display_name} ({handoff.suite})", version,
                                  rekey_supported=session.rekeys if handoff.version == TLS_1_3_VERSION else None)
        self._stage = ConnectionState.KERNEL

    def _fail_for_kernel(self, reason: str) -> None:
        """require_ktls, and the kernel cannot take the connection: it fails for good."""
        self._failure = KTLSUnavailableError(0, f"kernel TLS is required, but {reason}", "KTLS_REQUIRED")
        self._stage = ConnectionState.FAILED
        raise self._failure

    def _kernel_unavailable_reason(self) -> str | None:
        """Why the kernel cannot take this connection, in both directions (None: it can). Asked
        before anything goes in: pyOpenSSL cannot send again once the kernel receives."""
        try:
            handoff = self._engine.handoff(self._pump)
        except HandoffUnavailable as exc:
            return str(exc)
        report = kernel.probe()
        for direction in (Direction.RX, Direction.TX):
            reason = report.unavailable_reason(handoff.version, handoff.cipher, direction)
            if reason:
                return reason
        self._post_handshake = PyOpenSSLPostHandshake(self._front, handoff)
        return None

    def on_socket(self) -> bool:
        """Whether pyOpenSSL's own calls on the socket carry the data (``direct``): where the kernel
        was known not to take the connection, once the handshake (run here if it has not) is done."""
        if self._known_reason is None:
            return False
        if self._stage is ConnectionState.HANDSHAKING:
            self.do_handshake()
        return self._stage is not ConnectionState.FAILED

    def direct(self, operation: Callable[..., Any], *args: Any) -> Any:
        """pyOpenSSL's own ``operation`` on the socket, made as a user of the connection (a close
        from another thread ends it with EBADF, ktls_ossl/lifetime.py) and nothing more: the data
        path where pyOpenSSL carries the records, at pyOpenSSL's own cost per call."""
        life = self._life
        life.enter()
        try:
            return operation(self._front, *args)
        except SSL.Error:
            self._check_open()
            raise
        finally:
            life.leave()

    @_guarded
    def close_notify(self) -> bool:
        """pyOpenSSL's shutdown(): our close_notify once; True when the peer's came too. A second
        call waits for the peer's."""
        self._check_usable()
        if self._stage in (ConnectionState.KERNEL, ConnectionState.OPENSSL):
            self._stage = ConnectionState.CLOSING
        layer = self._rx
        if layer.sent_close and not layer.peer_closed:
            with _Waiter(self, "read") as waiter:
                layer.shutdown(waiter)
        layer.send_close_notify()
        return layer.peer_closed

    def engine_lock(self):
        """Held while pyOpenSSL's SSL object is used after the handoff: the kernel session feeds it
        tickets from the reading thread."""
        return self._session.engine_lock if self._session is not None else contextlib.nullcontext()

    def shutdown_flags(self) -> int | None:
        """SSL_get_shutdown's flags where the kernel carries the records (None: ask pyOpenSSL)."""
        if not isinstance(self._rx, KernelSession):
            return None
        return ((SSL.SENT_SHUTDOWN if self._rx.sent_close else 0)
                | (SSL.RECEIVED_SHUTDOWN if self._rx.peer_closed else 0))

    def unsent(self) -> int:
        return getattr(self._tx, "unsent", 0)


# --- exceptions: pyOpenSSL's --------------------------------------------------------------------

_BRACKETED = re.compile(r"^\[[^\]]*\] (?P<message>.*?)(?: \((?:ktls_ossl|_ssl\.c:\d+)\))?$", re.S)


def _openssl_error_entry(exc: ssl.SSLError) -> tuple[str, str, str]:
    """pyOpenSSL's (library, function, reason) entry for ``exc``, worded by pyOpenSSL's own OpenSSL
    (its texts differ between builds: "sslv3 alert ..." in 3.0, "tls alert ..." in 4.0). A record
    the kernel refused is the record error OpenSSL reports for the same record."""
    library = "SSL" if isinstance(exc, KTLSRecordError) else exc.library
    codes = errors.reason_code(library, exc.reason)
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    match = _BRACKETED.match(text)
    message = match.group("message") if match else text
    if codes is None:
        return exc.library or "", "", message
    # pyOpenSSL's bindings (what pyOpenSSL itself words its errors with), asked for texts only.
    from OpenSSL._util import ffi as openssl_ffi
    from OpenSSL._util import lib as openssl_lib
    packed = (codes[0] << 23) | codes[1]  # ERR_PACK in OpenSSL 3: library << 23 | reason

    def word(pointer) -> str:
        return "" if pointer == openssl_ffi.NULL else openssl_ffi.string(pointer).decode("utf-8", "replace")
    return (word(openssl_lib.ERR_lib_error_string(packed)) or library, "",
            word(openssl_lib.ERR_reason_error_string(packed)) or message)


def pyopenssl_error(exc: BaseException) -> BaseException:
    """What pyOpenSSL raises for the event ``exc`` (an ssl or OS exception of the engine) reports;
    the engine's own exception stays reachable as ``ktls_error`` (and ``__cause__``)."""
    if isinstance(exc, SSL.Error):
        return exc
    if isinstance(exc, ssl.SSLWantReadError):
        return SSL.WantReadError()
    if isinstance(exc, ssl.SSLWantWriteError):
        return SSL.WantWriteError()
    if isinstance(exc, ssl.SSLZeroReturnError):
        return SSL.ZeroReturnError()
    tcp_errno = getattr(exc, "tcp_errno", 0)  # a reset that CPython's ssl reports as an EOF (up to 3.12)
    if tcp_errno:
        error = SSL.SysCallError(tcp_errno, errno_module.errorcode.get(tcp_errno, str(tcp_errno)))
    elif isinstance(exc, ssl.SSLEOFError):
        error = SSL.SysCallError(-1, "Unexpected EOF")
    elif isinstance(exc, ssl.SSLSyscallError):
        error = SSL.SysCallError(exc.errno or -1, errno_module.errorcode.get(exc.errno or 0, "Unexpected EOF"))
    elif isinstance(exc, ssl.SSLError):
        error = SSL.Error([_openssl_error_entry(exc)])
    elif isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and exc.errno:
        error = SSL.SysCallError(exc.errno, errno_module.errorcode.get(exc.errno, str(exc.errno)))
    else:
        return exc
    error.ktls_error = exc
    return error


def _pyopenssl_errors(method):
    """Run ``method`` and raise what it raises as pyOpenSSL would."""
    @functools.wraps(method)
    def translated(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ssl.SSLError, OSError) as exc:
            error = pyopenssl_error(exc)
            if error is exc:
                raise
            raise error from exc
    return translated


# --- the front -----------------------------------------------------------------------------------

class Connection(SSL.Connection):
    """An ``OpenSSL.SSL.Connection`` whose record layer, after the verified handshake, is the
    kernel's (see the module doc). ``sock`` is a connected (or, for ``accept``/``connect``, a
    listening or unconnected) TCP socket; attributes pyOpenSSL does not define go to it, as with
    pyOpenSSL's own Connection.

    ``policy``: Policy.AFTER_FINISHED (the kernel after the verified Finished) or Policy.USERSPACE
    (pyOpenSSL keeps the records: for comparison); ``require_ktls``: fail the handshake
    (KTLSUnavailableError) instead of staying in pyOpenSSL; ``key_update_records``: the proactive
    TLS 1.3 KeyUpdate threshold (ktls_ossl.SSLContext's); ``control_record_callback(connection,
    content_type, payload)`` sees each non-data record the kernel surfaces.

    Beyond pyOpenSSL's API: ``sendfile``, ``key_update``, ``ktls`` (KTLSStatus), ``ktls_state``,
    ``ktls_events``, ``close``."""

    def __init__(self, context: SSL.Context, socket: _socket.socket, *, policy: Policy = Policy.AFTER_FINISHED,
                 require_ktls: bool = False, key_update_records: int | None = None,
                 control_record_callback: Callable[[Any, int, bytes], None] | None = None) -> None:
        if not isinstance(socket, _socket.socket):
            raise TypeError("ktls_ossl.pyopenssl.Connection needs a TCP socket (kernel TLS works on the socket; "
                            "for memory BIOs use OpenSSL.SSL.Connection(context, None))")
        if socket.type != _socket.SOCK_STREAM:
            raise ValueError("kernel TLS needs a stream (TCP) socket")
        options = KTLSOptions(policy, require_ktls, key_update_records, control_record_callback)
        prepare_context(context)
        self._ktls_secrets = SecretLog()
        # Where the kernel is known not to take the connection, pyOpenSSL runs on the socket itself,
        # as without ktls_ossl; else on memory BIOs behind the pump, and the handoff decides.
        self._ktls_known_reason = _known_unavailable_reason(policy)
        super().__init__(context, None if self._ktls_known_reason is None else socket)
        self._ktls_socket = socket
        self._ktls_options = options
        self._ktls_server_side: bool | None = None
        self._ktls_record: PyOpenSSLRecordConnection | None = None

    def __getattr__(self, name: str) -> Any:
        sock = self.__dict__.get("_ktls_socket")
        if sock is None or name in _SOCKET_DATA_CALLS:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'"
                                 + (" (the TCP socket's data calls would bypass TLS: use send/recv)"
                                    if name in _SOCKET_DATA_CALLS else ""))
        return getattr(sock, name)

    def __repr__(self) -> str:
        record = self.__dict__.get("_ktls_record")
        state = record.state.name if record is not None else "NEW"
        return f"<ktls_ossl.pyopenssl.Connection {state} fd={self._ktls_socket.fileno()}>"

    # --- roles and the socket ----------------------------------------------------------------------

    def set_connect_state(self) -> None:
        super().set_connect_state()
        self._ktls_server_side = False

    def set_accept_state(self) -> None:
        super().set_accept_state()
        self._ktls_server_side = True

    def set_context(self, context: SSL.Context) -> None:
        """As pyOpenSSL's (a server's SNI callback switches contexts); the new one is prepared too."""
        prepare_context(context)
        super().set_context(context)

    def connect(self, addr: Any) -> None:
        self.set_connect_state()
        return self._ktls_socket.connect(addr)

    def connect_ex(self, addr: Any) -> int:
        self.set_connect_state()
        return self._ktls_socket.connect_ex(addr)

    def accept(self) -> tuple[Connection, Any]:
        client, address = self._ktls_socket.accept()
        options = self._ktls_options
        connection = type(self)(self.get_context(), client, policy=options.ktls_policy,
                                require_ktls=options.require_ktls, key_update_records=options.key_update_records,
                                control_record_callback=options.control_record_callback)
        connection.set_accept_state()
        return connection, address

    def sock_shutdown(self, how: int) -> None:
        self._ktls_socket.shutdown(how)

    def close(self) -> None:
        """Close the socket. A call inside another thread ends (EBADF); the descriptor is closed
        when it has left (ktls_ossl/lifetime.py)."""
        record = self._ktls_record
        if record is None:
            self._ktls_socket.close()
            return
        record._event("socket closed")
        fd = self._ktls_socket.detach()
        record.release(close_fd=functools.partial(os.close, fd) if fd >= 0 else None)

    def _record(self) -> PyOpenSSLRecordConnection:
        record = self._ktls_record
        if record is None:
            if self._ktls_server_side is None:
                # pyOpenSSL's own error for a connection without a role.
                SSL.Connection.do_handshake(self)
                raise SSL.Error([("SSL routines", "", "connection type not set")])
            record = self._ktls_record = PyOpenSSLRecordConnection(
                self, self._ktls_socket, self._ktls_options, self._ktls_server_side,
                known_reason=self._ktls_known_reason)
        return record

    # --- the handshake and the data ------------------------------------------------------------------

    @_pyopenssl_errors
    def do_handshake(self) -> None:
        self._record().do_handshake()

    @_pyopenssl_errors
    def send(self, buf: ReadableBuffer, flags: int = 0) -> int:
        _check_data(buf, flags)
        record = self._record()
        if record.on_socket():
            return record.direct(SSL.Connection.send, buf)
        return record.write(buf)

    write = send

    @_pyopenssl_errors
    def sendall(self, buf: ReadableBuffer, flags: int = 0) -> int:
        _check_data(buf, flags)
        record = self._record()
        if record.on_socket():
            return record.direct(SSL.Connection.sendall, buf)
        view = memoryview(buf).cast("B")
        total = 0
        while total < len(view):
            total += record.write(view[total:])
        return total

    @_pyopenssl_errors
    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        _check_read_flags(flags)
        record = self._record()
        if record.on_socket():
            return record.direct(SSL.Connection.recv, bufsiz)
        data = record.read(bufsiz)
        if not data and bufsiz:
            raise SSL.ZeroReturnError()
        return data

    read = recv

    @_pyopenssl_errors
    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int | None = None) -> int:
        _check_read_flags(flags)
        record = self._record()
        if record.on_socket():
            return record.direct(SSL.Connection.recv_into, buffer, nbytes)
        view = memoryview(buffer).cast("B")
        size = len(view) if nbytes is None else min(nbytes, len(view))
        if size == 0:
            return 0
        count = record.read(size, view[:size])
        if not count:
            raise SSL.ZeroReturnError()
        return count

    @_pyopenssl_errors
    def pending(self) -> int:
        record = self._ktls_record
        return record.pending() if record is not None else 0

    @_pyopenssl_errors
    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        """socket.sendfile for this connection: the kernel encrypts straight from the page cache
        where it carries the records, else the file goes through send()."""
        record = self._record()
        sent = record.sendfile(file, offset, count)
        if sent is not None:
            return sent
        total = 0
        file.seek(offset)
        while count is None or total < count:
            chunk = file.read(_FILE_CHUNK if count is None else min(_FILE_CHUNK, count - total))
            if not chunk:
                break
            self.sendall(chunk)
            total += len(chunk)
        return total

    @_pyopenssl_errors
    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate (and ask the peer for one with ``request_peer``): the kernel's
        send key moves right behind it (KTLSRekeyUnsupportedError where the kernel cannot)."""
        self._record().key_update(request_peer)

    @_pyopenssl_errors
    def shutdown(self) -> bool:
        """As pyOpenSSL's: send close_notify; True when the peer's close_notify came too (a second
        call waits for it)."""
        return self._record().close_notify()

    def get_session(self) -> SSL.Session | None:
        """As pyOpenSSL's; under kTLS taken while no ticket is being fed to pyOpenSSL's SSL object
        by a reading thread."""
        record = self._ktls_record
        with record.engine_lock() if record is not None else contextlib.nullcontext():
            return super().get_session()

    def get_shutdown(self) -> int:
        record = self._ktls_record
        flags = record.shutdown_flags() if record is not None else None
        return super().get_shutdown() if flags is None else flags

    def want_read(self) -> bool:
        return False  # nothing is ever left half-read here: the socket is the buffer

    def want_write(self) -> bool:
        record = self._ktls_record
        return record is not None and record.unsent() > 0

    def renegotiate(self) -> bool:
        raise SSL.Error([("SSL routines", "", "renegotiation is refused: the kernel carries the record layer "
                                              "and ktls_ossl refuses renegotiation")])

    def bio_read(self, bufsiz: int) -> bytes:
        raise TypeError("a kernel TLS connection has no memory BIO for the application: it works on its socket")

    bio_write = bio_shutdown = bio_read

    # --- kernel TLS --------------------------------------------------------------------------------

    @property
    def ktls(self) -> KTLSStatus:
        """Where the record layer runs, per direction, and why not in the kernel."""
        record = self._ktls_record
        if record is None:
            return KTLSStatus(self._ktls_options.ktls_policy, False, False, "handshake not done", "handshake not done")
        return record.status

    @property
    def ktls_state(self) -> ConnectionState:
        record = self._ktls_record
        return record.state if record is not None else ConnectionState.HANDSHAKING

    @property
    def ktls_events(self) -> list[tuple[str, str]]:
        record = self._ktls_record
        return list(record.events) if record is not None else []


# The socket's data calls that pyOpenSSL's attribute delegation would reach: on the bare socket they
# would bypass TLS (plaintext where pyOpenSSL keeps the records, and no control-record handling where
# the kernel does), so they are not delegated.
_SOCKET_DATA_CALLS = frozenset({"recvmsg", "recvmsg_into", "sendmsg", "sendmsg_afalg", "sendto", "recvfrom",
                                "recvfrom_into"})


def _known_unavailable_reason(policy: Policy) -> str | None:
    """Why no connection can go to the kernel here, known before any handshake (None: the
    handoff decides)."""
    if policy is Policy.USERSPACE:
        return "policy USERSPACE"
    report = kernel.probe()
    return None if report.ulp_available else (report.ulp_message or "kernel TLS unavailable")


def _check_data(buf: Any, flags: int) -> None:
    """pyOpenSSL's checks of send()'s arguments (its ``flags`` are accepted and ignored)."""
    if isinstance(buf, str):
        raise TypeError("buf must be a memoryview, buffer or byte string")


def _check_read_flags(flags: int | None) -> None:
    if flags:
        raise ValueError("recv flags (MSG_PEEK) are not supported under kernel TLS")
