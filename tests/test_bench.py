"""Smoke test of the benchmark harness: ``python -m ktls_ossl bench --quick`` end to end.

One quick run per session (tiny sizes, one run per figure: seconds on the host, well under a minute
under UML) feeds both tests: the structure of its JSON everywhere, and under a kernel with TLS that
the AFTER_FINISHED rows really had the kernel carrying both directions of both ends.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from ktls_ossl import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLS_CONTENDERS = [c.name for c in bench.CONTENDERS if c.tls]
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
    # The agent's contenders run only where the kernel has TLS (the agent cannot work without it).
    agents = {c.name for c in bench.CONTENDERS if c.library == "agent"}
    ran = [name for name in bench.CONTENDER_NAMES if document["machine"]["ktls_available"] or name not in agents]
    assert [c["name"] for c in document["contenders"]] == ran
    assert set(document["skipped_contenders"]) == set(bench.CONTENDER_NAMES) - set(ran)
    for workload in bench.WORKLOADS:
        rows = rows_of(document, workload)
        assert {row["contender"] for row in rows} == {c.name for c in bench.CONTENDERS
                                                      if c.name in ran and workload in c.workloads}, workload
        assert not [row for row in rows if row.get("error")], [row.get("error") for row in rows]
        assert bench.WORKLOAD_TITLES[workload] in markdown
    data_contenders = [c.name for c in bench.CONTENDERS if c.name in ran and "bulk" in c.workloads]
    for workload in ("bulk", "file", "latency", "memory"):
        versions = {(row["contender"], row["variant"]["data_tls"]) for row in rows_of(document, workload)}
        assert versions == {(c, v) for c in data_contenders for v in ("1.2", "1.3")}, workload
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
        if row["contender"].startswith("ktls-"):
            assert "ktls" in layers["server"] and "ktls" in layers["client"]
        if row["contender"] in ("ktls-userspace", "cpython-ssl", "tcp"):
            assert row["record_layer_text"] in ("user space / user space", "no TLS / no TLS")
    if not document["machine"]["ktls_available"]:
        for row in rows_of(document, "bulk"):
            assert row["record_layer_text"] in ("user space / user space", "no TLS / no TLS"), row["contender"]


@pytest.mark.ktls
def test_after_finished_rows_ran_in_the_kernel(quick_run):
    """Under a kernel with TLS every AFTER_FINISHED row (the agent's included) had both directions
    of both ends in the kernel, as the connection itself (sock.ktls) and the socket (getsockopt) say."""
    document, _ = quick_run
    assert document["machine"]["ktls_available"]
    for workload in bench.WORKLOADS:
        for row in rows_of(document, workload):
            if row["contender"] not in ("ktls-after-finished", "agent-fd", "agent-forward"):
                continue
            where = f"{workload} {row['variant_label']}"
            for end in ("server", "client"):
                layer = row["record_layer"][end]
                assert layer["ktls"]["tx"] and layer["ktls"]["rx"], (where, end, layer["ktls"]["text"])
                assert layer["tx_kernel"] and layer["rx_kernel"], (where, end)
            assert row["record_layer_text"] == "kernel / kernel", where
