"""Smoke test of the benchmark harness: ``python -m ktls_ossl bench --quick`` end to end.

One quick run per session (tiny sizes, one run per figure: seconds on the host, well under a minute
under UML) feeds both tests: the structure of its JSON everywhere, and under a kernel with TLS that
the AFTER_FINISHED rows really had the kernel carrying both directions of both ends. A second,
smaller run hides pyOpenSSL (an optional dependency) to see its contenders skipped.

The asyncio section (aio-* workloads and contenders) runs in the same quick run: its rows, the
bytes the file clients compared, where each end's record layer ran (on a kernel without TLS
ktls_ossl.asyncio is the user-space fallback, labelled so, and aiofastnet is skipped with the
reason), and its ratios against aio-stock / aio-aiofastnet. Two trials run in this process check
that the file client's comparison catches a corrupted byte.

The burst workload (ThreadingHTTPServer, listen backlog 5, a burst of http.client clients) runs in
the quick run too; trials run in this process check that every client of a small burst gets the
body the test itself knows (SHA-256 computed here), that a server sending another body is counted
as failed clients, and that a server that dies fails the run instead of being counted.
"""
from __future__ import annotations

import hashlib
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
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_AIOFASTNET = importlib.util.find_spec("aiofastnet") is not None
ASYNCIO_CONTENDERS = [c.name for c in bench.CONTENDERS if c.loop]
# The figure each workload exists for: it must be a positive number.
PRIMARY = {"bulk": "throughput_mib_s", "file": "throughput_mib_s", "handshake": "handshakes_per_s",
           "latency": "p50_us", "memory": "server_rss_kib", "burst": "clients_ok", "aio-file": "throughput_mib_s",
           "aio-echo": "p50_us", "aio-handshake": "handshakes_per_s"}


def expected_to_run(name, document) -> bool:
    """Whether a contender should have run here, from what the test process sees (not from the bench's
    own skip list): the agent needs kernel TLS, pyOpenSSL and uvloop must be installed, and aiofastnet
    turns its kTLS on only where the kernel has TLS."""
    kernel_tls = document["machine"]["ktls_available"]
    contender = bench.BY_NAME[name]
    if contender.library == "agent":
        return kernel_tls
    if contender.library == "pyopenssl":
        return HAVE_PYOPENSSL
    if contender.loop == "uvloop":
        return HAVE_UVLOOP
    if contender.loop == "aiofastnet":
        return HAVE_AIOFASTNET and kernel_tls
    return True


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
    # pyOpenSSL's only where it is installed, aiofastnet only where its kTLS turns on.
    ran = [name for name in bench.CONTENDER_NAMES if expected_to_run(name, document)]
    assert [c["name"] for c in document["contenders"]] == ran
    assert set(document["skipped_contenders"]) == set(bench.CONTENDER_NAMES) - set(ran)
    for workload in bench.WORKLOADS:
        rows = rows_of(document, workload)
        assert {row["contender"] for row in rows} == {c.name for c in bench.CONTENDERS
                                                      if c.name in ran and workload in c.workloads}, workload
        assert not [row for row in rows if row.get("error")], [row.get("error") for row in rows]
        assert bench.WORKLOAD_TITLES[workload] in markdown
    for workload in ("bulk", "file", "latency", "memory", "burst", "aio-file", "aio-echo"):
        data_contenders = [c.name for c in bench.CONTENDERS if c.name in ran and workload in c.workloads]
        versions = {(row["contender"], row["variant"]["data_tls"]) for row in rows_of(document, workload)}
        assert versions == {(c, v) for c in data_contenders for v in ("1.2", "1.3")}, workload
    if HAVE_PYOPENSSL:
        for workload in ("bulk", "file", "handshake", "latency"):
            assert PYOPENSSL_CONTENDERS <= {row["contender"] for row in rows_of(document, workload)}, workload
        assert not PYOPENSSL_CONTENDERS & {row["contender"] for row in rows_of(document, "memory")}
    variants = {(row["contender"], row["variant_label"]) for row in rows_of(document, "handshake")}
    expected = {(c, f"TLS {v} {k}") for c in TLS_CONTENDERS if c in ran and "handshake" in bench.BY_NAME[c].workloads
                for v in ("1.2", "1.3") for k in ("ECDSA P-256", "RSA-2048")}
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
            for name, reference in (("cpython", "aio-stock" if workload.startswith("aio-") else "cpython-ssl"),
                                    ("openssl_ktls", bench.OPENSSL_KTLS_REFERENCE[workload])):
                ratios = row["ratios"][name]
                assert ratios["reference"] == reference
                ref = [r for r in rows if r["contender"] == reference and r["variant"] == row["variant"]]
                if row["contender"] == "tcp" and workload == "handshake":
                    assert not ref and not ratios["values"]  # TCP connect has no TLS counterpart
                    continue
                if reference in document["skipped_contenders"]:
                    assert not ref and not ratios["values"], (workload, row["contender"], name)
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
    assert {t["target"].split()[0] for t in targets if t["target"].startswith("aio-")} == {"aio-file", "aio-echo"}


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


# --- the asyncio section ---------------------------------------------------------------------------


def test_workloads_option_expands_asyncio():
    parse = bench._workloads_arg
    assert parse("asyncio") == bench.ASYNCIO_WORKLOADS == ("aio-file", "aio-echo", "aio-handshake")
    assert parse("aio-echo,bulk") == ("bulk", "aio-echo")  # in the report's order
    assert parse("file,asyncio,aio-file") == ("file",) + bench.ASYNCIO_WORKLOADS
    with pytest.raises(Exception):
        parse("aio-nothing")


def test_asyncio_rows_ran_and_files_arrived_intact(quick_run):
    """Every asyncio contender that should run here ran every variant without failing; each file
    client compared every byte of the file it received; the server said how it sent the file."""
    document, markdown = quick_run
    kernel_tls = document["machine"]["ktls_available"]
    expected = [name for name in ASYNCIO_CONTENDERS if expected_to_run(name, document)]
    assert {"aio-ktls", "aio-stock"} <= set(expected)
    for name in ASYNCIO_CONTENDERS:
        assert (name in expected) == (name not in document["skipped_contenders"]), name
    variants = {"aio-file": ("TLS 1.2", "TLS 1.3"), "aio-echo": ("TLS 1.2", "TLS 1.3"),
                "aio-handshake": ("TLS 1.2 ECDSA P-256", "TLS 1.3 ECDSA P-256")}
    file_bytes = document["settings"]["file_mib"] * bench.MIB
    for workload in bench.ASYNCIO_WORKLOADS:
        rows = rows_of(document, workload)
        assert sorted((row["contender"], row["variant_label"]) for row in rows) == \
            sorted((name, label) for name in expected for label in variants[workload]), workload
        for row in rows:
            where = f"{workload} {row['contender']} {row['variant_label']}"
            assert not row.get("error"), (where, row.get("error"))
            for end in ("server", "client"):
                layer = row["record_layer"][end]
                version = row["variant_label"].split()[1]
                assert layer["version"] == f"TLSv{version}", (where, end)
                assert "AES256-GCM" in layer["cipher"].replace("_", "-").replace("AES-256", "AES256"), (where, end)
            if workload == "aio-file":
                assert row["verified_bytes"] == file_bytes, where
                assert row["file_sent_by"], where
    by = {(row["contender"], row["variant_label"]): row for row in rows_of(document, "aio-file")}
    for version in ("TLS 1.2", "TLS 1.3"):
        sent_by = by["aio-ktls", version]["file_sent_by"]
        assert sent_by == (["os.sendfile into kTLS"] if kernel_tls else
                           ["read + write (ktls_ossl.asyncio fallback: TX not in the kernel)"]), (version, sent_by)
        assert by["aio-stock", version]["file_sent_by"] == ["read + write (asyncio's sendfile fallback)"]
        if ("aio-aiofastnet", version) in by:
            assert by["aio-aiofastnet", version]["file_sent_by"] == ["SSL_sendfile (OpenSSL kTLS)"]
    assert "### asyncio section" in markdown
    for workload in bench.ASYNCIO_WORKLOADS:
        assert bench.WORKLOAD_TITLES[workload] in markdown


def test_asyncio_record_layer_is_checked_on_the_socket(quick_run):
    """aio-ktls: its KTLSStatus agrees with getsockopt on each end, kernel both ways where the kernel
    has TLS, else the user-space fallback with the reason, labelled so in the report. Stock asyncio
    and uvloop: user space. aiofastnet: its own flags agree with getsockopt, and TX at least is in
    the kernel (it runs only where its kTLS turned on)."""
    document, markdown = quick_run
    kernel_tls = document["machine"]["ktls_available"]
    for workload in bench.ASYNCIO_WORKLOADS:
        for row in rows_of(document, workload):
            where = f"{workload} {row['contender']} {row['variant_label']}"
            layers = row["record_layer"]
            if row["contender"] == "aio-ktls":
                for end in ("server", "client"):
                    status = layers[end]["ktls"]
                    assert (status["tx"], status["rx"]) == (layers[end]["tx_kernel"], layers[end]["rx_kernel"]), \
                        (where, end)
                    assert status["tx"] == kernel_tls and status["rx"] == kernel_tls, (where, end, status["text"])
                    if not kernel_tls:
                        assert status["tx_reason"] and status["rx_reason"], (where, end)
                expected = "kernel / kernel" if kernel_tls else "user space / user space"
                assert row["record_layer_text"] == expected, where
                assert f"| {row['label']} | {row['variant_label']} | {expected} |" in markdown, where
            elif row["contender"] in ("aio-stock", "aio-uvloop"):
                assert row["record_layer_text"] == "user space / user space", where
                assert "ktls" not in layers["server"] and "aiofastnet_ktls" not in layers["server"], where
            else:
                assert row["contender"] == "aio-aiofastnet" and kernel_tls, where
                for end in ("server", "client"):
                    own = layers[end]["aiofastnet_ktls"]
                    assert (own["tx"], own["rx"]) == (layers[end]["tx_kernel"], layers[end]["rx_kernel"]), (where, end)
                    assert layers[end]["tx_kernel"], (where, end)
    if not kernel_tls and HAVE_AIOFASTNET:
        reason = document["skipped_contenders"]["aio-aiofastnet"]
        assert "kTLS" in reason and "neither direction in the kernel" in reason, reason
        assert f"- skipped: aio-aiofastnet ({reason})" in markdown
    if kernel_tls:
        assert document["machine"]["asyncio"]["aiofastnet_trials"]
    assert bench.kernel_title(document["machine"]) in markdown


def _aio_file_params(tmp_path, size):
    path = bench._make_file(str(tmp_path), size)
    return {"data_tls": "1.3", "chunk": 64 * 1024, "message": 100, "file_path": path, "file_bytes": size,
            "io_timeout": 30.0}


def test_aio_file_trial_delivers_the_file(tmp_path):
    """One aio-file run of stock asyncio, in this process's children: every byte compared."""
    pki = bench.make_pki(str(tmp_path))
    size = 3 * bench.MIB + 12345
    results = bench.run_trial("aio-file", bench.BY_NAME["aio-stock"], _aio_file_params(tmp_path, size), pki, 60)
    assert results["client"]["verified_bytes"] == size
    assert results["server"]["bytes"] == size
    assert bench.run_metrics("aio-file", results)["throughput_mib_s"] > 0


def test_aio_file_client_detects_a_corrupted_byte(tmp_path, monkeypatch):
    """The same run with a server that flips one bit of the file: the client's comparison fails it."""
    pki = bench.make_pki(str(tmp_path))
    size = 3 * bench.MIB + 12345

    async def corrupting_send(end, writer, source, size):
        data = bytearray(source.read())
        data[size // 2] ^= 0x10
        writer.write(bytes(data))
        await writer.drain()
        return len(data), "corrupted on purpose"

    monkeypatch.setattr(bench, "_aio_send_file", corrupting_send)  # the children are forked after this
    with pytest.raises(bench.BenchError, match="differ from the file"):
        bench.run_trial("aio-file", bench.BY_NAME["aio-stock"], _aio_file_params(tmp_path, size), pki, 60)


# --- the burst workload ----------------------------------------------------------------------------


def _burst_params(clients, body, expected=None):
    """The server sends ``body``; the clients check length and SHA-256 against ``expected`` (the
    same body unless given), both computed here, independently of the bench."""
    expected = body if expected is None else expected
    return {"data_tls": "1.3", "io_timeout": 30.0, "burst_clients": clients, "burst_body": body,
            "burst_body_length": len(expected), "burst_body_sha256": hashlib.sha256(expected).hexdigest()}


@pytest.mark.parametrize("name", ["ktls-after-finished", "cpython-ssl"])
def test_burst_trial_serves_every_client(tmp_path, name):
    """20 clients at once against the backlog-5 server: each got the body, which the server sent
    exactly 20 times; the record layer ran where the kernel allows (AFTER_FINISHED: both ways in
    the kernel where it has TLS)."""
    pki = bench.make_pki(str(tmp_path))
    body = os.urandom(1024)
    results = bench.run_trial("burst", bench.BY_NAME[name], _burst_params(20, body), pki, 120)
    client, server = results["client"], results["server"]
    assert client["counts"] == {"ok": 20, "reset": 0, "refused": 0, "timeout": 0, "bad_body": 0, "other": 0}
    assert not client["errors"] and len(client["durations"]) == 20
    assert server["served"] == 20 and server["backlog"] == 5
    assert not server["handler_errors"]
    metrics = bench.run_metrics("burst", results)
    assert metrics["clients_ok"] == 20 and metrics["failed"] == 0
    assert metrics["wall_s"] > 0 and metrics["server_rss_growth_mib"] >= 0
    kernel_tls = bench.kernel.probe().ulp_available
    for end in ("server", "client"):
        layer = results[end]["record_layer"]
        assert layer["version"] == "TLSv1.3", end
        expected = kernel_tls and name == "ktls-after-finished"
        assert (layer["tx_kernel"], layer["rx_kernel"]) == (expected, expected), (end, layer)


def _wrong_after_first(handler, body):
    """The server's answer, with one byte of the body flipped after the first (warm-up) request."""
    _wrong_after_first.count += 1
    if _wrong_after_first.count > 1:
        body = bytes([body[0] ^ 0x01]) + body[1:]
    ORIGINAL_RESPOND(handler, body)


_wrong_after_first.count = 0
ORIGINAL_RESPOND = bench._burst_respond


def test_burst_clients_count_a_wrong_body(tmp_path, monkeypatch):
    """A server that sends a corrupted body to every burst client: none is counted as served
    well, each as a failed client (bad_body), and the failure shows in the metrics."""
    pki = bench.make_pki(str(tmp_path))
    monkeypatch.setattr(bench, "_burst_respond", _wrong_after_first)  # the children are forked after this
    results = bench.run_trial("burst", bench.BY_NAME["cpython-ssl"], _burst_params(4, os.urandom(1024)), pki, 120)
    assert results["client"]["counts"]["ok"] == 0
    assert results["client"]["counts"]["bad_body"] == 4
    assert results["client"]["errors"] == {"BodyMismatch": 4}
    assert results["server"]["served"] == 4  # sent, but not what the clients expect
    metrics = bench.run_metrics("burst", results)
    assert metrics["failed"] == 4 and metrics["bad_bodies"] == 4


def test_burst_fails_the_run_when_the_body_is_wrong_from_the_start(tmp_path):
    """The clients expect another body than the server sends: the warm-up request already fails,
    and with it the run."""
    pki = bench.make_pki(str(tmp_path))
    body = os.urandom(1024)
    params = _burst_params(4, body, expected=body[:-1] + bytes([body[-1] ^ 0x80]))
    with pytest.raises(bench.BenchError, match="BodyMismatch"):
        bench.run_trial("burst", bench.BY_NAME["cpython-ssl"], params, pki, 120)


def _die_after_first(handler, body):
    _die_after_first.count += 1
    if _die_after_first.count > 1:
        os._exit(3)
    ORIGINAL_RESPOND(handler, body)


_die_after_first.count = 0


def test_burst_fails_the_run_when_the_server_dies(tmp_path, monkeypatch):
    """A server process that dies in the middle of the burst fails the run (it is no count of
    failed connections)."""
    pki = bench.make_pki(str(tmp_path))
    monkeypatch.setattr(bench, "_burst_respond", _die_after_first)
    with pytest.raises(bench.BenchError, match="server process died"):
        bench.run_trial("burst", bench.BY_NAME["ktls-after-finished"], _burst_params(8, os.urandom(1024)), pki, 120)


def test_burst_accounts_are_checked():
    """check_burst refuses a client that counted more good responses than the server sent, and
    outcomes that do not add up to the clients."""
    server = {"served": 3}
    counts = {"ok": 4, "reset": 0, "refused": 0, "timeout": 0, "bad_body": 0, "other": 0}
    with pytest.raises(bench.BenchError, match="the server sent 3"):
        bench.check_burst({"server": server, "client": {"clients": 4, "counts": counts}})
    with pytest.raises(bench.BenchError, match="outcomes for 5 clients"):
        bench.check_burst({"server": {"served": 4}, "client": {"clients": 5, "counts": counts}})
    bench.check_burst({"server": {"served": 4}, "client": {"clients": 4, "counts": counts}})


def _burst_document(failed, growth, kernel=True):
    layer = {"tx_kernel": kernel, "rx_kernel": kernel}
    rows = [{"contender": name, "variant": {"data_tls": "1.3"}, "variant_label": "TLS 1.3",
             "record_layer": {"server": layer, "client": layer},
             "metrics": {"failed": {"median": failed[index]}, "server_rss_growth_mib": {"median": growth[index]},
                         "clients_ok": {"median": 10 - failed[index]}}}
            for index, name in enumerate(("ktls-after-finished", "cpython-ssl", "ktls-after-ccs"))]
    document = {"machine": {"uml": True}, "workloads": {"burst": {"rows": rows}}}
    bench.add_ratios(document, "burst")
    return document


def test_burst_targets_compare_failure_counts():
    """The failed-connection target compares counts (CPython's is often 0, where no ratio exists);
    the memory target is the ratio. Both hold for the user-space fallback too (issue 18): a row
    that fell back is judged, with a note that says so."""
    def burst_targets(document):
        return {t["target"]: t for t in bench.evaluate_targets(document) if t["target"].startswith("burst")}

    targets = burst_targets(_burst_document([2, 0, 0], [1.5, 1.0, 1.0]))
    failed = targets["burst TLS 1.3: failed connections with backlog 5 vs CPython ssl"]
    assert failed["met"] is False and failed["value_text"] == "2 vs 0"
    growth = targets["burst TLS 1.3: server RSS growth vs CPython ssl"]
    assert growth["met"] is False and growth["value"] == pytest.approx(1.5)
    targets = burst_targets(_burst_document([0, 0, 0], [0.5, 1.0, 1.0]))
    assert all(t["met"] is True for t in targets.values())
    assert bench.target_value_text(targets["burst TLS 1.3: failed connections with backlog 5 vs CPython ssl"]) \
        == "0 vs 0"
    targets = burst_targets(_burst_document([3, 0, 0], [2.0, 1.0, 1.0], kernel=False))
    assert all(t["met"] is False and t["note"].startswith("user-space fallback") for t in targets.values())
    targets = burst_targets(_burst_document([0, 0, 0], [0.5, 1.0, 1.0], kernel=False))
    assert all(t["met"] is True and t["note"].startswith("user-space fallback") for t in targets.values())


def test_burst_rows_in_the_quick_run(quick_run):
    """Every burst row's clients add up, the server sent at least what the clients got, and the
    report has the table and the targets."""
    document, markdown = quick_run
    clients = document["settings"]["burst_clients"]
    for row in rows_of(document, "burst"):
        metrics = row["metrics"]
        where = f"{row['contender']} {row['variant_label']}"
        assert metrics["clients_ok"]["median"] + metrics["failed"]["median"] == clients, where
        assert metrics["server_served"]["median"] >= metrics["clients_ok"]["median"], where
        assert row["tcp_sysctls"], where
    assert {row["contender"] for row in rows_of(document, "burst")} == {
        "ktls-after-finished", "ktls-after-ccs", "ktls-userspace", "cpython-ssl"}
    names = {t["target"] for t in document["targets"]}
    for version in ("1.2", "1.3"):
        assert f"burst TLS {version}: failed connections with backlog 5 vs CPython ssl" in names
        assert f"burst TLS {version}: server RSS growth vs CPython ssl" in names
    assert bench.WORKLOAD_TITLES["burst"] in markdown
