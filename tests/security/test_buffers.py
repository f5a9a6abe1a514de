"""A kept exception must not keep the caller's buffer exported.

Before the fix, kernel.recv_record_into / send_record and Handshake.read_into / write raised while
their frame still held a cffi buffer over the caller's memory. A connection keeps its fatal error
(sticky failures), so the traceback, the frame, the cffi buffer and the caller's memoryview ended up
in a reference cycle; the garbage collector then met "memoryview has 1 exported buffer" and, at the
end of the hostile-peer suite, crashed the interpreter (SIGSEGV in memory_dealloc). A buffer that
is still exported cannot be resized, which is what these tests check.
"""
from __future__ import annotations

import socket
import ssl

import pytest

from ktls_ossl import kernel
from ktls_ossl.handshake import Handshake, Policy

from ..tlshelpers import client_context


def test_receive_error_releases_the_buffer():
    a, b = socket.socketpair()
    with a, b:
        buffer = bytearray(64)
        with pytest.raises(BlockingIOError) as info:
            kernel.recv_record_into(a.fileno(), buffer, socket.MSG_DONTWAIT)
        kept = info.value
        buffer.extend(b"resizable")  # BufferError while an export is alive
        assert kept.__traceback__ is not None


def test_send_error_releases_the_buffer():
    a, b = socket.socketpair()
    with a:
        b.close()
        data = bytearray(b"x" * 64)
        with pytest.raises(OSError) as info:
            kernel.send_record(a.fileno(), 23, data)
        kept = info.value
        data.extend(b"resizable")
        assert kept.__traceback__ is not None


def test_openssl_read_error_releases_the_buffer(pki):
    a, b = socket.socketpair()
    with a:
        handshake = Handshake(client_context(pki.ca_path), a.fileno(), server_side=False,
                              server_hostname="localhost", policy=Policy.USERSPACE)
        b.close()  # the peer is gone before the handshake: SSL_read_ex fails
        buffer = bytearray(64)
        with pytest.raises((ssl.SSLError, OSError)) as info:
            handshake.read_into(buffer, len(buffer))
        kept = info.value
        buffer.extend(b"resizable")
        assert kept.__traceback__ is not None
