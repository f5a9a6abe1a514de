"""Fixtures for the interop suite: real peer programs, our servers in-process, the PKI, counters,
and the coverage table printed at the end of the run and written to test-results/.

Guarantees: every peer runs in its own process group and is stopped (SIGTERM, then SIGKILL to the
group) when its test ends, whatever happened; every wait is bounded; when a test fails, each of
its peers' command line, stdout tail and stderr tail are attached to the failure report.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import pytest

from ktls_ossl import kernel, serve

from ..conftest import kernel_can_rekey
from . import coverage, peers
from .peers import LOOPBACK, Peer, PeerError, free_port, openssl_env

INTEROP_DIR = os.path.dirname(os.path.abspath(__file__))


# --- the PKI ---------------------------------------------------------------------------------------

@dataclass
class InteropPKI:
    ca: str  # ECDSA CA (PEM path)
    server: object  # ECDSA P-256 leaf for localhost / 127.0.0.1
    other: object  # ECDSA leaf for other.example (SNI)
    client: object  # ECDSA client certificate
    rsa_ca: str
    rsa_server: object  # RSA-2048 leaf for localhost
    rsa_client: object
    foreign_ca: str  # a CA nobody trusts
    foreign_server: object  # localhost, issued by the foreign CA

    def for_key(self, key_type: str):
        """(CA path, server certificate) for "ecdsa" or "rsa"."""
        return (self.ca, self.server) if key_type == "ecdsa" else (self.rsa_ca, self.rsa_server)


@pytest.fixture(scope="session")
def interop_pki(pki, rsa_pki, tmp_path_factory):
    from ..certs import CertificateAuthority

    foreign = CertificateAuthority(str(tmp_path_factory.mktemp("pki-foreign")), name="untrusted test CA")
    return InteropPKI(
        ca=pki.ca_path,
        server=pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"]),
        other=pki.issue("other.example", dns=["other.example"]),
        client=pki.issue("interop client", client=True),
        rsa_ca=rsa_pki.ca_path,
        rsa_server=rsa_pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"]),
        rsa_client=rsa_pki.issue("interop rsa client", client=True),
        foreign_ca=foreign.ca_path,
        foreign_server=foreign.issue("localhost", dns=["localhost"], ips=["127.0.0.1"]),
    )


# --- the 64 MiB payload, made once ------------------------------------------------------------------

@dataclass
class BigFile:
    path: str
    data: bytes
    sha256: str

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@pytest.fixture(scope="session")
def big_file():
    """64 MiB of pseudo-random bytes, in memory and in a file on a fast file system."""
    import shutil
    from .exchange import BIG

    directory = peers.fast_tmpdir()
    data = peers.payload(BIG, 64)
    path = os.path.join(directory, "big.bin")
    with open(path, "wb") as out:
        out.write(data)
    yield BigFile(path, data, peers.sha256_of(data))
    shutil.rmtree(directory, ignore_errors=True)


# --- kernel state ----------------------------------------------------------------------------------

KTLS = kernel.probe().ulp_available
# Pinned to the kernel's version, not to the probe: a probe that wrongly says "no rekey" must not
# turn the rekey tests into "refused" tests that pass (tests/test_post_handshake.py checks the probe).
REKEY = KTLS and kernel_can_rekey()


class Counters:
    """/proc/net/tls_stat deltas over a block of work (empty where the tls module is absent)."""

    def __init__(self):
        kernel.probe()  # the probe's own installs happen once per process, never inside a delta
        self.before = kernel.tls_stat()

    def delta(self) -> dict[str, int]:
        after = kernel.tls_stat()
        return {name: after[name] - self.before.get(name, 0) for name in after}

    def expect_installs(self, tx: int, rx: int, what: str) -> None:
        """Exactly this many TLS_TX / TLS_RX installations happened (ours plus the peer's)."""
        if not KTLS:
            return
        delta = self.delta()
        assert (delta.get("TlsTxSw"), delta.get("TlsRxSw")) == (tx, rx), (
            f"{what}: expected {tx} TX and {rx} RX kTLS installations, /proc/net/tls_stat moved by {delta}")


@pytest.fixture
def counters():
    return Counters


def expect_our_ktls(sock, what: str = "our side") -> None:
    """Kernel TLS carries both directions in the VM; on the host the fallback says why not.
    ``sock`` is a KTLSSocket or its KTLSStatus (as our servers record it)."""
    status = getattr(sock, "ktls", sock)
    assert status is not None, f"{what}: no kTLS status"
    if KTLS:
        assert status.tx and status.rx, f"{what}: {status}"
        assert status.tx_reason is None and status.rx_reason is None, f"{what}: {status}"
    else:
        assert not status.tx and not status.rx, f"{what}: {status}"
        assert "modprobe tls" in (status.tx_reason or "") and "modprobe tls" in (status.rx_reason or ""), (
            f"{what}: the fallback must say why: {status}")


# --- peers -----------------------------------------------------------------------------------------

class Launcher:
    """Starts peers for one test and stops every one of them when the test ends."""

    def __init__(self, request, workdir: str):
        self.request = request
        self.workdir = workdir
        self.started: list[Peer] = []
        request.node._interop_peers = self.started

    def _register(self, peer: Peer) -> Peer:
        self.started.append(peer)
        return peer

    def run(self, name: str, argv: list[str], *, env=None, stdin: bool = True, cwd=None) -> Peer:
        return self._register(Peer(name, argv, workdir=cwd or self.workdir, env=env, stdin=stdin).start())

    def listen(self, name: str, argv_for_port, *, env=None, cwd=None) -> Peer:
        """Start a server on a free port and wait until it accepts connections; a peer that lost
        the port to someone else is restarted on another."""
        for attempt in range(3):
            port = free_port()
            peer = self._register(Peer(name, argv_for_port(port), workdir=cwd or self.workdir, env=env,
                                       port=port).start())
            try:
                return peer.wait_listening()
            except PeerError:
                output = peer.stderr_text() + (peer.stdout.text() if peer.stdout else "")
                if "in use" in output.lower() and attempt < 2:
                    peer.stop()
                    continue
                raise
        raise AssertionError("unreachable")

    # --- OpenSSL ---

    def s_server(self, cert, *, mode: str = "data", ktls: bool = False, cipher_args=(), extra=(),
                 cwd=None) -> Peer:
        """openssl s_server. Modes: "data" (-brief: stdin goes to the client, stdout is exactly the
        client's bytes, a summary goes to stderr, no command letters), "commands" (verbose: the
        command letters k, K, r, R, q... work on stdin; stdout mixes logs and the client's bytes),
        "rev" (-rev), "www" (-www status page), "WWW" (-WWW files from its working directory)."""
        flags = {"data": ["-brief"], "commands": [], "rev": ["-rev"], "www": ["-www"], "WWW": ["-WWW"]}[mode]
        name = f"s_server-{mode}{'-ktls' if ktls else ''}"
        return self.listen(name, lambda port: [
            "openssl", "s_server", "-accept", f"{LOOPBACK}:{port}", "-cert", cert.cert_path,
            "-key", cert.key_path, *flags, *cipher_args, *extra], env=openssl_env(self.workdir, ktls), cwd=cwd)

    def s_client(self, port: int, ca: str, *, ktls: bool = False, cipher_args=(), extra=(),
                 servername: str = "localhost", data: bool = True) -> Peer:
        """openssl s_client verifying the server. ``data``: -brief -ign_eof (stdout is exactly the
        server's bytes, the summary goes to stderr, stdin EOF does not close); otherwise -brief
        with command letters on stdin."""
        flags = ["-brief", "-ign_eof"] if data else ["-brief"]
        return self.run(f"s_client{'-ktls' if ktls else ''}", [
            "openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-servername", servername,
            "-verify_hostname", servername, "-verify_return_error", "-CAfile", ca, *flags,
            *cipher_args, *extra], env=openssl_env(self.workdir, ktls))

    # --- GnuTLS ---

    def gnutls_serv(self, cert, *, priority: str | None = None, extra=()) -> Peer:
        """gnutls-serv --echo (C-string echo: payloads must not contain NUL; --crlf keeps CRLF)."""
        return self.listen("gnutls-serv", lambda port: [
            "gnutls-serv", "--echo", "--crlf", "-p", str(port), "--x509certfile", cert.cert_path,
            "--x509keyfile", cert.key_path, *(["--priority", priority] if priority else []), *extra])

    def gnutls_cli(self, port: int, ca: str, *, priority: str | None = None, extra=(),
                   servername: str = "localhost") -> Peer:
        """gnutls-cli: stdin to the server, the server's bytes to stdout, information to a log."""
        log = os.path.join(self.workdir, f"gnutls-cli-{len(self.started)}.log")
        peer = self.run("gnutls-cli", [
            "gnutls-cli", "-p", str(port), "--x509cafile", ca, "--logfile", log,
            "--sni-hostname", servername, "--verify-hostname", servername,
            *(["--priority", priority] if priority else []), *extra, LOOPBACK])
        peer.logfile = log
        return peer


@pytest.fixture
def launch(request, tmp_path):
    launcher = Launcher(request, str(tmp_path))
    yield launcher
    for peer in launcher.started:
        peer.stop()


def read_log(peer) -> str:
    try:
        with open(peer.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# --- our servers, in-process -----------------------------------------------------------------------

class OurServers:
    def __init__(self, request):
        self.running = []
        request.node._interop_servers = self.running

    def _start(self, server):
        # A short poll interval: shutdown() at the end of each test returns within 50 ms.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.running.append((server, thread))
        return server

    def echo(self, context, *, read_path="recv_into", write_path="sendall"):
        return self._start(serve.TLSEchoServer((LOOPBACK, 0), context, read_path=read_path,
                                               write_path=write_path))

    def files(self, context, root):
        return self._start(serve.HTTPSFileServer((LOOPBACK, 0), context, root))

    def stop(self):
        for server, thread in self.running:
            server.shutdown()
            server.server_close()
            thread.join(10)


@pytest.fixture
def our_servers(request):
    servers = OurServers(request)
    yield servers
    servers.stop()


def port_of(server) -> int:
    return server.server_address[1]


# --- failure reports and the coverage table ----------------------------------------------------------

def _cell_key(props: dict):
    return (props["peer"], props["role"], props["version"], props["cipher"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for peer in getattr(item, "_interop_peers", []):
            report.sections.append((f"peer {peer.name}", peer.report()))
            log = getattr(peer, "logfile", None)
            if log:
                report.sections.append((f"peer {peer.name} log", read_log(peer)[-3000:]))
        for server, _ in getattr(item, "_interop_servers", []):
            report.sections.append((f"our {type(server).__name__}",
                                    f"records: {server.records!r}\nerrors: {server.errors!r}"))
    state = item.__dict__.setdefault("_interop_outcome", {"status": "pass", "note": ""})
    coverage.COVERAGE.durations[item.nodeid] = coverage.COVERAGE.durations.get(item.nodeid, 0.0) + report.duration
    if report.failed:
        state["status"] = "FAIL"
    elif report.skipped and state["status"] != "FAIL":
        if hasattr(report, "wasxfail"):
            state.update(status="pending", note=report.wasxfail)
        else:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reason = reason.removeprefix("Skipped: ")
            state.update(status="n/a" if reason.startswith("n/a") else "skip", note=reason)
    if report.when != "teardown":
        return
    for name, props in item.user_properties:
        if name not in ("interop_cell", "interop_feature"):
            continue
        note = "; ".join(filter(None, [state["note"], props.get("note", "")]))
        if name == "interop_cell":
            coverage.COVERAGE.add(coverage.COVERAGE.matrix, _cell_key(props), state["status"], note, item.nodeid,
                                  props.get("paths", ""), props.get("row_note", ""))
        else:
            coverage.COVERAGE.add(coverage.COVERAGE.features, (props["feature"], props["peer"], props["role"]),
                                  state["status"], note, item.nodeid)


class Cell:
    """The coverage entry of the running test; ``note`` adds to what the table shows for it."""

    def __init__(self, props: dict):
        self.props = props

    def note(self, text: str) -> None:
        if text and text not in self.props["note"]:
            self.props["note"] = f"{self.props['note']}; {text}" if self.props["note"] else text

    def paths(self, text: str) -> None:
        """Our I/O paths in this cell (shown inside the cell)."""
        self.props["paths"] = text

    def row_note(self, text: str) -> None:
        """A note about the whole row (the peer's limits, what the row runs)."""
        self.props["row_note"] = text


@pytest.fixture
def cell(request):
    """cell(peer=..., role=..., version=..., cipher=...): this test covers that matrix cell."""
    def declare(*, peer: str, role: str, version: int, cipher) -> Cell:
        props = {"peer": peer, "role": role, "version": peers.VERSION_LABEL[version],
                 "cipher": peers.CIPHER_LABEL[cipher], "note": ""}
        request.node.user_properties.append(("interop_cell", props))
        return Cell(props)
    return declare


@pytest.fixture
def feature(request):
    """feature(name, peer=..., role=...): this test covers that feature against that peer."""
    def declare(name: str, *, peer: str, role: str) -> Cell:
        props = {"feature": name, "peer": peer, "role": role, "note": ""}
        request.node.user_properties.append(("interop_feature", props))
        return Cell(props)
    return declare


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if coverage.COVERAGE.empty():
        return
    label = os.environ.get("KTLS_VM_KERNEL", "host")
    probe = kernel.probe()
    interop = [d for nodeid, d in coverage.COVERAGE.durations.items() if "interop" in nodeid]
    text = coverage.COVERAGE.render(label, probe.kernel_release, probe.ulp_available, sum(interop))
    path = coverage.results_path(label)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
    terminalreporter.write_sep("=", "interop coverage")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"(written to {path})")


def pytest_sessionfinish(session, exitstatus):
    peers.kill_all_live()
