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

Allowed differences, each with its reason: a record the kernel refused raises KTLSRecordError
with the reason it always had for the kernel's errno (KERNEL_REASONS; OpenSSL's reason names the
check it made, which the errno does not tell); a legitimate KeyUpdate on a kernel that cannot
rekey (before Linux 6.14, pinned to the kernel's release) ends the connection with
KTLSRekeyUnsupportedError, as in test_framing.py; and the entries of KERNEL_DIFFERS below.
"""
from __future__ import annotations

import errno

import pytest

from ktls_ossl import KTLSRecordError, kernel
from ktls_ossl.keys import KernelCipher
from ktls_ossl.records import HandshakeType

from ..conftest import kernel_can_rekey
from ..timing import scaled
from . import harness
from .cases import BEFORE, TLS12, TLS13
from .conformance_cases import CONFORMANCE, variant_id, variants
from .harness import run_case

# The reason of KTLSRecordError per errno of the kernel's refusal (the library's contract since the
# kernel read path exists; docs/SECURITY.md).
KERNEL_REASONS = {errno.EBADMSG: "DECRYPTION_FAILED_OR_BAD_RECORD_MAC", errno.EMSGSIZE: "ENCRYPTED_LENGTH_TOO_LONG",
                  errno.EINVAL: "WRONG_VERSION_NUMBER"}

# Where the kernel's refusal does not say what OpenSSL looks at, the outcome under kTLS differs
# from the oracle's: case name -> (versions, ciphers or None for all, the outcome fields that
# differ). docs/SECURITY.md ("Alerts under kTLS") names the kernel code path of each.
_TLS12_EXPLICIT_NONCE = (KernelCipher.AES_GCM_128, KernelCipher.AES_GCM_256, KernelCipher.AES_CCM_128)
_REFUSED_AS_SHORT = {"error": "SSLError", "reason": KERNEL_REASONS[errno.EBADMSG], "alert": "fatal bad_record_mac"}
KERNEL_DIFFERS = {
    # TLS 1.3: the kernel neither checks nor authenticates the outer content type (tls_rx_msg_size,
    # tls_make_aad): a 1-byte plaintext record is refused for its length (bad_record_mac), an
    # authentic record of another outer type fails its tag; OpenSSL refuses the type itself.
    ("ccs_plaintext_after_finished", TLS13, None): _REFUSED_AS_SHORT,
    ("record_type_99", TLS13, None): _REFUSED_AS_SHORT,
    # TLS 1.2 AES-GCM/CCM: the kernel frames a record only once the header and the 8-byte explicit
    # nonce are there (tls_rx_msg_size: prepend_size), so a 6-byte record waits for more bytes: our
    # read times out, and close() with the record unread sends an RST.
    ("ccs_plaintext_after_finished", TLS12, _TLS12_EXPLICIT_NONCE): {
        "error": "TimeoutError", "reason": None, "alert": None, "end": "reset"},
    # RFC 8446 5.4: an inner plaintext over 2^14 + 1 bytes is a record_overflow. The kernel says so
    # (EMSGSIZE, tls_rx_msg_size); OpenSSL 3.0 accepts up to 2^14 bytes of content whatever the padding.
    ("tls13_inner_plaintext_padding_over", TLS13, None): {
        "error": "SSLError", "reason": KERNEL_REASONS[errno.EMSGSIZE], "alert": "fatal record_overflow",
        "delivered": BEFORE, "orderly_eof": False, "end": "eof"},
}


def kernel_differs(case, version, cipher) -> dict | None:
    for (name, versions, ciphers), outcome in KERNEL_DIFFERS.items():
        if name == case.name and version == versions and (ciphers is None or cipher in ciphers):
            return outcome
    return None

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
    assert {name for name, _, _ in KERNEL_DIFFERS} <= set(names)


@pytest.mark.ktls_or_fallback
@pytest.mark.parametrize("case, our_role, version, cipher", PARAMS)
def test_conformance_as_openssl(run, case, our_role, version, cipher):
    name = variant_id(case, our_role, version, cipher)
    ktls = kernel.probe().ulp_available
    oracle, m = harness.run_against_oracle(lambda policy: run(case, our_role, version, cipher, policy))
    for measured in (oracle, m):
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
    else:
        if ktls and kernel_differs(case, version, cipher) is not None:
            expected = {**expected, **kernel_differs(case, version, cipher)}
        if isinstance(m.error, KTLSRecordError):
            assert m.error.reason == KERNEL_REASONS[m.error.errno], m.error
            expected["reason"] = got["reason"]
    assert got == expected, (
        f"DIFFERS {name}: {differences(expected, got)}\n"
        f"under kTLS: {harness.describe_error(m.error)}; OpenSSL in user space: "
        f"{harness.describe_error(oracle.error)}\nkTLS events: {[what for _, what in m.events][-8:]}")
