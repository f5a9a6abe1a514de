"""The TLS socket under an event loop: the non-blocking handshake and KTLSTransport.

Theory of operation
-------------------
asyncio's own SSL transport runs ssl.SSLObject over memory BIOs and reads up to 256 KiB of
ciphertext at a time; kernel TLS cannot survive that (the records behind the handshake must still
be in the socket's queue when the receive key goes in). Here the TLS socket stays a socket: the
handshake runs on it non-blocking (KTLSSocket.do_handshake says want-read or want-write, and each
wait is a one-shot add_reader/add_writer on the loop), and after the handoff KTLSTransport drives
the same non-blocking socket from readiness callbacks. Every read and write goes through the
engine: control records get their built-in handling, data the engine refuses is never delivered,
and records of our own (the answer to a KeyUpdate) go out before more data; where they cannot go
out yet, the read that produced them says want-write and reading waits for the socket to drain.

Readiness never spins and never stalls:
- a readable callback reads until nothing is left (EAGAIN, or a read shorter than asked: kTLS
  returns every whole record it holds, up to the size asked): on kernels that rekey, a KeyUpdate
  the kernel decrypted and parked is invisible to poll, so stopping earlier could wait forever. The
  engine takes such parked control records right after each non-blocking read (a 1-byte peek), so
  a short read really means drained, without another recvmsg just to hear EAGAIN;
- some kernels (6.1) report a kTLS socket readable while only part of the next record has arrived,
  and recvmsg then says EAGAIN; a wake-up that reads nothing switches the loop to an edge-triggered
  epoll of the socket (registered in the loop like any fd), which wakes only when more arrives;
- the engine may hold decrypted bytes it returned only in part (a small buffer from a
  BufferedProtocol); resume_reading() and a capped read loop schedule a read for them.

Closing follows asyncio's SSL transport (sslproto): close() sends what is buffered, then our
close_notify, waits up to ``ssl_shutdown_timeout`` for the peer's and closes; the peer's
close_notify or a TCP EOF gives eof_received() and then the same close; a reset gives
connection_lost(ConnectionResetError).
"""
from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import select
import socket
import ssl
import sys
import threading
from asyncio import constants as _asyncio_constants
from typing import Any

from .. import kernel
from ..connection import ConnectionState
from ..handshake import WANT_READ, WANT_WRITE

__all__ = ["KTLSTransport", "TransportState", "handshake"]

logger = logging.getLogger("ktls_ossl.asyncio")

# asyncio's defaults (asyncio/constants.py), as its SSL transport uses them.
SSL_HANDSHAKE_TIMEOUT = 60.0
SSL_SHUTDOWN_TIMEOUT = 30.0
_READ_SIZE = 256 * 1024  # what sslproto asks per read (kTLS returns whole records up to this)
_READS_PER_WAKE = 32  # then yield to other callbacks; level-triggered readiness brings us back
_per_thread = threading.local()


def _shared_read_buffer() -> bytearray:
    """What a data_received() protocol's reads land in: one per thread (a loop runs in one), shared
    by its transports, since each read's bytes are copied out before data_received() runs. One per
    transport cost 256 KiB of resident memory per connection (sslproto's cost too): 256 MiB for a
    server holding 1,000 connections."""
    buffer = getattr(_per_thread, "read_buffer", None)
    if buffer is None:
        buffer = _per_thread.read_buffer = bytearray(_READ_SIZE)
    return buffer
_WRITE_CHUNK = 1 << 20
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
# asyncio's SSL transport of 3.11+ calls eof_received() when the peer's close_notify arrives; 3.10's
# closes without it (a TCP EOF gives eof_received() on every version).
_EOF_RECEIVED_ON_CLOSE_NOTIFY = sys.version_info >= (3, 11)


async def _probe_off_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The kernel probe opens loopback connections and tries keys: the first one runs in the
    loop's executor, never on a running loop's thread."""
    if not kernel.probe_done():
        await loop.run_in_executor(None, kernel.probe)


async def handshake(sock: socket.socket, context, *, server_side: bool, server_hostname: str | None = None,
                    session=None, timeout: float | None = SSL_HANDSHAKE_TIMEOUT, loop=None):
    """Run the TLS handshake of connected ``sock`` on the running loop, without blocking it, and
    return the KTLSSocket (non-blocking; the kernel holds the keys where it can). ``sock`` is
    consumed: on failure it is closed and the handshake's own error is raised; past ``timeout``
    seconds, ConnectionAbortedError in asyncio's words."""
    loop = loop or asyncio.get_running_loop()
    try:
        await _probe_off_loop(loop)
        sock.setblocking(False)
        tls = context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False,
                                  suppress_ragged_eofs=False, server_hostname=server_hostname, session=session)
    except BaseException:
        sock.close()
        raise
    try:
        if timeout is None:
            await _run_handshake(loop, tls)
        else:
            try:
                await asyncio.wait_for(_run_handshake(loop, tls), timeout)
            except asyncio.TimeoutError:
                raise ConnectionAbortedError(
                    f"SSL handshake is taking longer than {timeout} seconds: aborting the connection") from None
    except BaseException:
        tls.close()
        raise
    return tls


async def _run_handshake(loop, tls) -> None:
    """Step the handshake at each readiness the engine asked for. The reader stays registered
    for the whole handshake (one epoll_ctl, not two per flight); the writer only while OpenSSL
    waits for room, and the reader is off then, since a readable socket would wake us in vain."""
    fd = tls.fileno()
    wake: asyncio.Future | None = None
    watching = 0  # WANT_READ or WANT_WRITE: what the loop watches for us

    def ready() -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    try:
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                wanted = WANT_READ
            except ssl.SSLWantWriteError:
                wanted = WANT_WRITE
            if wanted != watching:
                _unwatch(loop, fd, watching)
                (loop.add_reader if wanted == WANT_READ else loop.add_writer)(fd, ready)
                watching = wanted
            wake = loop.create_future()
            await wake
    finally:
        _unwatch(loop, fd, watching)


def _unwatch(loop, fd: int, watching: int) -> None:
    if watching == WANT_READ:
        loop.remove_reader(fd)
    elif watching == WANT_WRITE:
        loop.remove_writer(fd)


_TCP_CLOSE = 7  # <netinet/tcp.h> TCP_CLOSE: where a reset leaves a socket (a FIN leaves CLOSE_WAIT)


def _reset_by_peer(sock: socket.socket) -> bool:
    """Whether the peer reset this TCP connection (asked of the kernel: tcpi_state of TCP_INFO)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except OSError:
        return False
    return state[0] == _TCP_CLOSE


def _settle(waiters: list[asyncio.Future], error: BaseException | None = None) -> None:
    """Wake every waiter in ``waiters`` (with ``error``, if given) and empty the list."""
    pending, waiters[:] = list(waiters), []
    for waiter in pending:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class TransportState(enum.Enum):
    """Where a KTLSTransport is; CLOSED is final."""
    OPEN = "open: data flows both ways"
    FLUSHING = "close() was called: what is buffered goes out, then our close_notify"
    SHUTTING_DOWN = "our close_notify is on its way; waiting (bounded) for the peer's"
    CLOSED = "the socket is closed and connection_lost() is scheduled"


class KTLSTransport(asyncio.transports._FlowControlMixin):
    """An asyncio transport over a KTLSSocket whose handshake is complete (see the module doc).

    ``get_extra_info`` answers as asyncio's SSL transport does ('sslcontext', 'ssl_object' (the
    KTLSSocket: getpeercert(), cipher(), version(), selected_alpn_protocol(), ...), 'peercert',
    'cipher', 'compression', 'socket', 'peername', 'sockname') and adds 'ktls' (the KTLSStatus) and
    'ktls_socket'. Flow control (pause_writing/resume_writing at the write buffer's limits) is
    asyncio's own _FlowControlMixin, which loop.sendfile's fallback also requires of a transport
    (private, and the same on 3.10-3.13)."""

    # loop.sendfile(): asyncio's own loop reads the file and writes it (FALLBACK); the loops of
    # ktls_ossl.asyncio.new_event_loop() call sendfile() below, which is os.sendfile where the
    # kernel sends (a private enum of asyncio's, present and tested on 3.10-3.13).
    _sendfile_compatible = _asyncio_constants._SendfileMode.FALLBACK

    def __init__(self, loop: asyncio.AbstractEventLoop, tls, protocol: asyncio.BaseProtocol, *,
                 shutdown_timeout: float | None = SSL_SHUTDOWN_TIMEOUT, extra: dict | None = None) -> None:
        super().__init__(extra, loop)
        self._tls = tls
        self._fd = tls.fileno()
        self._protocol = protocol
        self._shutdown_timeout = SSL_SHUTDOWN_TIMEOUT if shutdown_timeout is None else shutdown_timeout
        self._state = TransportState.OPEN
        self._write_buffer = bytearray()
        self._reading_paused = False
        self._read_waits_for_write = False  # a read queued records of our own that did not fit
        self._write_waits_for_read = False  # OpenSSL in user space wants to read before it writes
        self._reader_fd: int | None = None  # what the loop watches for us: the socket or _edge
        self._writer_on = False
        self._edge: select.epoll | None = None
        self._shutdown_timer: asyncio.TimerHandle | None = None
        self._empty_waiters: list[asyncio.Future] = []
        self._writable_waiters: list[asyncio.Future] = []  # sendfile's waits for room
        self._sendfile_running = False
        self._conn_lost = 0
        self._extra.update(self._tls_extra())
        # Only the kernel's reception can say readable with half a record (OpenSSL in user space
        # takes the bytes that are there): only then is a wake-up that read nothing suspicious.
        self._kernel_rx = bool(self._extra["ktls"] is not None and self._extra["ktls"].rx)
        self._set_protocol_kind(protocol)

    def _tls_extra(self) -> dict[str, Any]:
        tls = self._tls
        extra = {"sslcontext": tls.context, "ssl_object": tls, "ktls_socket": tls,
                 "peercert": tls.getpeercert(), "cipher": tls.cipher(), "compression": tls.compression(),
                 "ktls": tls.ktls, "socket": asyncio.trsock.TransportSocket(tls)}
        for name, call in (("sockname", tls.getsockname), ("peername", tls.getpeername)):
            try:
                extra[name] = call()
            except OSError:
                extra[name] = None
        return extra

    def get_extra_info(self, name: str, default=None):
        if name == "ktls":
            self._remember_status()
        return super().get_extra_info(name, default)

    def _remember_status(self) -> None:
        """'ktls' is live (KeyUpdates and the AEAD limit change it) while the TLS connection is, and
        its last state after the connection was released (unwrap, close)."""
        status = self._tls.ktls
        if status is not None:
            self._extra["ktls"] = status

    def _set_protocol_kind(self, protocol) -> None:
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def start(self) -> None:
        """connection_made(), then reading (as asyncio's transports: nothing is delivered first)."""
        self._protocol.connection_made(self)
        if self._state is TransportState.OPEN:
            self._loop.call_soon(self._read_ready)
            self._update_reader()

    def __repr__(self) -> str:
        return f"<KTLSTransport fd={self._fd} {self._state.name} {self._tls.ktls}>"

    # --- the asyncio.Transport interface ------------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._set_protocol_kind(protocol)

    def is_closing(self) -> bool:
        return self._state is not TransportState.OPEN

    def is_reading(self) -> bool:
        return self._state is TransportState.OPEN and not self._reading_paused

    def pause_reading(self) -> None:
        if self._reading_paused or self._state is not TransportState.OPEN:
            return
        self._reading_paused = True
        self._update_reader()

    def resume_reading(self) -> None:
        if not self._reading_paused or self._state is not TransportState.OPEN:
            return
        self._reading_paused = False
        self._update_reader()
        self._loop.call_soon(self._read_ready)  # the engine may hold decrypted bytes already

    def get_write_buffer_size(self) -> int:
        return len(self._write_buffer)

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close (asyncio's SSL transport says the same)

    def write_eof(self) -> None:
        raise NotImplementedError("SSL doesn't support half-closes")

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def write(self, data) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if self._sendfile_running:
            raise RuntimeError("unable to write; sendfile is in progress")
        if self._state is not TransportState.OPEN:
            if self._conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("SSL connection is closed")
            self._conn_lost += 1
            return
        if not data:
            return
        self._write_buffer += data
        if not self._writer_on and not self._write_waits_for_read:
            self._flush()
        self._maybe_pause_protocol()

    def close(self) -> None:
        if self._state is not TransportState.OPEN:
            return
        self._state = TransportState.FLUSHING
        self._update_reader()
        if self._write_buffer:
            self._update_writer()
        else:
            self._start_shutdown()

    def abort(self) -> None:
        self._force_close(None)

    def key_update(self, request_peer: bool = False) -> None:
        """TLS 1.3: send a KeyUpdate and move our sending key (KTLSSocket.key_update). Where the
        socket is full it waits, with its key change, in front of the next data we send."""
        if self._state is not TransportState.OPEN:
            raise RuntimeError("Transport is closing")
        self._tls.key_update(request_peer)

    # --- sendfile ---------------------------------------------------------------------------------

    async def sendfile(self, file, offset: int = 0, count: int | None = None, *, fallback: bool = True) -> int:
        """loop.sendfile's contract on this transport: os.sendfile where the kernel sends (its pages
        never enter user space), otherwise, with ``fallback``, the file's bytes through write().
        The file position ends after the last byte sent."""
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
        if count is not None and (not isinstance(count, int) or count <= 0):
            raise ValueError(f"count must be a positive integer (got {count!r})")
        if self.is_closing():
            raise RuntimeError("Transport is closing")
        await self._wait_write_buffer_empty()
        fileno = file.fileno()
        size = os.fstat(fileno).st_size - offset
        if count is not None:
            size = min(size, count)
        total = 0
        self._sendfile_running = True
        try:
            while total < size:
                if self._state is not TransportState.OPEN:
                    raise ConnectionError("Connection closed by peer")
                try:
                    sent = self._tls.sendfile_chunk(fileno, offset + total, min(size - total, 1 << 30))
                except ssl.SSLWantWriteError:
                    await self._wait_writable()
                    continue
                if sent is None:
                    break  # the kernel does not send for this connection
                if sent == 0:
                    break  # the file ended early
                total += sent
        except (ssl.SSLError, OSError) as exc:
            if not isinstance(exc, ssl.SSLWantWriteError):
                self._fatal_error(exc, "Fatal error in sendfile on SSL transport")
            raise
        finally:
            self._sendfile_running = False
            if total:
                file.seek(offset + total)
        if total < size and sent is None:
            if not fallback:
                raise asyncio.SendfileNotAvailableError(
                    f"the kernel does not send for this connection ({self._tls.ktls}); use fallback=True")
            total += await self._sendfile_by_writes(fileno, offset + total, size - total)
            file.seek(offset + total)
        return total

    async def _sendfile_by_writes(self, fileno: int, offset: int, size: int) -> int:
        total = 0
        while total < size:
            chunk = await self._loop.run_in_executor(None, os.pread, fileno, min(size - total, _READ_SIZE),
                                                     offset + total)
            if not chunk:
                break
            self.write(chunk)
            total += len(chunk)
            await self._wait_write_buffer_empty()
        return total

    async def _wait_writable(self) -> None:
        """Until the socket takes more, through the transport's own writer registration (one
        callback per fd: a second add_writer would replace it)."""
        waiter = self._loop.create_future()
        self._writable_waiters.append(waiter)
        self._update_writer()
        await waiter

    async def _wait_write_buffer_empty(self) -> None:
        if not self._write_buffer:
            return
        waiter = self._loop.create_future()
        self._empty_waiters.append(waiter)
        await waiter

    # --- reading ---------------------------------------------------------------------------------

    def _update_reader(self) -> None:
        """Watch the socket for reading exactly while a read can make progress."""
        wanted = ((self._state is TransportState.OPEN and not self._reading_paused
                   and not self._read_waits_for_write)
                  or (self._state is TransportState.SHUTTING_DOWN and not self._writer_on))
        if not wanted:
            self._watch_reader(None)
        elif self._reader_fd is None:
            self._watch_reader(self._fd)

    def _watch_reader(self, fd: int | None) -> None:
        if self._reader_fd == fd:
            return
        if self._reader_fd is not None:
            self._loop.remove_reader(self._reader_fd)
        self._reader_fd = fd
        if fd is not None:
            callback = self._edge_woke if self._edge is not None and fd == self._edge.fileno() else self._readable
            self._loop.add_reader(fd, callback)

    def _readable(self, woken: bool = True) -> None:
        if self._state is TransportState.SHUTTING_DOWN:
            self._shutdown_step(woken)
        else:
            self._read_ready(woken)

    def _wait_for_more_than_a_partial_record(self) -> None:
        """Woken, yet the kernel had no whole record: wait on an edge-triggered epoll that wakes
        when more bytes arrive (level-triggered readiness would wake us at once, again and again).
        Registering absorbs readiness that may include a real arrival, so read once more."""
        if self._edge is None:
            self._edge = select.epoll(1)
            self._edge.register(self._fd, select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP)
        self._edge.poll(0)
        self._watch_reader(self._edge.fileno())
        self._readable(woken=False)

    def _edge_woke(self) -> None:
        self._edge.poll(0)
        self._watch_reader(None)
        self._update_reader()  # back to the socket itself
        self._readable(woken=True)

    def _read_ready(self, woken: bool = False) -> None:
        """Read until nothing is left (want-read, or a short read: see the module doc), delivering
        as we go."""
        delivered = 0
        for _ in range(_READS_PER_WAKE):
            if self._state is not TransportState.OPEN or self._reading_paused or self._read_waits_for_write:
                return
            try:
                if self._buffered:
                    buffer = self._protocol.get_buffer(-1)
                    asked = len(buffer)
                    if not asked:
                        raise RuntimeError("get_buffer() returned an empty buffer")
                    count = self._tls.recv_into(buffer)
                    data = None
                else:
                    asked = _READ_SIZE
                    shared = _shared_read_buffer()
                    count = self._tls.recv_into(shared)
                    data = bytes(memoryview(shared)[:count])
            except ssl.SSLWantReadError:
                if woken and not delivered and self._reader_fd == self._fd and self._kernel_rx:
                    self._wait_for_more_than_a_partial_record()
                return
            except ssl.SSLWantWriteError:
                # Records of our own (an answer the read produced) wait for room: reading resumes
                # once they are out, so nothing is sent out of order and nothing spins.
                self._read_waits_for_write = True
                self._update_reader()
                self._update_writer()
                return
            except ssl.SSLZeroReturnError:
                self._eof(close_notify=True)
                return
            except ssl.SSLEOFError:
                if _reset_by_peer(self._tls):
                    # OpenSSL in user space reports a reset as an unexpected EOF; asyncio's SSL
                    # transport, which reads the socket itself, reports ConnectionResetError.
                    self._fatal_error(ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)),
                                      "Fatal read error on SSL transport")
                    return
                self._eof(close_notify=False)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on SSL transport")
                return
            if not count:
                self._eof(close_notify=True)
                return
            delivered += count
            if self._reader_fd != self._fd and self._state is TransportState.OPEN:
                self._watch_reader(None)
                self._update_reader()
            try:
                if data is None:
                    self._protocol.buffer_updated(count)
                else:
                    self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
            if self._write_waits_for_read and self._write_buffer:
                self._write_waits_for_read = False
                self._flush()
            if count < asked:  # (bytes the engine holds only ever follow a full read)
                # A short read took every whole record the kernel had (the engine took a KeyUpdate
                # parked behind them too): another recvmsg would only say EAGAIN. What arrives
                # later, readiness reports.
                return
        # Capped: the socket's readiness brings us back, but bytes the engine holds do not.
        if self._tls.pending():
            self._loop.call_soon(self._read_ready)

    def _eof(self, *, close_notify: bool) -> None:
        """The peer's close_notify, or TCP EOF without it: eof_received(), then close() (asyncio's
        SSL transport cannot stay half-open either)."""
        logger.debug("%r received %s", self, "close_notify" if close_notify else "EOF")
        if close_notify and not _EOF_RECEIVED_ON_CLOSE_NOTIFY:
            self.close()
            return
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Error calling eof_received()")
            return
        if keep_open:
            logger.warning("returning true from eof_received() has no effect when using ssl")
        self.close()

    # --- writing ---------------------------------------------------------------------------------

    def _update_writer(self) -> None:
        """Watch the socket for writing exactly while something waits for room."""
        wanted = ((bool(self._write_buffer) and not self._write_waits_for_read) or self._read_waits_for_write
                  or bool(self._writable_waiters))
        self._writer_on_off(wanted and self._state is not TransportState.CLOSED)

    def _writable(self) -> None:
        _settle(self._writable_waiters)
        if self._state is TransportState.SHUTTING_DOWN:
            self._writer_on_off(False)
            self._shutdown_step()
            return
        if self._read_waits_for_write:
            self._read_waits_for_write = False
            self._update_reader()
            self._read_ready()
            if self._state is TransportState.CLOSED:
                return
        self._flush()

    def _writer_on_off(self, on: bool) -> None:
        if on and not self._writer_on:
            self._loop.add_writer(self._fd, self._writable)
        elif not on and self._writer_on:
            self._loop.remove_writer(self._fd)
        self._writer_on = on

    def _flush(self) -> None:
        """Send what is buffered until the socket is full (a retry sends at least what the last
        attempt offered: OpenSSL in user space requires it)."""
        while self._write_buffer and self._state in (TransportState.OPEN, TransportState.FLUSHING):
            try:
                sent = self._tls.send(memoryview(self._write_buffer)[:_WRITE_CHUNK])
            except ssl.SSLWantWriteError:
                break
            except ssl.SSLWantReadError:
                self._write_waits_for_read = True
                break
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on SSL transport")
                return
            del self._write_buffer[:sent]
        if self._state is TransportState.CLOSED:
            return
        self._update_writer()
        self._maybe_resume_protocol()
        if not self._write_buffer:
            _settle(self._empty_waiters)
            if self._state is TransportState.FLUSHING:
                self._start_shutdown()

    # --- closing ---------------------------------------------------------------------------------

    def _start_shutdown(self) -> None:
        self._state = TransportState.SHUTTING_DOWN
        self._shutdown_timer = self._loop.call_later(self._shutdown_timeout, self._shutdown_timed_out)
        self._shutdown_step()

    def _shutdown_step(self, woken: bool = False) -> None:
        """Our close_notify (once), then the peer's; data still arriving is discarded (unwrap)."""
        if self._state is not TransportState.SHUTTING_DOWN:
            return
        self._remember_status()
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            self._writer_on_off(False)
            if woken and self._reader_fd == self._fd and self._kernel_rx:
                self._wait_for_more_than_a_partial_record()  # (unwrap may have read records: harmless)
            else:
                self._update_reader()
            return
        except ssl.SSLWantWriteError:
            self._watch_reader(None)
            self._writer_on_off(True)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            logger.debug("%r: shutdown ended: %r", self, exc)
        self._force_close(None)

    def _shutdown_timed_out(self) -> None:
        self._shutdown_timer = None
        logger.debug("%r: no close_notify from the peer within %s s", self, self._shutdown_timeout)
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({"message": message, "exception": exc, "transport": self,
                                               "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._state is TransportState.CLOSED:
            return
        self._state = TransportState.CLOSED
        self._watch_reader(None)
        self._writer_on_off(False)
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None
        if self._edge is not None:
            self._edge.close()
            self._edge = None
        self._write_buffer.clear()
        _settle(self._empty_waiters, ConnectionError("Connection is closed"))
        _settle(self._writable_waiters, ConnectionError("Connection is closed"))
        self._remember_status()
        self._tls.close()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._protocol = None
            self._loop = None

    @property
    def ktls_state(self) -> ConnectionState | None:
        """The TLS connection's state (ktls_ossl.connection.ConnectionState)."""
        return self._tls.ktls_state

    def __del__(self, _warn=__import__("warnings").warn) -> None:
        if getattr(self, "_state", TransportState.CLOSED) is not TransportState.CLOSED:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            try:
                self._tls.close()
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
