"""SSLError.library/.reason names against the running CPython's own tables.

The oracle is CPython itself: on 3.10/3.11 its tables are readable (``_ssl.err_codes_to_names``);
3.12+ compile them into _ssl as C strings, so there the names present in _ssl's binary stand in
for the table. Our names come from OpenSSL's headers at build time (cffi_build/openssl/errnames.py);
<openssl/sslerr.h> is read here with a separate, plain pattern for what OpenSSL defines.
"""
from __future__ import annotations

import re
import ssl
import _ssl

import pytest

from ktls_ossl import errors
from ktls_ossl._ossl import lib

SSL_HEADER = "/usr/include/openssl/sslerr.h"


def _header_ssl_reasons() -> dict[int, str]:
    with open(SSL_HEADER, encoding="latin-1") as header:
        return {int(code): name for name, code in re.findall(r"#\s*define\s+SSL_R_(\w+)\s+(\d+)\s*$", header.read(), re.M)}


def _cpython_binary_strings() -> bytes:
    """This Python's _ssl binary, where its error tables are C strings (the linker may store a
    name as the tail of a longer one: a name is there when it ends a string)."""
    path = getattr(_ssl, "__file__", None)
    if not path:
        pytest.skip("this Python's _ssl is built in: its tables cannot be read")
    with open(path, "rb") as binary:
        return binary.read()


def _ours_ssl() -> dict[int, str]:
    return {reason: name for (library, reason), name in errors._REASON_NAMES.items() if library == lib.ERR_LIB_SSL}


def test_ssl_reasons_are_the_ones_this_cpython_names():
    header = _header_ssl_reasons()
    ours = _ours_ssl()
    assert ours, "no SSL reason names"
    assert set(ours.items()) <= set(header.items()), "a name OpenSSL's header does not define"
    table = getattr(_ssl, "err_codes_to_names", None)
    if table is not None:  # 3.10/3.11: CPython's own table
        cpython = {reason: name for (library, reason), name in table.items() if library == lib.ERR_LIB_SSL}
        expected = {code: name for code, name in header.items() if cpython.get(code) == name}
    else:  # 3.12+: the names compiled into _ssl
        compiled = _cpython_binary_strings()
        assert b"CERTIFICATE_VERIFY_FAILED\0" in compiled, "no error table found in _ssl's binary"
        expected = {code: name for code, name in header.items() if name.encode() + b"\0" in compiled}
    assert ours == expected, {"only ours": set(ours.items()) - set(expected.items()),
                              "only CPython's": set(expected.items()) - set(ours.items())}


def test_a_reason_no_cpython_names_renders_as_cpythons():
    """TLSV1_ALERT_NO_APPLICATION_PROTOCOL (1120) is in sslerr.h, not in CPython's tables on any
    version: CPython renders "[SSL] tlsv1 alert no application protocol" with reason None."""
    assert _header_ssl_reasons()[1120] == "TLSV1_ALERT_NO_APPLICATION_PROTOCOL"
    exc = errors.peer_alert_error(120)
    assert (type(exc), exc.library, exc.reason) == (ssl.SSLError, "SSL", None)
    assert str(exc).startswith("[SSL] tlsv1 alert no application protocol"), str(exc)
