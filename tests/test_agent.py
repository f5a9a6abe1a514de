"""The handshake agent (ktls_ossl.agent, ktls_ossl/agent_server.py): handshakes run by a separate
process that holds the private keys, kernel TLS keys in the application's socket.

The agent runs as ``python -m ktls_ossl agent``; the peers are CPython's ssl (or, for what CPython
cannot do: TLS 1.3 CCM suites, KeyUpdate, a ktls_ossl socket in user space or kTLS); the oracles are
the bytes' CRC-32 across the connection, what the peer's own ssl reports (version, cipher, ALPN,
session reuse, the peer certificate), and the kernel's counters.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

import ktls_ossl
from ktls_ossl import kernel
from ktls_ossl.agent import AgentContext, AgentSession
from ktls_ossl.errors import KTLSAgentError, KTLSRekeyUnsupportedError
from ktls_ossl.keys import TLS_1_2_VERSION, TLS_1_3_VERSION, KernelCipher

from .agenthelpers import PYTHON, ROOT, echo_checksum, payload, send_and_check, start_agent
from .conftest import RekeyCounters, kernel_can_rekey, loopback_pair
from .timing import scaled
from .tlshelpers import COMBINATION_IDS, COMBINATIONS, TLS12_SUITES, TLS13_SUITES, in_thread, pin, versioned

MODES = ["fd", "forward"]
DATA = 200_000


@pytest.fixture(scope="module")
def identities(pki):
    """The agent's certificates: a server's for localhost, another for other.test, a client's."""
    return {"localhost": pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"]),
            "other": pki.issue("other.test", dns=["other.test"]),
            "client": pki.issue("agent-client", client=True)}


@pytest.fixture(scope="module")
def agent(tmp_path_factory, identities, pki):
    process = start_agent(str(tmp_path_factory.mktemp("agent")), list(identities.values()), ca=pki.ca_path)
    yield process
    process.stop()


def common_name(cert: dict) -> str:
    return dict(entry[0] for entry in cert["subject"])["commonName"]


def _peer_context(protocol, pki, version, cipher, cpython, settings, identity=None):
    """The peer's context: CPython's ssl where it can pin the cipher, ktls_ossl in user space for
    TLS 1.3 CCM (CPython cannot enable those suites) or where asked."""
    cpython = cpython and not (version == TLS_1_3_VERSION and cipher is KernelCipher.AES_CCM_128)
    ctx = ssl.SSLContext(protocol) if cpython else ktls_ossl.SSLContext(protocol)
    if not cpython:
        ctx.ktls_policy = ktls_ossl.Policy.USERSPACE
    if identity is not None:
        ctx.load_cert_chain(identity.chain_path, identity.key_path)
    ctx.load_verify_locations(pki.ca_path)
    if cipher is not None:
        pin(ctx, version, cipher)
    elif version is not None:
        versioned(ctx, version)
    for name, value in settings.items():
        setattr(ctx, name, value)
    return ctx


def peer_server_context(pki, identities, version=None, cipher=None, *, cpython=True, **settings):
    return _peer_context(ssl.PROTOCOL_TLS_SERVER, pki, version, cipher, cpython, settings, identities["localhost"])


def peer_client_context(pki, version=None, cipher=None, *, cpython=True, **settings):
    return _peer_context(ssl.PROTOCOL_TLS_CLIENT, pki, version, cipher, cpython, settings)


def through_agent(agent, role: str, mode: str, peer_ctx, *, hostname="localhost", app_settings=None,
                  wrap_kwargs=None, peer_kwargs=None, exchange=True):
    """One connection: our side's handshake run by the agent, the peer's by ``peer_ctx`` in a
    thread. Returns (our socket, the peer's socket), both connected; with ``exchange``, DATA bytes
    went each way and came back checksummed."""
    ours_raw, theirs_raw = loopback_pair()
    if role == "server":
        ours_raw, theirs_raw = theirs_raw, ours_raw
    context = AgentContext(agent.path, ssl.PROTOCOL_TLS_SERVER if role == "server" else ssl.PROTOCOL_TLS_CLIENT,
                           mode=mode, timeout=scaled(20))
    for name, value in (app_settings or {}).items():
        if name == "alpn":
            context.set_alpn_protocols(value)
        elif name in ("ciphers", "ciphersuites"):
            getattr(context, f"set_{name}")(value)
        else:
            setattr(context, name, value)

    def peer():
        sock = peer_ctx.wrap_socket(theirs_raw, server_side=role == "client",
                                    **({"server_hostname": hostname} if role == "server" else {}),
                                    **(peer_kwargs or {}))
        if exchange:
            echo_checksum(sock, DATA)
            send_and_check(sock, payload(DATA, 2))
        return sock

    join = in_thread(peer)
    try:
        ours = context.wrap_socket(ours_raw, server_side=role == "server",
                                   **({"server_hostname": hostname} if role == "client" else {}), **(wrap_kwargs or {}))
    except BaseException:
        ours_raw.close()
        try:
            join(scaled(10)).close()
        except BaseException:
            pass
        raise
    if exchange:
        send_and_check(ours, payload(DATA, 1))
        echo_checksum(ours, DATA)
    return ours, join(scaled(30))


# --- the matrix: roles, versions, ciphers, modes ----------------------------------------------------

@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("version, cipher", COMBINATIONS, ids=COMBINATION_IDS)
def test_data_crosses_a_connection_whose_handshake_the_agent_ran(agent, pki, identities, mode, role, version,
                                                                  cipher):
    peer_ctx = (peer_server_context if role == "client" else peer_client_context)(
        *((pki, identities) if role == "client" else (pki,)), version, cipher)
    # Our side asks the agent for exactly this suite (CPython's ssl cannot pin a TLS 1.3 suite).
    suite = {"ciphers": TLS12_SUITES[("ecdsa", cipher)]} if version == TLS_1_2_VERSION else \
        {"ciphersuites": TLS13_SUITES[cipher]}
    before = kernel.tls_stat()
    ours, theirs = through_agent(agent, role, mode, peer_ctx, app_settings=suite)
    with ours, theirs:
        status = ours.ktls
        assert status.tx and status.rx, str(status)
        assert ours.version() == theirs.version()
        assert ours.cipher()[0] == theirs.cipher()[0]
        assert status.cipher.startswith(cipher.display_name)
        after = kernel.tls_stat()
        # The kernel's own counters saw one more socket with each direction in software kTLS.
        assert after["TlsTxSw"] - before.get("TlsTxSw", 0) >= 1 and after["TlsRxSw"] - before.get("TlsRxSw", 0) >= 1
        if role == "client":
            assert common_name(ours.getpeercert()) == "localhost"


# --- what the application sees ----------------------------------------------------------------------

@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_the_agent_picks_the_certificate_by_sni_and_negotiates_alpn(agent, pki, identities, mode):
    peer_ctx = peer_client_context(pki)
    peer_ctx.set_alpn_protocols(["h2", "http/1.1"])
    ours, theirs = through_agent(agent, "server", mode, peer_ctx, hostname="other.test",
                                 app_settings={"alpn": ["http/1.1"]})
    with ours, theirs:
        assert common_name(theirs.getpeercert()) == "other.test"
        assert theirs.selected_alpn_protocol() == ours.selected_alpn_protocol() == "http/1.1"
    # The agent's log line for it: who asked, for which name, with what outcome.
    logged = [line for line in agent.log().splitlines() if "sni other.test" in line and f"mode {mode}" in line]
    assert logged and f"peer process pid={os.getpid()} uid={os.getuid()}" in logged[-1], agent.log()[-2000:]
    assert "role server" in logged[-1] and "alpn http/1.1" in logged[-1] and "established" in logged[-1]


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_mutual_authentication_with_the_agents_client_certificate(agent, pki, identities, mode):
    peer_ctx = peer_server_context(pki, identities, verify_mode=ssl.CERT_REQUIRED)
    ours, theirs = through_agent(agent, "client", mode, peer_ctx, app_settings={"identity": "agent-client"})
    with ours, theirs:
        assert common_name(theirs.getpeercert()) == "agent-client"


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_a_server_through_the_agent_verifies_client_certificates(agent, pki, identities, mode):
    peer_ctx = peer_client_context(pki)
    peer_ctx.load_cert_chain(identities["client"].chain_path, identities["client"].key_path)
    ours, theirs = through_agent(agent, "server", mode, peer_ctx, app_settings={"verify_mode": ssl.CERT_REQUIRED})
    with ours, theirs:
        assert common_name(ours.getpeercert()) == "agent-client"
    # Without a certificate the agent refuses the client, as a server requiring one does.
    with pytest.raises(ssl.SSLError) as info:
        through_agent(agent, "server", mode, peer_client_context(pki), app_settings={"verify_mode": ssl.CERT_REQUIRED})
    assert info.value.reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED")


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_a_certificate_the_agent_cannot_verify_fails_as_cpython_fails(agent, rsa_pki, pki, identities, mode):
    """A server whose certificate another CA issued: SSLCertVerificationError with OpenSSL's reason
    and verify code, as CPython's ssl raises it for the same server."""
    other = rsa_pki.issue("localhost", dns=["localhost"])
    peer_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    peer_ctx.load_cert_chain(other.chain_path, other.key_path)
    with pytest.raises(ssl.SSLCertVerificationError) as ours:
        through_agent(agent, "client", mode, peer_ctx)
    raw, theirs_raw = loopback_pair()
    join = in_thread(lambda: peer_ctx.wrap_socket(theirs_raw, server_side=True))
    with pytest.raises(ssl.SSLCertVerificationError) as cpython:
        peer_client_context(pki).wrap_socket(raw, server_hostname="localhost")
    raw.close()
    with pytest.raises(ssl.SSLError):
        join()
    assert (ours.value.reason, ours.value.verify_code) == (cpython.value.reason, cpython.value.verify_code)


# --- resumption through the agent ------------------------------------------------------------------

@pytest.mark.ktls
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
@pytest.mark.parametrize("mode", MODES)
def test_a_client_resumes_with_a_session_the_agent_keeps(agent, pki, identities, mode, version):
    peer_ctx = peer_server_context(pki, identities, version)
    ours, theirs = through_agent(agent, "client", mode, peer_ctx)
    with ours, theirs:
        session = ours.session
    assert isinstance(session, AgentSession) and session.id
    again, theirs_again = through_agent(agent, "client", mode, peer_ctx, wrap_kwargs={"session": session})
    with again, theirs_again:
        assert theirs_again.session_reused and again.session_reused


@pytest.mark.ktls
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["tls12", "tls13"])
@pytest.mark.parametrize("mode", MODES)
def test_a_server_through_the_agent_resumes_a_client(agent, pki, mode, version):
    peer_ctx = peer_client_context(pki, version)
    ours, theirs = through_agent(agent, "server", mode, peer_ctx)
    with ours, theirs:
        session = theirs.session
    again, theirs_again = through_agent(agent, "server", mode, peer_ctx, peer_kwargs={"session": session})
    with again, theirs_again:
        assert theirs_again.session_reused and again.session_reused


# --- post-handshake: KeyUpdate, authentication -----------------------------------------------------

@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ["client", "server"])
def test_key_updates_both_ways_through_the_agent(agent, pki, identities, mode, role):
    """The peer (OpenSSL in user space: it can send KeyUpdate) updates its keys and asks for ours;
    we update ours on our own too. On a kernel that rekeys the data stays intact and the kernel
    counts our rekeys (RX 1, TX 2); on one that cannot, the peer's KeyUpdate is the specific error."""
    if role == "client":
        peer_ctx = peer_server_context(pki, identities, TLS_1_3_VERSION, cpython=False)
    else:
        peer_ctx = peer_client_context(pki, TLS_1_3_VERSION, cpython=False)
    ours, theirs = through_agent(agent, role, mode, peer_ctx)
    with ours, theirs:
        update_keys_both_ways(ours, theirs)


def update_keys_both_ways(ours, theirs) -> None:
    """The peer updates its keys and asks for ours, then we update ours on our own; data crosses
    after each. On a kernel that rekeys: intact data, our 2 TX and 1 RX rekeys in tls_stat. On one
    that cannot: the peer's KeyUpdate is KTLSRekeyUnsupportedError."""
    counters = RekeyCounters()
    theirs.key_update(request_peer=True)
    if not kernel_can_rekey():
        theirs.sendall(b"after")
        with pytest.raises(KTLSRekeyUnsupportedError):
            ours.recv(100)
        return
    send_and_check_from(theirs, ours, payload(DATA, 3))  # we: RX rekey, then TX (requested)
    ours.key_update()  # we: TX rekey
    send_and_check_from(ours, theirs, payload(DATA, 4))
    assert ours.ktls.key_updates == 2
    counters.check(2, 1)


def send_and_check_from(sender, receiver, data: bytes) -> None:
    join = in_thread(echo_checksum, receiver, len(data))
    send_and_check(sender, data)
    join(scaled(30))


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_post_handshake_authentication_of_our_client(agent, pki, identities, mode):
    """A server asks for our certificate after the handshake: the agent signs with the key only it
    holds; the server then has our certificate."""
    peer_ctx = peer_server_context(pki, identities, TLS_1_3_VERSION, verify_mode=ssl.CERT_REQUIRED,
                                   post_handshake_auth=True)
    ours, theirs = through_agent(agent, "client", mode, peer_ctx,
                                 app_settings={"identity": "agent-client", "post_handshake_auth": True})
    with ours, theirs:
        assert theirs.getpeercert() is None  # not asked for in the handshake
        theirs.verify_client_post_handshake()
        theirs.sendall(b"ping")
        assert ours.recv(4) == b"ping"  # reading takes the CertificateRequest; the agent answers
        ours.sendall(b"pong")
        assert theirs.recv(4) == b"pong"
        assert common_name(theirs.getpeercert()) == "agent-client"


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_post_handshake_authentication_by_our_server(agent, pki, identities, mode):
    peer_ctx = peer_client_context(pki, TLS_1_3_VERSION, post_handshake_auth=True)
    peer_ctx.load_cert_chain(identities["client"].chain_path, identities["client"].key_path)
    ours, theirs = through_agent(agent, "server", mode, peer_ctx,
                                 app_settings={"verify_mode": ssl.CERT_OPTIONAL, "post_handshake_auth": True})
    with ours, theirs:
        ours.verify_client_post_handshake()
        ours.sendall(b"ping")
        assert theirs.recv(4) == b"ping"
        theirs.sendall(b"pong")  # behind the client's Certificate, CertificateVerify, Finished
        assert ours.recv(4) == b"pong"
        assert common_name(ours.getpeercert()) == "agent-client"


# --- the application's socket ----------------------------------------------------------------------

@pytest.mark.ktls
@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non_blocking"])
def test_the_agent_gives_the_socket_back_with_its_flags(agent, pki, identities, blocking):
    """O_NONBLOCK lives in the open file description the application shares with the agent: it
    must be as the application left it, and a blocking read must block (not fail with EAGAIN)."""
    ours_raw, theirs_raw = loopback_pair()
    ours_raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bytes(16))  # no receive timeout
    if not blocking:
        ours_raw.setblocking(False)
    flags = fcntl.fcntl(ours_raw.fileno(), fcntl.F_GETFL)
    context = AgentContext(agent.path, mode="fd", timeout=scaled(20))
    join = in_thread(lambda: peer_server_context(pki, identities).wrap_socket(theirs_raw, server_side=True))
    ours = context.wrap_socket(ours_raw, server_hostname="localhost", do_handshake_on_connect=False)
    ours.do_handshake()
    theirs = join()
    with ours, theirs:
        assert fcntl.fcntl(ours.fileno(), fcntl.F_GETFL) == flags
        if blocking:
            reader = in_thread(ours.recv, 5)  # waiting or not yet: either way it must get the data
            theirs.sendall(b"hello")
            assert reader(scaled(10)) == b"hello"
        else:
            with pytest.raises(ssl.SSLWantReadError):
                ours.recv(5)


# --- failures ----------------------------------------------------------------------------------------

def test_no_agent_is_a_specific_error(tmp_path):
    raw, peer = loopback_pair()
    with raw, peer:
        context = AgentContext(str(tmp_path / "nobody-listens"), timeout=scaled(5))
        with pytest.raises(KTLSAgentError) as info:
            context.wrap_socket(raw, server_hostname="localhost")
    assert info.value.reason == "AGENT_UNREACHABLE"
    assert info.value.errno == errno.ENOENT


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_an_agent_that_dies_mid_handshake_is_a_specific_error(tmp_path, identities, pki, mode):
    """The peer never answers: the agent is killed while the handshake waits: the application's
    handshake ends with AGENT_GONE at once, not at a timeout."""
    dying = start_agent(str(tmp_path), [identities["localhost"]], ca=pki.ca_path)
    raw, peer = loopback_pair()
    with raw, peer:
        context = AgentContext(dying.path, mode=mode, timeout=scaled(60))
        handshake = in_thread(lambda: context.wrap_socket(raw, server_hostname="localhost"))
        assert len(peer.recv(5)) == 5  # the ClientHello's header: the handshake is under way
        started = time.monotonic()
        dying.kill()
        with pytest.raises(KTLSAgentError) as info:
            handshake(scaled(30))
        assert info.value.reason == "AGENT_GONE"
        assert time.monotonic() - started < scaled(10)


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_an_agent_that_dies_after_the_handshake_fails_the_ticket_that_needs_it(tmp_path, identities, pki, mode):
    """TLS 1.3: the server's tickets follow the handshake and go to the agent; with the agent gone,
    the read that meets them fails with AGENT_GONE (data is not delivered past them)."""
    dying = start_agent(str(tmp_path), [identities["localhost"]], ca=pki.ca_path)
    peer_ctx = peer_server_context(pki, identities, TLS_1_3_VERSION)
    ours, theirs = through_agent(dying, "client", mode, peer_ctx, exchange=False)
    with ours, theirs:
        dying.kill()
        theirs.sendall(b"data behind the tickets")
        with pytest.raises(KTLSAgentError) as info:
            ours.recv(100)
        assert info.value.reason == "AGENT_GONE"
        assert ours.ktls_state is ktls_ossl.socket.ConnectionState.FAILED


@pytest.mark.ktls
def test_a_stalled_peer_ends_in_the_agents_timeout(tmp_path, identities, pki):
    slow = start_agent(str(tmp_path), [identities["localhost"]], ca=pki.ca_path,
                       extra=("--handshake-timeout", str(scaled(1))))
    try:
        raw, peer = loopback_pair()
        with raw, peer:
            context = AgentContext(slow.path, timeout=scaled(30))
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                context.wrap_socket(raw, server_hostname="localhost")
            assert time.monotonic() - started < scaled(10)
    finally:
        slow.stop()


def test_the_agent_survives_hostile_applications(agent, tmp_path):
    """Garbage, oversized packets, the wrong requests, several descriptors, descriptors that are
    no connected TCP socket: each ends that application's agent connection with a protocol error,
    and the agent still serves everybody else."""
    from ktls_ossl import agent_protocol as protocol

    def exchange(packet: bytes, fds=()) -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(scaled(10))
        with sock:
            sock.connect(agent.path)
            assert protocol.decode(sock.recv(protocol.MAX_PACKET)).kind == "welcome"
            import array
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                sock.sendmsg([packet], ancillary)
            except OSError as exc:
                return f"send failed: {exc.errno}".encode()
            reply = sock.recv(protocol.MAX_PACKET)
            rest = sock.recv(10)  # then the agent closes the connection
            assert rest == b""
            return reply

    def refused(reply: bytes) -> str:
        message = protocol.decode(reply)
        assert message.kind == "failed", message
        return message.fields["error"]["reason"]

    tcp_unconnected = socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener = socket.create_server(("127.0.0.1", 0))
    pipe_read, pipe_write = os.pipe()
    a, b = loopback_pair()
    try:
        cases = {
            "garbage": (b"\x00" * 64, ()),
            "bad json": (b"KTA1" + (5).to_bytes(4, "big") + b"{nope", ()),
            "not a handshake": (protocol.encode("feed", {"content_type": 22}), ()),
            "fd mode without fd": (protocol.encode("handshake", {"mode": "fd", "role": "client"}), ()),
            "two fds": (protocol.encode("handshake", {"mode": "fd", "role": "client"}), (a.fileno(), b.fileno())),
            "a pipe": (protocol.encode("handshake", {"mode": "fd", "role": "client"}), (pipe_read,)),
            "udp": (protocol.encode("handshake", {"mode": "fd", "role": "client"}), (udp.fileno(),)),
            "unconnected": (protocol.encode("handshake", {"mode": "fd", "role": "client"}),
                            (tcp_unconnected.fileno(),)),
            "listening": (protocol.encode("handshake", {"mode": "fd", "role": "client"}), (listener.fileno(),)),
            "unknown mode": (protocol.encode("handshake", {"mode": "telepathy", "role": "client"}), ()),
            "bad role": (protocol.encode("handshake", {"mode": "forward", "role": "both"}), ()),
            "bad alpn": (protocol.encode("handshake", {"mode": "forward", "role": "client", "alpn": [""]}), ()),
        }
        for name, (packet, fds) in cases.items():
            assert refused(exchange(packet, fds)) == "AGENT_PROTOCOL", name
        # Larger than any packet the agent reads: truncated, refused.
        huge = b"KTA1" + (2).to_bytes(4, "big") + b"{}" + bytes(protocol.MAX_PACKET + 16)
        reply = exchange(huge)
        assert reply.startswith(b"send failed") or refused(reply) == "AGENT_PROTOCOL"
        # A flood of connections that each say something wrong: every one is answered and closed.
        for _ in range(100):
            assert refused(exchange(b"junk")) == "AGENT_PROTOCOL"
    finally:
        for sock in (tcp_unconnected, udp, listener, a, b):
            sock.close()
        os.close(pipe_read)
        os.close(pipe_write)
    assert agent.process.poll() is None, agent.log()


# --- another uid: admission, and what the application can reach ------------------------------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="running the application as another uid needs root")


@pytest.fixture
def shared_dir():
    """A directory another uid can reach (pytest's own are private to root)."""
    directory = tempfile.mkdtemp(prefix="ktls-agent-test-")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start_app(agent_path: str, key_path: str, mode: str = "fd") -> subprocess.Popen:
    """tests/agent_app.py as uid and gid 65534: a server whose handshakes the agent runs."""
    return subprocess.Popen([PYTHON, "-m", "tests.agent_app", agent_path, key_path, str(NOBODY), str(NOBODY), mode],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def app_says(app: subprocess.Popen, name: str) -> str:
    """The app's next "name: value" line (its stderr on failure)."""
    result: list[str] = []

    def read():
        for line in app.stdout:
            if line.startswith(name + ": "):
                result.append(line[len(name) + 2:].strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(scaled(60))
    if not result:
        app.kill()
        raise AssertionError(f"the app never said {name!r}: {app.stderr.read()}")
    return result[0]


def connect_to_app(app: subprocess.Popen) -> socket.socket:
    port = int(app_says(app, "port"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=scaled(30))
    return raw


@needs_root
def test_an_application_whose_uid_the_agent_does_not_allow_is_refused(shared_dir, identities, pki):
    agent = start_agent(shared_dir, [identities["localhost"]], ca=pki.ca_path, extra=("--socket-mode", "0666"))
    try:
        app = start_app(agent.path, identities["localhost"].key_path)
        raw = connect_to_app(app)
        with raw:
            assert app_says(app, "agent") == "AGENT_REFUSED"
        app.wait(scaled(30))
        assert f"refused pid={app.pid} uid={NOBODY} gid={NOBODY}" in agent.log()
    finally:
        agent.stop()


@needs_root
@pytest.mark.ktls
@pytest.mark.parametrize("allow", [("--allow-uid", str(NOBODY)), ("--allow-gid", str(NOBODY))], ids=["uid", "gid"])
def test_an_application_whose_uid_or_gid_the_agent_allows_is_served(shared_dir, identities, pki, allow):
    agent = start_agent(shared_dir, [identities["localhost"]], ca=pki.ca_path, extra=("--socket-mode", "0666", *allow))
    try:
        app = start_app(agent.path, identities["localhost"].key_path)
        raw = connect_to_app(app)
        with peer_client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            assert app_says(app, "agent") == "handshake done"
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
            app.stdin.write("\n")
            app.stdin.flush()
        app.wait(scaled(30))
    finally:
        agent.stop()


def _process_memory(pid: int, limit: int = 1 << 30) -> bytes:
    """Every readable mapping of process ``pid``, concatenated (as root: /proc/PID/mem)."""
    chunks, total = [], 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(value, 16) for value in fields[0].split("-"))
            try:
                memory.seek(start)
                chunks.append(memory.read(end - start))
            except (OSError, OverflowError, ValueError):
                continue
            total += end - start
            if total > limit:
                break
    return b"".join(chunks)


@needs_root
@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_the_application_never_holds_the_private_key(shared_dir, pki, mode):
    """The key file is the agent's alone (0600, root), so the application (uid 65534) cannot open
    it; and after a handshake that the key signed, the application's whole memory holds neither the
    private key (its scalar, its DER, its PEM) nor a part of it, while it does hold the message it
    echoed (which shows that the scan sees its data)."""
    from cryptography.hazmat.primitives import serialization

    identity = pki.issue("localhost", dns=["localhost"])
    key_copy = os.path.join(shared_dir, "server.key")
    shutil.copyfile(identity.key_path, key_copy)
    os.chmod(key_copy, 0o600)
    agent = start_agent(shared_dir, [identity], ca=pki.ca_path,
                        extra=("--socket-mode", "0666", "--allow-uid", str(NOBODY)))
    with open(key_copy, "rb") as key_file:
        pem = key_file.read()
    key = serialization.load_pem_private_key(pem, None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    pem_body = b"".join(pem.splitlines()[1:-1])
    secrets = {"scalar": scalar, "scalar (little-endian)": scalar[::-1], "DER": der[-48:],
               "PEM line": pem.splitlines()[1], "PEM body": pem_body[:32]}
    marker = os.urandom(16).hex().encode()
    try:
        app = start_app(agent.path, key_copy, mode)
        assert app_says(app, "key") == "PermissionError"
        raw = connect_to_app(app)
        with peer_client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            assert app_says(app, "agent") == "handshake done"
            tls.sendall(marker)
            assert tls.recv(len(marker)) == marker
            assert app_says(app, "ready") == str(len(marker))
            memory = _process_memory(app.pid)
            app.stdin.write("\n")
            app.stdin.flush()
        app.wait(scaled(30))
    finally:
        agent.stop()
    assert marker in memory, "the scan did not see the application's data"
    found = [name for name, secret in secrets.items() if secret in memory]
    assert found == [], f"the application's memory holds the private key's {found}"


# --- load --------------------------------------------------------------------------------------------

@pytest.mark.ktls
def test_two_hundred_concurrent_handshakes_through_one_agent(agent, pki, identities):
    """200 connections start their handshakes at once (half passing their socket, half forwarding
    records); every one completes and carries its own data."""
    count = 200
    start = threading.Barrier(count, timeout=scaled(60))
    peer_ctx = peer_server_context(pki, identities)
    failures: list[BaseException] = []

    def one(index: int) -> None:
        try:
            ours_raw, theirs_raw = loopback_pair(timeout=scaled(120))
            peer = in_thread(lambda: peer_ctx.wrap_socket(theirs_raw, server_side=True))
            context = AgentContext(agent.path, mode="fd" if index % 2 else "forward", timeout=scaled(120))
            start.wait()
            with context.wrap_socket(ours_raw, server_hostname="localhost") as ours, peer(scaled(120)) as theirs:
                message = payload(1000 + index, index)
                ours.sendall(message)
                received = bytearray()
                while len(received) < len(message):
                    received += theirs.recv(len(message) - len(received))
                assert received == message
                assert ours.ktls.tx and ours.ktls.rx
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(scaled(300))
    assert not any(thread.is_alive() for thread in threads), "handshakes still running"
    assert failures == []


# --- the agent's configuration and socket ----------------------------------------------------------

def _arguments(**values):
    import argparse

    from ktls_ossl.agent_server import add_arguments
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = []
    for name, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            argv += [f"--{name.replace('_', '-')}", str(item)]
    return parser.parse_args(argv)


def test_the_configuration_file_and_the_command_line_combine(tmp_path, identities, pki):
    import json

    from ktls_ossl.agent_server import config_from_arguments
    config_file = tmp_path / "agent.json"
    config_file.write_text(json.dumps({
        "socket": str(tmp_path / "from-file.sock"), "ca": pki.ca_path, "allow_uids": [1000], "socket_mode": "0640",
        "identities": [{"cert": identities["localhost"].chain_path, "key": identities["localhost"].key_path}]}))
    config = config_from_arguments(_arguments(config=config_file, cert=identities["other"].chain_path,
                                              key=identities["other"].key_path, allow_uid=1001,
                                              socket=str(tmp_path / "from-cli.sock")))
    assert config.socket_path == str(tmp_path / "from-cli.sock")  # the command line wins
    assert [identity.names for identity in config.identities] == [("localhost",), ("other.test",)]
    assert config.allow_uids == {1000, 1001} and config.socket_mode == 0o640 and config.ca_file == pki.ca_path
    with pytest.raises(ValueError, match="--key"):
        config_from_arguments(_arguments(socket="x", cert=identities["other"].chain_path))


def test_the_socket_appears_with_its_mode_and_never_replaces_what_is_not_a_stale_socket(tmp_path, identities):
    from ktls_ossl.agent_server import Agent, AgentConfig, Identity

    identity = Identity.load(identities["localhost"].chain_path, identities["localhost"].key_path)
    path = str(tmp_path / "agent.sock")
    for allow_gids, mode in ((frozenset(), 0o600), (frozenset({4242}), 0o660)):
        agent = Agent(AgentConfig(path, [identity], allow_gids=allow_gids))
        agent.bind()
        try:
            assert os.stat(path).st_mode & 0o777 == mode
            with pytest.raises(FileExistsError, match="another agent"):
                Agent(AgentConfig(path, [identity])).bind()
        finally:
            agent._listener.close()  # gone without unlinking: a stale socket, which the next one replaces
    assert sorted(os.listdir(tmp_path)) == ["agent.sock"]  # no private directory left behind
    agent.stop()
    regular = tmp_path / "a-file"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a socket"):
        Agent(AgentConfig(str(regular), [identity])).bind()
    assert regular.read_text() == "keep me"


def test_an_agent_without_a_usable_identity_does_not_start(tmp_path, identities, pki):
    from ktls_ossl.agent_server import Agent, AgentConfig, Identity

    with pytest.raises(ValueError, match="at least one"):
        Agent(AgentConfig(str(tmp_path / "s"), []))
    mismatched = Identity.load(identities["localhost"].chain_path, identities["other"].key_path)
    with pytest.raises(ssl.SSLError):  # the key does not match the certificate: refused at start
        Agent(AgentConfig(str(tmp_path / "s"), [mismatched]))


@pytest.mark.ktls
def test_in_fd_mode_the_application_gets_no_key_material(agent, pki, identities):
    """The agent installed the keys itself: the application's record of the handoff has the sequence
    numbers but no key (the kernel has the real ones: read back from the socket to compare)."""
    ours, theirs = through_agent(agent, "client", "fd", peer_server_context(pki, identities))
    with ours, theirs:
        handoff = ours._sslobj._handoff
        installed = kernel.read_crypto_info(ours.fileno(), kernel.Direction.RX)
        assert installed.key != bytes(len(installed.key))
        assert handoff.rx.key == bytes(len(installed.key)) and handoff.tx.key == bytes(len(installed.key))
        assert handoff.rx.cipher == installed.cipher


@pytest.mark.ktls
def test_sendfile_through_a_socket_whose_handshake_the_agent_ran(agent, pki, identities, tmp_path):
    import hashlib

    data = os.urandom(3 << 20)
    path = tmp_path / "payload"
    path.write_bytes(data)
    ours, theirs = through_agent(agent, "server", "fd", peer_client_context(pki), exchange=False)
    with ours, theirs, open(path, "rb") as source:
        receiver = in_thread(_recv_exactly, theirs, len(data))
        assert ours.sendfile(source) == len(data)
        assert hashlib.sha256(receiver(scaled(60))).digest() == hashlib.sha256(data).digest()


def _recv_exactly(sock, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(min(1 << 16, size - len(received)))
        if not chunk:
            raise EOFError(f"{len(received)} of {size} bytes")
        received += chunk
    return bytes(received)


def test_an_application_at_the_per_uid_limit_is_told_so(tmp_path, identities, pki):
    busy = start_agent(str(tmp_path), [identities["localhost"]], ca=pki.ca_path, extra=("--max-per-uid", "2"))
    held = []
    try:
        for _ in range(2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.connect(busy.path)
            sock.recv(1024)  # welcome
            held.append(sock)
        raw, peer = loopback_pair()
        with raw, peer:
            with pytest.raises(KTLSAgentError) as info:
                AgentContext(busy.path, timeout=scaled(10)).wrap_socket(raw, server_hostname="localhost")
        assert info.value.reason == "AGENT_BUSY"
    finally:
        for sock in held:
            sock.close()
        busy.stop()


def test_an_application_that_says_nothing_is_dropped_at_the_handshake_timeout(tmp_path, identities, pki):
    slow = start_agent(str(tmp_path), [identities["localhost"]], ca=pki.ca_path,
                       extra=("--handshake-timeout", str(scaled(0.5))))
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(scaled(20))
        with sock:
            sock.connect(slow.path)
            sock.recv(1024)  # welcome
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the agent, not by our timeout
            assert time.monotonic() - started < scaled(10)
    finally:
        slow.stop()


# --- post_handshake="local": the agent hands over the secrets and is done ---------------------------

@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_with_local_post_handshake_the_connection_outlives_the_agent(tmp_path, identities, pki, mode):
    """The agent hands over the TLS 1.3 traffic secrets and forgets the connection; with the agent
    killed, the server's tickets are dropped and KeyUpdates both ways still work (on a kernel that
    rekeys; elsewhere the peer's KeyUpdate is the specific error)."""
    dying = start_agent(str(tmp_path), [identities["localhost"]], ca=pki.ca_path)
    peer_ctx = peer_server_context(pki, identities, TLS_1_3_VERSION, cpython=False)  # OpenSSL: can KeyUpdate
    ours, theirs = through_agent(dying, "client", mode, peer_ctx, app_settings={"post_handshake": "local"},
                                 exchange=False)
    with ours, theirs:
        dying.kill()
        send_and_check_from(theirs, ours, payload(DATA, 5))  # behind the tickets, which are dropped
        send_and_check_from(ours, theirs, payload(DATA, 6))
        assert ours.session is None  # the agent keeps nothing for this connection
        update_keys_both_ways(ours, theirs)


@pytest.mark.ktls
@pytest.mark.parametrize("mode", MODES)
def test_the_agent_keeps_no_copy_of_the_applications_socket(agent, pki, identities, mode):
    """After the handshake the agent holds nothing of the socket: when the application closes it,
    the peer sees the connection end (a copy held in the agent would keep it open), and the agent's
    descriptors are back to what they were."""
    descriptors = f"/proc/{agent.process.pid}/fd"
    before = len(os.listdir(descriptors))
    peer_ctx = peer_server_context(pki, identities)
    for _ in range(5):
        ours, theirs = through_agent(agent, "client", mode, peer_ctx, exchange=False)
        with theirs:
            ours.close()
            theirs.settimeout(scaled(10))  # a copy held in the agent: TimeoutError here
            try:
                assert theirs.recv(10) == b""  # the FIN (CPython: ragged EOFs read as b"")
            except (ssl.SSLEOFError, ConnectionResetError):
                pass
    deadline = time.monotonic() + scaled(10)
    while len(os.listdir(descriptors)) != before and time.monotonic() < deadline:
        time.sleep(0.05)  # the agent's connection threads end as the application connections close
    assert len(os.listdir(descriptors)) == before
