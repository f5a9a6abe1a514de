"""Connections and servers with kernel TLS on any event loop: create_connection, create_server,
connect_accepted_socket, open_connection, start_server, sendfile.

The loop's own create_connection/create_server make the TCP connection, with every option they
have (happy eyeballs, local_addr, reuse_port, backlog, sock=...) and ssl=None, for a protocol that
takes the socket in connection_made(): asyncio and uvloop start reading only after
connection_made() returns, and the protocol closes that plain transport there, so not a byte was
read, and the descriptor it keeps (a dup) carries the connection on. The TLS handshake then runs on
that socket (transport.handshake) and KTLSTransport takes over. The loop's Server is returned as it
is: listening, close() and wait_closed() are the loop's; a connection being served is the
transport's (and its protocol's), as with asyncio's SSL servers whose handshake has completed.
"""
from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

from .transport import SSL_HANDSHAKE_TIMEOUT, KTLSTransport, handshake, logger

__all__ = ["connect_accepted_socket", "create_connection", "create_server", "is_ktls_context", "open_connection",
           "sendfile", "start_server", "start_transport"]


def is_ktls_context(ssl) -> bool:
    from ..context import SSLContext
    return isinstance(ssl, SSLContext)


def _require_ktls_context(ssl) -> None:
    if not is_ktls_context(ssl):
        raise TypeError(f"ssl must be a ktls_ossl.SSLContext (got {type(ssl).__name__}); "
                        "for ssl.SSLContext use the loop's own methods")


class _SocketTaker(asyncio.Protocol):
    """Takes the connected socket off the loop's plain transport before anything was read."""

    def __init__(self, on_socket: Callable[[socket.socket], None]) -> None:
        self._on_socket = on_socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = transport.get_extra_info("socket")
        try:
            sock = socket.socket(raw.family, raw.type, raw.proto, os.dup(raw.fileno()))
        finally:
            transport.close()  # not a byte read: reading starts after connection_made()
        sock.setblocking(False)
        self._on_socket(sock)

    def connection_lost(self, exc: BaseException | None) -> None:
        pass


async def start_transport(sock: socket.socket, protocol_factory, ssl, *, server_side: bool,
                          server_hostname: str | None = None, ssl_handshake_timeout: float | None = None,
                          ssl_shutdown_timeout: float | None = None, session=None, loop=None):
    """Handshake on connected ``sock`` and start a KTLSTransport for ``protocol_factory()``:
    returns (transport, protocol) once connection_made() was called. ``sock`` is consumed."""
    loop = loop or asyncio.get_running_loop()
    tls = await handshake(sock, ssl, server_side=server_side, server_hostname=server_hostname, session=session,
                          timeout=SSL_HANDSHAKE_TIMEOUT if ssl_handshake_timeout is None else ssl_handshake_timeout,
                          loop=loop)
    try:
        protocol = protocol_factory()
    except BaseException:
        tls.close()
        raise
    transport = KTLSTransport(loop, tls, protocol, shutdown_timeout=ssl_shutdown_timeout)
    transport.start()
    return transport, protocol


def _check_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout) -> None:
    for name, value in (("ssl_handshake_timeout", ssl_handshake_timeout),
                        ("ssl_shutdown_timeout", ssl_shutdown_timeout)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} should be a positive number, got {value}")


async def create_connection(protocol_factory, host=None, port=None, *, ssl, server_hostname=None,
                            ssl_handshake_timeout=None, ssl_shutdown_timeout=None, session=None, **kwargs):
    """loop.create_connection(protocol_factory, host, port, ssl=ctx, ...) for a ktls_ossl.SSLContext,
    on the running loop (asyncio's, uvloop, or new_event_loop()'s). Every other keyword argument is
    the loop's; returns (transport, protocol) after the handshake, as the loop does."""
    _require_ktls_context(ssl)
    _check_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout)
    if server_hostname is None:
        if not host:
            raise ValueError("You must set server_hostname when using ssl without a host")
        server_hostname = host
    loop = asyncio.get_running_loop()
    sock = kwargs.pop("sock", None)
    if sock is not None:
        # A connected socket of the caller's: the handshake takes it as it is (it becomes the
        # KTLSSocket's), as the loop's own transport would own it.
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        if kwargs:
            raise ValueError(f"{', '.join(sorted(kwargs))} cannot be combined with sock")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
    else:
        taken: list[socket.socket] = []
        await loop.create_connection(lambda: _SocketTaker(taken.append), host, port, **kwargs)
        sock = taken[0]
    return await start_transport(sock, protocol_factory, ssl, server_side=False, server_hostname=server_hostname,
                                 ssl_handshake_timeout=ssl_handshake_timeout,
                                 ssl_shutdown_timeout=ssl_shutdown_timeout, session=session, loop=loop)


async def connect_accepted_socket(protocol_factory, sock, *, ssl, ssl_handshake_timeout=None,
                                  ssl_shutdown_timeout=None):
    """loop.connect_accepted_socket(protocol_factory, sock, ssl=ctx) for a ktls_ossl.SSLContext."""
    _require_ktls_context(ssl)
    _check_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout)
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")
    return await start_transport(sock, protocol_factory, ssl, server_side=True,
                                 ssl_handshake_timeout=ssl_handshake_timeout,
                                 ssl_shutdown_timeout=ssl_shutdown_timeout)


class _Handshakes:
    """A server's connections that are still in their handshake (strong references to the tasks)."""

    def __init__(self, loop, protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._ssl = ssl
        self._timeouts = dict(ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)
        self.tasks: set[asyncio.Task] = set()

    def accepted(self, sock: socket.socket) -> None:
        task = self._loop.create_task(self._serve(sock))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await start_transport(sock, self._protocol_factory, self._ssl, server_side=True, loop=self._loop,
                                  **self._timeouts)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # As asyncio's SSL servers: a failed handshake ends that connection, quietly unless the
            # loop is in debug mode.
            if self._loop.get_debug():
                self._loop.call_exception_handler({"message": "Error on transport creation for incoming connection",
                                                   "exception": exc})
            else:
                logger.debug("TLS handshake of an incoming connection failed: %r", exc)


async def create_server(protocol_factory, host=None, port=None, *, ssl, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None, **kwargs):
    """loop.create_server(protocol_factory, host, port, ssl=ctx, ...) for a ktls_ossl.SSLContext:
    the loop's own Server (every other keyword argument is the loop's), each accepted connection's
    handshake run on the loop and served by a KTLSTransport."""
    _require_ktls_context(ssl)
    _check_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout)
    loop = asyncio.get_running_loop()
    handshakes = _Handshakes(loop, protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
    # The server keeps the factory, the factory the handshakes, and they their tasks.
    return await loop.create_server(lambda: _SocketTaker(handshakes.accepted), host, port, **kwargs)


async def open_connection(host=None, port=None, *, limit: int = 2 ** 16, **kwargs):
    """asyncio.open_connection with kernel TLS: (StreamReader, StreamWriter)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kwargs)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(client_connected_cb, host=None, port=None, *, limit: int = 2 ** 16, **kwargs):
    """asyncio.start_server with kernel TLS: the loop's Server."""
    loop = asyncio.get_running_loop()

    def factory():
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, **kwargs)


async def sendfile(transport, file, offset: int = 0, count: int | None = None, *, fallback: bool = True) -> int:
    """loop.sendfile for any loop: on a KTLSTransport, os.sendfile where the kernel sends (its
    waits are the loop's add_writer, so uvloop works too); any other transport goes to the loop."""
    if isinstance(transport, KTLSTransport):
        return await transport.sendfile(file, offset, count, fallback=fallback)
    return await asyncio.get_running_loop().sendfile(transport, file, offset, count, fallback=fallback)
