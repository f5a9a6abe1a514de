"""Packaging: the extension reports its OpenSSL, and a build against OpenSSL < 3 stops clearly."""
import importlib
import os
import ssl
import sys

import pytest

import ktls_ossl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_openssl_version_is_the_runtime_library():
    assert ktls_ossl.OPENSSL_VERSION.startswith("OpenSSL 3.")
    assert ktls_ossl.OPENSSL_VERSION_NUMBER >> 28 >= 3
    # CPython's ssl on this machine links the same system library.
    if ssl.OPENSSL_VERSION_NUMBER >> 28 == 3:
        assert ktls_ossl.OPENSSL_VERSION.split()[1] == ssl.OPENSSL_VERSION.split()[1]


@pytest.fixture
def build_module(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "cffi_build"))
    sys.modules.pop("build_ossl", None)
    yield importlib.import_module("build_ossl")
    sys.modules.pop("build_ossl", None)


def test_build_refuses_openssl_1_1_with_a_clear_message(build_module, tmp_path, monkeypatch):
    (tmp_path / "openssl").mkdir()
    (tmp_path / "openssl" / "opensslv.h").write_text(
        '# define OPENSSL_VERSION_NUMBER  0x1010117fL\n# define OPENSSL_VERSION_TEXT "OpenSSL 1.1.1w  11 Sep 2023"\n')
    monkeypatch.setenv("OPENSSL_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        build_module.check_openssl_headers()
    assert "OpenSSL 1.1.1w" in str(info.value) and "needs OpenSSL 3.0 or newer" in str(info.value)
    assert "libssl-dev" in str(info.value)


def test_build_accepts_the_system_openssl_3(build_module):
    assert build_module.check_openssl_headers().endswith("opensslv.h")
