"""Behaviours where ktls_ossl must do exactly what CPython's ssl does (issue 13), each checked side by
side against CPython's ssl on the same input: same outcome, same exception type, reason and
message (but for CPython's "(_ssl.c:N)" tag)."""
from __future__ import annotations

import gc
import socket
import ssl

import pytest

import ktls_ossl
from ktls_ossl import Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import loopback_pair
from .tlshelpers import client_context, expect_ktls, recv_exactly, same_error, server_context, tls_pair

VERSIONS = [pytest.param(TLS_1_2_VERSION, id="tls12"), pytest.param(TLS_1_3_VERSION, id="tls13")]


def _data_from_server(pair, size=100) -> None:
    """Data from the server, which also makes a TLS 1.3 client take the tickets sent before it."""
    payload = bytes(range(size))
    pair.server.sendall(payload)
    assert recv_exactly(pair.client, size) == payload

# --- the context's role is checked when a socket is wrapped ----------------------------------------

# (context protocol, server_side): a context made for one role, a socket of the other.
ROLE_MISMATCHES = {"server-context-client-socket": (ssl.PROTOCOL_TLS_SERVER, False),
                   "client-context-server-socket": (ssl.PROTOCOL_TLS_CLIENT, True)}
WRAP_CASES = [pytest.param(*mismatch, how, id=f"{how}-{name}")
              for how in ("wrap_socket", "_wrap_socket") for name, mismatch in ROLE_MISMATCHES.items()]
# An unconnected socket is wrapped when it connects (ssl.py refuses connect() on a server socket).
WRAP_CASES.append(pytest.param(ssl.PROTOCOL_TLS_SERVER, False, "wrap_socket-then-connect",
                               id="wrap_socket-then-connect-server-context-client-socket"))


def _wrap_error(cls, protocol, server_side, *, connected=True, private=False):
    ctx = cls(protocol)
    if protocol == ssl.PROTOCOL_TLS_CLIENT:
        ctx.check_hostname = False  # else ssl.py refuses the missing server_hostname first
    client, server = loopback_pair()
    sock = client if connected else socket.socket()
    try:
        with pytest.raises(Exception) as info:
            if private:
                ctx._wrap_socket(sock, server_side, None, owner=sock, session=None)
            else:
                wrapped = ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)
                wrapped.connect(server.getsockname())  # an unconnected socket wraps at connect()
        return info.value
    finally:
        for item in (client, server, sock):
            item.close()


@pytest.mark.parametrize("protocol, server_side, how", WRAP_CASES)
def test_wrap_refuses_a_context_of_the_other_role_like_cpython(protocol, server_side, how):
    kwargs = {"connected": how != "wrap_socket-then-connect", "private": how == "_wrap_socket"}
    mine = _wrap_error(ktls_ossl.SSLContext, protocol, server_side, **kwargs)
    theirs = _wrap_error(ssl.SSLContext, protocol, server_side, **kwargs)
    same_error(mine, theirs)
    assert type(mine) is ssl.SSLError and mine.errno == 0
    role = "server" if server_side else "client"
    assert str(mine).startswith(f"Cannot create a {role} socket with a ")


# --- one Session resumes any number of connections -------------------------------------------------

def _resumptions(server_cert, pki, version, *, ours):
    """session_reused (client, server) of connections 2 and 3, both given connection 1's Session
    object and each closed without close_notify (as most clients end)."""
    server_ctx = server_context(server_cert, ours=ours, version=version, cipher=KernelCipher.AES_GCM_128)
    client_ctx = client_context(pki.ca_path, ours=ours, version=version, cipher=KernelCipher.AES_GCM_128)
    first = tls_pair(client_ctx, server_ctx)
    try:
        _data_from_server(first)
        session = first.client.session
    finally:
        first.close()
    outcomes = []
    for _ in range(2):
        pair = tls_pair(client_ctx, server_ctx, client_kwargs={"session": session})
        try:
            _data_from_server(pair)
            if ours and pair.client.session_reused:
                expect_ktls(pair.client)
                expect_ktls(pair.server)
            outcomes.append((pair.client.session_reused, pair.server.session_reused))
        finally:
            pair.close()  # no close_notify: OpenSSL marks the SSL's own session unresumable
        gc.collect()  # whatever OpenSSL does at SSL_free has happened
    return outcomes


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_resumes_every_connection_it_is_given_to_like_cpython(server_cert, pki, version):
    theirs = _resumptions(server_cert, pki, version, ours=False)
    assert theirs == [(True, True), (True, True)]
    assert _resumptions(server_cert, pki, version, ours=True) == theirs
