"""The engine by hand: the record-exact pump, then a KernelSession on a non-blocking socket.

No KTLSSocket is involved: the test drives ktls_ossl.pump and ktls_ossl.session itself, waiting for
readiness as an event loop would (every call with a NonBlockingWaiter, which turns each would-block
into SSLWantReadError/SSLWantWriteError). The peer is CPython's ssl (ktls_ossl in user space for
TLS 1.3 CCM, which CPython cannot enable). Each run checks, with the peer as the oracle: the data
both ways (SHA-256), the session tickets the peer sent reaching OpenSSL, a KeyUpdate in each
direction where the kernel rekeys (the kernel's own counters), and an orderly close_notify exchange.
"""
from __future__ import annotations

import hashlib
import os
import select
import ssl

import pytest

from ktls_ossl import KTLSRekeyUnsupportedError, pump
from ktls_ossl.keys import TLS_1_3_VERSION
from ktls_ossl.posthandshake import OpenSSLPostHandshake
from ktls_ossl.session import NonBlockingWaiter, SessionState, hand_over

from .conftest import RekeyCounters, kernel_can_rekey, loopback_pair
from .test_pump import ROLES, CountingPeer, _contexts, drive, echo_peer
from .timing import scaled
from .tlshelpers import COMBINATION_IDS, COMBINATIONS

PAYLOAD_SIZE = 200 * 1024
DONE = b"peer done"


def until_ready(sock, call):
    """Call ``call(waiter)`` until it does not want to wait, waiting for readiness in between."""
    poller = select.poll()
    while True:
        try:
            return call(NonBlockingWaiter())
        except ssl.SSLWantReadError:
            events = select.POLLIN
        except ssl.SSLWantWriteError:
            events = select.POLLOUT
        poller.register(sock, events)
        assert poller.poll(int(scaled(10) * 1000)), "the socket never became ready"
        poller.unregister(sock)


def read_exactly(session, sock, size: int) -> bytes:
    got = bytearray(size)
    view = memoryview(got)
    filled = 0
    while filled < size:
        count = until_ready(sock, lambda waiter: session.read_into(view[filled:], size - filled, waiter))
        assert count, "the peer's data ended early"
        filled += count
    return bytes(got)


def write_all(session, sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[until_ready(sock, lambda waiter: session.write(view, waiter)):]


def _finish(tls):
    """After the echo: DONE (the peer's own KeyUpdate, if we asked for one, goes out in front of
    it), then close_notify both ways."""
    tls.sendall(DONE)
    tls.unwrap()


@pytest.mark.ktls
@pytest.mark.parametrize("ours_role", ROLES)
@pytest.mark.parametrize("version, cipher", COMBINATIONS, ids=COMBINATION_IDS)
def test_pump_then_session_by_hand(pki, server_cert, version, cipher, ours_role):
    payload = os.urandom(PAYLOAD_SIZE)
    ours_ctx, theirs_ctx = _contexts(pki, server_cert, version, cipher, ours_role)
    if ours_role == "client" and version == TLS_1_3_VERSION:
        theirs_ctx.num_tickets = 2  # the peer server sends tickets behind its handshake
    mine, theirs_raw = loopback_pair() if ours_role == "client" else reversed(loopback_pair())
    theirs_raw.settimeout(scaled(20))
    peer = CountingPeer(theirs_ctx, theirs_raw, server_side=ours_role == "client", after=echo_peer(payload, _finish))
    mine.setblocking(False)
    engine = pump.OpenSSLEngine(ours_ctx, server_side=ours_role == "server",
                                server_hostname=None if ours_role == "server" else "localhost")
    try:
        drive(pump.RecordPump(mine, engine))
        counters = RekeyCounters()
        session = hand_over(mine.fileno(), OpenSSLPostHandshake(engine.handshake), server_side=ours_role == "server")
        assert session.tx_in_kernel and session.handoff.cipher is cipher and session.state is SessionState.OPEN

        received = read_exactly(session, mine, 32 + PAYLOAD_SIZE)
        assert hashlib.sha256(received[32:]).digest() == received[:32]
        rekeys = version == TLS_1_3_VERSION and kernel_can_rekey()
        if version == TLS_1_3_VERSION and not rekeys:
            with pytest.raises(KTLSRekeyUnsupportedError):
                session.key_update(request_peer=True)
        elif rekeys:
            session.key_update(request_peer=True)
        write_all(session, mine, received[32:])
        assert read_exactly(session, mine, len(DONE)) == DONE
        until_ready(mine, session.shutdown)
        assert session.state is SessionState.PEER_CLOSED and session.sent_close
        assert peer.join() == hashlib.sha256(payload).hexdigest()

        if ours_role == "client" and version == TLS_1_3_VERSION:
            assert session.tickets_received == 2  # the peer's two tickets reached OpenSSL
            assert engine.handshake.get_session().has_ticket
        counters.check(tx=1 if rekeys else 0, rx=1 if rekeys else 0)
        assert session.key_updates == (1 if rekeys else 0)
    finally:
        mine.close()
