"""Behaviours where ktls_ossl must do exactly what CPython's ssl does (issue 13), each checked side by
side against CPython's ssl on the same input: same outcome, same exception type, reason and
message (but for CPython's "(_ssl.c:N)" tag)."""
from __future__ import annotations

import socket
import ssl

import pytest

import ktls_ossl

from .conftest import loopback_pair
from .tlshelpers import same_error

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
