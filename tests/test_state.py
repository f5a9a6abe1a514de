"""KTLSSocket.ktls_state: where a connection is, from the first byte to the last. The peer is
CPython's ssl; the moments are ordered by the protocol (a non-blocking unwrap waits for a close_notify
that the peer sends only when told), never by sleeps."""
from __future__ import annotations

import socket
import ssl
import threading
import zlib

import pytest

from ktls_ossl import Policy
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION
from ktls_ossl.socket import ConnectionState

from .conftest import loopback_pair
from .tlshelpers import client_context, in_thread, server_context, versioned

VERSIONS = [pytest.param(TLS_1_2_VERSION, id="tls12"), pytest.param(TLS_1_3_VERSION, id="tls13")]


def _walk_through_a_connection(pki, server_cert, version, policy, record_layer):
    client_ctx = versioned(client_context(pki.ca_path, ktls_policy=policy), version)
    server_ctx = versioned(server_context(server_cert, ours=False), version)
    raw_client, raw_server = loopback_pair(timeout=10.0)
    may_close = threading.Event()

    def cpython_server():
        with server_ctx.wrap_socket(raw_server, server_side=True) as server:
            data = server.recv(1 << 16)
            server.sendall(zlib.crc32(data).to_bytes(4, "big"))
            assert may_close.wait(10)
            server.unwrap()  # reads our close_notify, sends its own

    client = client_ctx.wrap_socket(raw_client, server_hostname="localhost", do_handshake_on_connect=False)
    try:
        assert client.ktls_state is ConnectionState.HANDSHAKING
        join = in_thread(cpython_server)
        client.do_handshake()
        assert client.ktls_state is record_layer, client.ktls
        payload = bytes(range(256)) * 40
        client.sendall(payload)
        assert int.from_bytes(client.recv(4), "big") == zlib.crc32(payload)

        client.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):
            client.unwrap()  # close_notify sent; the peer's is not there yet
        assert client.ktls_state is ConnectionState.CLOSING
        may_close.set()
        client.setblocking(True)
        client.settimeout(10.0)
        plain = client.unwrap()
        assert plain is client
        assert client.ktls_state is ConnectionState.CLOSED
        join()
    finally:
        client.close()
    assert client.ktls_state is ConnectionState.CLOSED


@pytest.mark.ktls
@pytest.mark.parametrize("version", VERSIONS)
def test_the_kernel_carries_a_connection_from_handshake_to_close(pki, server_cert, version):
    _walk_through_a_connection(pki, server_cert, version, Policy.AFTER_FINISHED, ConnectionState.KERNEL)


@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_carries_a_connection_from_handshake_to_close(pki, server_cert, version):
    _walk_through_a_connection(pki, server_cert, version, Policy.USERSPACE, ConnectionState.OPENSSL)


def test_a_socket_not_yet_connected_has_no_state(pki):
    sock = client_context(pki.ca_path).wrap_socket(socket.socket(), server_hostname="localhost")
    with sock:
        assert sock.ktls_state is None


def test_a_failed_handshake_is_final(pki, rsa_pki, server_cert):
    client_ctx = client_context(rsa_pki.ca_path)  # trusts another CA: verification fails
    raw_client, raw_server = loopback_pair(timeout=10.0)
    join = in_thread(lambda: server_context(server_cert, ours=False).wrap_socket(raw_server, server_side=True))
    client = client_ctx.wrap_socket(raw_client, server_hostname="localhost", do_handshake_on_connect=False)
    with client:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.do_handshake()
        assert client.ktls_state is ConnectionState.FAILED
        with pytest.raises(ssl.SSLCertVerificationError):
            client.do_handshake()  # the same error again, not a new attempt
        assert client.ktls_state is ConnectionState.FAILED
    with pytest.raises(ssl.SSLError):
        join()
    assert client.ktls_state is ConnectionState.CLOSED


def _outcome(call):
    try:
        return ("returned", call())
    except (ssl.SSLError, OSError) as exc:
        # The class CPython's ssl would raise: ktls_ossl's kernel errors subclass it.
        standard = next(klass for klass in type(exc).__mro__ if klass.__module__ in ("ssl", "builtins"))
        return (standard.__name__, getattr(exc, "reason", None))


def _forged_record_outcomes(client_ctx, server_cert, states=None):
    """What two reads return after the peer wrote a record that fails authentication (bytes
    written under TLS's feet); ``states`` collects ktls_state after each."""
    raw_client, raw_server = loopback_pair(timeout=10.0)
    join = in_thread(lambda: server_context(server_cert, ours=False).wrap_socket(raw_server, server_side=True))
    outcomes = []
    with client_ctx.wrap_socket(raw_client, server_hostname="localhost") as client:
        with join() as server:
            socket.socket.sendall(server, bytes([23, 3, 3, 0, 40]) + bytes(40))
            for _ in range(2):
                outcomes.append(_outcome(lambda: client.recv(100)))
                if states is not None:
                    states.append(client.ktls_state)
    return outcomes


@pytest.mark.ktls
@pytest.mark.parametrize("version", VERSIONS)
def test_a_forged_record_fails_a_kernel_connection_for_good(pki, server_cert, version):
    """The first read fails as CPython's ssl's does (bad record MAC), the state says FAILED, and the
    failure is final: the next read raises it again (OpenSSL, and so CPython, reads b"" there, which
    an application could take for an orderly end)."""
    states = []
    ours = _forged_record_outcomes(versioned(client_context(pki.ca_path), version), server_cert, states)
    cpython = _forged_record_outcomes(versioned(client_context(pki.ca_path, ours=False), version), server_cert)
    assert ours[0] == cpython[0] == ("SSLError", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    assert ours[1] == ours[0]
    assert states == [ConnectionState.FAILED, ConnectionState.FAILED]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_forged_record_fails_an_openssl_connection_as_cpython(pki, server_cert, version):
    """In user space every read after the forged record ends as CPython's does; the state says FAILED."""
    states = []
    ours = _forged_record_outcomes(versioned(client_context(pki.ca_path, ktls_policy=Policy.USERSPACE), version),
                                   server_cert, states)
    cpython = _forged_record_outcomes(versioned(client_context(pki.ca_path, ours=False), version), server_cert)
    assert ours[0] == ("SSLError", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    assert ours == cpython
    assert states == [ConnectionState.FAILED, ConnectionState.FAILED]
