"""Behaviours where ktls_ossl must do exactly what CPython's ssl does (issue 13), each checked side by
side against CPython's ssl on the same input: same outcome, same exception type, reason and
message (but for CPython's "(_ssl.c:N)" tag)."""
from __future__ import annotations

import gc
import os
import socket
import ssl
import sys
import warnings

import pytest

import ktls_ossl
from ktls_ossl import Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import loopback_pair
from .tlshelpers import (
    client_context,
    expect_ktls,
    handshake_errors,
    recv_exactly,
    same_error,
    server_context,
    tls_pair,
)

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
    opened = [client, server, sock]
    try:
        with pytest.raises(Exception) as info:
            if private:
                ctx._wrap_socket(sock, server_side, None, owner=sock, session=None)
            else:
                opened.append(ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False))
                opened[-1].connect(server.getsockname())  # an unconnected socket wraps at connect()
        return info.value
    finally:
        for item in opened:
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


# --- the SNI callback: what it raises or returns is reported, not raised ----------------------------

def _raising(sock, name, ctx):
    raise ZeroDivisionError("in the callback")


SNI_ANSWERS = {
    "raises": _raising,  # handshake_failure alert, reported with the callback as object
    "returns-str": lambda sock, name, ctx: "unrecognized",  # no int: internal_error, reported
    "returns-float": lambda sock, name, ctx: 1.5,
    "returns-too-large": lambda sock, name, ctx: 1 << 70,  # no C long: internal_error, reported
    "returns-wrapping-long": lambda sock, name, ctx: 1 << 40,  # a long that (int) makes 0
    "returns-alert": lambda sock, name, ctx: ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME,
}


def _sni_outcome(server_cert, pki, callback, *, ours, server_hostname="localhost"):
    """(client's error, server's error, [(type, str, err_msg, object) reported], names seen)."""
    seen = []

    def recording(sock, name, ctx):
        seen.append(name)
        return callback(sock, name, ctx)

    server_ctx = server_context(server_cert, ours=ours)
    server_ctx.sni_callback = recording if callback is not _raising else callback
    client_ctx = client_context(pki.ca_path, ours=False)  # the same client for both servers
    client_ctx.check_hostname = False
    reported = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda args: reported.append(
        (args.exc_type, str(args.exc_value), args.err_msg, args.object))
    try:
        client_error, server_error = handshake_errors(server_ctx, client_ctx, server_hostname)
    finally:
        sys.unraisablehook = hook
    return client_error, server_error, reported, seen


@pytest.mark.parametrize("answer", SNI_ANSWERS.values(), ids=SNI_ANSWERS.keys())
def test_sni_callback_failures_are_reported_not_raised_like_cpython(server_cert, pki, answer):
    mine = _sni_outcome(server_cert, pki, answer, ours=True)
    theirs = _sni_outcome(server_cert, pki, answer, ours=False)
    same_error(mine[0], theirs[0])  # the client sees the same alert
    assert isinstance(theirs[1], ssl.SSLError) and theirs[1].reason == "CALLBACK_FAILED"
    same_error(mine[1], theirs[1])  # the server's handshake fails, nothing else escapes it
    assert mine[2] == theirs[2]  # the same exception reaches sys.unraisablehook, or none does
    if answer is _raising:
        assert theirs[2] == [(ZeroDivisionError, "in the callback", None, _raising)]


def test_sni_callback_gets_the_name_as_sent_like_cpython(server_cert, pki):
    """An internationalised name reaches the callback as its A-label (bpo-28414)."""
    mine = _sni_outcome(server_cert, pki, lambda sock, name, ctx: None, ours=True, server_hostname="bücher.example")
    theirs = _sni_outcome(server_cert, pki, lambda sock, name, ctx: None, ours=False,
                          server_hostname="bücher.example")
    assert theirs[3] == ["xn--bcher-kva.example"]
    assert mine[3] == theirs[3]


# --- keylog_filename: CPython's lines, and no file left to the garbage collector -------------------

def _keylog_files(server_cert, pki, tmp_path, version, *, ours):
    """The client's and the server's key log after one handshake (and data, for the tickets)."""
    paths = (tmp_path / f"{'ours' if ours else 'cpython'}-client.log",
             tmp_path / f"{'ours' if ours else 'cpython'}-server.log")
    # AES-256-GCM: CPython cannot pin a TLS 1.3 suite, and this is the one it negotiates.
    server_ctx = server_context(server_cert, ours=ours, version=version, cipher=KernelCipher.AES_GCM_256)
    client_ctx = client_context(pki.ca_path, ours=ours, version=version, cipher=KernelCipher.AES_GCM_256)
    client_ctx.keylog_filename, server_ctx.keylog_filename = map(str, paths)
    pair = tls_pair(client_ctx, server_ctx)
    try:
        _data_from_server(pair)
    finally:
        pair.close()
    return [path.read_bytes() for path in paths]


def _shape(content: bytes) -> list[tuple]:
    """Each line's kind and field lengths (the secrets differ from run to run, the layout not)."""
    return [(line.split()[0], *map(len, line.split()[1:])) if not line.startswith(b"#") else (line,)
            for line in content.splitlines()]


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", VERSIONS)
def test_keylog_lines_are_cpythons(server_cert, pki, tmp_path, version):
    mine = _keylog_files(server_cert, pki, tmp_path, version, ours=True)
    theirs = _keylog_files(server_cert, pki, tmp_path, version, ours=False)
    for my_log, their_log in zip(mine, theirs):
        assert their_log.startswith(b"# TLS secrets log file, generated by OpenSSL / Python\n")
        assert my_log.endswith(b"\n") and their_log.endswith(b"\n")
        assert len(_shape(their_log)) == (6 if version == TLS_1_3_VERSION else 2)
        assert sorted(_shape(my_log)) == sorted(_shape(their_log))


@pytest.mark.parametrize("cls", [ktls_ossl.SSLContext, ssl.SSLContext], ids=["ours", "cpython"])
def test_a_dropped_context_leaves_no_keylog_file_open(tmp_path, cls):
    """CPython keeps the key log open in a BIO that goes with the context; ours must not leave the
    garbage collector a file object to warn about (ResourceWarning, an error under -W error)."""
    path = tmp_path / "keys.log"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
            ctx.keylog_filename = str(path)
            ctx.keylog_filename = str(path)  # the first file is closed here
            del ctx
            gc.collect()
    assert [str(warning.message) for warning in caught] == []
    assert path.read_bytes() == b"# TLS secrets log file, generated by OpenSSL / Python\n"
    assert str(path) not in _open_files()  # closed with the context, not left to the process


def _open_files() -> set[str]:
    names = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed while listed (the listing's own descriptor)
    return names


# --- _msg_callback: CPython's debug hook, with CPython's arguments ---------------------------------

def _messages(server_cert, pki, version, *, ours, policy=None, callback_error=None):
    """(client's, server's) messages reported as (direction, version, content_type, msg_type):
    those of the handshake (until wrap_socket returned) and all of them after data both ways."""
    settings = {} if policy is None else {"ktls_policy": policy}
    server_ctx = server_context(server_cert, ours=ours, version=version, cipher=KernelCipher.AES_GCM_256, **settings)
    client_ctx = client_context(pki.ca_path, ours=ours, version=version, cipher=KernelCipher.AES_GCM_256, **settings)
    seen = {"client": [], "server": []}
    sockets = {"client": set(), "server": set()}

    def recorder(side):
        def record(conn, direction, version, content_type, msg_type, data):
            sockets[side].add(id(conn))
            assert isinstance(data, bytes)
            seen[side].append((direction, version, content_type, msg_type))
            if callback_error is not None and side == "client":
                raise callback_error
        return record

    client_ctx._msg_callback, server_ctx._msg_callback = recorder("client"), recorder("server")
    pair = tls_pair(client_ctx, server_ctx)
    try:
        handshake = {side: list(messages) for side, messages in seen.items()}
        assert sockets == {"client": {id(pair.client)}, "server": {id(pair.server)}}  # conn: the SSLSocket
        _data_from_server(pair)
        pair.client.sendall(b"answer")
        assert recv_exactly(pair.server, 6) == b"answer"
        kernel_carried = isinstance(pair.client, ktls_ossl.KTLSSocket) and pair.client.ktls.rx
    finally:
        pair.close()
    return handshake, seen, kernel_carried


POLICIES = [pytest.param(Policy.USERSPACE, id="userspace"), pytest.param(Policy.AFTER_FINISHED, id="after-finished")]


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("policy", POLICIES)
def test_msg_callback_reports_cpythons_messages(server_cert, pki, version, policy):
    their_handshake, theirs, _ = _messages(server_cert, pki, version, ours=False)
    my_handshake, mine, kernel_carried = _messages(server_cert, pki, version, ours=True, policy=policy)
    assert theirs["client"][0][0::2] == ("write", ssl._TLSContentType.HEADER)  # the ClientHello's record
    assert my_handshake == their_handshake  # under kTLS too: the handshake passes OpenSSL
    if kernel_carried:
        # Records the kernel carries never pass OpenSSL, so the data records are not reported
        # (what is still given to OpenSSL, TLS 1.3 tickets, is).
        assert policy is Policy.AFTER_FINISHED
        for side in ("client", "server"):
            assert len(my_handshake[side]) <= len(mine[side]) < len(theirs[side])
    else:
        assert mine == theirs


def test_msg_callback_exception_is_raised_after_the_handshake_like_cpython(server_cert, pki):
    errors = []
    for ours in (True, False):
        with pytest.raises(ZeroDivisionError) as info:
            _messages(server_cert, pki, TLS_1_3_VERSION, ours=ours, callback_error=ZeroDivisionError("in msg_cb"))
        errors.append(info.value)
    assert [str(exc) for exc in errors] == ["in msg_cb"] * 2


def test_msg_callback_property_like_cpython():
    for cls in (ktls_ossl.SSLContext, ssl.SSLContext):
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        assert ctx._msg_callback is None
        ctx._msg_callback = print
        assert ctx._msg_callback is print  # the function given, not the wrapper
        with pytest.raises(TypeError, match="^42 is not callable.$"):
            ctx._msg_callback = 42
        assert ctx._msg_callback is print  # a rejected value leaves the callback
        ctx._msg_callback = None
        assert ctx._msg_callback is None
