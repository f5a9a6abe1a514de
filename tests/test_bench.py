"""Smoke test of the benchmark harness: ``python -m ktls_ossl bench --quick`` end to end.

One quick run per session (tiny sizes, one run per figure: seconds on the host, well under a minute
under UML) feeds both tests: the structure of its JSON everywhere, and under a kernel with TLS that
the AFTER_FINISHED rows really had the kernel carrying both directions of both ends. A second,
smaller run hides pyOpenSSL (an optional dependency) to see its contenders skipped.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from ktls_ossl import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLS_CONTENDERS = [c.name for c in bench.CONTENDERS if c.tls]
PYOPENSSL_CONTENDERS = {"pyopenssl", "pyopenssl-ktls"}
HAVE_PYOPENSSL = importlib.util.find_spec("OpenSSL") is not None
# The figure each workload exists for: it must be a positive number.
PRIMARY = {"bulk": "throughput_mib_s", "file": "throughput_mib_s", "handshake": "handshakes_per_s",
           "latency": "p50_us", "memory": "server_rss_kib"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench")
    path = directory / "bench.json"
    command = [sys.executable, "-m", "ktls_ossl", "bench", "--quick", "--no-progress",
               "--json", str(path), "--markdown", str(directory / "bench.md")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"bench failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    with open(path, encoding="utf-8") as source:
        document = json.load(source)
    return document, result.stdout


def rows_of(document, workload):
    return document["workloads"][workload]["rows"]


def test_every_workload_and_contender_is_present(quick_run):
    document, markdown = quick_run
    assert document["schema"] == bench.SCHEMA
    assert document["settings"]["preset"] == "quick" and document["settings"]["runs"] == 1
    assert list(document["workloads"]) == list(bench.WORKLOADS)
    # The agent's contenders run only where the kernel has TLS (the agent cannot work without it),
    # pyOpenSSL's only where it is installed.
    agents = {c.name for c in bench.CONTENDERS if c.library == "agent"}
    ran = [name for name in bench.CONTENDER_NAMES if (document["machine"]["ktls_available"] or name not in agents)
           and (HAVE_PYOPENSSL or name not in PYOPENSSL_CONTENDERS)]
    assert [c["name"] for c in document["contenders"]] == ran
    assert set(document["skipped_contenders"]) == set(bench.CONTENDER_NAMES) - set(ran)
    for workload in bench.WORKLOADS:
        rows = rows_of(document, workload)
        assert {row["contender"] for row in rows} == {c.name for c in bench.CONTENDERS
                                                      if c.name in ran and workload in c.workloads}, workload
        assert not [row for row in rows if row.get("error")], [row.get("error") for row in rows]
        assert bench.WORKLOAD_TITLES[workload] in markdown
    for workload in ("bulk", "file", "latency", "memory"):
        data_contenders = [c.name for c in bench.CONTENDERS if c.name in ran and workload in c.workloads]
        versions = {(row["contender"], row["variant"]["data_tls"]) for row in rows_of(document, workload)}
        assert versions == {(c, v) for c in data_contenders for v in ("1.2", "1.3")}, workload
    if HAVE_PYOPENSSL:
        for workload in ("bulk", "file", "handshake", "latency"):
            assert PYOPENSSL_CONTENDERS <= {row["contender"] for row in rows_of(document, workload)}, workload
        assert not PYOPENSSL_CONTENDERS & {row["contender"] for row in rows_of(document, "memory")}
    variants = {(row["contender"], row["variant_label"]) for row in rows_of(document, "handshake")}
    expected = {(c, f"TLS {v} {k}") for c in TLS_CONTENDERS if c in ran for v in ("1.2", "1.3")
                for k in ("ECDSA P-256", "RSA-2048")}
    assert variants == expected | {("tcp", "TCP connect only")}
    machine = document["machine"]
    assert machine["kernel_release"] == os.uname().release
    assert "OpenSSL 3" in machine["openssl_ktls_ossl"]
    assert document["seconds"] > 0


def test_numbers_are_positive(quick_run):
    document, _ = quick_run
    for workload in bench.WORKLOADS:
        for row in rows_of(document, workload):
            where = f"{workload} {row['contender']} {row['variant_label']}"
            primary = row["metrics"][PRIMARY[workload]]
            if (workload, row["contender"]) == ("memory", "tcp"):
                # A plain socket costs the process next to no memory: a few dozen idle ones
                # (--quick) may not move RSS by a single page.
                assert primary["median"] >= 0, where
            else:
                assert primary["median"] > 0, where
            assert primary["min"] <= primary["median"] <= primary["max"], where
            for key, metric in row["metrics"].items():
                if key == "kernel_slab_kib":
                    continue  # system-wide: other processes may free memory meanwhile
                assert len(metric["runs"]) == 1, (where, key)
                assert metric["median"] is not None and math.isfinite(metric["median"]), (where, key)
                assert metric["median"] >= 0, (where, key)
            if workload != "memory":
                positive = [k for k in row["metrics"] if k.endswith(("_mib_s", "_per_s", "_us"))
                            and not k.endswith("cpu_us")]
                assert all(row["metrics"][k]["median"] > 0 for k in positive), where
            if workload == "latency":
                assert row["metrics"]["p99_us"]["median"] >= row["metrics"]["p50_us"]["median"], where


def test_ratios_come_from_the_same_run(quick_run):
    document, _ = quick_run
    for workload in bench.WORKLOADS:
        rows = rows_of(document, workload)
        for row in rows:
            for name, reference in (("cpython", "cpython-ssl"),
                                    ("openssl_ktls", bench.OPENSSL_KTLS_REFERENCE[workload])):
                ratios = row["ratios"][name]
                assert ratios["reference"] == reference
                ref = [r for r in rows if r["contender"] == reference and r["variant"] == row["variant"]]
                if row["contender"] == "tcp" and workload == "handshake":
                    assert not ref and not ratios["values"]  # TCP connect has no TLS counterpart
                    continue
                assert len(ref) == 1, (workload, row["contender"], row["variant"])
                for key, value in ratios["values"].items():
                    expected = row["metrics"][key]["median"] / ref[0]["metrics"][key]["median"]
                    assert math.isclose(value, expected, rel_tol=1e-9), (workload, row["contender"], key)
                primary = PRIMARY[workload]
                assert primary in ratios["values"], (workload, row["contender"], name)
                if row is ref[0]:
                    assert ratios["values"][primary] == pytest.approx(1.0)
    targets = document["targets"]
    assert any(t["target"].startswith("handshake") for t in targets)
    assert any(t["target"].startswith("latency") for t in targets)


def test_record_layer_is_reported_per_end(quick_run):
    document, _ = quick_run
    for row in rows_of(document, "bulk"):
        layers = row["record_layer"]
        for end in ("server", "client"):
            assert {"tx_kernel", "rx_kernel"} <= set(layers[end])
        if row["contender"].startswith("ktls-") or row["contender"] == "pyopenssl-ktls":
            assert "ktls" in layers["server"] and "ktls" in layers["client"]
        if row["contender"] in ("ktls-userspace", "cpython-ssl", "tcp", "pyopenssl"):
            assert row["record_layer_text"] in ("user space / user space", "no TLS / no TLS")
    if not document["machine"]["ktls_available"]:
        for row in rows_of(document, "bulk"):
            assert row["record_layer_text"] in ("user space / user space", "no TLS / no TLS"), row["contender"]


@pytest.mark.skipif(not HAVE_PYOPENSSL, reason="pyOpenSSL is not installed")
def test_pyopenssl_rows_match_cpython_and_report_their_record_layer(quick_run):
    """Both pyOpenSSL contenders ran every variant with CPython ssl's protocol and cipher (their own
    context set up alike), their record layer read from the socket, and pyopenssl-ktls's status
    agreeing with the socket (on a kernel without TLS: user space, with the reason)."""
    document, markdown = quick_run
    assert document["machine"]["pyopenssl"].startswith("pyOpenSSL ")
    assert document["machine"]["pyopenssl"] in markdown
    kernel_tls = document["machine"]["ktls_available"]
    for workload in ("bulk", "file", "handshake", "latency"):
        rows = rows_of(document, workload)
        for row in rows:
            if row["contender"] not in PYOPENSSL_CONTENDERS:
                continue
            where = f"{workload} {row['contender']} {row['variant_label']}"
            reference = [r for r in rows if r["contender"] == "cpython-ssl" and r["variant"] == row["variant"]]
            assert len(reference) == 1, where
            for end in ("server", "client"):
                layer, expected = row["record_layer"][end], reference[0]["record_layer"][end]
                assert (layer["version"], layer["cipher"]) == (expected["version"], expected["cipher"]), (where, end)
                assert layer["cipher"] in ("TLS_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                           "ECDHE-RSA-AES256-GCM-SHA384"), (where, end)
                if row["contender"] == "pyopenssl":
                    assert "ktls" not in layer and not layer["tx_kernel"] and not layer["rx_kernel"], (where, end)
                    continue
                status = layer["ktls"]
                assert (status["tx"], status["rx"]) == (layer["tx_kernel"], layer["rx_kernel"]), (where, end)
                assert status["tx"] == kernel_tls and status["rx"] == kernel_tls, (where, end, status["text"])
                if not kernel_tls:
                    assert status["tx_reason"], (where, end)
            expected_text = "kernel / kernel" if row["contender"] == "pyopenssl-ktls" and kernel_tls else \
                "user space / user space"
            assert row["record_layer_text"] == expected_text, where
            assert f"| {row['label']} | {row['variant_label']} | {expected_text} |" in markdown, where


def test_pyopenssl_contenders_are_skipped_without_pyopenssl(tmp_path):
    """With ``import OpenSSL`` failing, the pyOpenSSL contenders are skipped with the reason (no
    row, no failure) and the others still run."""
    path = tmp_path / "bench.json"
    hide_pyopenssl = ("import runpy, sys; sys.modules['OpenSSL'] = None; "
                      "runpy.run_module('ktls_ossl', run_name='__main__', alter_sys=True)")
    command = [sys.executable, "-c", hide_pyopenssl, "bench", "--quick", "--no-progress", "--workloads", "bulk",
               "--data-tls", "1.3", "--contenders", "pyopenssl,cpython-ssl,pyopenssl-ktls", "--json", str(path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"bench failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    with open(path, encoding="utf-8") as source:
        document = json.load(source)
    assert document["machine"]["pyopenssl"] is None
    assert set(document["skipped_contenders"]) == PYOPENSSL_CONTENDERS
    for reason in document["skipped_contenders"].values():
        assert "pyOpenSSL cannot be imported" in reason and "ktls_ossl[pyopenssl]" in reason
    assert [c["name"] for c in document["contenders"]] == ["cpython-ssl"]
    assert [row["contender"] for row in rows_of(document, "bulk")] == ["cpython-ssl"]
    assert "- skipped: pyopenssl (pyOpenSSL cannot be imported" in result.stdout


@pytest.mark.ktls
def test_after_finished_rows_ran_in_the_kernel(quick_run):
    """Under a kernel with TLS every AFTER_FINISHED row (the agent's and ktls_ossl.pyopenssl's
    included) had both directions of both ends in the kernel, as the connection itself
    (sock.ktls) and the socket (getsockopt) say."""
    document, _ = quick_run
    assert document["machine"]["ktls_available"]
    for workload in bench.WORKLOADS:
        for row in rows_of(document, workload):
            if row["contender"] not in ("ktls-after-finished", "agent-fd", "agent-forward", "pyopenssl-ktls"):
                continue
            where = f"{workload} {row['variant_label']}"
            for end in ("server", "client"):
                layer = row["record_layer"][end]
                assert layer["ktls"]["tx"] and layer["ktls"]["rx"], (where, end, layer["ktls"]["text"])
                assert layer["tx_kernel"] and layer["rx_kernel"], (where, end)
            assert row["record_layer_text"] == "kernel / kernel", where
