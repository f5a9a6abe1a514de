"""Policy.AFTER_CCS end to end: OpenSSL's own kTLS (SSL_OP_ENABLE_KTLS) on the socket BIO.

All data goes through SSL_read_ex/SSL_write_ex, sendfile through SSL_sendfile, and sock.ktls says what
OpenSSL offloaded (BIO_get_ktls_send/recv), which these tests check against what the kernel holds.
OpenSSL 3.0 offloads TLS 1.2 both ways and TLS 1.3 for sending only; its kTLS cannot move a TLS 1.3
send key after a KeyUpdate, which ktls_ossl turns into a clear error instead of broken records.
"""
from __future__ import annotations

import hashlib
import os

import pytest

import ktls_ossl
from ktls_ossl import kernel
from ktls_ossl.errors import KernelTLSError
from ktls_ossl.handshake import Policy
from ktls_ossl.kernel import Direction
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from ..timing import scaled
from ..tlshelpers import client_context, in_thread, recv_exactly, server_context, tls_pair

CIPHER = KernelCipher.AES_GCM_128


def _kernel_holds(sock, direction) -> bool:
    try:
        kernel.read_crypto_info(sock, direction)
        return True
    except KernelTLSError:
        return False


def _pair(server_cert, pki, version, *, ours="client", peer_ours=False, peer_policy=Policy.USERSPACE):
    """Ours under AFTER_CCS; the peer is CPython's ssl, or ours under ``peer_policy``."""
    mine = {"ktls_policy": Policy.AFTER_CCS}
    theirs = {"ktls_policy": peer_policy} if peer_ours else {}
    if ours == "client":
        return tls_pair(client_context(pki.ca_path, version=version, cipher=CIPHER, **mine),
                        server_context(server_cert, ours=peer_ours, version=version, cipher=CIPHER, **theirs))
    return tls_pair(client_context(pki.ca_path, ours=peer_ours, version=version, cipher=CIPHER, **theirs),
                    server_context(server_cert, version=version, cipher=CIPHER, **mine))


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
@pytest.mark.parametrize("ours", ["client", "server"])
def test_after_ccs_end_to_end(server_cert, pki, tmp_path, version, ours):
    kernel.probe()
    before = kernel.tls_stat()
    pair = _pair(server_cert, pki, version, ours=ours)
    try:
        mine, theirs = (pair.client, pair.server) if ours == "client" else (pair.server, pair.client)
        status = mine.ktls
        assert status.policy is Policy.AFTER_CCS
        # sock.ktls is what OpenSSL's BIO reports, and the kernel agrees.
        assert status.tx == _kernel_holds(mine, Direction.TX)
        assert status.rx == _kernel_holds(mine, Direction.RX)
        after = kernel.tls_stat()
        assert after.get("TlsTxSw", 0) - before.get("TlsTxSw", 0) == int(status.tx)
        assert after.get("TlsRxSw", 0) - before.get("TlsRxSw", 0) == int(status.rx)
        if not kernel.probe().ulp_available:
            assert not status.tx and not status.rx and "modprobe tls" in status.rx_reason
        else:
            assert status.tx
            if version == TLS_1_2_VERSION:
                assert status.rx
            elif ktls_ossl.OPENSSL_VERSION_NUMBER < 0x30200000:
                assert not status.rx and "never offloads TLS 1.3 reception" in status.rx_reason

        for sender, receiver in ((mine, theirs), (theirs, mine)):
            payload = os.urandom(300000)
            join = in_thread(sender.sendall, payload)
            assert recv_exactly(receiver, len(payload)) == payload
            join()

        # sendfile: through SSL_sendfile where OpenSSL has TX in the kernel.
        content = os.urandom((1 << 20) + 777)
        path = tmp_path / "file.bin"
        path.write_bytes(content)
        calls = []
        handshake = mine._sslobj._handshake
        real = handshake.sendfile
        handshake.sendfile = lambda *args: calls.append(args) or real(*args)

        def send():
            with open(path, "rb") as source:
                return mine.sendfile(source, offset=10, count=len(content) - 20)

        join = in_thread(send)
        received = recv_exactly(theirs, len(content) - 20)
        assert join() == len(content) - 20
        assert hashlib.sha256(received).digest() == hashlib.sha256(content[10:-10]).digest()
        assert bool(calls) == status.tx

        # close_notify both ways through OpenSSL.
        join = in_thread(theirs.unwrap)
        assert mine.recv(10) == b""
        mine.unwrap()
        join()
        events = [what for _, what in mine.ktls_events]
        assert "alert received level=1 description=0" in events and "alert sent level=1 description=0" in events
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
def test_after_ccs_own_key_update_is_refused_not_garbled(server_cert, pki):
    pair = _pair(server_cert, pki, TLS_1_3_VERSION, peer_ours=True)
    try:
        if pair.client.ktls.tx:
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError) as info:
                pair.client.key_update()
            assert info.value.reason == "KEY_UPDATE_UNSUPPORTED" and "so nothing was sent" in str(info.value)
        else:
            pair.client.key_update()  # OpenSSL in user space updates its keys itself
        for sender, receiver in ((pair.client, pair.server), (pair.server, pair.client)):
            sender.sendall(b"still fine")
            assert recv_exactly(receiver, 10) == b"still fine"
    finally:
        pair.close()


@pytest.mark.ktls_or_fallback
def test_after_ccs_peer_key_update_request_stops_sending_cleanly(server_cert, pki):
    """Before the fix OpenSSL's kTLS went on encrypting with the old key after answering the peer's
    KeyUpdate, and the peer failed with bad_record_mac on the next record."""
    pair = _pair(server_cert, pki, TLS_1_3_VERSION, peer_ours=True)
    try:
        pair.server.key_update(request_peer=True)
        pair.server.sendall(b"update please")
        assert recv_exactly(pair.client, 13) == b"update please"
        if pair.client.ktls.tx:
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError) as info:
                pair.client.sendall(b"would be garbage")
            assert "the peer requested a KeyUpdate" in str(info.value)
            assert "nothing more can be sent" in str(info.value)
            with pytest.raises(ktls_ossl.KTLSRekeyUnsupportedError):
                pair.client.send(b"still refused")
            # Reading goes on (TLS 1.3 reception is OpenSSL's, in user space).
            pair.server.sendall(b"more")
            assert recv_exactly(pair.client, 4) == b"more"
            pair.client.close()
            pair.server.settimeout(scaled(5))
            assert pair.server.recv(100) == b""  # no record the peer cannot decrypt ever came
        else:
            pair.client.sendall(b"answered in user space")
            assert recv_exactly(pair.server, 22) == b"answered in user space"
    finally:
        pair.close()


@pytest.mark.ktls
def test_after_ccs_require_ktls_reports_what_openssl_did_not_offload(server_cert, pki):
    for version in (TLS_1_2_VERSION, TLS_1_3_VERSION):
        ctx = client_context(pki.ca_path, version=version, cipher=CIPHER, ktls_policy=Policy.AFTER_CCS,
                             require_ktls=True)
        if version == TLS_1_3_VERSION and ktls_ossl.OPENSSL_VERSION_NUMBER < 0x30200000:
            with pytest.raises(ktls_ossl.KTLSUnavailableError) as info:
                tls_pair(ctx, server_context(server_cert, ours=False, version=version, cipher=CIPHER))
            assert info.value.reason == "KTLS_REQUIRED" and "never offloads TLS 1.3 reception" in str(info.value)
        else:
            pair = tls_pair(ctx, server_context(server_cert, ours=False, version=version, cipher=CIPHER))
            assert pair.client.ktls.active
            pair.close()
