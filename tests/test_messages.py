"""What kernel TLS errors and the probe say: what happened and what to do, in one clean sentence.

No errno suffix where no system call failed, no message nested inside another, no advice a library
user cannot follow (the repository's scripts), the kernel's real reason for a refused option, and a
probe that claims only what it verified (the kernel's own counters are the oracle for rekey).
"""
from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys

import pytest

from ktls_ossl import kernel
from ktls_ossl.errors import KernelTLSError, KTLSUnavailableError
from ktls_ossl.kernel import Direction
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher, TrafficKeys


def release_tuple() -> tuple[int, int]:
    """This kernel's (major, minor), read here from uname, not through the code under test."""
    major, minor = re.match(r"(\d+)\.(\d+)", os.uname().release).groups()
    return int(major), int(minor)


def all_kernel_error_types() -> list[type]:
    found, todo = [], [KernelTLSError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def some_keys(version: int, cipher: KernelCipher) -> TrafficKeys:
    return TrafficKeys(version, cipher, b"k" * cipher.key_size, b"i" * cipher.iv_size,
                       b"s" * cipher.salt_size, 0)


def rendered_kernel_messages() -> list[str]:
    """The text of every error kernel.py can construct, for every errno the platform knows."""
    texts = []
    for err in errno.errorcode:
        texts.append(str(kernel.ulp_error(err)))
        texts.append(str(kernel._receive_error(err)))
        for direction in Direction:
            texts.append(str(kernel._crypto_info_error(err, direction)))
            for version in (TLS_1_2_VERSION, TLS_1_3_VERSION):
                for cipher in KernelCipher:
                    for update in (False, True):
                        texts.append(str(kernel._install_error(err, direction, some_keys(version, cipher),
                                                               update=update)))
    return texts


# --- errno 0 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("error_type", all_kernel_error_types(), ids=lambda cls: cls.__name__)
def test_errno_zero_renders_no_errno_suffix(error_type):
    exc = error_type(0, "the peer did something: do this", "SOME_REASON")
    assert str(exc) == "[KTLS: SOME_REASON] the peer did something: do this"
    assert not str(exc).endswith("Success)") and "(0" not in str(exc)
    assert exc.errno == 0 and exc.reason == "SOME_REASON" and exc.library == "KTLS"
    # A real errno is still named, once, at the end.
    exc = error_type(errno.ENOENT, "something is missing: load it", "SOME_REASON")
    assert str(exc) == "[KTLS: SOME_REASON] something is missing: load it (ENOENT: No such file or directory)"


# --- ENOPROTOOPT: what actually happened ------------------------------------------------------------

@pytest.mark.parametrize("direction", list(Direction), ids=lambda d: d.name.lower())
def test_install_without_the_ulp_says_to_attach_it(tcp_pair, direction):
    """setsockopt(SOL_TLS) on a TCP socket without the ULP fails with ENOPROTOOPT on any kernel, with
    or without the tls module: the socket lacks the ULP, the kernel does not lack TCP_ULP."""
    with pytest.raises(KTLSUnavailableError) as info:
        kernel.install(tcp_pair[0], direction, some_keys(TLS_1_3_VERSION, KernelCipher.AES_GCM_128))
    text = str(info.value)
    assert info.value.errno == errno.ENOPROTOOPT and info.value.reason == "ULP_UNAVAILABLE"
    assert "not attached" in text and "attach_ulp()" in text
    assert "4.13" not in text and "TCP_ULP at all" not in text


def test_tcp_ulp_refused_by_a_non_tcp_socket_names_the_socket():
    assert release_tuple() >= (4, 13)  # this kernel has TCP_ULP; a UDP socket does not take it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(KTLSUnavailableError) as info:
            kernel.attach_ulp(udp)
    text = str(info.value)
    assert info.value.errno == errno.ENOPROTOOPT
    assert "TCP socket" in text and "4.13" not in text


def test_tcp_ulp_missing_on_an_old_kernel_names_the_version():
    text = str(kernel.ulp_error(errno.ENOPROTOOPT, "4.9.337"))
    assert "4.9.337" in text and "4.13 or later" in text


# --- nesting ---------------------------------------------------------------------------------------

def test_probe_ulp_message_is_a_plain_sentence():
    report = kernel.probe()
    if report.ulp_available:
        assert report.ulp_message is None
        assert [c.error for c in report.ciphers if c.error and ("[KTLS" in c.error or "(ktls_ossl)" in c.error)] == []
        return
    name = errno.errorcode[report.ulp_errno]
    assert "[KTLS" not in report.ulp_message and name not in report.ulp_message
    assert os.strerror(report.ulp_errno) not in report.ulp_message
    assert "modprobe tls" in report.ulp_message


def test_probe_command_quotes_plain_sentences():
    result = subprocess.run([sys.executable, "-m", "ktls_ossl", "probe"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[KTLS" not in result.stdout and "(ktls_ossl)" not in result.stdout
    assert "ktls-vm" not in result.stdout


# --- advice a library user can follow --------------------------------------------------------------

def test_no_rendered_message_points_at_the_repository_scripts():
    texts = rendered_kernel_messages()
    report = kernel.probe()
    texts += [report.format_table(), repr(report.as_dict())]
    offending = sorted({text for text in texts if "ktls-vm" in text or "scripts/" in text})
    assert offending == []


def test_every_ulp_failure_says_what_to_do():
    assert "modprobe tls" in str(kernel.ulp_error(errno.ENOENT))
    assert "CONFIG_TLS" in str(kernel.ulp_error(errno.ENOENT))
    assert "connect()" in str(kernel.ulp_error(errno.ENOTCONN))
    assert "already attached" in str(kernel.ulp_error(errno.EEXIST))


# --- the probe's rekey claim --------------------------------------------------------------------------

@pytest.mark.ktls
def test_probe_rekey_claim_matches_the_kernel_counters():
    """Linux 6.14 added TLS 1.3 rekey in both directions, and with it the TlsTxRekeyOk and
    TlsRxRekeyOk counters: a fresh probe that says "supported" must have moved both."""
    before = kernel.tls_stat()
    report = kernel.probe(refresh=True)
    after = kernel.tls_stat()
    if release_tuple() >= (6, 14):
        assert report.rekey_supported is True, report.rekey_detail
        assert after["TlsTxRekeyOk"] - before["TlsTxRekeyOk"] == 1
        assert after["TlsRxRekeyOk"] - before["TlsRxRekeyOk"] == 1
        assert after["TlsRxRekeyReceived"] - before["TlsRxRekeyReceived"] == 1
        assert after["TlsTxRekeyError"] == before["TlsTxRekeyError"]
        assert after["TlsRxRekeyError"] == before["TlsRxRekeyError"]
        assert "TX" in report.rekey_detail and "RX" in report.rekey_detail and "verified" in report.rekey_detail
    else:
        assert report.rekey_supported is False
        assert "TlsRxRekeyOk" not in after and "TlsTxRekeyOk" not in after
        # Both directions were tried, and the detail says which were refused and why.
        assert "TX (EBUSY)" in report.rekey_detail and "RX (EBUSY)" in report.rekey_detail
        assert "6.14" in report.rekey_detail and os.uname().release in report.rekey_detail
