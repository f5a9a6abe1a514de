"""Issue 12: what a TLS conformance suite checks, under kTLS as in OpenSSL.

A conformance suite plays scripted peers that send malformed (or merely unusual) records and checks
our side's exact answer: the alert, and how the connection ends. Once the kernel owns the record
layer, the record-layer errors are the kernel's to find, and the answer must still be OpenSSL's.
Each case of tests/security/conformance_cases.py runs twice on the same input, with
Policy.USERSPACE (plain OpenSSL: the oracle) and with Policy.AFTER_FINISHED (the kernel carries
the record layer where it can), over the kernel's four ciphers, and the outcomes must be equal:

  * the first alert the peer received (level and description), and how the connection ended for
    it: "eof" (a FIN) or "reset" (an RST, which can cost the peer what it had not read yet);
  * with our server in TLS 1.3, the NewSessionTickets the peer got before that alert;
  * what our side delivered, whether its data ended with close_notify, and the exception it
    raised: its ``.reason``, and its type as code written for CPython's ssl sees it (the nearest
    class from ``ssl`` or the builtins: KTLSRecordError is the SSLError OpenSSL raises; the exact
    class is in the failure message), plus what a case notes (the client certificate our server
    saw);
  * whether the peer's script completed (post-handshake authentication verified, for example).

Two differences are allowed, each with its reason: a legitimate KeyUpdate on a kernel that cannot
rekey (before Linux 6.14, pinned to the kernel's release) ends the connection with
KTLSRekeyUnsupportedError, as in test_framing.py; and the entries of KERNEL_REFUSES_SEND below.
"""
from __future__ import annotations

import pytest

from ktls_ossl import kernel
from ktls_ossl.handshake import Policy
from ktls_ossl.records import HandshakeType

from ..conftest import kernel_can_rekey
from ..timing import scaled
from . import harness
from .cases import FORGED, TLS13
from .conformance_cases import CONFORMANCE, variant_id, variants
from .harness import run_case

# Where the kernel cannot let through what OpenSSL sends in user space, the expected outcome under
# kTLS differs from the oracle's; each entry names the variant (as its test id), the outcome fields
# that differ and the kernel code path that decides them. Empty: today every case must answer
# exactly as OpenSSL does.
KERNEL_REFUSES_SEND: dict[str, dict] = {}

# A kernel that cannot rekey ends the connection at a legitimate KeyUpdate and says why (what else
# happens then is its own business: OpenSSL has no such case).
REKEY_REFUSED = {"error": "KTLSRekeyUnsupportedError", "reason": "KEY_UPDATE_UNSUPPORTED"}

# Our socket timeout. A read of ours waits at most for one round trip with the peer (most cases send
# all their input at once), so a read that waits longer waits for nothing (a record the kernel cannot
# frame yet, for example); shorter than harness.IO_TIMEOUT so that such a case fails in seconds, yet
# hundreds of times what a handshake takes here (scaled to the machine as every harness timeout).
OUR_TIMEOUT = scaled(1.5)

VARIANTS = list(variants())
PARAMS = [pytest.param(case, role, version, cipher, id=variant_id(case, role, version, cipher))
          for case, role, version, cipher in VARIANTS]


@pytest.fixture(scope="module")
def client_cert(pki):
    return pki.issue("client.example", client=True)


@pytest.fixture
def run(server_cert, pki, client_cert):
    """run(case, our_role, version, cipher, policy) -> harness.Measurement."""
    def run(case, our_role, version, cipher, policy):
        def setup(context):
            if case.setup is not None:
                case.setup(context, client_cert, pki.ca_path)
        peer_options = None
        if case.client_certificate:
            peer_options = {"cert": client_cert.cert, "key": client_cert.key, "post_handshake_auth": True}
        return run_case(case.as_case(), our_role, version, policy, server_cert, pki.ca_path, cipher=cipher,
                        ours=case.ours, setup=setup, peer_options=peer_options, timeout=OUR_TIMEOUT)
    return run


def catchable(exc: BaseException | None) -> str | None:
    """The exception's nearest class that an application knows without ktls_ossl (from ``ssl`` or
    the builtins): the library raises its own subclasses of ssl.SSLError for what the kernel found
    (KTLSRecordError for a record the kernel refused), which code written for CPython's ssl catches
    as the SSLError OpenSSL raises. The exact class is in the failure message."""
    if exc is None:
        return None
    for cls in type(exc).__mro__:
        if cls.__module__ in ("ssl", "builtins", "_ssl"):
            return cls.__name__
    return type(exc).__name__


def outcome(m) -> dict:
    """What must be the same under kTLS as in OpenSSL."""
    observed = m.observed
    result = {
        "error": catchable(m.error),
        "reason": getattr(m.error, "reason", None),
        "delivered": m.delivered,
        "orderly_eof": m.orderly_eof,
        "alert": observed.first_alert if observed else "(peer did not report)",
        "end": observed.end if observed else "(peer did not report)",
        "peer error": None if m.peer_error is None else f"{type(m.peer_error).__name__}: {m.peer_error}",
        **m.extra,
    }
    if m.our_role == "server" and m.version == TLS13:
        result["tickets before the alert"] = (
            observed.handshake_before_alert(HandshakeType.new_session_ticket) if observed else None)
    return result


def _short(value) -> str:
    if isinstance(value, bytes) and len(value) > 48:
        return f"<{len(value)} bytes {value[:24]!r}...>"
    return repr(value)


def differences(expected: dict, got: dict) -> str:
    keys = [key for key in expected if expected[key] != got.get(key)]
    keys += [key for key in got if key not in expected]
    return "; ".join(f"{key}: userspace={_short(expected.get(key))} ktls={_short(got.get(key))}" for key in keys)


def test_case_names_are_unique():
    names = [case.name for case in CONFORMANCE]
    assert len(names) == len(set(names))
    assert set(KERNEL_REFUSES_SEND) <= {variant_id(*variant) for variant in VARIANTS}


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("case, our_role, version, cipher", PARAMS)
def test_conformance_as_openssl(run, case, our_role, version, cipher):
    name = variant_id(case, our_role, version, cipher)
    ktls = kernel.probe().ulp_available
    oracle = run(case, our_role, version, cipher, Policy.USERSPACE)
    m = run(case, our_role, version, cipher, Policy.AFTER_FINISHED)
    assert oracle.status is not None and not oracle.status.rx
    if ktls:
        assert m.status is not None and m.status.rx, f"the kernel should carry RX here: {m.status}"
    for measured in (oracle, m):
        assert FORGED not in measured.delivered
        assert not measured.leaked_fds and measured.closed
        assert measured.failed_in != "handshake", harness.describe_error(measured.error)
    expected = outcome(oracle)
    got = outcome(m)
    # The oracle itself, which also shows that the measurement sees what it compares: legal input
    # goes through; illegal input is answered with an alert; our TLS 1.3 server's tickets arrive.
    if case.legal:
        assert expected["error"] is None and expected["orderly_eof"], harness.describe_error(oracle.error)
    else:
        assert expected["error"] is not None and expected["alert"] is not None, expected
    if "tickets before the alert" in expected:
        assert expected["tickets before the alert"] >= 1, expected
    if ktls and case.needs_rekey and not kernel_can_rekey():
        assert expected["error"] is None
        expected = REKEY_REFUSED
        got = {"error": type(m.error).__name__ if m.error else None, "reason": got["reason"]}
    elif ktls and name in KERNEL_REFUSES_SEND:
        expected = {**expected, **KERNEL_REFUSES_SEND[name]}
    assert got == expected, (
        f"DIFFERS {name}: {differences(expected, got)}\n"
        f"under kTLS: {harness.describe_error(m.error)}; OpenSSL in user space: "
        f"{harness.describe_error(oracle.error)}\nkTLS events: {[what for _, what in m.events][-8:]}")
