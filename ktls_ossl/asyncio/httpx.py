"""httpx over kernel TLS: ``httpx.AsyncClient(transport=AsyncHTTPTransport(ctx))``.

httpx's own transport does TLS through anyio's TLSStream, which runs ssl.SSLObject over memory BIOs
(``wrap_bio``): kernel TLS cannot use that. httpx's public hooks are enough to replace it:
``AsyncHTTPTransport`` here is an ``httpx.AsyncBaseTransport`` over httpcore's connection pool whose
network backend, ``KTLSNetworkBackend``, connects with the running loop's sock_connect, runs the
handshake with ktls_ossl.asyncio.handshake and then reads and writes through a KTLSTransport and
asyncio's StreamReader (so reads follow the transport's readiness rules: no spinning on half a
record, draining to EAGAIN). Errors become httpcore's (ConnectError, ReadError, ...Timeout), and
those httpx's, as httpx's own transport maps them. Works on any asyncio loop (uvloop too); needs
httpx and httpcore (imported with this module).

    ctx = ktls_ossl.create_default_context()
    async with httpx.AsyncClient(transport=ktls_ossl.asyncio.httpx.AsyncHTTPTransport(ctx)) as client:
        response = await client.get("https://example.org/")
"""
from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

from .transport import KTLSTransport, handshake

__all__ = ["AsyncHTTPTransport", "KTLSNetworkBackend", "KTLSNetworkStream"]

# How long aclose() lets a connection wait for the server's close_notify before closing the socket.
SHUTDOWN_TIMEOUT = 5.0


async def _bounded(awaitable, timeout: float | None):
    if timeout is None:
        return await awaitable
    return await asyncio.wait_for(awaitable, timeout)


class KTLSNetworkStream(httpcore.AsyncNetworkStream):
    """One connection: plain TCP (reads and writes are the loop's sock_recv/sock_sendall) until
    start_tls(), which hands the socket to the TLS handshake and returns a stream over a
    KTLSTransport (asyncio's StreamReader and StreamWriter on it)."""

    def __init__(self, sock: socket.socket | None, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT,
                 tls=None) -> None:
        self._sock = sock
        self._shutdown_timeout = shutdown_timeout
        self._transport: KTLSTransport | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        if tls is not None:
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader(loop=loop)
            protocol = asyncio.StreamReaderProtocol(self._reader, loop=loop)
            self._transport = KTLSTransport(loop, tls, protocol, shutdown_timeout=shutdown_timeout)
            self._transport.start()
            self._writer = asyncio.StreamWriter(self._transport, protocol, self._reader, loop)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            if self._transport is None:
                if self._sock is None:
                    raise httpcore.ReadError("the connection is closed")
                return await _bounded(asyncio.get_running_loop().sock_recv(self._sock, max_bytes), timeout)
            return await _bounded(self._reader.read(max_bytes), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "timed out reading") from exc
        except OSError as exc:  # ssl.SSLError and the connection's errors
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            if self._transport is None:
                if self._sock is None:
                    raise httpcore.WriteError("the connection is closed")
                await _bounded(asyncio.get_running_loop().sock_sendall(self._sock, buffer), timeout)
                return
            if self._transport.is_closing():
                cause = self._reader.exception()
                raise httpcore.WriteError(f"the connection is closed ({cause!r})" if cause else
                                          "the connection is closed")
            self._writer.write(buffer)
            await _bounded(self._writer.drain(), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "timed out writing") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._transport is None:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            return
        # close() sends what is buffered and our close_notify; the transport closes the socket on
        # the server's close_notify, on EOF, or after shutdown_timeout.
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except asyncio.CancelledError:
            self._transport.abort()
            raise
        except OSError:
            pass  # the connection ended with an error: it is closed all the same

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> KTLSNetworkStream:
        if self._transport is not None:
            raise httpcore.ConnectError("TLS inside TLS (an HTTPS proxy) is not supported with kernel TLS")
        if self._sock is None:
            raise httpcore.ConnectError("the connection is closed")
        sock, self._sock = self._sock, None
        try:
            # handshake() consumes the socket: closed when it fails or is cancelled.
            tls = await _bounded(handshake(sock, ssl_context, server_side=False, server_hostname=server_hostname,
                                           timeout=None), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or "timed out in the TLS handshake") from exc
        except OSError as exc:  # ssl.SSLCertVerificationError, ssl.SSLError, resets
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return KTLSNetworkStream(None, shutdown_timeout=self._shutdown_timeout, tls=tls)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "is_readable":
            # Asked of an idle pooled connection: has the server closed it?
            if transport is None:
                return self._sock is None or _socket_readable(self._sock)
            return transport.is_closing() or self._reader.at_eof() or self._reader.exception() is not None
        if transport is None:
            sock = self._sock
            if sock is None:
                return None
            return {"socket": sock, "client_addr": _address(sock.getsockname),
                    "server_addr": _address(sock.getpeername)}.get(info)
        name = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        return transport.get_extra_info(name)


def _address(call):
    try:
        return call()
    except OSError:
        return None


def _socket_readable(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class KTLSNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend on the running asyncio loop whose TLS is kernel TLS (start_tls
    requires a ktls_ossl.SSLContext)."""

    def __init__(self, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> None:
        self._shutdown_timeout = shutdown_timeout

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable | None = None) -> KTLSNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            sock = await _bounded(self._connect(loop, host, port, local_address, socket_options), timeout)
        except asyncio.TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:  # socket.gaierror too, as anyio's backend
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return KTLSNetworkStream(sock, shutdown_timeout=self._shutdown_timeout)

    async def _connect(self, loop, host, port, local_address, socket_options) -> socket.socket:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address:
                    sock.bind((local_address, 0))
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error or OSError(f"getaddrinfo({host!r}, {port!r}) returned nothing")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable | None = None) -> KTLSNetworkStream:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            for option in socket_options or ():
                sock.setsockopt(*option)
            await _bounded(loop.sock_connect(sock, path), timeout)
        except asyncio.TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc) or f"timed out connecting to {path}") from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            sock.close()
            raise
        return KTLSNetworkStream(sock, shutdown_timeout=self._shutdown_timeout)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# httpcore's exceptions and httpx's, as httpx's own transport maps them (most specific class wins).
_HTTPX_ERRORS = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


def _httpx_error(exc: Exception) -> type[httpx.HTTPError] | None:
    for cls in type(exc).__mro__:  # the nearest httpcore class in the exception's ancestry
        if cls in _HTTPX_ERRORS:
            return _HTTPX_ERRORS[cls]
    return None


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            mapped = _httpx_error(exc)
            if mapped is None:
                raise
            raise mapped(str(exc)) from exc

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class AsyncHTTPTransport(httpx.AsyncBaseTransport):
    """httpx's transport with kernel TLS: ``httpx.AsyncClient(transport=AsyncHTTPTransport(ctx))``.

    ``ssl_context`` is a ktls_ossl.SSLContext (default: ktls_ossl.create_default_context());
    every other keyword argument goes to httpcore.AsyncConnectionPool (max_connections, http1,
    http2, retries, local_address, socket_options, keepalive_expiry, ...). ``shutdown_timeout``
    bounds how long closing a connection waits for the server's close_notify."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT,
                 **pool_options) -> None:
        if ssl_context is None:
            from ..context import create_default_context
            ssl_context = create_default_context()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=KTLSNetworkBackend(shutdown_timeout=shutdown_timeout),
            **pool_options)

    async def __aenter__(self) -> AsyncHTTPTransport:
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._pool.__aexit__(*exc_info)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        try:
            response = await self._pool.handle_async_request(core_request)
        except Exception as exc:
            mapped = _httpx_error(exc)
            if mapped is None:
                raise
            raise mapped(str(exc), request=request) from exc
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()
