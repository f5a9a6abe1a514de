"""The kernel layer on its own, in the style of the kernel's selftests/net/tls.c.

A TCP loopback pair with fixed keys and kTLS on both ends: no TLS library involved. Runs for every
version x cipher; under scripts/ktls-vm every one must pass.
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest

from ktls_ossl import kernel, keys, records
from ktls_ossl.errors import (
    KernelTLSError,
    KTLSCipherUnavailableError,
    KTLSKeyExpiredError,
    KTLSRecordError,
    KTLSRekeyUnsupportedError,
    KTLSUnavailableError,
)
from ktls_ossl.kernel import Direction
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher, TrafficKeys
from ktls_ossl.records import ContentType, RecordProtection

from . import vectors as v
from .conftest import RekeyCounters, kernel_can_rekey, ktls_required, loopback_pair

VERSIONS = {TLS_1_2_VERSION: "tls12", TLS_1_3_VERSION: "tls13"}
COMBINATIONS = [(version, cipher) for version in VERSIONS for cipher in KernelCipher]
COMBINATION_IDS = [f"{VERSIONS[version]}-{cipher.name.lower()}" for version, cipher in COMBINATIONS]


def fixed_keys(version: int, cipher: KernelCipher, fill: int, seq: int = 0) -> TrafficKeys:
    key = bytes((fill + i) % 256 for i in range(cipher.key_size))
    write_iv = bytes((fill * 7 + i) % 256 for i in range(12))
    if version == TLS_1_3_VERSION:
        return TrafficKeys(version, cipher, key, write_iv[cipher.salt_size:], write_iv[: cipher.salt_size], seq)
    if cipher is KernelCipher.CHACHA20_POLY1305:
        return keys.tls12_traffic_keys(key, write_iv, cipher, seq)
    return keys.tls12_traffic_keys(key, write_iv[:4], cipher, seq)


def require_cipher(version: int, cipher: KernelCipher) -> None:
    support = kernel.probe().support(version, cipher)
    if support is None or not support.usable:
        reason = support.error if support else "not probed"
        message = f"kernel {kernel.probe().kernel_release} cannot do {keys.VERSION_NAMES[version]} {cipher.display_name}: {reason}"
        if ktls_required():
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class KTLSPair:
    client: socket.socket
    server: socket.socket
    version: int
    cipher: KernelCipher
    client_to_server: TrafficKeys
    server_to_client: TrafficKeys


def make_pair(version: int, cipher: KernelCipher) -> KTLSPair:
    client, server = loopback_pair()
    c2s, s2c = fixed_keys(version, cipher, 0x10), fixed_keys(version, cipher, 0x80)
    for sock in (client, server):
        kernel.attach_ulp(sock)
    kernel.install(client, Direction.TX, c2s)
    kernel.install(server, Direction.RX, c2s)
    kernel.install(server, Direction.TX, s2c)
    kernel.install(client, Direction.RX, s2c)
    return KTLSPair(client, server, version, cipher, c2s, s2c)


@pytest.fixture(params=COMBINATIONS, ids=COMBINATION_IDS)
def pair(request):
    version, cipher = request.param
    require_cipher(version, cipher)
    ktls_pair = make_pair(version, cipher)
    yield ktls_pair
    ktls_pair.client.close()
    ktls_pair.server.close()


def receive_data(sock, size: int) -> bytes:
    """Exactly ``size`` bytes of application data, checking every recvmsg's record type."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        record = kernel.recv_record_into(sock, view[got:])
        assert record.content_type == ContentType.APPLICATION_DATA, f"record type {record.content_type}"
        assert record.length > 0, "EOF before all data arrived"
        got += record.length
    return bytes(buffer)


def send_in_thread(sock, data: bytes) -> threading.Thread:
    errors = []

    def run():
        try:
            sock.sendall(data)
        except Exception as exc:  # reported by the joining test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def assert_nothing_pending(sock) -> None:
    with pytest.raises(BlockingIOError):
        kernel.recv_record_into(sock, bytearray(64), socket.MSG_DONTWAIT)


def raw_records(sock, count: int) -> list[bytes]:
    data = b""
    while True:
        whole, _ = records.split_records(data)
        if len(whole) >= count:
            break
        chunk = sock.recv(65536)
        assert chunk, "peer closed early"
        data += chunk
    whole, rest = records.split_records(data)
    assert not rest
    return [header.pack() + payload for header, payload in whole]


# --- Host-independent facts --------------------------------------------------------------------------

def test_crypto_info_sizes_are_the_kernels():
    assert kernel.CRYPTO_INFO_SIZES == {
        KernelCipher.AES_GCM_128: 40,
        KernelCipher.AES_GCM_256: 56,
        KernelCipher.AES_CCM_128: 40,
        KernelCipher.CHACHA20_POLY1305: 56,
    }


def test_crypto_info_layout():
    traffic = TrafficKeys(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, bytes(range(16)), b"I" * 8, b"SALT", 0x0102)
    raw = kernel.crypto_info_bytes(traffic)
    assert raw == b"\x04\x03" + bytes([51, 0]) + b"I" * 8 + bytes(range(16)) + b"SALT" + (0x0102).to_bytes(8, "big")


def test_probe_reports_the_kernel_or_why_not():
    report = kernel.probe()
    assert report.kernel_release == os.uname().release
    if report.ulp_available:
        assert len(report.ciphers) == 8
        assert "tls ULP: available" in report.format_table()
    else:
        assert report.ulp_errno == errno.ENOENT
        assert "modprobe tls" in report.ulp_message
        assert report.unavailable_reason(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, Direction.RX) == report.ulp_message
        assert "UNAVAILABLE" in report.format_table()


def test_probe_command_prints_the_table():
    result = subprocess.run([sys.executable, "-m", "ktls_ossl", "probe"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "OpenSSL 3" in result.stdout
    assert f"kernel {os.uname().release}" in result.stdout
    if kernel.probe().ulp_available:
        for cipher in KernelCipher:
            assert f"TLSv1.3  {cipher.display_name}" in result.stdout
    else:
        assert "tls ULP: UNAVAILABLE" in result.stdout and "modprobe tls" in result.stdout


def test_attach_without_tls_module_names_the_remedy(tcp_pair):
    if kernel.probe().ulp_available:
        pytest.skip("this kernel has the tls module; the missing-module path cannot happen here")
    with pytest.raises(KTLSUnavailableError) as info:
        kernel.attach_ulp(tcp_pair[0])
    assert info.value.errno == errno.ENOENT
    assert info.value.library == "KTLS" and info.value.reason == "ULP_UNAVAILABLE"
    assert "modprobe tls" in str(info.value)


# --- Kernel TLS ------------------------------------------------------------------------------------

@pytest.mark.ktls
def test_probe_finds_all_ciphers_both_versions():
    report = kernel.probe()
    assert report.ulp_available and report.tls_stat_available
    missing = [(c.version, c.cipher.display_name, c.error) for c in report.ciphers if not c.usable]
    assert not missing


@pytest.mark.ktls
@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 1 << 20])
def test_round_trip(pair, size):
    payload = os.urandom(size)
    for sender, receiver in ((pair.client, pair.server), (pair.server, pair.client)):
        thread = send_in_thread(sender, payload + b"!")
        assert receive_data(receiver, size + 1) == payload + b"!"
        thread.join(30)
        assert not thread.errors
        assert_nothing_pending(receiver)


@pytest.mark.ktls
def test_each_send_closes_records_of_at_most_16k(pair):
    before = kernel.read_crypto_info(pair.client, Direction.TX).seq
    pair.client.sendall(b"a" * 16385)
    assert receive_data(pair.server, 16385) == b"a" * 16385
    after = kernel.read_crypto_info(pair.client, Direction.TX)
    assert after.seq - before == 2
    assert kernel.read_crypto_info(pair.server, Direction.RX).seq == after.seq


@pytest.mark.ktls
def test_read_crypto_info_returns_the_installed_keys(pair):
    tx = kernel.read_crypto_info(pair.client, Direction.TX)
    rx = kernel.read_crypto_info(pair.server, Direction.RX)
    assert (tx.version, tx.cipher, tx.key, tx.salt) == (pair.version, pair.cipher, pair.client_to_server.key,
                                                         pair.client_to_server.salt)
    assert rx.key == tx.key and rx.seq == tx.seq == 0


@pytest.mark.ktls
@pytest.mark.parametrize("content_type", [ContentType.ALERT, ContentType.HANDSHAKE])
def test_control_records_keep_their_type_and_boundaries(pair, content_type):
    control = b"\x01\x00" if content_type == ContentType.ALERT else b"\x04\x00\x00\x03abc"
    pair.client.sendall(b"before")
    assert kernel.send_record(pair.client, content_type, control) == len(control)
    pair.client.sendall(b"after")
    buffer = bytearray(4096)
    # One recvmsg never mixes data with a control record.
    assert kernel.recv_record(pair.server, 4096) == (ContentType.APPLICATION_DATA, b"before")
    record = kernel.recv_record_into(pair.server, buffer)
    assert (record.content_type, bytes(buffer[: record.length])) == (content_type, control)
    assert kernel.recv_record(pair.server, 4096) == (ContentType.APPLICATION_DATA, b"after")


@pytest.mark.ktls
def test_empty_control_record_is_a_record_not_eof():
    """A peer may send an empty control record; the kernel returns 0 bytes WITH the cmsg."""
    rx_keys = fixed_keys(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, 0x61)
    ktls_end, raw_end = loopback_pair()
    with ktls_end, raw_end:
        kernel.attach_ulp(ktls_end)
        kernel.install(ktls_end, Direction.RX, rx_keys)
        sealer = RecordProtection(rx_keys)
        raw_end.sendall(sealer.seal(ContentType.HANDSHAKE, b"") + sealer.seal(ContentType.APPLICATION_DATA, b"x"))
        record = kernel.recv_record_into(ktls_end, bytearray(64))
        assert (record.content_type, record.length) == (ContentType.HANDSHAKE, 0)
        assert kernel.recv_record(ktls_end, 64) == (ContentType.APPLICATION_DATA, b"x")


@pytest.mark.ktls
def test_sending_an_empty_control_record_is_refused(pair):
    with pytest.raises(ValueError, match="cannot be empty"):
        kernel.send_record(pair.client, ContentType.HANDSHAKE, b"")


@pytest.mark.ktls
def test_plain_recv_at_a_control_record_is_eio_and_the_record_stays(pair):
    kernel.send_record(pair.server, ContentType.ALERT, b"\x02\x28")
    with pytest.raises(OSError) as info:
        pair.client.recv(100)
    assert info.value.errno == errno.EIO
    assert kernel.recv_record(pair.client, 100) == (ContentType.ALERT, b"\x02\x28")


@pytest.mark.ktls
def test_send_record_refuses_msg_more(pair):
    with pytest.raises(ValueError, match="MSG_MORE"):
        kernel.send_record(pair.client, ContentType.ALERT, b"\x01\x00", socket.MSG_MORE)


@pytest.mark.ktls
def test_sendfile_through_the_kernel(pair, tmp_path):
    content = os.urandom((1 << 20) + 12345)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    result = {}

    def serve():
        with open(path, "rb") as source:
            offset = 0
            while offset < len(content):
                offset += os.sendfile(pair.client.fileno(), source.fileno(), offset, len(content) - offset)
        result["sent"] = offset

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    received = receive_data(pair.server, len(content))
    thread.join(30)
    assert result["sent"] == len(content)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(content).hexdigest()


@pytest.mark.ktls
def test_wrong_key_is_a_specific_decryption_error(pair):
    sender, receiver = loopback_pair()
    with sender, receiver:
        kernel.attach_ulp(sender)
        kernel.attach_ulp(receiver)
        kernel.install(sender, Direction.TX, pair.client_to_server)
        kernel.install(receiver, Direction.RX, fixed_keys(pair.version, pair.cipher, 0x33))
        decrypt_errors = kernel.tls_stat().get("TlsDecryptError", 0)
        sender.sendall(b"secret")
        with pytest.raises(KTLSRecordError) as info:
            kernel.recv_record(receiver, 100)
        assert info.value.errno == errno.EBADMSG
        assert info.value.reason == "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"
        assert "could not authenticate" in str(info.value)
        assert kernel.tls_stat()["TlsDecryptError"] == decrypt_errors + 1
        # The connection is dead: nothing else is ever delivered.
        with pytest.raises(OSError):
            kernel.recv_record(receiver, 100)


@pytest.mark.ktls
@pytest.mark.parametrize("version, cipher", COMBINATIONS, ids=COMBINATION_IDS)
@pytest.mark.parametrize("failure", ["wrong_tag", "record_too_long", "bad_header_version"])
def test_after_a_refused_record_an_alert_can_still_be_sent(version, cipher, failure):
    """Kernel behaviour the alert after a refused record depends on: a failed decryption leaves
    EBADMSG pending on the socket (sk_err), and sends fail with it until SO_ERROR takes it; a
    framing error is taken by the recvmsg that reports it. After that, TX still works: the peer's
    kernel decrypts our alert."""
    require_cipher(version, cipher)
    peer, ours = loopback_pair()
    with peer, ours:
        to_ours, to_peer = fixed_keys(version, cipher, 0x10), fixed_keys(version, cipher, 0x80)
        kernel.attach_ulp(ours)
        kernel.install(ours, Direction.RX, to_ours)
        kernel.install(ours, Direction.TX, to_peer)
        kernel.attach_ulp(peer)
        kernel.install(peer, Direction.RX, to_peer)  # no TX key: what the peer sends goes out raw
        valid = records.RecordProtection(to_ours).seal(ContentType.APPLICATION_DATA, b"x")
        if failure == "wrong_tag":
            forged, expected_errno, pending = valid[:-1] + bytes([valid[-1] ^ 1]), errno.EBADMSG, errno.EBADMSG
        elif failure == "record_too_long":
            forged = records.build_record(ContentType.APPLICATION_DATA, bytes(16384 + 2048 + 300))
            expected_errno, pending = errno.EMSGSIZE, 0
        else:
            forged, expected_errno, pending = valid[:1] + b"\x03\x01" + valid[3:], errno.EINVAL, 0
        peer.sendall(forged)
        with pytest.raises(KTLSRecordError) as info:
            kernel.recv_record(ours, 100)
        assert info.value.errno == expected_errno
        alert = bytes([2, 20])
        if pending:
            with pytest.raises(OSError) as refused:
                kernel.send_record(ours, ContentType.ALERT, alert)
            assert refused.value.errno == pending
        assert kernel.take_pending_error(ours) == pending
        assert kernel.take_pending_error(ours) == 0
        assert kernel.send_record(ours, ContentType.ALERT, alert) == 2
        assert kernel.recv_record(peer, 100) == (ContentType.ALERT, alert)


@pytest.mark.ktls
def test_tls_stat_counts_installations():
    before = kernel.tls_stat()
    ktls_pair = make_pair(TLS_1_3_VERSION, KernelCipher.AES_GCM_128)
    try:
        during = kernel.tls_stat()
        assert during["TlsTxSw"] - before["TlsTxSw"] == 2
        assert during["TlsRxSw"] - before["TlsRxSw"] == 2
        assert during["TlsCurrTxSw"] - before["TlsCurrTxSw"] == 2
    finally:
        ktls_pair.client.close()
        ktls_pair.server.close()
    assert kernel.tls_stat()["TlsCurrRxSw"] == before["TlsCurrRxSw"]


@pytest.mark.ktls
@pytest.mark.parametrize("cipher", list(KernelCipher), ids=lambda c: c.name.lower())
def test_tls13_rekey_works_or_is_refused_with_ebusy(cipher):
    require_cipher(TLS_1_3_VERSION, cipher)
    ktls_pair = make_pair(TLS_1_3_VERSION, cipher)
    client, server = ktls_pair.client, ktls_pair.server
    with client, server:
        client.sendall(b"epoch 0")
        assert receive_data(server, 7) == b"epoch 0"
        next_keys = fixed_keys(TLS_1_3_VERSION, cipher, 0x55)
        counters = RekeyCounters()
        if not kernel_can_rekey():
            with pytest.raises(KTLSRekeyUnsupportedError) as info:
                kernel.rekey(client, Direction.TX, next_keys)
            assert info.value.errno == errno.EBUSY
            assert "6.14" in str(info.value)
            counters.check(0, 0)
            return
        kernel.send_record(client, ContentType.HANDSHAKE, records.key_update_message(False))
        kernel.rekey(client, Direction.TX, next_keys)
        client.sendall(b"epoch 1")
        content_type, message = kernel.recv_record(server, 100)
        assert (content_type, message) == (ContentType.HANDSHAKE, records.key_update_message(False))
        # The kernel holds back everything after a KeyUpdate until the next key is in.
        with pytest.raises(KTLSKeyExpiredError) as info:
            kernel.recv_record(server, 100)
        assert info.value.errno == errno.EKEYEXPIRED
        kernel.rekey(server, Direction.RX, next_keys)
        assert receive_data(server, 7) == b"epoch 1"
        assert kernel.read_crypto_info(client, Direction.TX).seq == 1
        counters.check(1, 1)


@pytest.mark.ktls
def test_rfc8448_records_through_the_kernel():
    """The kernel, fed the RFC 8448 keys, produces and accepts the RFC's records byte for byte."""
    client_keys = keys.tls13_traffic_keys(v.RFC8448_CLIENT_AP_TRAFFIC, KernelCipher.AES_GCM_128, "sha256", 0)
    server_keys = keys.tls13_traffic_keys(v.RFC8448_SERVER_AP_TRAFFIC, KernelCipher.AES_GCM_128, "sha256", 1)
    ktls_end, raw_end = loopback_pair()
    with ktls_end, raw_end:
        kernel.attach_ulp(ktls_end)
        kernel.install(ktls_end, Direction.TX, client_keys)
        kernel.install(ktls_end, Direction.RX, server_keys)
        ktls_end.sendall(v.RFC8448_APP_PAYLOAD)
        kernel.send_record(ktls_end, ContentType.ALERT, v.RFC8448_CLOSE_NOTIFY)
        assert raw_records(raw_end, 2) == [v.RFC8448_CLIENT_APP_RECORD, v.RFC8448_CLIENT_ALERT_RECORD]
        raw_end.sendall(v.RFC8448_SERVER_APP_RECORD + v.RFC8448_SERVER_ALERT_RECORD)
        assert kernel.recv_record(ktls_end, 100) == (ContentType.APPLICATION_DATA, v.RFC8448_APP_PAYLOAD)
        assert kernel.recv_record(ktls_end, 100) == (ContentType.ALERT, v.RFC8448_CLOSE_NOTIFY)


@pytest.mark.ktls
@pytest.mark.parametrize("version, cipher", COMBINATIONS, ids=COMBINATION_IDS)
def test_kernel_and_userspace_record_protection_agree(version, cipher):
    """What the kernel seals, records.py opens, and the reverse: proves the crypto_info mapping
    (salt, explicit nonce, sequence numbers) for every version and cipher."""
    require_cipher(version, cipher)
    tx_keys, rx_keys = fixed_keys(version, cipher, 0x21, seq=5), fixed_keys(version, cipher, 0x61, seq=9)
    ktls_end, raw_end = loopback_pair()
    with ktls_end, raw_end:
        kernel.attach_ulp(ktls_end)
        kernel.install(ktls_end, Direction.TX, tx_keys)
        kernel.install(ktls_end, Direction.RX, rx_keys)
        ktls_end.sendall(b"from the kernel")
        kernel.send_record(ktls_end, ContentType.HANDSHAKE, b"\x04\x00\x00\x00")
        opener = RecordProtection(tx_keys)
        assert [opener.open(r) for r in raw_records(raw_end, 2)] == [
            (ContentType.APPLICATION_DATA, b"from the kernel"), (ContentType.HANDSHAKE, b"\x04\x00\x00\x00")]
        sealer = RecordProtection(rx_keys)
        raw_end.sendall(sealer.seal(ContentType.APPLICATION_DATA, b"from user space")
                        + sealer.seal(ContentType.ALERT, b"\x01\x00"))
        assert kernel.recv_record(ktls_end, 100) == (ContentType.APPLICATION_DATA, b"from user space")
        assert kernel.recv_record(ktls_end, 100) == (ContentType.ALERT, b"\x01\x00")


@pytest.mark.ktls
def test_install_errors_are_specific(tcp_pair):
    client, server = tcp_pair
    tls12 = fixed_keys(TLS_1_2_VERSION, KernelCipher.AES_GCM_128, 1)
    tls13 = fixed_keys(TLS_1_3_VERSION, KernelCipher.AES_GCM_128, 2)
    with pytest.raises(KTLSUnavailableError) as info:
        kernel.install(client, Direction.TX, tls12)
    assert info.value.reason == "ULP_UNAVAILABLE"
    kernel.attach_ulp(client)
    with pytest.raises(KTLSUnavailableError) as info:
        kernel.attach_ulp(client)
    assert info.value.errno == errno.EEXIST
    kernel.install(client, Direction.TX, tls12)
    with pytest.raises(KTLSCipherUnavailableError) as info:
        kernel.install(client, Direction.RX, tls13)
    assert info.value.errno == errno.EINVAL and "differ" in str(info.value)
    with pytest.raises(KTLSCipherUnavailableError) as info:
        kernel.install(client, Direction.TX, tls12)
    assert info.value.errno == errno.EBUSY and "already installed" in str(info.value)
    with pytest.raises(KTLSRekeyUnsupportedError):
        kernel.rekey(client, Direction.TX, tls12)


@pytest.mark.ktls
def test_ulp_needs_an_established_connection():
    with socket.socket() as unconnected:
        with pytest.raises(KTLSUnavailableError) as info:
            kernel.attach_ulp(unconnected)
    assert info.value.errno == errno.ENOTCONN
    assert "not established" in str(info.value)


def test_recv_record_without_tls_rx_reports_type_zero(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"plain")
    assert kernel.recv_record(server, 100) == (0, b"plain")


def test_errors_are_ssl_errors():
    assert issubclass(KernelTLSError, ssl.SSLError)
    assert issubclass(KTLSRecordError, KernelTLSError)
