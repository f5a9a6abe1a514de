"""ktls_ossl.context.SSLContext against CPython's ssl.SSLContext, side by side on the same inputs.

Most tests run one action on a CPython context and on ours and compare the outcome: the value
returned, or the exception (type, args, library, reason, errno, filename) and the warnings issued.
The only allowed difference is the location tag at the end of OpenSSL error messages:
"(_ssl.c:NNNN)" in CPython, "(ktls_ossl)" here.

A few tests run a real handshake between two OpenSSL SSL objects made from our contexts and joined
by memory BIOs (ALPN, keylog, verification, session id context). Behaviour that needs KTLSSocket
(the SNI callback, which the handshake layer runs, and anything on a live socket) is tested with
the socket layer.
"""
from __future__ import annotations

import _ssl
import gc
import re
import ssl
import threading
import warnings
import weakref

import pytest

from ktls_ossl import context as context_module
from ktls_ossl import errors
from ktls_ossl._ossl import ffi, lib
from ktls_ossl.context import SSLContext, create_default_context, select_alpn_protocol
from ktls_ossl.handshake import Policy

from .tlshelpers import handshake_errors, same_error

# All protocols this interpreter's ssl accepts.
PROTOCOLS = [p for p in (ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS,
                         getattr(ssl, "PROTOCOL_TLSv1", None), getattr(ssl, "PROTOCOL_TLSv1_1", None),
                         getattr(ssl, "PROTOCOL_TLSv1_2", None)) if p is not None]
PROTOCOL_IDS = [ssl._SSLMethod(p).name for p in PROTOCOLS]

# Every property a context reports; the defaults must be equal, in value and type.
PROPERTIES = [
    "options", "verify_mode", "check_hostname", "verify_flags", "minimum_version", "maximum_version",
    "num_tickets", "security_level", "post_handshake_auth", "hostname_checks_common_name",
    "_host_flags", "protocol", "keylog_filename", "sni_callback",
]

LOCATION = re.compile(r"\((?:_ssl\.c:\d+|ktls_ossl)\)")


def new_context(cls, protocol):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the fixed-version protocols warn
        return cls(protocol)


def describe(value):
    """A comparable form of a returned value or a raised exception."""
    if isinstance(value, BaseException):
        args = tuple(LOCATION.sub("(LOCATION)", a) if isinstance(a, str) else a for a in value.args)
        return ("raised", type(value), args, getattr(value, "library", None),
                getattr(value, "reason", None), getattr(value, "errno", None),
                getattr(value, "filename", None))
    return ("returned", type(value), value)


def outcome(action, *args):
    """(what action(*args) returned or raised, the warnings it issued)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = describe(action(*args))
        except Exception as exc:  # noqa: BLE001 - the exception is what is compared
            result = describe(exc)
    return result, [(w.category, str(w.message)) for w in caught]


def on_both(protocol, action):
    """Run action(context) on a fresh CPython context and a fresh ktls_ossl one; both outcomes."""
    return (outcome(action, new_context(ssl.SSLContext, protocol)),
            outcome(action, new_context(SSLContext, protocol)))


def assert_same(protocol, action):
    cpython, ours = on_both(protocol, action)
    assert ours == cpython
    return ours


@pytest.fixture(autouse=True)
def error_queue_stays_empty():
    """No test may leave an OpenSSL error behind: it would surface in an unrelated later call."""
    lib.ERR_clear_error()
    yield
    assert lib.ERR_peek_error() == 0, "an OpenSSL error was left in the queue"


# --- construction and defaults ------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS, ids=PROTOCOL_IDS)
def test_defaults_equal_cpython(protocol):
    cpython, ours = new_context(ssl.SSLContext, protocol), new_context(SSLContext, protocol)
    for name in PROPERTIES:
        theirs, mine = getattr(cpython, name), getattr(ours, name)
        assert (type(mine), mine) == (type(theirs), theirs), name
    assert ours.get_ciphers() == cpython.get_ciphers()
    assert ours.session_stats() == cpython.session_stats()
    assert ours.cert_store_stats() == cpython.cert_store_stats()
    assert ours.get_ca_certs() == cpython.get_ca_certs() == []


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=PROTOCOL_IDS)
def test_ssl_ctx_carries_cpythons_hidden_settings(protocol):
    """What CPython sets on its SSL_CTX but cannot be read back through ssl.SSLContext."""
    ctx = new_context(SSLContext, protocol)
    params = lib.SSL_CTX_get0_param(ctx._ssl_ctx)
    assert lib.X509_VERIFY_PARAM_get_hostflags(params) == lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
    assert lib.X509_VERIFY_PARAM_get_flags(params) == lib.X509_V_FLAG_TRUSTED_FIRST
    modes = lib.SSL_CTX_get_mode(ctx._ssl_ctx)
    for mode in (lib.SSL_MODE_RELEASE_BUFFERS, lib.SSL_MODE_AUTO_RETRY, lib.SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER):
        assert modes & mode
    # The fixed-version protocols are pinned to their one version.
    version = context_module._FIXED_VERSION_PROTOCOLS.get(protocol)
    if version is not None:
        assert lib.SSL_CTX_get_min_proto_version(ctx._ssl_ctx) == version
        assert lib.SSL_CTX_get_max_proto_version(ctx._ssl_ctx) == version
    else:
        assert lib.SSL_CTX_get_min_proto_version(ctx._ssl_ctx) == lib.TLS1_2_VERSION


def test_is_an_ssl_context_with_its_own_ssl_ctx():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert isinstance(ctx, ssl.SSLContext)
    assert ffi.typeof(ctx._ssl_ctx) is ffi.typeof("SSL_CTX *")
    # Callbacks find the Python context from the SSL_CTX through its app data.
    assert ffi.from_handle(lib.SSL_CTX_get_app_data(ctx._ssl_ctx)) is ctx
    # Settings go to our SSL_CTX; CPython's hidden context keeps its defaults.
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    assert len(ctx.get_ciphers()) == 3 + 1  # three TLS 1.3 suites and the one TLS 1.2 suite
    hidden_default = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).get_ciphers()
    assert super(ssl.SSLContext, ctx).get_ciphers() == hidden_default


def test_context_and_its_ssl_ctx_are_freed():
    ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["h2"])
    ctx.sni_callback = lambda *args: None
    alive = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("protocol", [None, ssl.PROTOCOL_TLS, getattr(ssl, "PROTOCOL_TLSv1_2", None),
                                      ssl.PROTOCOL_TLS_CLIENT, 42, "x"],
                         ids=["none", "tls", "tlsv1_2", "tls_client", "invalid", "str"])
def test_constructor_warnings_and_errors_equal_cpython(protocol):
    def construct(cls):
        return type(cls() if protocol is None else cls(protocol)).__mro__[-3]  # ssl.SSLContext either way

    assert outcome(construct, SSLContext) == outcome(construct, ssl.SSLContext)


def test_constructor_deprecation_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SSLContext()
    assert [str(w.message) for w in caught] == [
        "ssl.SSLContext() without protocol argument is deprecated.", "ssl.PROTOCOL_TLS is deprecated"]
    assert {w.filename for w in caught} == {__file__}


# --- properties ---------------------------------------------------------------------------------

def set_and_get(name, value):
    def action(ctx):
        setattr(ctx, name, value)
        return getattr(ctx, name)
    return action


PROPERTY_CASES = [
    # (protocol, property, value)
    (ssl.PROTOCOL_TLS_CLIENT, "verify_mode", ssl.CERT_NONE),  # check_hostname is on
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", ssl.CERT_OPTIONAL),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", True),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", 5),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", -1),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", "x"),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", 1.0),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", 2 ** 40),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", -2 ** 40),
    (ssl.PROTOCOL_TLS_SERVER, "verify_mode", 2 ** 70),
    (ssl.PROTOCOL_TLS_SERVER, "check_hostname", "yes"),
    (ssl.PROTOCOL_TLS_CLIENT, "check_hostname", None),
    (ssl.PROTOCOL_TLS_CLIENT, "options", ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION),
    (ssl.PROTOCOL_TLS_CLIENT, "options", ssl.OP_ALL | ssl.OP_NO_TLSv1_1),  # deprecated bit: warns
    (ssl.PROTOCOL_TLS_CLIENT, "options", 0),
    (ssl.PROTOCOL_TLS_CLIENT, "options", -1),
    (ssl.PROTOCOL_TLS_CLIENT, "options", True),
    (ssl.PROTOCOL_TLS_CLIENT, "options", 2 ** 64 - 1),
    (ssl.PROTOCOL_TLS_CLIENT, "options", "x"),
    (ssl.PROTOCOL_TLS_CLIENT, "options", 1.0),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", 0),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", -1),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", 2 ** 70 + 5),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", True),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", "x"),
    (ssl.PROTOCOL_TLS_CLIENT, "verify_flags", 1.0),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", ssl.TLSVersion.TLSv1_3),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", ssl.TLSVersion.TLSv1),  # deprecated: warns
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", ssl.TLSVersion.TLSv1_1),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", ssl.TLSVersion.SSLv3),  # also clears OP_NO_SSLv3
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", ssl.TLSVersion.MINIMUM_SUPPORTED),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", ssl.TLSVersion.MAXIMUM_SUPPORTED),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", 0x303),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", 0x999),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", -5),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", 2 ** 40),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", 2 ** 70),
    (ssl.PROTOCOL_TLS_CLIENT, "minimum_version", "x"),
    (ssl.PROTOCOL_TLS_SERVER, "maximum_version", ssl.TLSVersion.TLSv1_2),
    (ssl.PROTOCOL_TLS_SERVER, "maximum_version", ssl.TLSVersion.MINIMUM_SUPPORTED),
    (ssl.PROTOCOL_TLS_SERVER, "maximum_version", ssl.TLSVersion.MAXIMUM_SUPPORTED),
    (ssl.PROTOCOL_TLS, "maximum_version", ssl.TLSVersion.TLSv1_3),
    (getattr(ssl, "PROTOCOL_TLSv1_2", ssl.PROTOCOL_TLS), "minimum_version", ssl.TLSVersion.TLSv1_2),
    (getattr(ssl, "PROTOCOL_TLSv1_2", ssl.PROTOCOL_TLS), "maximum_version", 0x999),
    (ssl.PROTOCOL_TLS_SERVER, "num_tickets", 5),
    (ssl.PROTOCOL_TLS_SERVER, "num_tickets", 0),
    (ssl.PROTOCOL_TLS_SERVER, "num_tickets", True),
    (ssl.PROTOCOL_TLS_SERVER, "num_tickets", -1),
    (ssl.PROTOCOL_TLS_SERVER, "num_tickets", 2 ** 70),
    (ssl.PROTOCOL_TLS_SERVER, "num_tickets", "x"),
    (ssl.PROTOCOL_TLS_CLIENT, "num_tickets", 1),  # clients cannot
    (ssl.PROTOCOL_TLS_CLIENT, "num_tickets", -1),  # ... but the sign is checked first
    (ssl.PROTOCOL_TLS, "num_tickets", 1),
    (ssl.PROTOCOL_TLS_SERVER, "security_level", 1),  # read-only
    (ssl.PROTOCOL_TLS_SERVER, "post_handshake_auth", "x"),
    (ssl.PROTOCOL_TLS_CLIENT, "post_handshake_auth", 0),
    (ssl.PROTOCOL_TLS_CLIENT, "hostname_checks_common_name", False),
    (ssl.PROTOCOL_TLS_CLIENT, "hostname_checks_common_name", None),
    (ssl.PROTOCOL_TLS_CLIENT, "_host_flags", -1),
    (ssl.PROTOCOL_TLS_CLIENT, "_host_flags", 2 ** 32 + 7),
    (ssl.PROTOCOL_TLS_CLIENT, "_host_flags", "x"),
    (ssl.PROTOCOL_TLS_CLIENT, "protocol", ssl.PROTOCOL_TLS),  # read-only
    (ssl.PROTOCOL_TLS_SERVER, "sni_callback", print),
    (ssl.PROTOCOL_TLS_SERVER, "sni_callback", None),
    (ssl.PROTOCOL_TLS_SERVER, "sni_callback", 1),
    (ssl.PROTOCOL_TLS_CLIENT, "sni_callback", print),
    (ssl.PROTOCOL_TLS_CLIENT, "sni_callback", None),
    (ssl.PROTOCOL_TLS, "sni_callback", print),
    (ssl.PROTOCOL_TLS_SERVER, "keylog_filename", 1),
    (ssl.PROTOCOL_TLS_SERVER, "keylog_filename", "/nonexistent/dir/keylog"),
    (ssl.PROTOCOL_TLS_SERVER, "keylog_filename", "/"),
]


@pytest.mark.parametrize("protocol,name,value", PROPERTY_CASES,
                         ids=[f"{ssl._SSLMethod(p).name}-{n}={v!r}" for p, n, v in PROPERTY_CASES])
def test_property_set_equals_cpython(protocol, name, value):
    assert_same(protocol, set_and_get(name, value))


def test_property_set_changes_only_what_cpython_changes():
    """After each assignment, every property reads the same as CPython's."""
    for protocol, name, value in PROPERTY_CASES:
        def action(ctx):
            try:
                setattr(ctx, name, value)
            except Exception:  # noqa: BLE001 - the exception itself is compared elsewhere
                pass
            return tuple((type(getattr(ctx, p)), getattr(ctx, p)) for p in PROPERTIES)

        (cpython, _), (ours, _) = on_both(protocol, action)
        assert ours == cpython, (protocol, name, value)


def test_check_hostname_upgrades_verify_mode_like_cpython():
    def action(ctx):
        modes = [ctx.verify_mode]
        ctx.check_hostname = True  # CERT_NONE -> CERT_REQUIRED
        modes.append(ctx.verify_mode)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.check_hostname = True  # CERT_OPTIONAL stays
        modes.append(ctx.verify_mode)
        return modes

    result = assert_same(ssl.PROTOCOL_TLS_SERVER, action)
    assert result[0][2] == [ssl.CERT_NONE, ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL]


@pytest.mark.parametrize("name", ["post_handshake_auth", "security_level", "options", "verify_mode",
                                  "verify_flags", "minimum_version", "protocol"])
def test_property_delete_equals_cpython(name):
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: delattr(ctx, name))


def test_deprecation_warnings_point_at_the_assignment():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx.options |= ssl.OP_NO_TLSv1
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    assert [str(w.message) for w in caught] == [
        "ssl.OP_NO_SSL*/ssl.OP_NO_TLS* options are deprecated", "ssl.TLSVersion.TLSv1_1 is deprecated"]
    assert {w.filename for w in caught} == {__file__}


def test_options_are_those_of_the_ssl_ctx():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options |= ssl.OP_NO_TICKET
    assert lib.SSL_CTX_get_options(ctx._ssl_ctx) & lib.SSL_OP_NO_TICKET
    ctx.options &= ~ssl.OP_NO_TICKET
    assert not lib.SSL_CTX_get_options(ctx._ssl_ctx) & lib.SSL_OP_NO_TICKET


def test_verify_mode_is_that_of_the_ssl_ctx():
    ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    assert lib.SSL_CTX_get_verify_mode(ctx._ssl_ctx) == lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT


def test_hostname_checks_common_name_reaches_the_verify_params():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.hostname_checks_common_name = False
    params = lib.SSL_CTX_get0_param(ctx._ssl_ctx)
    assert lib.X509_VERIFY_PARAM_get_hostflags(params) & lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT


# --- ktls_ossl's own settings ------------------------------------------------------------------

def test_ktls_policy():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.ktls_policy is Policy.AFTER_FINISHED
    ctx.ktls_policy = Policy.USERSPACE
    assert ctx.ktls_policy is Policy.USERSPACE
    ctx.ktls_policy = "after-ccs"
    assert ctx.ktls_policy is Policy.AFTER_CCS
    with pytest.raises(ValueError):
        ctx.ktls_policy = "sometimes"
    with pytest.raises(TypeError):
        ctx.ktls_policy = 1
    assert ctx.ktls_policy is Policy.AFTER_CCS


def test_require_ktls_takes_only_bools():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.require_ktls is False
    ctx.require_ktls = True
    assert ctx.require_ktls is True
    with pytest.raises(TypeError):
        ctx.require_ktls = "no"  # truthy: must not switch anything on
    assert ctx.require_ktls is True


def test_control_record_callback():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.control_record_callback is None
    ctx.control_record_callback = print
    assert ctx.control_record_callback is print
    with pytest.raises(TypeError):
        ctx.control_record_callback = 42
    ctx.control_record_callback = None
    assert ctx.control_record_callback is None


def test_set_ciphersuites_restricts_the_tls13_suites():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphersuites("TLS_CHACHA20_POLY1305_SHA256")
    tls13 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]
    assert tls13 == ["TLS_CHACHA20_POLY1305_SHA256"]
    # The TLS 1.2 list is untouched.
    tls12_default = [c for c in SSLContext(ssl.PROTOCOL_TLS_CLIENT).get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert [c for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"] == tls12_default


def test_set_ciphersuites_rejects_garbage():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(ssl.SSLError) as info:
        ctx.set_ciphersuites("NOT_A_SUITE")
    assert (info.value.library, info.value.reason) == ("SSL", "NO_CIPHER_MATCH")
    assert str(info.value) == "[SSL: NO_CIPHER_MATCH] no cipher match (ktls_ossl)"
    with pytest.raises(TypeError):
        ctx.set_ciphersuites(b"TLS_AES_128_GCM_SHA256")
    assert len([c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]) == 3  # unchanged


# --- ciphers, curves, DH -------------------------------------------------------------------------

@pytest.mark.parametrize("cipherlist", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ALL:@SECLEVEL=0", "HIGH:!aNULL",
                                        "AESGCM:CHACHA20", "garbage", "", "AL\0L", b"ALL", 1])
def test_set_ciphers_then_get_ciphers_equal_cpython(cipherlist):
    def action(ctx):
        ctx.set_ciphers(cipherlist)
        return ctx.get_ciphers(), ctx.security_level

    result = assert_same(ssl.PROTOCOL_TLS_CLIENT, action)
    if cipherlist == "garbage":
        assert result[0][0] == "raised" and result[0][2] == ("No cipher can be selected.",)


@pytest.mark.parametrize("curve", ["prime256v1", "secp384r1", "X25519", b"prime256v1", "secp256r1",
                                   "SHA256", "a\0b", 1])
def test_set_ecdh_curve_equals_cpython(curve):
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.set_ecdh_curve(curve))


@pytest.fixture(scope="module")
def dh_files(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dh

    def pem(prime: int) -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cryptography deprecates finite-field DH
            params = dh.DHParameterNumbers(prime, 2).parameters()
        return params.parameter_bytes(serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3)

    directory = tmp_path_factory.mktemp("dh")
    # The RFC 2409 / RFC 3526 MODP groups: known safe primes, no slow generation step.
    # Group 2 (1024 bits) is below security level 2, so OpenSSL rejects it as too small.
    prefix = ("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
              "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
              "EE386BFB5A899FA5AE9F24117C4B1FE649286651")
    group2 = int(prefix + "ECE65381FFFFFFFFFFFFFFFF", 16)
    group14 = int(
        prefix + "ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
        "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
        "15728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
    files = {
        "dh2048": pem(group14),
        "dh1024": pem(group2),
        "not-pem": b"hello\n",
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        path = directory / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    paths["missing"] = str(directory / "missing.pem")
    paths["directory"] = str(directory)
    return paths


@pytest.mark.parametrize("name", ["dh2048", "dh1024", "not-pem", "empty", "missing", "directory"])
def test_load_dh_params_equals_cpython(dh_files, name):
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.load_dh_params(dh_files[name]))


def test_load_dh_params_type_error_equals_cpython():
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.load_dh_params(1))


# --- certificates and keys -----------------------------------------------------------------------

PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def keys(pki, rsa_pki):
    """Certificates with plain and encrypted keys, ECDSA and RSA."""
    return {
        "ecdsa": pki.issue("ecdsa.test", dns=["ecdsa.test"]),
        "rsa": rsa_pki.issue("rsa.test", dns=["rsa.test"]),
        "ecdsa-encrypted": pki.issue("ecdsa-enc.test", dns=["ecdsa-enc.test"], password=PASSWORD.encode()),
        "rsa-encrypted": rsa_pki.issue("rsa-enc.test", dns=["rsa-enc.test"], password=PASSWORD.encode()),
    }


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_load_cert_chain_plain_keys(keys, kind):
    issued = keys[kind]
    result = assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.load_cert_chain(issued.chain_path, issued.key_path))
    assert result[0] == describe(None)


def raise_key_error():
    raise KeyError("from the password callback")


PASSWORDS = {
    "str": PASSWORD,
    "bytes": PASSWORD.encode(),
    "bytearray": bytearray(PASSWORD.encode()),
    "callable-str": lambda: PASSWORD,
    "callable-bytes": lambda: PASSWORD.encode(),
    "callable-bytearray": lambda: bytearray(PASSWORD.encode()),
    "wrong": "wrong",
    "wrong-callable": lambda: b"wrong",
    "empty": "",
    "callable-raises": raise_key_error,
    "callable-returns-int": lambda: 3,
    "not-callable": 3,
    "1024-bytes": "x" * 1024,
    "1025-bytes": "x" * 1025,
    "callable-1025-bytes": lambda: "x" * 1025,
    "unencodable": "\udcff",
}


@pytest.mark.parametrize("kind", ["ecdsa-encrypted", "rsa-encrypted"])
@pytest.mark.parametrize("password", list(PASSWORDS))
def test_load_cert_chain_passwords_equal_cpython(keys, kind, password):
    issued = keys[kind]
    result = assert_same(ssl.PROTOCOL_TLS_SERVER,
                         lambda ctx: ctx.load_cert_chain(issued.chain_path, issued.key_path, PASSWORDS[password]))
    if password.startswith(("str", "bytes", "bytearray", "callable-str", "callable-bytes")):
        assert result[0] == describe(None)
    if password == "wrong":
        assert result[0][1] is ssl.SSLError and result[0][3] == "SSL"


def test_load_cert_chain_callable_exception_propagates_as_is(keys):
    issued = keys["ecdsa-encrypted"]
    ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(KeyError, match="from the password callback"):
        ctx.load_cert_chain(issued.chain_path, issued.key_path, raise_key_error)
    # The callback is gone afterwards: a later load without password does not reuse it.
    ctx.load_cert_chain(keys["ecdsa"].chain_path, keys["ecdsa"].key_path)


def test_unencrypted_key_never_calls_the_password_callable(keys):
    issued = keys["rsa"]
    assert_same(ssl.PROTOCOL_TLS_SERVER,
                lambda ctx: ctx.load_cert_chain(issued.chain_path, issued.key_path, raise_key_error))


@pytest.mark.parametrize("case", ["missing-cert", "missing-key", "cert-is-directory", "key-is-directory",
                                  "cert-not-pem", "key-not-pem", "no-key", "key-mismatch", "combined-file",
                                  "cert-int", "key-int", "cert-nul"])
def test_load_cert_chain_errors_equal_cpython(keys, tmp_path, case):
    ecdsa, rsa = keys["ecdsa"], keys["rsa"]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    combined = tmp_path / "combined.pem"
    combined.write_bytes(open(ecdsa.cert_path, "rb").read() + open(ecdsa.key_path, "rb").read())
    arguments = {
        "missing-cert": (str(tmp_path / "missing.pem"),),
        "missing-key": (ecdsa.cert_path, str(tmp_path / "missing.key")),
        "cert-is-directory": (str(tmp_path),),
        "key-is-directory": (ecdsa.cert_path, str(tmp_path)),
        "cert-not-pem": (str(not_pem),),
        "key-not-pem": (ecdsa.cert_path, str(not_pem)),
        "no-key": (ecdsa.cert_path,),
        "key-mismatch": (ecdsa.cert_path, rsa.key_path),
        "combined-file": (str(combined),),
        "cert-int": (1,),
        "key-int": (ecdsa.cert_path, 1),
        "cert-nul": ("a\0b",),
    }[case]
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.load_cert_chain(*arguments))


def test_load_cert_chain_accepts_path_objects(keys, tmp_path):
    import pathlib
    issued = keys["ecdsa"]
    SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(pathlib.Path(issued.chain_path), pathlib.Path(issued.key_path))


# --- trust store ---------------------------------------------------------------------------------

def trust_store(ctx):
    return ctx.cert_store_stats(), ctx.get_ca_certs(binary_form=True)


@pytest.fixture(scope="module")
def ca_material(pki, rsa_pki, keys):
    def read(path):
        with open(path, encoding="ascii") as f:
            return f.read()

    ecdsa_ca, rsa_ca, leaf = read(pki.ca_path), read(rsa_pki.ca_path), read(keys["ecdsa"].cert_path)
    return {
        "ecdsa_ca_pem": ecdsa_ca,
        "two_cas_pem": ecdsa_ca + rsa_ca,
        "cas_and_leaf_pem": ecdsa_ca + leaf + rsa_ca,
        "ecdsa_ca_der": ssl.PEM_cert_to_DER_cert(ecdsa_ca),
        "two_cas_der": ssl.PEM_cert_to_DER_cert(ecdsa_ca) + ssl.PEM_cert_to_DER_cert(rsa_ca),
        "ecdsa_ca_path": pki.ca_path,
    }


CADATA_CASES = {
    "pem": lambda m: m["ecdsa_ca_pem"],
    "pem-two": lambda m: m["two_cas_pem"],
    "pem-with-leaf": lambda m: m["cas_and_leaf_pem"],
    "pem-twice": lambda m: m["ecdsa_ca_pem"] * 2,
    "pem-trailing-text": lambda m: m["ecdsa_ca_pem"] + "trailing text\n",
    "pem-then-broken-block": lambda m: m["ecdsa_ca_pem"] + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    "pem-garbage": lambda m: "garbage",
    "pem-empty": lambda m: "",
    "pem-non-ascii": lambda m: "é" + m["ecdsa_ca_pem"],
    "der": lambda m: m["ecdsa_ca_der"],
    "der-two": lambda m: m["two_cas_der"],
    "der-bytearray": lambda m: bytearray(m["two_cas_der"]),
    "der-memoryview": lambda m: memoryview(m["two_cas_der"]),
    "der-not-contiguous": lambda m: memoryview(m["two_cas_der"])[::2],
    "der-trailing-garbage": lambda m: m["ecdsa_ca_der"] + b"garbage",
    "der-truncated-second": lambda m: m["ecdsa_ca_der"] + m["ecdsa_ca_der"][:50],
    "der-trailing-zeros": lambda m: m["ecdsa_ca_der"] + b"\0\0",
    "der-garbage": lambda m: b"garbage",
    "der-empty": lambda m: b"",
    "pem-as-bytes": lambda m: m["ecdsa_ca_pem"].encode(),
    "int": lambda m: 1,
}


@pytest.mark.parametrize("case", list(CADATA_CASES))
def test_load_verify_locations_cadata_equals_cpython(ca_material, case):
    cadata = CADATA_CASES[case](ca_material)

    def action(ctx):
        ctx.load_verify_locations(cadata=cadata)
        return trust_store(ctx)

    result = assert_same(ssl.PROTOCOL_TLS_CLIENT, action)
    if case == "pem-two":
        assert result[0][2][0] == {"x509": 2, "crl": 0, "x509_ca": 2}


@pytest.mark.parametrize("case", ["cafile", "cafile-pathlike", "cafile-missing", "cafile-not-pem", "cafile-int",
                                  "capath", "capath-missing", "capath-int", "all-omitted", "cafile-and-cadata"])
def test_load_verify_locations_files_equal_cpython(ca_material, tmp_path, case):
    import pathlib
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    arguments = {
        "cafile": dict(cafile=ca_material["ecdsa_ca_path"]),
        "cafile-pathlike": dict(cafile=pathlib.Path(ca_material["ecdsa_ca_path"])),
        "cafile-missing": dict(cafile=str(tmp_path / "missing.pem")),
        "cafile-not-pem": dict(cafile=str(not_pem)),
        "cafile-int": dict(cafile=1),
        "capath": dict(capath=str(tmp_path)),
        "capath-missing": dict(capath=str(tmp_path / "missing")),
        "capath-int": dict(capath=1),
        "all-omitted": dict(),
        "cafile-and-cadata": dict(cafile=ca_material["ecdsa_ca_path"], cadata=ca_material["two_cas_der"]),
    }[case]

    def action(ctx):
        ctx.load_verify_locations(**arguments)
        return trust_store(ctx)

    assert_same(ssl.PROTOCOL_TLS_CLIENT, action)


def test_get_ca_certs_dict_form_equals_cpython(ca_material):
    def action(ctx):
        ctx.load_verify_locations(cadata=ca_material["cas_and_leaf_pem"])
        return ctx.get_ca_certs()

    result = assert_same(ssl.PROTOCOL_TLS_CLIENT, action)
    assert len(result[0][2]) == 2  # the leaf is not a CA


def test_load_default_certs_reaches_our_store(monkeypatch):
    calls = []
    monkeypatch.setattr(SSLContext, "set_default_verify_paths",
                        lambda self: calls.append(self) or lib.SSL_CTX_set_default_verify_paths(self._ssl_ctx))
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_default_certs()
    assert calls == [ctx]
    assert_same(ssl.PROTOCOL_TLS_CLIENT, lambda c: c.load_default_certs("not a purpose"))


def test_set_default_verify_paths_equals_cpython():
    assert_same(ssl.PROTOCOL_TLS_CLIENT, lambda ctx: (ctx.set_default_verify_paths(), ctx.cert_store_stats())[1])


# --- SNI and ALPN ---------------------------------------------------------------------------------

def test_set_servername_callback_goes_through_sni_callback():
    def callback(sock, name, ctx):
        return None

    def action(ctx):
        ctx.set_servername_callback(callback)
        installed = ctx.sni_callback
        ctx.set_servername_callback(None)
        return callable(installed) and installed is not callback, ctx.sni_callback

    assert assert_same(ssl.PROTOCOL_TLS_SERVER, action)[0] == describe((True, None))
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.set_servername_callback(42))
    assert_same(ssl.PROTOCOL_TLS_CLIENT, lambda ctx: ctx.set_servername_callback(callback))


def test_rejected_sni_callback_also_removes_the_old_one():
    def action(ctx):
        ctx.sni_callback = print
        try:
            ctx.sni_callback = "not callable"
        except TypeError:
            pass
        return ctx.sni_callback

    assert assert_same(ssl.PROTOCOL_TLS_SERVER, action)[0] == describe(None)


@pytest.mark.parametrize("protocols", [["h2", "http/1.1"], [], ["x" * 256], [""], ["é"], [b"h2"]],
                         ids=["two", "none", "too-long", "empty-name", "non-ascii", "bytes"])
def test_set_alpn_protocols_equals_cpython(protocols):
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx.set_alpn_protocols(protocols))


@pytest.mark.parametrize("protos", [b"\x02h2", bytearray(b"\x02h2"), memoryview(b"\x02h2"), 1, "h2"],
                         ids=["bytes", "bytearray", "memoryview", "int", "str"])
def test_private_set_alpn_protocols_equals_cpython(protos):
    assert_same(ssl.PROTOCOL_TLS_SERVER, lambda ctx: ctx._set_alpn_protocols(protos))


def wire(*names: bytes) -> bytes:
    return b"".join(bytes([len(n)]) + n for n in names)


@pytest.mark.parametrize("server,client,expected", [
    ((b"h2", b"http/1.1"), (b"http/1.1", b"h2"), b"h2"),  # the server's preference wins
    ((b"http/1.1", b"h2"), (b"h2", b"http/1.1"), b"http/1.1"),
    ((b"h2",), (b"spdy/3", b"h2"), b"h2"),
    ((b"h2",), (b"http/1.1",), None),  # no overlap: CPython answers NOACK
    ((), (b"h2",), None),
    ((b"h2",), (), None),
    ((b"h2",), (b"h2c", b"h"), None),  # prefixes are not matches
])
def test_alpn_selection_follows_server_preference(server, client, expected):
    client_wire = wire(*client)
    choice = select_alpn_protocol(wire(*server), client_wire)
    if expected is None:
        assert choice is None
    else:
        offset, length = choice
        assert client_wire[offset:offset + length] == expected
        assert client_wire[offset - 1] == length  # it points at an entry of the client's list


def test_alpn_selection_ignores_a_malformed_tail():
    assert select_alpn_protocol(wire(b"h2"), wire(b"h2") + b"\x09abc") == (1, 2)
    assert select_alpn_protocol(wire(b"abc"), b"\x09abc") is None


def test_alpn_select_callback_points_into_the_client_list():
    """The extern "Python" callback, called as OpenSSL would call it."""
    ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    offered = ffi.new("unsigned char[]", wire(b"http/1.1", b"h2"))
    out = ffi.new("const unsigned char **")
    outlen = ffi.new("unsigned char *")
    callback = lib.ktls_alpn_select_cb
    assert callback(ffi.NULL, out, outlen, offered, len(wire(b"http/1.1", b"h2")), ctx._handle) == lib.SSL_TLSEXT_ERR_OK
    assert bytes(ffi.buffer(out[0], outlen[0])) == b"h2"
    assert out[0] == offered + 10
    other = ffi.new("unsigned char[]", wire(b"spdy/3"))
    assert callback(ffi.NULL, out, outlen, other, 7, ctx._handle) == lib.SSL_TLSEXT_ERR_NOACK


# --- a real handshake on our SSL_CTX, in memory ---------------------------------------------------
# Two OpenSSL SSL objects made straight from our contexts, joined by memory BIOs: this exercises
# what the contexts configure (ALPN selection, keylog, session id context, verification) during a
# handshake without the socket layer.

class MemoryConnection:
    def __init__(self, ctx, server_side: bool, server_hostname: str | None = None):
        self.ssl = ffi.gc(lib.SSL_new(ctx._ssl_ctx), lib.SSL_free)
        self.incoming, self.outgoing = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(self.ssl, self.incoming, self.outgoing)  # the SSL owns both BIOs now
        if server_side:
            lib.SSL_set_accept_state(self.ssl)
        else:
            lib.SSL_set_connect_state(self.ssl)
            if server_hostname is not None:
                lib.SSL_set_tlsext_host_name(self.ssl, server_hostname.encode())
                param = lib.SSL_get0_param(self.ssl)
                lib.X509_VERIFY_PARAM_set1_host(param, server_hostname.encode(), len(server_hostname))

    def step(self) -> bool:
        """One SSL_do_handshake; True when done. Raises on a failure."""
        result = lib.SSL_do_handshake(self.ssl)
        if result == 1:
            return True
        if lib.SSL_get_error(self.ssl, result) in (lib.SSL_ERROR_WANT_READ, lib.SSL_ERROR_WANT_WRITE):
            return False
        raise context_module._library_error()

    def send_to(self, peer: "MemoryConnection") -> None:
        buffer = ffi.new("char[65536]")
        while (count := lib.BIO_read(self.outgoing, buffer, len(buffer))) > 0:
            lib.BIO_write(peer.incoming, buffer, count)

    def alpn(self) -> bytes | None:
        data, length = ffi.new("const unsigned char **"), ffi.new("unsigned int *")
        lib.SSL_get0_alpn_selected(self.ssl, data, length)
        return bytes(ffi.buffer(data[0], length[0])) if data[0] != ffi.NULL else None


def memory_handshake(client_ctx, server_ctx, server_hostname="localhost"):
    client = MemoryConnection(client_ctx, False, server_hostname)
    server = MemoryConnection(server_ctx, True)
    for _ in range(20):
        client_done = client.step()
        client.send_to(server)
        server_done = server.step()
        server.send_to(client)
        if client_done and server_done:
            client.step()  # read the server's session tickets
            return client, server
    raise AssertionError("handshake did not finish")


@pytest.fixture
def server_and_client(pki, server_cert):
    server_ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert.chain_path, server_cert.key_path)
    client_ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(pki.ca_path)
    return server_ctx, client_ctx


def test_handshake_on_our_contexts_verifies_the_server(server_and_client):
    server_ctx, client_ctx = server_and_client
    client, _ = memory_handshake(client_ctx, server_ctx)
    assert lib.SSL_get_verify_result(client.ssl) == lib.X509_V_OK
    assert ffi.string(lib.SSL_get_version(client.ssl)) == b"TLSv1.3"


def test_handshake_fails_for_an_untrusted_server(server_and_client, rsa_pki):
    server_ctx, _ = server_and_client
    untrusting = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    untrusting.load_verify_locations(rsa_pki.ca_path)  # another CA
    with pytest.raises(ssl.SSLError) as info:
        memory_handshake(untrusting, server_ctx)
    assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"


def test_server_sessions_carry_cpythons_session_id_context(server_and_client):
    server_ctx, client_ctx = server_and_client
    _, server = memory_handshake(client_ctx, server_ctx)
    length = ffi.new("unsigned int *")
    data = lib.SSL_SESSION_get0_id_context(lib.SSL_get_session(server.ssl), length)
    assert bytes(ffi.buffer(data, length[0])) == b"Python\0"  # CPython passes sizeof("Python")


@pytest.mark.parametrize("server_protocols,client_protocols,expected", [
    (["h2", "http/1.1"], ["http/1.1", "h2"], b"h2"),  # the server's preference
    (["http/1.1", "h2"], ["h2", "http/1.1"], b"http/1.1"),
    (["spdy/3"], ["h2"], None),  # no overlap: no ALPN, the handshake still succeeds
    (None, ["h2"], None),  # server without ALPN
])
def test_alpn_negotiation_on_our_contexts(server_and_client, server_protocols, client_protocols, expected):
    server_ctx, client_ctx = server_and_client
    if server_protocols is not None:
        server_ctx.set_alpn_protocols(server_protocols)
    client_ctx.set_alpn_protocols(client_protocols)
    client, server = memory_handshake(client_ctx, server_ctx)
    assert client.alpn() == server.alpn() == expected


def test_keylog_file_gets_the_handshake_secrets(server_and_client, tmp_path):
    server_ctx, client_ctx = server_and_client
    path = tmp_path / "keys.log"
    client_ctx.keylog_filename = str(path)
    memory_handshake(client_ctx, server_ctx)
    lines = path.read_bytes().splitlines()
    assert lines[0] + b"\n" == HEADER
    labels = sorted(line.split()[0] for line in lines[1:])
    assert labels == [b"CLIENT_HANDSHAKE_TRAFFIC_SECRET", b"CLIENT_TRAFFIC_SECRET_0", b"EXPORTER_SECRET",
                      b"SERVER_HANDSHAKE_TRAFFIC_SECRET", b"SERVER_TRAFFIC_SECRET_0"]


# --- keylog --------------------------------------------------------------------------------------

HEADER = b"# TLS secrets log file, generated by OpenSSL / Python\n"


def test_keylog_file_gets_cpythons_header_once(tmp_path):
    ours_path, cpython_path = tmp_path / "ours.log", tmp_path / "cpython.log"
    for cls, path in ((SSLContext, ours_path), (ssl.SSLContext, cpython_path)):
        for _ in range(2):  # a second context appends to the non-empty file: no second header
            ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
            ctx.keylog_filename = str(path)
            assert ctx.keylog_filename == str(path)
            ctx.keylog_filename = None
    assert ours_path.read_bytes() == cpython_path.read_bytes() == HEADER


def test_keylog_lines_are_appended(tmp_path):
    path = tmp_path / "keys.log"
    path.write_bytes(b"existing line\n")
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx._write_keylog_line(b"CLIENT_RANDOM 00 11")  # no file yet: nothing happens
    ctx.keylog_filename = path  # a path object is kept as given
    assert ctx.keylog_filename == path
    ctx._write_keylog_line(b"CLIENT_RANDOM aa bb")
    # Flushed at once: readable while the context is still open.
    assert path.read_bytes() == b"existing line\nCLIENT_RANDOM aa bb\n"
    ctx.keylog_filename = None
    ctx._write_keylog_line(b"CLIENT_RANDOM cc dd")
    assert path.read_bytes() == b"existing line\nCLIENT_RANDOM aa bb\n"


def test_keylog_lines_from_threads_stay_whole(tmp_path):
    path = tmp_path / "keys.log"
    ctx = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.keylog_filename = str(path)
    line = b"CLIENT_TRAFFIC_SECRET_0 " + b"ab" * 32 + b" " + b"cd" * 48

    def writer():
        for _ in range(200):
            ctx._write_keylog_line(line)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_bytes().splitlines()
    assert lines[0] + b"\n" == HEADER
    assert lines[1:] == [line] * 800


def test_failed_keylog_open_clears_the_setting(tmp_path):
    def action(ctx):
        ctx.keylog_filename = str(tmp_path / "first.log")
        try:
            ctx.keylog_filename = str(tmp_path / "missing" / "second.log")
        except OSError:
            pass
        return ctx.keylog_filename

    assert assert_same(ssl.PROTOCOL_TLS_CLIENT, action)[0] == describe(None)


# --- members that must not reach CPython's hidden context ----------------------------------------

# ssl.SSLContext members that are plain Python and only call members overridden here.
INHERITED_DELEGATORS = {
    "wrap_socket",  # -> self.sslsocket_class._create(context=self, ...) -> self._wrap_socket
    "set_alpn_protocols",  # -> self._set_alpn_protocols
    "set_npn_protocols",  # -> self._set_npn_protocols, which CPython 3.11 no longer has
    "set_servername_callback",  # -> self.sni_callback
    "load_default_certs",  # -> self.set_default_verify_paths
    "_load_windows_store_certs",  # -> self.load_verify_locations (Windows only)
    "_encode_hostname",  # pure function of its argument
    "_windows_cert_stores",  # data
    "sslobject_class",  # only used by wrap_bio, which refuses
}


def test_every_ssl_context_member_is_ours_or_a_known_delegator():
    members = {name for name in dir(ssl.SSLContext) if not (name.startswith("__") and name.endswith("__"))}
    # Ours where the class that Python finds it on (the first in the MRO) is one of ktls_ossl's.
    ours = {name for name in members
            if next(klass for klass in SSLContext.__mro__ if name in vars(klass)).__module__.startswith("ktls_ossl.")}
    unhandled = members - ours - INHERITED_DELEGATORS
    assert not unhandled, f"members that would reach CPython's hidden context: {sorted(unhandled)}"
    assert not (INHERITED_DELEGATORS & ours), "listed as inherited but overridden: update the list"


def test_wrap_socket_builds_a_ktls_socket(monkeypatch):
    from ktls_ossl import socket as socket_module

    calls = []
    monkeypatch.setattr(socket_module.KTLSSocket, "_create", classmethod(lambda cls, **kwargs: calls.append(kwargs) or "made"),
                        raising=False)
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert ctx.sslsocket_class is socket_module.KTLSSocket
    sentinel = object()
    assert ctx.wrap_socket(sentinel, server_hostname="example.test", do_handshake_on_connect=False) == "made"
    assert calls == [dict(sock=sentinel, server_side=False, do_handshake_on_connect=False, suppress_ragged_eofs=True,
                          server_hostname="example.test", context=ctx, session=None)]


def test_memory_bios_are_refused():
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(NotImplementedError, match="kernel TLS needs a connected socket"):
        ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.test")
    # Also through the lower-level paths that would use CPython's unconfigured context.
    with pytest.raises(NotImplementedError):
        ssl.SSLObject._create(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=False, context=ctx)


def test_private_wrap_socket_makes_a_connection_on_our_context(tcp_pair):
    """ssl.SSLSocket._create() asks context._wrap_socket() for its _sslobj: it must be the socket
    layer's Connection over our SSL_CTX, not CPython's _ssl._SSLSocket."""
    from ktls_ossl.socket import Connection

    client, _ = tcp_pair
    ctx = SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    connection = ctx._wrap_socket(client, False, "example.test", owner=client, session=None)
    assert isinstance(connection, Connection)
    assert (connection.server_side, connection.server_hostname) == (False, "example.test")


# --- create_default_context ----------------------------------------------------------------------

@pytest.mark.parametrize("purpose", [ssl.Purpose.SERVER_AUTH, ssl.Purpose.CLIENT_AUTH], ids=["server-auth", "client-auth"])
def test_create_default_context_equals_cpython(purpose, monkeypatch, pki):
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    for kwargs in ({}, {"cafile": pki.ca_path}):
        ours, cpython = create_default_context(purpose, **kwargs), ssl.create_default_context(purpose, **kwargs)
        assert type(ours) is SSLContext
        for name in PROPERTIES:
            assert (type(getattr(ours, name)), getattr(ours, name)) == (type(getattr(cpython, name)), getattr(cpython, name)), name
        assert trust_store(ours) == trust_store(cpython)
        assert ours.get_ciphers() == cpython.get_ciphers()


def test_create_default_context_reads_sslkeylogfile(monkeypatch, tmp_path):
    path = str(tmp_path / "env.log")
    monkeypatch.setenv("SSLKEYLOGFILE", path)
    assert create_default_context().keylog_filename == path
    assert ssl.create_default_context().keylog_filename == path


def test_create_default_context_rejects_what_cpython_rejects():
    assert outcome(create_default_context, "not a purpose") == outcome(ssl.create_default_context, "not a purpose")


# --- OpenSSL error names: generated from the headers at build time ---------------------------------

# CPython's generator read err.h's field layout (ERR_LIB_MASK, ERR_LIB_OFFSET) as two libraries.
NOT_LIBRARIES = {"MASK", "OFFSET"}
# Libraries whose error header OpenSSL does not install (crypto/dso, internal SM2 and property
# parser): the installed headers give their library name, not their reasons.
UNINSTALLED_ERROR_HEADERS = {"DSO", "SM2", "PROP"}


def test_error_names_agree_with_cpythons_table():
    """Python 3.11 still exposes CPython's generated tables: an oracle built from OpenSSL's sources."""
    cpython_libs = getattr(_ssl, "lib_codes_to_names", None)
    cpython_reasons = getattr(_ssl, "err_codes_to_names", None)
    if cpython_libs is None or cpython_reasons is None:
        pytest.skip("this Python's _ssl no longer exposes its error name tables (3.12+)")
    ours_libs, ours_reasons = errors._LIB_NAMES, errors._REASON_NAMES
    assert {code: name for code, name in cpython_libs.items() if name not in NOT_LIBRARIES} == ours_libs
    missing = {}
    for key, name in cpython_reasons.items():
        if key in ours_reasons:
            assert ours_reasons[key] == name, key
        else:
            missing[key] = name
    # What the installed headers cannot name: reasons of libraries without an installed error
    # header, and the FIPS-mode reasons OpenSSL 3.0 retired (no header defines them any more).
    assert all(ours_libs[lib_code] in UNINSTALLED_ERROR_HEADERS or "FIPS" in name
               for (lib_code, _), name in missing.items()), missing
    assert len(ours_reasons) > 1000


def test_error_names_cover_what_ktls_ossl_names_itself():
    assert errors.error_names((lib.ERR_LIB_SSL << 23) | errors.SSL_R_CERTIFICATE_VERIFY_FAILED) == (
        "SSL", "CERTIFICATE_VERIFY_FAILED")
    assert errors._REASON_NAMES[(lib.ERR_LIB_SSL, errors.SSL_R_UNEXPECTED_EOF_WHILE_READING)] == (
        "UNEXPECTED_EOF_WHILE_READING")
    assert errors.error_names((lib.ERR_LIB_SSL << 23) | (errors.SSL_R_ALERT_BASE + 40)) == (
        "SSL", "SSLV3_ALERT_HANDSHAKE_FAILURE")
    assert errors._LIB_NAMES[lib.ERR_LIB_PEM] == "PEM" and errors._LIB_NAMES[lib.ERR_LIB_X509] == "X509"


def _tls12_only(ctx, ciphers=None):
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)


HANDSHAKE_FAILURES = {
    # (server setup, client setup, server_hostname); the client trusts pki unless set up otherwise
    "untrusted-ca": (None, lambda ctx, other_ca: ctx.load_verify_locations(other_ca), "localhost"),
    "hostname-mismatch": (None, None, "wrong.example"),
    "protocol-version": (lambda ctx: setattr(ctx, "minimum_version", ssl.TLSVersion.TLSv1_3),
                         lambda ctx, _: _tls12_only(ctx), "localhost"),
    "no-shared-cipher": (lambda ctx: _tls12_only(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256"),
                         lambda ctx, _: _tls12_only(ctx, "ECDHE-ECDSA-AES256-GCM-SHA384"), "localhost"),
}


@pytest.mark.parametrize("case", HANDSHAKE_FAILURES)
def test_handshake_errors_render_like_cpython(server_cert, pki, rsa_pki, case):
    """Library, reason and message (less the location tag) of both sides' errors are CPython's, on
    every Python version (3.12+ has no private table to borrow them from)."""
    setup_server, setup_client, hostname = HANDSHAKE_FAILURES[case]
    outcomes = []
    for cls in (SSLContext, ssl.SSLContext):
        server_ctx = cls(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(server_cert.chain_path, server_cert.key_path)
        client_ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        if case == "untrusted-ca":
            setup_client(client_ctx, rsa_pki.ca_path)
        else:
            client_ctx.load_verify_locations(pki.ca_path)
            if setup_client:
                setup_client(client_ctx, None)
        if setup_server:
            setup_server(server_ctx)
        outcomes.append(handshake_errors(server_ctx, client_ctx, hostname))
    (my_client, my_server), (their_client, their_server) = outcomes
    assert their_client is not None and their_client.library and their_client.reason
    same_error(my_client, their_client)
    if their_server is None:
        assert my_server is None
    else:
        same_error(my_server, their_server)
    if case in ("untrusted-ca", "hostname-mismatch"):
        assert str(my_client).startswith("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: ")
