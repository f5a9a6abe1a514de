"""Shared fixtures, the ``ktls`` marker, and the per-kernel count of kTLS tests that ran.

kTLS tests skip with the probe's reason on a kernel without tls, but under scripts/ktls-vm
(KTLS_REQUIRE=1) they fail instead: a kTLS test that only skips proves nothing.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct

import pytest

from ktls_ossl import kernel

from .certs import CertificateAuthority
from .timing import ENV as TIME_SCALE_ENV
from .timing import scaled, time_scale

_RESULTS: dict[str, tuple[str, bool]] = {}  # nodeid -> (outcome, is a kTLS test)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ktls: needs kernel TLS; skipped with the probe's reason where the kernel lacks it, "
        "a failure under scripts/ktls-vm (KTLS_REQUIRE=1)",
    )
    config.addinivalue_line(
        "markers",
        "ktls_or_fallback: runs everywhere; the kernel carries the connection where it can "
        "(counted as a kTLS test there), OpenSSL elsewhere (and the test checks the reason)",
    )


def pytest_report_header(config):
    source = f"from {TIME_SCALE_ENV}" if os.environ.get(TIME_SCALE_ENV) else "measured by tests/timing.py"
    return f"time scale: {time_scale():.1f} ({source}); timeouts are multiplied by it"


# --- what the kernel can do, from its version (never from the probe under test) -----------------------

REKEY_MIN_RELEASE = (6, 14)  # TLS 1.3 rekey (TLS_TX/TLS_RX set again after a KeyUpdate)
REKEY_COUNTERS = ("TlsTxRekeyOk", "TlsRxRekeyOk")


def kernel_release(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of ``release``), e.g. (6, 1) for "6.1.176"."""
    text = os.uname().release if release is None else release
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"unrecognised kernel release {text!r}")
    return int(match.group(1)), int(match.group(2))


def kernel_can_rekey(release: str | None = None) -> bool:
    """Whether this kernel's TLS accepts TLS 1.3 rekeying: Linux 6.14 and later (6.1 refuses, 7.2
    rekeys). Tests pin their rekey expectation to this, not to kernel.probe().rekey_supported, so
    that a probe regression cannot turn a rekey test into a "refused" test that passes."""
    return kernel_release(release) >= REKEY_MIN_RELEASE


class RekeyCounters:
    """The kernel's own rekey counters (/proc/net/tls_stat TlsTxRekeyOk, TlsRxRekeyOk) since this
    object was made. A kernel without rekey has no such lines: its deltas are 0."""

    def __init__(self):
        self.before = kernel.tls_stat()

    def delta(self) -> tuple[int, int]:
        """(TX rekeys, RX rekeys) the kernel counted since the start."""
        after = kernel.tls_stat()
        tx, rx = (after.get(name, 0) - self.before.get(name, 0) for name in REKEY_COUNTERS)
        return tx, rx

    def check(self, tx: int, rx: int) -> None:
        """On a kernel that rekeys, exactly ``tx`` TX and ``rx`` RX rekeys were counted; on one
        that does not, none, whatever was asked."""
        got = self.delta()
        if not kernel_can_rekey():
            assert got == (0, 0), f"{os.uname().release} cannot rekey, yet tls_stat counted {got}"
        else:
            assert got == (tx, rx), f"tls_stat counted (TX, RX) rekeys {got}, expected {(tx, rx)}"


def _is_ktls_test(keywords) -> bool:
    if "ktls" in keywords:
        return True
    return "ktls_or_fallback" in keywords and kernel.probe().ulp_available


def ktls_required() -> bool:
    return os.environ.get("KTLS_REQUIRE") == "1"


@pytest.fixture(autouse=True)
def _ktls_gate(request):
    if request.node.get_closest_marker("ktls") is None:
        return
    report = kernel.probe()
    if not report.ulp_available:
        reason = f"kernel TLS unavailable on {report.kernel_release}: {report.ulp_message}"
        if ktls_required():
            pytest.fail(reason)
        pytest.skip(reason)


def pytest_runtest_logreport(report):
    """One outcome per test: its setup's when that did not pass, else its call's; an error in any
    phase makes it failed."""
    previous = _RESULTS.get(report.nodeid, (None, False))[0]
    if report.failed:
        outcome = "failed"
    elif report.when == "call" or (report.when == "setup" and report.skipped):
        outcome = report.outcome
    else:
        return
    if previous != "failed":
        _RESULTS[report.nodeid] = (outcome, _is_ktls_test(report.keywords))


def _outcome_counts(ktls_only: bool) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome, is_ktls in _RESULTS.values():
        if is_ktls or not ktls_only:
            counts[outcome] += 1
    return counts


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("KTLS_SUMMARY_FILE")
    if not path:
        return
    probe = kernel.probe()
    with open(path, "w", encoding="utf-8") as out:
        json.dump({
            "kernel": os.environ.get("KTLS_VM_KERNEL", "host"),
            "release": probe.kernel_release,
            "ulp_available": probe.ulp_available,
            "time_scale": time_scale(),
            "outcomes": {"all": _outcome_counts(False), "ktls": _outcome_counts(True)},
            "exitstatus": int(exitstatus),
        }, out)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return CertificateAuthority(str(tmp_path_factory.mktemp("pki")), kind="ecdsa")


@pytest.fixture(scope="session")
def rsa_pki(tmp_path_factory):
    return CertificateAuthority(str(tmp_path_factory.mktemp("pki-rsa")), kind="rsa", name="ktls_ossl RSA test CA")


@pytest.fixture(scope="session")
def server_cert(pki):
    return pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])


def loopback_pair(timeout: float | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1: (client, server).

    Both are in blocking mode (so raw syscalls on the fd block, as they would for an application),
    with SO_RCVTIMEO/SO_SNDTIMEO so that a broken test ends in EAGAIN instead of hanging (after
    ``timeout`` seconds; by default 10 s on an idle machine, scaled to this one).
    """
    if timeout is None:
        timeout = scaled(10.0)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(timeout)
        client = socket.create_connection(listener.getsockname(), timeout=timeout)
        server, _ = listener.accept()
    limit = struct.pack("@ll", int(timeout), int((timeout % 1) * 1e6))
    for sock in (client, server):
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    return client, server


@pytest.fixture
def sendfile_calls(monkeypatch):
    """Every os.sendfile call in this process: (out fd, bytes sent)."""
    calls = []
    real = os.sendfile

    def spy(out_fd, in_fd, offset, count, *args, **kwargs):
        sent = real(out_fd, in_fd, offset, count, *args, **kwargs)
        calls.append((out_fd, sent))
        return sent

    monkeypatch.setattr(os, "sendfile", spy)
    return calls


@pytest.fixture
def tcp_pair():
    client, server = loopback_pair()
    yield client, server
    client.close()
    server.close()
