"""Packaging: the extension reports its OpenSSL, a build against OpenSSL < 3 stops clearly, the
version has one source, and the command line imports only what the chosen command needs."""
import importlib
import os
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
