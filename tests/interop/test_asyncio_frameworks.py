"""ktls_ossl.asyncio under real frameworks: aiohttp (server and client), uvicorn, httpx.

The frameworks run unmodified on a loop from ktls_ossl.asyncio.new_event_loop() (uvicorn through
its ``loop=`` setting), httpx through ktls_ossl.asyncio.httpx.AsyncHTTPTransport. Oracles: SHA-256
of every body, os.sendfile's own calls (aiohttp's FileResponse goes through loop.sendfile), each
end's KTLSStatus (get_extra_info('ktls')) and, where the app cannot see its transport (uvicorn),
the kernel's own counters in /proc/net/tls_stat. Peers of another implementation: curl and
CPython's http.client over CPython's ssl. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

import ktls_ossl.asyncio as kaio
from ktls_ossl import kernel

from ..certs import CertificateAuthority
from ..timing import scaled
from ..tlshelpers import client_context, server_context, strip_location
from .conftest import KTLS, expect_our_ktls

MIB = 1 << 20
FILE_SIZE = 10 * MIB
BODY_SIZE = 3 * MIB


LOOPS = ["asyncio", "uvloop"]


def run(coro, timeout: float = 60.0, kind: str = "asyncio"):
    """Run ``coro`` on a fresh loop from the factory (new_event_loop(), or new_uvloop_event_loop()
    for "uvloop"), bounded in time (3.10 has no asyncio.Runner)."""
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    loop = kaio.new_uvloop_event_loop() if kind == "uvloop" else kaio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, scaled(timeout)))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    data = pseudo_random(FILE_SIZE, 17)
    path = tmp_path_factory.mktemp("frameworks") / "big.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def contexts(server_cert, pki):
    return server_context(server_cert), client_context(pki.ca_path)


def stdlib_client_context(ca_path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_path)


def stdlib_request(port: int, ca_path: str, requests: list[tuple[str, str, bytes | None, dict]],
                   timeout: float) -> list[tuple[int, bytes]]:
    """CPython's http.client over CPython's ssl: the requests in turn on one connection."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=stdlib_client_context(ca_path),
                                             timeout=timeout)
    results = []
    try:
        for method, path, body, headers in requests:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            results.append((response.status, response.read()))
    finally:
        connection.close()
    return results


def server_statuses_ok(statuses) -> None:
    assert statuses, "the server handled no request"
    for status in statuses:
        expect_our_ktls(status, "the server")


class TLSStat:
    """/proc/net/tls_stat deltas (kTLS installations: TlsTxSw/TlsRxSw; {} without the tls module)."""

    def __init__(self):
        kernel.probe()  # the probe's own installations happen before the snapshot
        self.before = kernel.tls_stat()

    def installs(self) -> tuple[int, int]:
        after = kernel.tls_stat()
        return tuple(after.get(name, 0) - self.before.get(name, 0) for name in ("TlsTxSw", "TlsRxSw"))


# --- aiohttp ---------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def aiohttp_server(app, ssl_context, **runner_options):
    web = pytest.importorskip("aiohttp.web")
    runner = web.AppRunner(app, handle_signals=False, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def aiohttp_file_app(path: str, statuses: list):
    web = pytest.importorskip("aiohttp.web")

    async def send_file(request):
        statuses.append(request.transport.get_extra_info("ktls"))
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/big.bin", send_file)
    return app


def expect_sendfile(calls, size: int) -> None:
    """os.sendfile carried all ``size`` bytes where the kernel has TLS, none otherwise."""
    through = sum(sent for _, sent in calls)
    if KTLS:
        assert through == size, f"os.sendfile carried {through} of {size} bytes: {calls[:5]}"
    else:
        assert through == 0, calls[:5]


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", LOOPS)
def test_aiohttp_file_response_to_our_aiohttp_client(contexts, big_file, sendfile_calls, loop):
    """aiohttp's FileResponse on the loop factory sends with loop.sendfile: os.sendfile into the
    kernel's TLS where it has it; a whole file and a Range (offset and count) arrive intact at an
    aiohttp client that is ours too (TCPConnector(ssl=ktls_ossl context))."""
    aiohttp = pytest.importorskip("aiohttp")
    path, data = big_file
    server_ctx, client_ctx = contexts
    statuses: list = []
    start, end = 1234567, 1234567 + 3 * MIB + 4321  # inclusive Range bounds
    result = {}

    async def main():
        async with aiohttp_server(aiohttp_file_app(path, statuses), server_ctx) as port:
            connector = aiohttp.TCPConnector(ssl=client_ctx, limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                url = f"https://localhost:{port}/big.bin"
                async with session.get(url) as response:
                    result["client"] = response.connection.transport.get_extra_info("ktls")
                    result["full"] = (response.status, sha(await response.read()))
                result["full_sendfile"] = sum(sent for _, sent in sendfile_calls)
                sendfile_calls.clear()
                async with session.get(url, headers={"Range": f"bytes={start}-{end}"}) as response:
                    result["range"] = (response.status, sha(await response.read()),
                                       response.headers["Content-Range"])

    run(main(), kind=loop)
    assert result["full"] == (200, sha(data))
    assert result["range"] == (206, sha(data[start:end + 1]), f"bytes {start}-{end}/{len(data)}")
    expect_sendfile([(None, result["full_sendfile"])], len(data))
    expect_sendfile(sendfile_calls, end + 1 - start)
    expect_our_ktls(result["client"], "the aiohttp client")
    assert len(statuses) == 2
    server_statuses_ok(statuses)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_create_connection_consumes_the_callers_socket(contexts, loop):
    """aiohttp's client connects a socket itself and passes it as create_connection(sock=...): the
    loop owns it from then on. Under the loop factory the caller's socket object must end up closed
    (as asyncio's own loops leave it), never holding a descriptor number it no longer owns."""
    server_ctx, client_ctx = contexts
    result = {}

    async def main():
        loop_ = asyncio.get_running_loop()
        server = await kaio.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_ctx)
        sock = socket.socket()
        sock.setblocking(False)
        await loop_.sock_connect(sock, server.sockets[0].getsockname())
        transport, _ = await loop_.create_connection(asyncio.Protocol, ssl=client_ctx, sock=sock,
                                                     server_hostname="localhost")
        await asyncio.sleep(0)
        result["fileno"] = sock.fileno()
        if sock.fileno() != -1:
            sock.detach()  # the test must not close a descriptor it does not own
        transport.close()
        server.close()
        await server.wait_closed()

    run(main(), kind=loop)
    assert result["fileno"] == -1, "the caller's socket object still holds a descriptor number"


@pytest.mark.ktls_or_fallback
def test_aiohttp_file_response_to_curl_and_http_client(contexts, big_file, pki, sendfile_calls, tmp_path):
    """The same server to peers of another TLS implementation: curl (when installed) and CPython's
    http.client over CPython's ssl, each in its own thread while the loop serves."""
    path, data = big_file
    server_ctx, _ = contexts
    statuses: list = []
    start, end = 4096, 4096 + 2 * MIB - 1
    curl = shutil.which("curl")
    out = tmp_path / "curl.bin"
    limit = scaled(30.0)
    result = {}

    def with_curl(port):
        return subprocess.run(
            [curl, "-sS", "--fail", "--http1.1", "--cacert", pki.ca_path, "-o", str(out),
             "--max-time", str(int(limit)), f"https://localhost:{port}/big.bin"],
            capture_output=True, timeout=limit + 5)

    async def main():
        loop = asyncio.get_running_loop()
        async with aiohttp_server(aiohttp_file_app(path, statuses), server_ctx) as port:
            result["http.client"] = await loop.run_in_executor(None, stdlib_request, port, pki.ca_path, [
                ("GET", "/big.bin", None, {}),
                ("GET", "/big.bin", None, {"Range": f"bytes={start}-{end}"})], limit)
            if curl:
                result["curl"] = await loop.run_in_executor(None, with_curl, port)

    run(main())
    (full_status, full), (range_status, ranged) = result["http.client"]
    assert (full_status, sha(full)) == (200, sha(data))
    assert (range_status, sha(ranged)) == (206, sha(data[start:end + 1]))
    size = len(data) + (end + 1 - start)
    if curl:
        completed = result["curl"]
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")
        assert sha(out.read_bytes()) == sha(data)
        size += len(data)
    expect_sendfile(sendfile_calls, size)
    server_statuses_ok(statuses)
    if not curl:
        pytest.skip("curl is not installed: http.client passed, curl not run")


@pytest.mark.ktls_or_fallback
def test_aiohttp_client_and_server_bodies_both_ways(contexts):
    """aiohttp client and server, both ours: a few MiB up (POST) and down (GET) on one kept-alive
    connection, every body checksummed at the other end."""
    aiohttp = pytest.importorskip("aiohttp")
    web = pytest.importorskip("aiohttp.web")
    server_ctx, client_ctx = contexts
    up, down = pseudo_random(BODY_SIZE, 1), pseudo_random(BODY_SIZE + 12345, 2)
    statuses: list = []
    result = {}

    async def get(request):
        statuses.append(request.transport.get_extra_info("ktls"))
        return web.Response(body=down, content_type="application/octet-stream")

    async def post(request):
        statuses.append(request.transport.get_extra_info("ktls"))
        body = await request.read()
        return web.json_response({"size": len(body), "sha256": sha(body)})

    app = web.Application(client_max_size=16 * MIB)
    app.router.add_get("/down", get)
    app.router.add_post("/up", post)

    async def main():
        async with aiohttp_server(app, server_ctx) as port:
            connector = aiohttp.TCPConnector(ssl=client_ctx, limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(2):
                    async with session.post(f"https://localhost:{port}/up", data=io.BytesIO(up)) as response:
                        result.setdefault("up", []).append(await response.json())
                    async with session.get(f"https://localhost:{port}/down") as response:
                        result["client"] = response.connection.transport.get_extra_info("ktls")
                        result.setdefault("down", []).append(sha(await response.read()))

    run(main())
    assert result["up"] == [{"size": len(up), "sha256": sha(up)}] * 2
    assert result["down"] == [sha(down)] * 2
    expect_our_ktls(result["client"], "the aiohttp client")
    assert len(statuses) == 4
    server_statuses_ok(statuses)


# --- uvicorn ---------------------------------------------------------------------------------------

def asgi_app(seen: list):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append((scope["scheme"], scope["method"], scope["path"]))
        if scope["method"] == "POST":
            body = bytearray()
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            payload = bytes(body)
        else:
            payload = b"hello over kernel TLS\n" * 1000
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
    return app


@contextlib.contextmanager
def uvicorn_server(app, server_ctx, loop):
    """uvicorn.Server(config).run() in a thread, with ``loop=`` the factory and the context from
    ssl_context_factory; yields the port once it listens, stops it (bounded) at the end."""
    uvicorn = pytest.importorskip("uvicorn")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning", loop=loop,
                            ssl_context_factory=lambda config, default: server_ctx)
    server = uvicorn.Server(config)
    errors = []

    def serve():
        try:
            server.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + scaled(20.0)
    while not server.started:
        assert not errors, errors
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(scaled(20.0))
        assert not thread.is_alive(), "uvicorn did not stop"
        assert not errors, errors


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", ["ktls_ossl.asyncio:new_event_loop", "callable"])
def test_uvicorn_with_the_loop_factory(contexts, pki, loop):
    """uvicorn, unmodified, serving a small ASGI app with ssl_context_factory returning a
    ktls_ossl context and its loop from the factory (by import string or as a callable): GET and a
    2 MiB echoed POST from CPython's http.client (CPython's ssl) and from an aiohttp client that is
    ours. The app sees https; the kernel's own counters show the server's end (and our client's)
    installed in the kernel where it has TLS."""
    aiohttp = pytest.importorskip("aiohttp")
    server_ctx, client_ctx = contexts
    seen: list = []
    body = pseudo_random(2 * MIB + 77, 3)
    expected_get = b"hello over kernel TLS\n" * 1000
    counters = TLSStat()
    result = {}

    async def our_client(port):
        connector = aiohttp.TCPConnector(ssl=client_ctx, limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"https://localhost:{port}/hello") as response:
                result["aiohttp_get"] = (response.status, await response.read())
            async with session.post(f"https://localhost:{port}/echo", data=io.BytesIO(body)) as response:
                result["client"] = response.connection.transport.get_extra_info("ktls")
                result["aiohttp_post"] = (response.status, sha(await response.read()))

    factory = kaio.new_event_loop if loop == "callable" else loop
    with uvicorn_server(asgi_app(seen), server_ctx, factory) as port:
        (get_status, got), (post_status, echoed) = stdlib_request(
            port, pki.ca_path, [("GET", "/hello", None, {}), ("POST", "/echo", body, {})], scaled(30.0))
        run(our_client(port))

    assert (get_status, got) == (200, expected_get)
    assert (post_status, sha(echoed)) == (200, sha(body))
    assert result["aiohttp_get"] == (200, expected_get)
    assert result["aiohttp_post"] == (200, sha(body))
    assert seen == [("https", "GET", "/hello"), ("https", "POST", "/echo")] * 2
    expect_our_ktls(result["client"], "the aiohttp client")
    # One connection from http.client (only the server's end is kernel TLS) and one from our client
    # (both ends): 3 TX and 3 RX installations where the kernel has TLS, none elsewhere.
    assert counters.installs() == ((3, 3) if KTLS else (0, 0)), kernel.tls_stat()


# --- httpx -----------------------------------------------------------------------------------------

def aiohttp_echo_app(statuses: list):
    web = pytest.importorskip("aiohttp.web")

    async def get(request):
        statuses.append(request.transport.get_extra_info("ktls"))
        size = int(request.query.get("size", "0"))
        return web.Response(body=pseudo_random(size, size), content_type="application/octet-stream")

    async def post(request):
        statuses.append(request.transport.get_extra_info("ktls"))
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application(client_max_size=16 * MIB)
    app.router.add_get("/bytes", get)
    app.router.add_post("/echo", post)
    return app


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("loop", LOOPS)
def test_httpx_with_our_transport(contexts, loop):
    """httpx.AsyncClient(transport=ktls_ossl.asyncio.httpx.AsyncHTTPTransport(ctx)): GETs and POSTs
    of a few MiB on one pooled connection against an aiohttp server of ours, every body checksummed,
    the client's stream in the kernel where it has TLS."""
    httpx = pytest.importorskip("httpx")
    from ktls_ossl.asyncio.httpx import AsyncHTTPTransport

    server_ctx, client_ctx = contexts
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])  # httpcore offers http/1.1 (http2=False)
    statuses: list = []
    up = pseudo_random(BODY_SIZE, 5)
    result = {"get": [], "post": []}

    async def main():
        async with aiohttp_server(aiohttp_echo_app(statuses), server_ctx) as port:
            transport = AsyncHTTPTransport(client_ctx, max_connections=1)
            async with httpx.AsyncClient(transport=transport, timeout=scaled(20.0)) as client:
                for size in (0, 1, BODY_SIZE):
                    response = await client.get(f"https://localhost:{port}/bytes", params={"size": size})
                    result["get"].append((response.status_code, sha(response.content)))
                response = await client.post(f"https://localhost:{port}/echo", content=up)
                result["post"].append((response.status_code, sha(response.content)))
                stream = response.extensions["network_stream"]
                result["client"] = stream.get_extra_info("ktls")
                result["alpn"] = stream.get_extra_info("ssl_object").selected_alpn_protocol()
                result["version"] = response.http_version
                # A streamed response, read in pieces.
                async with client.stream("GET", f"https://localhost:{port}/bytes",
                                         params={"size": BODY_SIZE}) as response:
                    digest = hashlib.sha256()
                    async for chunk in response.aiter_bytes():
                        digest.update(chunk)
                    result["streamed"] = digest.hexdigest()

    run(main(), kind=loop)
    assert result["get"] == [(200, sha(pseudo_random(size, size))) for size in (0, 1, BODY_SIZE)]
    assert result["post"] == [(200, sha(up))]
    assert result["streamed"] == sha(pseudo_random(BODY_SIZE, BODY_SIZE))
    assert result["version"] == "HTTP/1.1" and result["alpn"] == "http/1.1"
    expect_our_ktls(result["client"], "the httpx client")
    assert len(statuses) == 5
    server_statuses_ok(statuses)


@pytest.mark.ktls_or_fallback
def test_httpx_pool_notices_a_connection_the_server_closed(contexts):
    """The server closes an idle kept-alive connection (aiohttp's keep-alive timeout: close_notify,
    then FIN): the pool sees it ("is_readable") and the next request opens a new connection instead
    of failing on the dead one."""
    httpx = pytest.importorskip("httpx")
    from ktls_ossl.asyncio.httpx import AsyncHTTPTransport

    server_ctx, client_ctx = contexts
    statuses: list = []
    peers = []

    async def main():
        async with aiohttp_server(aiohttp_echo_app(statuses), server_ctx, keepalive_timeout=0.1) as port:
            async with httpx.AsyncClient(transport=AsyncHTTPTransport(client_ctx), timeout=scaled(20.0)) as client:
                for _ in range(2):
                    response = await client.get(f"https://localhost:{port}/bytes", params={"size": 1000})
                    assert (response.status_code, response.content) == (200, pseudo_random(1000, 1000))
                    stream = response.extensions["network_stream"]
                    peers.append(stream.get_extra_info("client_addr"))
                    deadline = time.monotonic() + scaled(10.0)
                    while not stream.get_extra_info("is_readable"):  # the server's close arrived
                        assert time.monotonic() < deadline, "the server did not close the idle connection"
                        await asyncio.sleep(0.02)

    run(main())
    assert len(set(peers)) == 2, peers  # two connections: the closed one was not reused
    server_statuses_ok(statuses)


def test_httpx_untrusted_certificate_is_connect_error(pki, tmp_path):
    """A server certificate from a CA the client does not trust: httpx.ConnectError from our
    transport, as from httpx's own AsyncClient(verify=ssl context) against the same server."""
    httpx = pytest.importorskip("httpx")
    from ktls_ossl.asyncio.httpx import AsyncHTTPTransport

    foreign = CertificateAuthority(str(tmp_path), name="untrusted test CA")
    cert = foreign.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])
    server_ctx = server_context(cert)
    errors = {}

    async def main():
        async with aiohttp_server(aiohttp_echo_app([]), server_ctx) as port:
            url = f"https://localhost:{port}/bytes"
            clients = {
                "ours": httpx.AsyncClient(transport=AsyncHTTPTransport(client_context(pki.ca_path)),
                                          timeout=scaled(20.0)),
                "httpx": httpx.AsyncClient(verify=stdlib_client_context(pki.ca_path), timeout=scaled(20.0)),
            }
            for name, client in clients.items():
                async with client:
                    with pytest.raises(httpx.HTTPError) as caught:
                        await client.get(url)
                    errors[name] = caught.value

    run(main())
    assert type(errors["ours"]) is type(errors["httpx"]) is httpx.ConnectError, errors
    assert "CERTIFICATE_VERIFY_FAILED" in str(errors["ours"]), errors
    assert strip_location(str(errors["ours"])) == strip_location(str(errors["httpx"]))
    assert errors["ours"].request.url.port == errors["httpx"].request.url.port


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in Python 3.11")
@pytest.mark.ktls_or_fallback
def test_aiohttp_under_asyncio_runner(contexts):
    """The documented way in on 3.11+: asyncio.Runner(loop_factory=new_event_loop) running an
    aiohttp server and client of ours."""
    aiohttp = pytest.importorskip("aiohttp")
    server_ctx, client_ctx = contexts
    statuses: list = []

    async def main():
        async with aiohttp_server(aiohttp_echo_app(statuses), server_ctx) as port:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
                async with session.post(f"https://localhost:{port}/echo", data=b"x" * 100000) as response:
                    return response.status, await response.read()

    with asyncio.Runner(loop_factory=kaio.new_event_loop) as runner:
        status, body = runner.run(asyncio.wait_for(main(), scaled(30.0)))
    assert (status, body) == (200, b"x" * 100000)
    server_statuses_ok(statuses)


def test_httpx_read_timeout(contexts):
    """A server that never answers: httpx.ReadTimeout after the client's read timeout, as httpx's
    own transport says it."""
    httpx = pytest.importorskip("httpx")
    web = pytest.importorskip("aiohttp.web")
    from ktls_ossl.asyncio.httpx import AsyncHTTPTransport

    server_ctx, client_ctx = contexts
    errors = []

    async def main():
        never = asyncio.Event()

        async def hang(request):
            await never.wait()
            return web.Response(body=b"late")

        app = web.Application()
        app.router.add_get("/hang", hang)
        async with aiohttp_server(app, server_ctx) as port:
            timeout = httpx.Timeout(scaled(20.0), read=0.2)
            async with httpx.AsyncClient(transport=AsyncHTTPTransport(client_ctx), timeout=timeout) as client:
                with pytest.raises(httpx.HTTPError) as caught:
                    await client.get(f"https://localhost:{port}/hang")
                errors.append(caught.value)
            never.set()

    run(main())
    assert type(errors[0]) is httpx.ReadTimeout, repr(errors[0])
