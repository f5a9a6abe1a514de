"""ktls_ossl.asyncio: kernel TLS under asyncio (and uvloop).

Two ways in:
- the functions here, on any running loop: ``open_connection``, ``start_server``,
  ``create_connection``, ``create_server``, ``connect_accepted_socket`` and ``sendfile`` take a
  ktls_ossl.SSLContext where asyncio's take an ssl.SSLContext;
- a loop from ``new_event_loop()`` (or ``new_uvloop_event_loop()``), under which asyncio's own
  functions and the frameworks built on them (aiohttp, uvicorn) accept a ktls_ossl.SSLContext, and
  ``loop.sendfile`` on such a connection is os.sendfile into the kernel's TLS.

The handshake runs non-blocking on the loop; after it, KTLSTransport carries the connection (see
transport.py for the theory of operation, connect.py for how connections are made).
"""
from .connect import (
    connect_accepted_socket,
    create_connection,
    create_server,
    open_connection,
    sendfile,
    start_server,
    start_transport,
)
from .loop import KTLSEventLoop, KTLSEventLoopMixin, guard_stock_loops, new_event_loop, new_uvloop_event_loop
from .transport import KTLSTransport, TransportState, handshake

__all__ = [
    "KTLSEventLoop",
    "KTLSEventLoopMixin",
    "KTLSTransport",
    "TransportState",
    "connect_accepted_socket",
    "create_connection",
    "create_server",
    "guard_stock_loops",
    "handshake",
    "new_event_loop",
    "new_uvloop_event_loop",
    "open_connection",
    "sendfile",
    "start_server",
    "start_transport",
]
