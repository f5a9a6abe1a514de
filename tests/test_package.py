"""Packaging: the extension reports its OpenSSL, a build against OpenSSL < 3 stops clearly, the
version has one source, and the command line imports only what the chosen command needs."""
import importlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys

import pytest

import ktls_ossl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_with_source_tree():
    """A child Python imports this tree's ktls_ossl (the one under test), from any directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


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


def test_probe_does_not_import_the_benchmark_code(tmp_path):
    """``python -m ktls_ossl probe`` loads neither bench.py nor serve.py (both only for their command)."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['ktls_ossl', 'probe']\n"
        "try:\n"
        "    runpy.run_module('ktls_ossl', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print('loaded:', ' '.join(sorted(m for m in ('ktls_ossl.bench', 'ktls_ossl.serve', 'multiprocessing')"
        " if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=str(tmp_path), env=_env_with_source_tree())
    assert result.returncode == 0, result.stderr
    assert "TLS" in result.stdout  # the probe table was printed
    assert result.stdout.splitlines()[-1].strip() == "loaded:", result.stdout


def test_the_lazily_added_options_are_there_for_their_command(capsys):
    from ktls_ossl import __main__ as cli

    for argv, option in ((["bench", "--help"], "--quick"), (["serve", "--help"], "--min-version"),
                         (["--help"], "probe")):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
        assert option in capsys.readouterr().out


def test_the_version_is_written_once_and_is_the_installed_distributions():
    from importlib import metadata

    from ktls_ossl import _version

    assert ktls_ossl.__version__ == _version.__version__
    # The distribution installed in this environment (editable or not) carries the same version.
    assert ktls_ossl.__version__ == metadata.version("ktls_ossl")
    # setup.py reads it from ktls_ossl/_version.py, without importing the package.
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == ktls_ossl.__version__
    # Nowhere else is the number written.
    for name in ("setup.py", "pyproject.toml", os.path.join("ktls_ossl", "__init__.py")):
        with open(os.path.join(ROOT, name), encoding="utf-8") as source:
            assert f'"{ktls_ossl.__version__}"' not in source.read(), name


def test_the_ktls_ossl_console_script_is_the_module_command_line():
    from importlib import metadata

    from ktls_ossl import __main__ as cli

    scripts = [e for e in metadata.entry_points(group="console_scripts") if e.name == "ktls-ossl"]
    assert [e.value for e in scripts] == ["ktls_ossl.__main__:main"]
    assert scripts[0].load() is cli.main


# --- <linux/tls.h> older than the newest kernel's ------------------------------------------------

# What Linux 5.16 to 6.1 added to <linux/tls.h>, all of which the extension declares (an Ubuntu 22.04
# or RHEL 9 build host has none of it): two setsockopt options and the SM4 and ARIA cipher ids.
NEWER_TLS_H_NAMES = ("TLS_TX_ZEROCOPY_RO", "TLS_RX_EXPECT_NO_PAD", "TLS_CIPHER_SM4", "TLS_CIPHER_ARIA",
                     "tls12_crypto_info_sm4", "tls12_crypto_info_aria")
UAPI_VALUES = {"TLS_TX_ZEROCOPY_RO": 3, "TLS_RX_EXPECT_NO_PAD": 4, "TLS_CIPHER_SM4_GCM": 55,
               "TLS_CIPHER_SM4_CCM": 56, "TLS_CIPHER_ARIA_GCM_128": 57, "TLS_CIPHER_ARIA_GCM_256": 58}
HAS_FLAGS = ("HAS_TLS_TX_ZEROCOPY_RO", "HAS_TLS_RX_EXPECT_NO_PAD", "HAS_TLS_CIPHER_SM4", "HAS_TLS_CIPHER_ARIA")


def _older_tls_h(text: str) -> str:
    """<linux/tls.h> without what NEWER_TLS_H_NAMES names: its #defines and its struct definitions."""
    names = "|".join(NEWER_TLS_H_NAMES)
    text = re.sub(rf"^struct (?:{names})\w* {{.*?^}};\n", "", text, flags=re.M | re.S)
    return re.sub(rf"^#define\s+(?:{names})\w*.*\n", "", text, flags=re.M)


def test_the_extension_names_this_headers_kernel_abi():
    from ktls_ossl._ossl import lib

    assert {name: getattr(lib, name) for name in UAPI_VALUES} == UAPI_VALUES
    assert all(getattr(lib, flag) in (0, 1) for flag in HAS_FLAGS)


def test_build_with_an_older_linux_tls_h_and_probe(tmp_path):
    """A build host whose <linux/tls.h> predates TLS_RX_EXPECT_NO_PAD, TLS_TX_ZEROCOPY_RO, SM4 and
    ARIA builds (with the kernel ABI's values and HAS_* 0), and the probe runs on the result."""
    system_header = "/usr/include/linux/tls.h"
    if not os.path.exists(system_header):
        pytest.skip("no /usr/include/linux/tls.h to strip")
    include = tmp_path / "include" / "linux"
    include.mkdir(parents=True)
    with open(system_header, encoding="utf-8") as header:
        stripped = _older_tls_h(header.read())
    assert not any(name in stripped for name in NEWER_TLS_H_NAMES), "the stripped header still has them"
    assert "TLS_CIPHER_CHACHA20_POLY1305" in stripped and "TLS_SET_RECORD_TYPE" in stripped
    (include / "tls.h").write_text(stripped)
    tree = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "cffi_build"), tree / "cffi_build",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "ktls_ossl"), tree / "ktls_ossl",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), tree / name)
    env = dict(os.environ, CFLAGS=f"{os.environ.get('CFLAGS', '')} -I{tmp_path / 'include'}".strip())
    env.pop("PYTHONPATH", None)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert f"-I{tmp_path / 'include'}" in build.stdout + build.stderr  # the stripped header was searched first
    check = ("import json\nfrom ktls_ossl._ossl import lib\n"
             f"print(json.dumps({{name: getattr(lib, name) for name in {list(UAPI_VALUES) + list(HAS_FLAGS)!r}}}))\n")
    flags = subprocess.run([sys.executable, "-c", check], cwd=tree, env=env, capture_output=True, text=True,
                           timeout=120)
    assert flags.returncode == 0, flags.stderr
    assert json.loads(flags.stdout) == {**UAPI_VALUES, **{flag: 0 for flag in HAS_FLAGS}}
    probe = subprocess.run([sys.executable, "-m", "ktls_ossl", "probe"], cwd=tree, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    # What the running kernel accepts, not what the build's header knew: the same answer as this
    # tree's build, made with the system header.
    here = subprocess.run([sys.executable, "-m", "ktls_ossl", "probe"], cwd=tmp_path, env=_env_with_source_tree(),
                          capture_output=True, text=True, timeout=120)
    no_pad = [[line for line in output.splitlines() if line.startswith("TLS_RX_EXPECT_NO_PAD:")]
              for output in (probe.stdout, here.stdout)]
    assert no_pad[0] and no_pad[0] == no_pad[1]
