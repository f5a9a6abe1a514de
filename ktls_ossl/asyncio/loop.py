"""Event loops under which asyncio's own functions accept a ktls_ossl.SSLContext.

``new_event_loop()`` makes asyncio's default loop class with five public methods overridden:
create_connection, create_server and connect_accepted_socket go to ktls_ossl.asyncio.connect when
``ssl`` is a ktls_ossl.SSLContext (and to the loop otherwise), sendfile goes to the transport's
native sendfile for a KTLSTransport, and start_tls refuses a ktls_ossl.SSLContext with the reason.
So asyncio.open_connection/start_server, aiohttp and uvicorn run unmodified: they call those
methods. ``new_uvloop_event_loop()`` does the same over uvloop.Loop.

A stock loop handed a ktls_ossl.SSLContext would build asyncio's SSL transport (memory BIOs), which
refuses it per connection, after the server started listening. ``guard_stock_loops()`` (installed
once, when the first ktls_ossl.SSLContext is made) makes asyncio's BaseEventLoop.create_server and
connect_accepted_socket refuse such a context at the call instead, naming the way that works (and
create_unix_server: kernel TLS runs on TCP only).
"""
from __future__ import annotations

import asyncio
import functools
import threading

from . import connect
from .transport import KTLSTransport

__all__ = ["KTLSEventLoopMixin", "guard_stock_loops", "new_event_loop", "new_uvloop_event_loop"]

STOCK_LOOP_MESSAGE = (
    "asyncio's SSL transport runs ssl.SSLObject over memory BIOs, which kernel TLS cannot use: with a "
    "ktls_ossl.SSLContext, use ktls_ossl.asyncio.{function} or run the loop from "
    "ktls_ossl.asyncio.new_event_loop() (asyncio.run(main(), loop_factory=ktls_ossl.asyncio.new_event_loop), "
    "asyncio.Runner(loop_factory=...))")


def stock_loop_error(function: str) -> NotImplementedError:
    return NotImplementedError(STOCK_LOOP_MESSAGE.format(function=function))


class KTLSEventLoopMixin:
    """The overrides of new_event_loop()'s loops (see the module doc)."""

    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None, **kwargs):
        if connect.is_ktls_context(ssl):
            return await connect.create_connection(protocol_factory, host, port, ssl=ssl, **kwargs)
        return await super().create_connection(protocol_factory, host, port, ssl=ssl, **kwargs)

    async def create_server(self, protocol_factory, host=None, port=None, *, ssl=None, **kwargs):
        if connect.is_ktls_context(ssl):
            return await connect.create_server(protocol_factory, host, port, ssl=ssl, **kwargs)
        return await super().create_server(protocol_factory, host, port, ssl=ssl, **kwargs)

    async def connect_accepted_socket(self, protocol_factory, sock, *, ssl=None, **kwargs):
        if connect.is_ktls_context(ssl):
            return await connect.connect_accepted_socket(protocol_factory, sock, ssl=ssl, **kwargs)
        return await super().connect_accepted_socket(protocol_factory, sock, ssl=ssl, **kwargs)

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        if isinstance(transport, KTLSTransport):
            return await transport.sendfile(file, offset, count, fallback=fallback)
        return await super().sendfile(transport, file, offset, count, fallback=fallback)

    async def start_tls(self, transport, protocol, sslcontext, **kwargs):
        if connect.is_ktls_context(sslcontext):
            raise NotImplementedError(
                "start_tls() with a ktls_ossl.SSLContext is not supported: kernel TLS needs the socket from "
                "before any byte was read; open the connection with ssl= instead")
        return await super().start_tls(transport, protocol, sslcontext, **kwargs)


class KTLSEventLoop(KTLSEventLoopMixin, asyncio.SelectorEventLoop):
    """asyncio's default loop on Linux, with kernel TLS for a ktls_ossl.SSLContext."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A loop factory: asyncio.run(main(), loop_factory=new_event_loop) (3.12+),
    asyncio.Runner(loop_factory=new_event_loop) (3.11+), or asyncio.set_event_loop(new_event_loop())."""
    return KTLSEventLoop()


_uvloop_class = None


def new_uvloop_event_loop() -> asyncio.AbstractEventLoop:
    """new_event_loop() over uvloop.Loop (uvloop must be installed)."""
    global _uvloop_class
    if _uvloop_class is None:
        import uvloop
        _uvloop_class = type("KTLSUVLoop", (KTLSEventLoopMixin, uvloop.Loop),
                             {"__doc__": "uvloop.Loop with kernel TLS for a ktls_ossl.SSLContext."})
    return _uvloop_class()


_guard_lock = threading.Lock()
_guarded = False


def guard_stock_loops() -> None:
    """Make asyncio's own loops refuse a ktls_ossl.SSLContext where they would accept it and then
    fail each connection (see the module doc). Idempotent; KTLSEventLoopMixin never reaches the
    guarded methods with such a context."""
    global _guarded
    if _guarded:
        return  # every ktls_ossl.SSLContext asks: no lock once installed
    with _guard_lock:
        if _guarded:
            return
        base = asyncio.base_events.BaseEventLoop
        for name in ("create_server", "connect_accepted_socket"):
            setattr(base, name, _refusing(getattr(base, name), name))
        unix = asyncio.unix_events.SelectorEventLoop
        unix.create_unix_server = _refusing(unix.create_unix_server, "create_unix_server")
        _guarded = True


def _refusing(method, name: str):
    @functools.wraps(method)
    async def refusing(self, *args, ssl=None, **kwargs):
        if connect.is_ktls_context(ssl):
            if name == "create_unix_server":
                raise NotImplementedError("kernel TLS runs on TCP sockets only: a ktls_ossl.SSLContext cannot "
                                          "serve a Unix socket (use ssl.SSLContext there)")
            raise stock_loop_error("start_server()/create_server()" if name == "create_server" else f"{name}()")
        return await method(self, *args, ssl=ssl, **kwargs)
    refusing.__ktls_ossl_guard__ = True
    return refusing
