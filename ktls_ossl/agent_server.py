"""The handshake agent: private keys in one process, kernel TLS keys in the applications' sockets.

Theory of operation
-------------------
An application opens one connection to the agent's Unix ``SOCK_SEQPACKET`` socket per TLS
connection. The agent checks who is calling (``SO_PEERCRED`` against its allow-lists), then serves
that one TLS connection for as long as the application keeps the agent connection open:

1. The handshake, in one of two modes.
   - fd passing (``mode: "fd"``): the application sends its connected TCP socket with the request
     (``SCM_RIGHTS``). The agent runs OpenSSL on it (read-ahead off), installs the kernel's keys on
     it once the peer's Finished is verified, restores the file status flags it changed (O_NONBLOCK
     lives in the open file description the application shares) and closes its copy; the
     application gets the negotiated parameters and the session's current keys.
   - record forwarding (``mode: "forward"``): the application reads the peer's records one at a
     time (pump.RecordPump) and forwards them; the agent answers with the bytes to send; after the
     verified Finished it returns the exact keys and sequence numbers, which the application
     installs itself. The agent never touches the socket.
2. After it, what the application's kernel session forwards (session.PostHandshakeEngine, served
   here): tickets, KeyUpdate, post-handshake authentication. The agent's OpenSSL judges each
   message and writes the answers, which the application sends through the kernel.

Closing the agent connection ends the agent's state for that TLS connection. The agent never sends
a private key, a ticket key or a TLS 1.3 traffic secret; the current traffic keys do cross (the
kernel needs them, and whoever holds the fd can read them back with getsockopt).

Every request is bounded: a packet's size (agent_protocol.MAX_PACKET), a handshake's time
(``handshake_timeout``) and bytes, connections in all and per uid, sessions kept per uid. An
application that breaks the protocol loses its own agent connection, nothing else; every agent
connection has its own thread and its own OpenSSL object.
"""
from __future__ import annotations

import array
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import select
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from . import agent_protocol as protocol
from . import kernel
from .certificate import decode_certificate
from .agent_protocol import Message, ProtocolError
from .context import SSLContext
from .errors import KTLSAgentError, KTLSUnavailableError
from .handshake import WANT_READ, Handshake, HandshakeHooks, HandoffUnavailable, Policy, Session
from ._ossl import lib
from .posthandshake import OpenSSLPostHandshake
from .session import install_keys
from .tlsinfo import TLSInfo

__all__ = ["Agent", "AgentConfig", "Identity"]

log = logging.getLogger("ktls_ossl.agent")

# A forwarded handshake may not make the agent hold more than this (certificate chains included).
MAX_HANDSHAKE_BYTES = 1 << 20
_MAX_FDS = 4  # file descriptors read from one packet; more is a protocol violation
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class Identity:
    """A certificate chain and its private key, and the names it serves (from the certificate)."""

    cert: str
    key: str
    names: tuple[str, ...] = ()

    @classmethod
    def load(cls, cert: str, key: str) -> Identity:
        """The names from the leaf (the first certificate of the chain file): its DNS names, and
        its common name where it has none (RFC 6125)."""
        with open(cert, encoding="ascii") as chain_file:
            first, footer, _ = chain_file.read().partition("-----END CERTIFICATE-----")
        leaf = decode_certificate(ssl.PEM_cert_to_DER_cert(first[first.index("-----BEGIN CERTIFICATE-----"):] + footer))
        names = [value for kind, value in leaf.get("subjectAltName", ()) if kind == "DNS"]
        if not names:
            names = [value for entry in leaf.get("subject", ()) for name, value in entry if name == "commonName"]
        return cls(cert, key, tuple(name.lower() for name in names))

    def serves(self, hostname: str) -> bool:
        hostname = hostname.lower().rstrip(".")
        for name in self.names:
            if name == hostname:
                return True
            if name.startswith("*.") and "." in hostname and hostname.split(".", 1)[1] == name[2:]:
                return True
        return False


@dataclass(frozen=True)
class Settings:
    """What a handshake request sets, beyond the agent's configuration: one context per value."""

    role: str
    alpn: tuple[str, ...] = ()
    verify: str = "none"
    post_handshake_auth: bool = False
    check_hostname: bool = False
    cert: str | None = None  # the identity presented (a server's default, a client's if asked)
    minimum_version: str | None = None
    maximum_version: str | None = None
    ciphers: str | None = None
    ciphersuites: str | None = None


@dataclass
class AgentConfig:
    socket_path: str
    identities: list[Identity]
    ca_file: str | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    socket_mode: int | None = None  # default: 0o600, 0o660 where groups are allowed
    handshake_timeout: float = 30.0
    max_connections: int = 1024
    max_per_uid: int = 256
    max_sessions_per_uid: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def allows(self, uid: int, gid: int) -> bool:
        return uid == os.getuid() or uid in self.allow_uids or gid in self.allow_gids


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"pid={self.pid} uid={self.uid} gid={self.gid}"


def peer_credentials(sock: socket.socket) -> Peer:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", data))


class Agent:
    """The agent process's state: its contexts, sessions, limits and listening socket."""

    def __init__(self, config: AgentConfig) -> None:
        if not config.identities:
            raise ValueError("the agent needs at least one certificate and key")
        self.config = config
        self._contexts: OrderedDict[Settings, SSLContext] = OrderedDict()
        self._contexts_lock = threading.Lock()
        self._sessions: dict[int, OrderedDict[str, Session]] = {}
        self._connections: dict[int, int] = {}  # uid -> agent connections open
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        for identity in config.identities:  # a bad certificate or key fails now, not at a handshake
            self.context(Settings("server", cert=identity.cert))

    # --- contexts and sessions ------------------------------------------------------------------

    def context(self, settings: Settings) -> SSLContext:
        """The context for one combination of settings (kept: its ticket keys resume sessions)."""
        with self._contexts_lock:
            context = self._contexts.get(settings)
            if context is not None:
                self._contexts.move_to_end(settings)
                return context
        context = self._make_context(settings)
        with self._contexts_lock:
            self._contexts[settings] = context
            while len(self._contexts) > 256:
                self._contexts.popitem(last=False)
        return context

    def _make_context(self, settings: Settings) -> SSLContext:
        server = settings.role == "server"
        context = SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.ktls_policy = Policy.AFTER_FINISHED
        if not server:
            context.check_hostname = settings.check_hostname and settings.verify != "none"
        context.verify_mode = _VERIFY[settings.verify]
        if self.config.ca_file:
            context.load_verify_locations(self.config.ca_file)
        elif not server:
            context.load_default_certs()
        if server:
            # The identity follows the client's SNI: the handshake's servername hook picks it.
            lib.SSL_CTX_set_tlsext_servername_callback(context._ssl_ctx, lib.ktls_servername_cb)
        if settings.cert is not None:
            identity = next(identity for identity in self.config.identities if identity.cert == settings.cert)
            context.load_cert_chain(identity.cert, identity.key)
        if settings.alpn:
            context.set_alpn_protocols(list(settings.alpn))
        context.post_handshake_auth = settings.post_handshake_auth
        if settings.minimum_version:
            context.minimum_version = _VERSIONS[settings.minimum_version]
        if settings.maximum_version:
            context.maximum_version = _VERSIONS[settings.maximum_version]
        if settings.ciphers:
            context.set_ciphers(settings.ciphers)
        if settings.ciphersuites:
            context.set_ciphersuites(settings.ciphersuites)
        return context

    def identity_for(self, hostname: str | None) -> Identity:
        if hostname:
            for identity in self.config.identities:
                if identity.serves(hostname):
                    return identity
        return self.config.identities[0]

    def keep_session(self, uid: int, session: Session) -> str:
        handle = secrets.token_hex(16)
        with self._lock:
            store = self._sessions.setdefault(uid, OrderedDict())
            store[handle] = session
            while len(store) > self.config.max_sessions_per_uid:
                store.popitem(last=False)
        return handle

    def session(self, uid: int, handle: str) -> Session | None:
        """A kept session, only for the uid it was made for (one application never resumes
        another's)."""
        with self._lock:
            return self._sessions.get(uid, {}).get(handle)

    # --- serving -------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the listening socket at config.socket_path with its mode set before anyone can
        connect: bound under a private directory, given its mode, then renamed into place."""
        path = self.config.socket_path
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(errno.EEXIST, "not a socket; refusing to replace it", path)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(path)
                raise FileExistsError(errno.EEXIST, "another agent is listening there", path)
            except ConnectionRefusedError:
                os.unlink(path)  # a stale socket of an agent that is gone
            finally:
                probe.close()
        mode = self.config.socket_mode
        if mode is None:
            mode = 0o660 if self.config.allow_gids else 0o600
        directory = tempfile.mkdtemp(prefix=".ktls-agent-", dir=os.path.dirname(os.path.abspath(path)))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            private = os.path.join(directory, "socket")
            listener.bind(private)
            os.chmod(private, mode)
            listener.listen(128)
            os.rename(private, path)  # once the path exists, the agent accepts
        except BaseException:
            listener.close()
            raise
        finally:
            # Empty after the rename; after a failure, the socket bound in it goes with it.
            shutil.rmtree(directory, ignore_errors=True)
        self._listener = listener
        log.info("listening on %s (mode %o)", path, mode)

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        listener = self._listener
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            peer = peer_credentials(sock)
            refusal = self._admit(peer)
            if refusal is not None:
                _send_quietly(sock, protocol.encode("refused", {"reason": refusal[0], "message": refusal[1]}))
                sock.close()
                log.warning("refused %s: %s", peer, refusal[1])
                continue
            try:
                thread = threading.Thread(target=ApplicationConnection(self, sock, peer).run, daemon=True,
                                          name=f"ktls-agent {peer}")
                thread.start()
            except Exception as exc:  # no thread to serve it (the process's limit): not admitted after all
                log.warning("could not serve %s: %s", peer, exc)
                _send_quietly(sock, protocol.encode("refused", {"reason": "AGENT_BUSY",
                                                                "message": f"the agent cannot serve: {exc}"}))
                sock.close()
                self.connection_ended(peer)

    def _admit(self, peer: Peer) -> tuple[str, str] | None:
        if not self.config.allows(peer.uid, peer.gid):
            return "AGENT_REFUSED", f"uid {peer.uid} (gid {peer.gid}) is not allowed to use this agent"
        with self._lock:
            total = sum(self._connections.values())
            mine = self._connections.get(peer.uid, 0)
            if total >= self.config.max_connections or mine >= self.config.max_per_uid:
                return "AGENT_BUSY", (f"the agent serves {total} connections ({mine} for uid {peer.uid}): "
                                      "at its limit")
            self._connections[peer.uid] = mine + 1
        return None

    def connection_ended(self, peer: Peer) -> None:
        with self._lock:
            self._connections[peer.uid] -= 1

    def stop(self) -> None:
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            try:
                os.unlink(self.config.socket_path)
            except OSError:
                pass


class ApplicationConnection:
    """One application connection: one TLS connection's handshake, then its post-handshake
    messages (see the module doc)."""

    def __init__(self, agent: Agent, sock: socket.socket, peer: Peer) -> None:
        self.agent = agent
        self.sock = sock
        self.peer = peer
        self.handshake: Handshake | None = None
        self.engine: OpenSSLPostHandshake | None = None
        self.sni: str | None = None  # the name a client asked this server for
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, protocol.MAX_PACKET * 2)

    def run(self) -> None:
        try:
            self._serve()
        except (ProtocolError, ConnectionError, TimeoutError) as exc:
            log.warning("%s: connection ended: %s", self.peer, exc)
            if isinstance(exc, ProtocolError):
                _send_quietly(self.sock, protocol.encode("failed", {"error": protocol.error_to_fields(
                    KTLSAgentError(0, f"protocol violation: {exc}", "AGENT_PROTOCOL"))}))
        except Exception:
            log.exception("%s: connection ended by an internal error", self.peer)
        finally:
            if self.handshake is not None:
                self.handshake.release()
            self.sock.close()
            self.agent.connection_ended(self.peer)

    def _serve(self) -> None:
        self._send(protocol.encode("welcome", {"protocol": 1}))
        deadline = time.monotonic() + self.agent.config.handshake_timeout
        request, fds = self._receive(deadline)
        try:
            if request.kind != "handshake":
                raise ProtocolError(f"expected a handshake request, got {request.kind!r}")
            mode = request.get("mode", str)
            if request.get("post_handshake", str, "agent") not in ("agent", "local"):
                raise ProtocolError("post_handshake: 'agent' or 'local'")
            if mode == "fd":
                if len(fds) != 1:
                    raise ProtocolError(f"fd mode needs exactly one file descriptor, got {len(fds)}")
                # Our copy of the application's socket: closed below, whatever happens (held, it
                # would keep the TCP connection open after the application closed it).
                tcp_fd = fds[0]
                _check_tcp_socket(tcp_fd)  # before OpenSSL is given it
                self._answer_handshake(request, lambda handshake: self._run_on_fd(handshake, tcp_fd, deadline),
                                       tcp_fd)
            elif mode == "forward":
                if fds:
                    raise ProtocolError("forward mode takes no file descriptor")
                self._answer_handshake(request, lambda handshake: self._run_forwarded(handshake, deadline), None)
            else:
                raise ProtocolError(f"unknown mode {mode!r}")
        finally:
            for fd in fds:
                os.close(fd)
        if self.engine is None:
            return
        while True:
            try:
                request, fds = self._receive(None)
            except ConnectionError:
                return  # the application closed its TLS connection
            for fd in fds:
                os.close(fd)
            self._post_handshake(request)

    # --- the handshake ---------------------------------------------------------------------------

    def _answer_handshake(self, request: Message, run, tcp_fd: int | None) -> None:
        role = request.get("role", str)
        if role not in ("client", "server"):
            raise ProtocolError(f"unknown role {role!r}")
        server = role == "server"
        hostname = request.get("server_hostname", (str, type(None)), None)
        alpn = tuple(request.get("alpn", list, []))
        if not all(isinstance(name, str) and 0 < len(name.encode()) < 256 for name in alpn):
            raise ProtocolError("alpn: a list of protocol names of 1 to 255 bytes")
        verify = request.get("verify", str, "none" if server else "required")
        if verify not in _VERIFY:
            raise ProtocolError(f"unknown verify mode {verify!r}")
        versions = [request.get(name, (str, type(None)), None) for name in ("minimum_version", "maximum_version")]
        if any(version is not None and version not in _VERSIONS for version in versions):
            raise ProtocolError("versions: TLSv1.2 or TLSv1.3")
        identity_name = request.get("identity", (str, type(None)), None)
        if server:
            cert = self.agent.identity_for(None).cert
        elif identity_name is not None:
            cert = self.agent.identity_for(identity_name).cert
        else:
            cert = None
        ciphers = [request.get(name, (str, type(None)), None) for name in ("ciphers", "ciphersuites")]
        if any(value is not None and (len(value) > 4096 or "\0" in value) for value in ciphers):
            raise ProtocolError("ciphers: a cipher string without NUL, at most 4096 characters")
        settings = Settings(role, alpn, verify, request.get("post_handshake_auth", bool, False),
                            request.get("check_hostname", bool, not server), cert, *versions, *ciphers)
        handle = request.get("session", (str, type(None)), None)
        session = self.agent.session(self.peer.uid, handle) if handle and not server else None
        sni_seen: list[str | None] = [None]

        def servername(raw_name: bytes | None) -> int | None:
            # The identity whose certificate serves the name the client asked for.
            name = raw_name.decode("ascii", "replace") if raw_name is not None else None
            sni_seen[0] = name
            chosen = self.agent.identity_for(name)
            if chosen.cert != cert:
                self.handshake.set_context(self.agent.context(dataclasses.replace(settings, cert=chosen.cert)))
            return None

        started = time.monotonic()
        try:
            context = self.agent.context(settings)
            if session is not None and session._context is not None and session._context() is not context:
                session = None  # made under other settings: a full handshake instead
            self.handshake = Handshake(context, tcp_fd, server_side=server, server_hostname=hostname,
                                       policy=Policy.AFTER_FINISHED, session=session,
                                       hooks=HandshakeHooks(servername=servername if server else None))
            handoff, outgoing, self.engine = run(self.handshake)
        except ProtocolError:
            raise
        except Exception as exc:
            outgoing = getattr(exc, "ktls_outgoing", b"")
            self._log_handshake(request, role, hostname, sni_seen[0], started, f"failed: {exc}")
            self._send(protocol.encode("failed", {"error": protocol.error_to_fields(exc)}, outgoing))
            return
        self.sni = sni_seen[0]
        facts = _facts(self.handshake, self.sni)
        self._log_handshake(request, role, hostname, sni_seen[0], started, "established", facts)
        # fd mode: the keys are in the kernel already; the application needs none of them. Local
        # post-handshake handling: the application takes the TLS 1.3 traffic secrets and the agent
        # is done with this connection.
        local = request.get("post_handshake", str, "agent") == "local"
        fields = {"handoff": protocol.handoff_to_fields(handoff, with_keys=tcp_fd is None, with_secrets=local),
                  "facts": facts}
        self._send(protocol.encode("established", fields, outgoing))
        if local:
            self.engine = None

    def _run_on_fd(self, handshake: Handshake, fd: int, deadline: float):
        """The handshake on the application's socket, then its keys into the kernel."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            while True:
                want = handshake.step()
                if want == 0:
                    break
                _wait(fd, want, deadline)
            handshake.stop_counting()
            engine = OpenSSLPostHandshake(handshake)
            handoff, tx_reason = install_keys(fd, engine)
        except HandoffUnavailable as exc:
            raise KTLSUnavailableError(0, f"the kernel cannot carry this connection: {exc}", "KTLS_REQUIRED") from None
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # the application's flags, exactly as they were
        if tx_reason is not None:
            raise KTLSUnavailableError(0, f"the kernel cannot send for this connection ({tx_reason}); through "
                                          "the agent both directions must be in the kernel", "KTLS_REQUIRED")
        return handoff, b"", engine

    def _run_forwarded(self, handshake: Handshake, deadline: float):
        """The handshake on memory: the application forwards the peer's bytes, we answer ours."""
        received = 0
        while True:
            try:
                complete = handshake.step() == 0
            except Exception as exc:
                exc.ktls_outgoing = handshake.take_outgoing()
                raise
            outgoing = handshake.take_outgoing()
            if complete:
                handshake.stop_counting()
                handoff = handshake.handoff()
                engine = OpenSSLPostHandshake(handshake)
                engine.detach_from_socket(handoff, tx=True)
                return handoff, outgoing, engine
            self._send(protocol.encode("advanced", {}, outgoing))
            request, fds = self._receive(deadline)
            if fds:
                raise ProtocolError("a forwarded handshake message carries no file descriptor")
            if request.kind != "advance":
                raise ProtocolError(f"expected advance, got {request.kind!r}")
            received += len(request.payload)
            if received > MAX_HANDSHAKE_BYTES:
                raise ProtocolError(f"the forwarded handshake exceeds {MAX_HANDSHAKE_BYTES} bytes")
            handshake.give_incoming(request.payload)
            if request.get("eof", bool, False):
                handshake.give_incoming_eof()

    def _log_handshake(self, request: Message, role: str, hostname, sni, started: float, outcome: str,
                       facts: dict | None = None) -> None:
        facts = facts or {}
        log.info("handshake %s: peer process %s, mode %s, role %s, tcp peer %s, sni %s, alpn %s, %s %s (%.1f ms)",
                 outcome, self.peer, request.fields.get("mode"), role, request.fields.get("tcp_peer"),
                 hostname or sni, facts.get("alpn"), facts.get("version"), (facts.get("cipher") or [None])[0],
                 (time.monotonic() - started) * 1000)

    # --- after the handshake -------------------------------------------------------------------------

    def _post_handshake(self, request: Message) -> None:
        engine, kind = self.engine, request.kind
        try:
            if kind == "feed":
                content_type = request.get("content_type", int)
                if not 0 <= content_type <= 255:
                    raise ProtocolError("content_type out of range")
                self._send_answer(engine.feed(content_type, request.payload))
            elif kind == "feed_key_update":
                answer = engine.feed_key_update(request.payload)
                self._send_answer(answer, read_keys=protocol.keys_to_fields(engine.read_keys))
            elif kind == "key_update_records":
                self._send_answer(engine.key_update_records(request.get("request_peer", bool)))
            elif kind == "emit":
                self._send_answer(engine.emit())
            elif kind == "verify_client_post_handshake":
                engine.verify_client_post_handshake()
                self._send_answer([])
            elif kind == "note_close_notify":
                engine.note_close_notify(sent=request.get("sent", bool, False),
                                         received=request.get("received", bool, False))
                self._send_answer([])
            elif kind == "forget_session":
                engine.forget_session()
                self._send_answer([])
            elif kind == "get_session":
                self._send_session()
            elif kind == "facts":  # after a post-handshake authentication, the client's certificate
                self._send(protocol.encode("facts", {"facts": _facts(self.handshake, self.sni)}))
            else:
                raise ProtocolError(f"unknown request {kind!r}")
        except ProtocolError:
            raise
        except Exception as exc:
            payload, _ = protocol.encode_records(getattr(exc, "ktls_outgoing", []))
            self._send(protocol.encode("failed", {"error": protocol.error_to_fields(exc)}, payload))

    def _send_answer(self, records: list, **fields: Any) -> None:
        payload, record_fields = protocol.encode_records(records)
        self._send(protocol.encode("answer", {**fields, **record_fields, "in_handshake": self.engine.in_handshake},
                                   payload))

    def _send_session(self) -> None:
        session = self.handshake.get_session()
        if session is None or self.handshake.server_side:
            self._send(protocol.encode("session", {"handle": None}))
            return
        handle = self.agent.keep_session(self.peer.uid, session)
        self._send(protocol.encode("session", {"handle": handle, "id": session.id.hex(), "time": session.time,
                                               "timeout": session.timeout, "has_ticket": session.has_ticket,
                                               "ticket_lifetime_hint": session.ticket_lifetime_hint}))

    # --- the agent connection ------------------------------------------------------------------------

    def _receive(self, deadline: float | None) -> tuple[Message, list[int]]:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                raise TimeoutError("the application took longer than the handshake timeout")
        data, ancillary, flags, _ = self.sock.recvmsg(protocol.MAX_PACKET + 1,
                                                      socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize))
        fds = _take_fds(ancillary)
        if not data:
            for fd in fds:
                os.close(fd)
            raise ConnectionResetError("the application closed the agent connection")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise ProtocolError("packet or file descriptors truncated")
        try:
            return protocol.decode(data), fds
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise

    def _send(self, packet: bytes) -> None:
        self.sock.send(packet)  # one packet: SOCK_SEQPACKET sends it whole or fails


def _take_fds(ancillary) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _check_tcp_socket(fd: int) -> None:
    """The application's fd must be a connected TCP socket that nothing attached TLS to yet."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise ProtocolError("the file descriptor is not a socket")
    probe = socket.socket(fileno=os.dup(fd))  # a copy: closing it leaves the application's fd alone
    try:
        if (probe.type != socket.SOCK_STREAM or probe.family not in (socket.AF_INET, socket.AF_INET6)
                or probe.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) != socket.IPPROTO_TCP):
            raise ProtocolError("the file descriptor is not a TCP socket")
        if probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ProtocolError("the file descriptor is a listening socket")
        try:
            probe.getpeername()
        except OSError:
            raise ProtocolError("the socket is not connected") from None
        if probe.getsockopt(socket.IPPROTO_TCP, kernel.TCP_ULP, 16).rstrip(b"\0"):
            raise ProtocolError("the socket already has an upper-layer protocol (TLS) attached")
    finally:
        probe.close()


def _wait(fd: int, want: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("The handshake operation timed out")
    poller = select.poll()
    poller.register(fd, select.POLLIN if want == WANT_READ else select.POLLOUT)
    poller.poll(max(1, int(remaining * 1000)))


def _facts(handshake: Handshake, sni: str | None) -> dict[str, Any]:
    """What the application's socket reports about the connection (agent.RemoteTLSInfo)."""
    info = TLSInfo(handshake)
    peer = info.peer_certificate_der()
    chain = info.verified_chain()
    binding = info.channel_binding("tls-unique")
    return {"version": handshake.version(), "version_number": handshake.protocol_version,
            "cipher": info.cipher(), "shared_ciphers": info.shared_ciphers(), "alpn": info.selected_alpn_protocol(),
            "server_name": sni, "session_reused": handshake.session_reused,
            "peer_verified": info.peer_verified() and peer is not None,
            "peer_certificate": peer.hex() if peer is not None else None,
            "verified_chain": [der.hex() for der in chain] if sum(map(len, chain)) < 12 * 1024 else None,
            "channel_binding": binding.hex() if binding is not None else None}


def _send_quietly(sock: socket.socket, packet: bytes) -> None:
    try:
        sock.send(packet)
    except OSError:
        pass


def start_process(socket_path: str, identities, *, ca: str | None = None, options=(), stderr=None,
                  cwd: str | None = None) -> subprocess.Popen:
    """``python -m ktls_ossl agent`` in a process of its own, returned once it listens: it prints
    one line when its socket exists. ``identities``: (certificate chain, key) pairs; ``options``:
    more command-line options. RuntimeError (the agent stopped) where it exited instead."""
    command = [sys.executable, "-m", "ktls_ossl", "agent", "--socket", socket_path]
    for cert, key in identities:
        command += ["--cert", cert, "--key", key]
    if ca:
        command += ["--ca", ca]
    command += list(options)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=cwd)
    line = process.stdout.readline()
    if b"listening" not in line:
        process.kill()
        process.wait()
        raise RuntimeError(f"the handshake agent did not start ({' '.join(command)}): {line!r}")
    return process


def config_from_arguments(args) -> AgentConfig:
    """The agent's configuration: a JSON config file (``--config``), then the command line on top.
    The file holds the options' names: {"socket": ..., "identities": [{"cert": ..., "key": ...}],
    "ca": ..., "allow_uids": [...], "allow_gids": [...], "socket_mode": "0660",
    "handshake_timeout": 30, "max_connections": 1024, "max_per_uid": 256}."""
    settings: dict[str, Any] = {}
    if args.config:
        import json

        with open(args.config, encoding="utf-8") as config_file:
            settings = json.load(config_file)
        if not isinstance(settings, dict):
            raise ValueError(f"{args.config}: the configuration is a JSON object")
    pairs = [(entry["cert"], entry["key"]) for entry in settings.get("identities", [])]
    if len(args.cert or []) != len(args.key or []):
        raise ValueError("give one --key for every --cert")
    pairs += list(zip(args.cert or [], args.key or []))
    socket_path = args.socket or settings.get("socket")
    if not socket_path:
        raise ValueError("--socket (or the configuration's \"socket\") is required")
    mode = args.socket_mode or settings.get("socket_mode")
    return AgentConfig(
        socket_path=socket_path,
        identities=[Identity.load(cert, key) for cert, key in pairs],
        ca_file=args.ca or settings.get("ca"),
        allow_uids=frozenset(int(uid) for uid in [*settings.get("allow_uids", []), *(args.allow_uid or [])]),
        allow_gids=frozenset(int(gid) for gid in [*settings.get("allow_gids", []), *(args.allow_gid or [])]),
        socket_mode=int(mode, 8) if isinstance(mode, str) else mode,
        handshake_timeout=float(args.handshake_timeout or settings.get("handshake_timeout", 30.0)),
        max_connections=int(args.max_connections or settings.get("max_connections", 1024)),
        max_per_uid=int(args.max_per_uid or settings.get("max_per_uid", 256)),
    )


def add_arguments(parser) -> None:
    parser.add_argument("--socket", help="the Unix socket path to serve")
    parser.add_argument("--cert", action="append", help="certificate chain (PEM); repeat with --key per identity")
    parser.add_argument("--key", action="append", help="private key (PEM) of the --cert before it")
    parser.add_argument("--ca", help="trust anchors (PEM) for peers' certificates (client certificates too)")
    parser.add_argument("--allow-uid", action="append", type=int, help="a uid that may use the agent "
                        "(repeatable; the agent's own uid always may)")
    parser.add_argument("--allow-gid", action="append", type=int, help="a gid that may use the agent (repeatable)")
    parser.add_argument("--socket-mode", help="the socket file's mode in octal (default 0600, 0660 with --allow-gid)")
    parser.add_argument("--handshake-timeout", type=float, help="seconds a handshake may take (default 30)")
    parser.add_argument("--max-connections", type=int, help="agent connections at once (default 1024)")
    parser.add_argument("--max-per-uid", type=int, help="agent connections at once per uid (default 256)")
    parser.add_argument("--config", help="JSON configuration file (the command line overrides it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every handshake to stderr")


def main(args) -> int:
    import signal

    try:
        config = config_from_arguments(args)
        agent = Agent(config)
        agent.bind()
    except (OSError, ValueError, KeyError) as exc:
        print(f"ktls_ossl agent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    def stop(signum, frame):
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The one-time probe of what the kernel's TLS can do, before the first client: it installs keys
    # on connections of its own, which /proc/net/tls_stat would otherwise count as the first
    # handshake's (and that handshake would wait for it).
    kernel.probe()
    print(f"ktls_ossl agent: listening on {config.socket_path}", flush=True)
    agent.serve_forever()
    return 0
