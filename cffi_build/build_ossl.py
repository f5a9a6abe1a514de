"""cffi builder for ``ktls_ossl._ossl`` (API mode, system OpenSSL 3 and <linux/tls.h>).

setuptools runs this through ``cffi_modules``; ``python cffi_build/build_ossl.py`` builds in place.
The binding is split one module per header (see openssl/ and linux/); this file only assembles them.
"""
import importlib
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# Order matters: a module may use types that an earlier one declares.
MODULES = [
    "openssl.crypto",
    "openssl.err",
    "openssl.errnames",
    "openssl.bio",
    "openssl.objects",
    "openssl.evp",
    "openssl.x509",
    "openssl.pem",
    "openssl.ssl",
    "linux.tls",
    "callbacks",
]

MINIMUM_OPENSSL_MAJOR = 3


def _include_dirs():
    dirs = [d for d in os.environ.get("OPENSSL_INCLUDE_DIR", "").split(os.pathsep) if d]
    return dirs + ["/usr/local/include", "/usr/include"]


def check_openssl_headers():
    """Fail early, with a message that says what to install, when OpenSSL 3 headers are missing.

    The C source repeats the check with #error, which is what counts if this guess is wrong.
    """
    for directory in _include_dirs():
        path = os.path.join(directory, "openssl", "opensslv.h")
        if not os.path.exists(path):
            continue
        with open(path, encoding="latin-1") as header:
            text = header.read()
        major = re.search(r"#\s*define\s+OPENSSL_VERSION_MAJOR\s+(\d+)", text)
        version = re.search(r'#\s*define\s+OPENSSL_VERSION_TEXT\s+"([^"]*)"', text)
        if major is None or int(major.group(1)) < MINIMUM_OPENSSL_MAJOR:
            found = version.group(1) if version else "a version before 3.0"
            raise SystemExit(
                f"ktls_ossl: {path} is {found}; ktls_ossl needs OpenSSL 3.0 or newer "
                "(Debian/Ubuntu: apt-get install libssl-dev on Debian 12 / Ubuntu 22.04 or later, "
                "or set OPENSSL_INCLUDE_DIR and OPENSSL_LIB_DIR)."
            )
        return path
    raise SystemExit(
        "ktls_ossl: OpenSSL headers not found (looked for openssl/opensslv.h in "
        + ", ".join(_include_dirs())
        + "); install libssl-dev (Debian/Ubuntu) or openssl-devel (Fedora)."
    )


def _customizations(module, openssl_dir):
    """A module's C code: fixed, or generated from the headers (``customizations(openssl_dir)``)."""
    if module.CUSTOMIZATIONS is None:
        return module.customizations(openssl_dir)
    return module.CUSTOMIZATIONS


def build_ffi(module_names=MODULES):
    openssl_dir = os.path.dirname(check_openssl_headers())
    modules = [importlib.import_module(name) for name in module_names]
    ffi = FFI()
    ffi.cdef("\n".join(m.TYPES for m in modules))
    ffi.cdef("\n".join(m.FUNCTIONS for m in modules))
    source = "\n".join(
        [m.INCLUDES for m in modules] + [_customizations(m, openssl_dir) for m in modules]
    )
    lib_dirs = [d for d in os.environ.get("OPENSSL_LIB_DIR", "").split(os.pathsep) if d]
    ffi.set_source(
        "ktls_ossl._ossl",
        source,
        libraries=["ssl", "crypto"],
        include_dirs=[d for d in os.environ.get("OPENSSL_INCLUDE_DIR", "").split(os.pathsep) if d],
        library_dirs=lib_dirs,
        runtime_library_dirs=lib_dirs,
        extra_compile_args=["-Wno-deprecated-declarations"],
    )
    return ffi


ffibuilder = build_ffi()

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=True)
