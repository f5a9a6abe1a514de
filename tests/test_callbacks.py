"""The C callbacks of cffi_build/callbacks.py: TLS 1.3 secret capture from OpenSSL's keylog lines,
record counting, and which messages reach Python.

These run on any kernel: the capture happens during the handshake, before (and whether or not)
keys go to the kernel.
"""

import pytest

from ktls_ossl import Policy
from ktls_ossl._ossl import ffi, lib
from ktls_ossl.handshake import Handshake
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .conftest import loopback_pair
from .tlshelpers import client_context, server_context, tls_pair

RANDOM_HEX = "ab" * 32


@pytest.fixture
def bare_handshake(pki):
    """A Handshake (SSL object with its C state attached) that never runs: for feeding the
    callbacks by hand."""
    ctx = client_context(pki.ca_path)
    raw, peer = loopback_pair()
    handshake = Handshake(ctx, raw.fileno(), server_side=False, server_hostname="localhost",
                          policy=Policy.AFTER_FINISHED)
    yield handshake
    handshake.release()
    raw.close()
    peer.close()


def keylog_line(label: str, secret_hex: str) -> bytes:
    return f"{label} {RANDOM_HEX} {secret_hex}".encode("ascii")


@pytest.mark.parametrize("length", [32, 48, 64])
def test_traffic_secrets_are_captured_from_the_keylog_line(bare_handshake, length):
    client, server = bytes(range(length)), bytes(range(100, 100 + length))
    lib.ktls_keylog_capture(bare_handshake.ssl, keylog_line("CLIENT_TRAFFIC_SECRET_0", client.hex()))
    lib.ktls_keylog_capture(bare_handshake.ssl, keylog_line("SERVER_TRAFFIC_SECRET_0", server.hex().upper()))
    assert bare_handshake.capture.traffic_secret(client=True) == client
    assert bare_handshake.capture.traffic_secret(client=False) == server


@pytest.mark.parametrize("line", [
    keylog_line("CLIENT_TRAFFIC_SECRET_0", "abc"),  # odd number of digits
    keylog_line("CLIENT_TRAFFIC_SECRET_0", "zz" * 32),  # not hex
    keylog_line("CLIENT_TRAFFIC_SECRET_0", "00" * 65),  # longer than any TLS hash
    keylog_line("CLIENT_TRAFFIC_SECRET_0", ""),  # empty secret
    b"CLIENT_TRAFFIC_SECRET_0 " + RANDOM_HEX.encode(),  # no secret field at all
    b"CLIENT_TRAFFIC_SECRET_0",  # label only
], ids=["odd-length", "not-hex", "too-long", "empty", "no-secret-field", "label-only"])
def test_malformed_lines_capture_nothing(bare_handshake, line):
    lib.ktls_keylog_capture(bare_handshake.ssl, line)
    assert bare_handshake.capture.traffic_secret(client=True) is None


@pytest.mark.parametrize("label", ["CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                                   "EXPORTER_SECRET", "CLIENT_RANDOM", "CLIENT_TRAFFIC_SECRET_1",
                                   "CLIENT_TRAFFIC_SECRET_01"])
def test_other_secrets_are_not_kept(bare_handshake, label):
    lib.ktls_keylog_capture(bare_handshake.ssl, keylog_line(label, "11" * 32))
    assert bare_handshake.capture.traffic_secret(client=True) is None
    assert bare_handshake.capture.traffic_secret(client=False) is None


def test_forgetting_zeroes_the_secrets(bare_handshake):
    lib.ktls_keylog_capture(bare_handshake.ssl, keylog_line("CLIENT_TRAFFIC_SECRET_0", "5a" * 48))
    state = bare_handshake._state
    bare_handshake.capture.forget_secrets()
    assert bare_handshake.capture.traffic_secret(client=True) is None
    assert bytes(state.client_traffic_secret) == bytes(len(state.client_traffic_secret))


def test_a_line_for_an_ssl_without_state_is_ignored(pki):
    """An SSL created outside Handshake (no ex_data) must not crash the C callback."""
    ctx = client_context(pki.ca_path)
    pointer = lib.SSL_new(ctx._ssl_ctx)
    try:
        lib.ktls_keylog_capture(pointer, keylog_line("CLIENT_TRAFFIC_SECRET_0", "00" * 32))
    finally:
        lib.SSL_free(pointer)


def _keylog_callback(ctx):
    return lib.SSL_CTX_get_keylog_callback(ctx._ssl_ctx)


def test_openssl_formats_secrets_only_where_they_are_used(pki, tmp_path):
    capture = ffi.addressof(lib, "ktls_keylog_capture")
    capture_and_log = ffi.addressof(lib, "ktls_keylog_capture_and_log")
    ctx = client_context(pki.ca_path)
    assert ctx.ktls_policy is Policy.AFTER_FINISHED and _keylog_callback(ctx) == capture
    ctx.ktls_policy = Policy.USERSPACE
    assert _keylog_callback(ctx) == ffi.NULL
    ctx.ktls_policy = Policy.AFTER_CCS
    assert _keylog_callback(ctx) == ffi.NULL
    ctx.keylog_filename = str(tmp_path / "keylog")
    assert _keylog_callback(ctx) == capture_and_log  # a file needs the lines whatever the policy
    ctx.ktls_policy = Policy.AFTER_FINISHED
    assert _keylog_callback(ctx) == capture_and_log
    ctx.keylog_filename = None
    assert _keylog_callback(ctx) == capture


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("cipher, hash_name", [(KernelCipher.AES_GCM_128, "sha256"),
                                               (KernelCipher.AES_GCM_256, "sha384")])
def test_captured_secrets_are_what_openssl_logged_for_the_peer(server_cert, pki, tmp_path, cipher, hash_name):
    keylog = tmp_path / "peer.keylog"
    server_ctx = server_context(server_cert, ours=False, version=TLS_1_3_VERSION, cipher=cipher)
    server_ctx.keylog_filename = str(keylog)
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=cipher), server_ctx)
    try:
        peer = {label: bytes.fromhex(secret) for label, _, secret in
                (line.split() for line in keylog.read_text().splitlines() if not line.startswith("#"))}
        connection = pair.client._sslobj
        if connection._handoff is not None:  # the kernel took the keys: the handoff kept the secrets
            tx, rx = connection._handoff.tx_secret, connection._handoff.rx_secret
            assert connection._handshake.capture.traffic_secret(client=True) is None  # and forgot the copy
        else:
            tx = connection._handshake.capture.traffic_secret(client=True)
            rx = connection._handshake.capture.traffic_secret(client=False)
        assert tx == peer["CLIENT_TRAFFIC_SECRET_0"] and len(tx) == (48 if hash_name == "sha384" else 32)
        assert rx == peer["SERVER_TRAFFIC_SECRET_0"]
    finally:
        pair.close()


@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
def test_observers_see_the_audited_messages_unless_asked_for_all(server_cert, pki, version):
    seen = {}

    def watch(ctx, every: bool):
        original = ctx._wrap_socket

        def wrap(*args, **kwargs):
            connection = original(*args, **kwargs)
            messages = seen.setdefault(every, [])
            connection._handshake.observers.append(lambda write_p, content_type, data:
                                                   messages.append((content_type, data[:1])))
            if every:
                connection._handshake.watch_every_message()
            return connection
        ctx._wrap_socket = wrap

    for every in (False, True):
        client_ctx = client_context(pki.ca_path, version=version, cipher=KernelCipher.AES_GCM_128,
                                    ktls_policy=Policy.USERSPACE)
        watch(client_ctx, every)
        pair = tls_pair(client_ctx, server_context(server_cert, ours=False, version=version,
                                                   cipher=KernelCipher.AES_GCM_128))
        pair.close()
    audited = {(20, b"\x01"), (22, b"\x14"), (22, b"\x18")}  # CCS, Finished, KeyUpdate (alerts: any)
    assert all(kind == 21 or (kind, first) in audited for kind, first in seen[False])
    assert [first for kind, first in seen[False] if kind == 22] == [b"\x14", b"\x14"]  # both Finished
    every_type = {first[0] for kind, first in seen[True] if kind == 22}
    assert {1, 2, 11, 20} <= every_type  # ClientHello, ServerHello, Certificate, Finished


def test_records_are_counted_per_direction(server_cert, pki):
    pair = tls_pair(client_context(pki.ca_path, version=TLS_1_3_VERSION, cipher=KernelCipher.AES_GCM_128,
                                   ktls_policy=Policy.USERSPACE),
                    server_context(server_cert, ours=False, version=TLS_1_3_VERSION,
                                   cipher=KernelCipher.AES_GCM_128))
    try:
        received, sent = pair.client._sslobj._handshake.records
        # Client: ClientHello, (compat) ChangeCipherSpec, Finished at least; the server sends at
        # least ServerHello, CCS, and the encrypted flight.
        assert sent >= 3 and received >= 3
        assert pair.client._sslobj._handshake.capture.records_after_finished(0) == 0  # peer Finished was last read
    finally:
        pair.close()
