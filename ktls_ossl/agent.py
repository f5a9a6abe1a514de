"""Handshakes run by the handshake agent: the application never holds a private key.

``AgentContext(path)`` is used like ktls_ossl.SSLContext: ``wrap_socket`` returns a KTLSSocket whose
handshake the agent (``python -m ktls_ossl agent``, ktls_ossl/agent_server.py) runs, and whose
record layer is the kernel from the first byte of application data on. After the handshake the
application's kernel session owns the socket: data never passes through any TLS library, alerts and
close_notify are handled here, and the post-handshake messages that need the agent's secrets
(tickets, KeyUpdate, post-handshake authentication) are forwarded to it (``RemotePostHandshake``);
application data behind one of them stays refused until the agent accepted it.

Two ways to run the handshake (``mode``): ``"fd"`` (default) passes the TCP socket to the agent,
which runs the handshake on it and installs the kernel's keys; ``"forward"`` keeps the socket here,
reads the peer's records one at a time and forwards them (pump.RecordPump over
``RemoteHandshakeEngine``), and installs the keys the agent returns after the verified Finished.
Either way the application must not use the socket while the handshake runs; ``do_handshake``
waits for the agent (bounded by the socket's timeout, else the context's ``timeout``), also on a
non-blocking socket.

Failures are specific: ``KTLSAgentError`` with reason AGENT_UNREACHABLE (no agent at the path),
AGENT_REFUSED (this uid or gid is not allowed), AGENT_BUSY (at its limits), AGENT_GONE (it died or
stopped answering) or AGENT_PROTOCOL; a handshake the agent ran and the peer failed raises what a
ktls_ossl.SSLContext would raise (SSLCertVerificationError, ...). A failed handshake leaves the
socket unusable for TLS (close it).
"""
from __future__ import annotations

import array
import errno
import os
import select
import socket
import ssl
import time
from typing import Any

from . import agent_protocol as protocol
from . import records
from .agent_protocol import Message, ProtocolError
from .audit import AuditTrail
from .connection import BeforeHandshake, ConnectionState, KTLSStatus, RecordConnection, _guarded
from .errors import KernelTLSError, KTLSAgentError, KTLSUnavailableError
from .handshake import WANT_READ, Handoff, HandoffUnavailable, Policy
from .keys import TrafficKeys
from .keyschedule import KeyScheduleEngine
from .pump import NoWaitSocket, RecordPump
from .session import KernelSession, hand_over
from .tlsinfo import getpeercert_result
from .socket import KTLSSocket

__all__ = ["AgentContext", "AgentSession", "RemotePostHandshake"]

_VERIFY_NAMES = {ssl.CERT_NONE: "none", ssl.CERT_OPTIONAL: "optional", ssl.CERT_REQUIRED: "required"}
_VERSION_NAMES = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}


class AgentChannel:
    """One SOCK_SEQPACKET connection to the agent: requests and their answers, in order."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise KTLSAgentError(exc.errno or 0, f"cannot reach the handshake agent at {path}",
                                 "AGENT_UNREACHABLE") from None
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, protocol.MAX_PACKET * 2)
        # The agent speaks first: "welcome", or "refused" (this uid, its limits) before anything is sent.
        try:
            _expect(self.receive(timeout), "welcome")
        except BaseException:
            self.sock.close()
            raise

    def request(self, kind: str, fields: dict[str, Any] | None = None, payload: bytes = b"",
                fds: tuple[int, ...] = (), timeout: float | None = ...) -> Message:
        packet = protocol.encode(kind, fields, payload)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([packet], ancillary)
        except OSError as exc:
            raise self._gone(exc) from None
        return self.receive(self.timeout if timeout is ... else timeout)

    def receive(self, timeout: float | None) -> Message:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(protocol.MAX_PACKET + 1)
        except TimeoutError:
            raise KTLSAgentError(errno.ETIMEDOUT, f"the handshake agent did not answer within {timeout} s",
                                 "AGENT_GONE") from None
        except OSError as exc:
            raise self._gone(exc) from None
        if not data:
            raise KTLSAgentError(0, "the handshake agent closed the connection", "AGENT_GONE")
        try:
            message = protocol.decode(data)
        except ProtocolError as exc:
            raise KTLSAgentError(0, f"the handshake agent broke the protocol: {exc}", "AGENT_PROTOCOL") from None
        if message.kind == "refused":
            reason = message.fields.get("reason")
            raise KTLSAgentError(errno.EACCES if reason == "AGENT_REFUSED" else 0,
                                 str(message.fields.get("message", "refused")),
                                 reason if reason in ("AGENT_REFUSED", "AGENT_BUSY") else "AGENT_REFUSED")
        return message

    @staticmethod
    def _gone(exc: OSError) -> KTLSAgentError:
        return KTLSAgentError(exc.errno or 0, "the handshake agent went away", "AGENT_GONE")

    def close(self) -> None:
        self.sock.close()


def _raise_failure(message: Message, *, records: bool = True) -> None:
    """A "failed" answer as the exception it carries. After the handshake its payload is the
    records the agent's OpenSSL wrote (its alert), attached as ``ktls_outgoing`` for the kernel to
    send; in a forwarded handshake it is bytes for the wire, which the caller sends itself."""
    if message.kind != "failed":
        return
    try:
        exc = protocol.error_from_fields(message.fields.get("error"))
        if records:
            exc.ktls_outgoing = protocol.decode_records(message) if message.payload else []
    except ProtocolError as error:
        raise KTLSAgentError(0, f"the handshake agent broke the protocol: {error}", "AGENT_PROTOCOL") from None
    raise exc


def _expect(message: Message, kind: str, *, records: bool = True) -> Message:
    _raise_failure(message, records=records)
    if message.kind != kind:
        raise KTLSAgentError(0, f"the handshake agent answered {message.kind!r} where {kind!r} was due",
                             "AGENT_PROTOCOL")
    return message


class RemotePostHandshake:
    """session.PostHandshakeEngine served by the agent: every message goes there, every answer
    comes back as records for the kernel to send."""

    def __init__(self, channel: AgentChannel, handoff: Handoff) -> None:
        self._channel = channel
        self._handoff = handoff
        self._in_handshake = False
        self._read_keys = handoff.rx

    def handoff(self) -> Handoff:
        return self._handoff

    def detach_from_socket(self, handoff: Handoff, *, tx: bool) -> None:
        """Nothing to do here: the agent's OpenSSL never had this process's socket."""

    @property
    def in_handshake(self) -> bool:
        return self._in_handshake

    @property
    def read_keys(self) -> TrafficKeys:
        return self._read_keys

    def _answer(self, kind: str, fields: dict[str, Any] | None = None,
                payload: bytes = b"") -> tuple[Message, list[tuple[int, bytes]]]:
        try:
            answer = _expect(self._channel.request(kind, fields, payload), "answer")
            records = protocol.decode_records(answer)
        except ProtocolError as exc:
            raise KTLSAgentError(0, f"the handshake agent broke the protocol: {exc}", "AGENT_PROTOCOL") from None
        self._in_handshake = answer.get("in_handshake", bool, False)
        return answer, records

    def feed(self, content_type: int, payload: bytes) -> list[tuple[int, bytes]]:
        return self._answer("feed", {"content_type": content_type}, payload)[1]

    def feed_key_update(self, message: bytes) -> list[tuple[int, bytes]]:
        answer, records = self._answer("feed_key_update", payload=message)
        try:
            self._read_keys = protocol.keys_from_fields(answer.fields.get("read_keys"))
        except ProtocolError as exc:
            raise KTLSAgentError(0, f"the handshake agent broke the protocol: {exc}", "AGENT_PROTOCOL") from None
        return records

    def key_update_records(self, request_peer: bool) -> list[tuple[int, bytes]]:
        return self._answer("key_update_records", {"request_peer": request_peer})[1]

    def emit(self) -> list[tuple[int, bytes]]:
        return self._answer("emit")[1]

    def verify_client_post_handshake(self) -> None:
        self._answer("verify_client_post_handshake")

    def shutdown_step(self) -> int:
        raise KTLSAgentError(0, "the agent never sends on the socket: TX is always the kernel's", "AGENT_PROTOCOL")

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None:
        self._best_effort("note_close_notify", {"sent": sent, "received": received})

    def forget_session(self) -> None:
        self._best_effort("forget_session")

    def _best_effort(self, kind: str, fields: dict[str, Any] | None = None) -> None:
        """Bookkeeping on the agent's side: a connection that is ending does not fail for it."""
        try:
            self._answer(kind, fields)
        except (KTLSAgentError, ssl.SSLError):
            pass

    def facts(self) -> dict[str, Any]:
        answer = _expect(self._channel.request("facts"), "facts")
        facts = answer.fields.get("facts")
        if not isinstance(facts, dict):
            raise KTLSAgentError(0, "the handshake agent broke the protocol: facts", "AGENT_PROTOCOL")
        return facts

    def get_session(self) -> AgentSession | None:
        answer = self._channel.request("get_session")
        _expect(answer, "session")
        handle = answer.fields.get("handle")
        return AgentSession(handle, answer.fields) if isinstance(handle, str) else None


class RemoteHandshakeEngine:
    """pump.HandshakeEngine whose TLS engine is the agent's (record forwarding mode)."""

    def __init__(self, channel: AgentChannel, request: dict[str, Any]) -> None:
        self._channel = channel
        self._request: dict[str, Any] | None = request
        self._incoming = bytearray()
        self._eof = False
        self._outgoing = b""
        self.established: Message | None = None

    def give_incoming(self, data: bytes) -> None:
        self._incoming += data

    def give_incoming_eof(self) -> None:
        self._eof = True

    def take_outgoing(self) -> bytes:
        data, self._outgoing = self._outgoing, b""
        return data

    def advance(self) -> bool:
        if self.established is not None:
            return True
        if self._request is None and not self._eof and (
                not self._incoming or records.split_records(bytes(self._incoming))[1]):
            # Nothing the agent could act on yet: a record goes over whole, one round trip each
            # (the pump gives its header and its body separately, and has parsed the header).
            return False
        if self._request is not None:
            answer = self._channel.request("handshake", self._request)
            self._request = None
        else:
            payload, self._incoming = bytes(self._incoming), bytearray()
            answer = self._channel.request("advance", {"eof": self._eof}, payload)
        self._outgoing += answer.payload
        _raise_failure(answer, records=False)
        if answer.kind == "established":
            self.established = answer
            return True
        _expect(answer, "advanced")
        return False


class AgentSession:
    """A TLS session the agent keeps for resumption (the counterpart of ssl.SSLSession): the
    application holds only this handle; the session's secrets stay in the agent."""

    def __init__(self, handle: str, fields: dict[str, Any]) -> None:
        self.handle = handle
        self.id = bytes.fromhex(fields["id"]) if isinstance(fields.get("id"), str) else b""
        self.time = fields.get("time")
        self.timeout = fields.get("timeout")
        self.has_ticket = bool(fields.get("has_ticket"))
        self.ticket_lifetime_hint = fields.get("ticket_lifetime_hint")

    def __repr__(self) -> str:
        return f"<ktls_ossl AgentSession id={self.id.hex()[:16]}... has_ticket={self.has_ticket}>"


class RemoteTLSInfo:
    """What the socket reports about the connection, as the agent described it (tlsinfo.TLSInfo's
    methods, from the agent's "facts")."""

    def __init__(self, facts: dict[str, Any], server_side: bool) -> None:
        self._facts = facts
        self._server_side = server_side

    def version(self) -> str | None:
        return self._facts.get("version")

    def cipher(self):
        cipher = self._facts.get("cipher")
        return tuple(cipher) if cipher else None

    def shared_ciphers(self):
        shared = self._facts.get("shared_ciphers")
        return [tuple(entry) for entry in shared] if shared is not None else None

    def compression(self) -> None:
        return None

    def selected_alpn_protocol(self) -> str | None:
        return self._facts.get("alpn")

    def channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        if cb_type != "tls-unique":
            raise ValueError(f"'{cb_type}' channel binding type not implemented")
        value = self._facts.get("channel_binding")
        return bytes.fromhex(value) if value else None

    def session_reused(self) -> bool:
        return bool(self._facts.get("session_reused"))

    def peer_certificate(self, binary_form: bool = False):
        if not self._facts:
            raise ValueError("handshake not done yet")
        value = self._facts.get("peer_certificate")
        return getpeercert_result(bytes.fromhex(value) if value is not None else None,
                                  bool(self._facts.get("peer_verified")), binary_form)

    def verified_chain(self) -> list[bytes]:
        return [bytes.fromhex(der) for der in self._facts.get("verified_chain") or ()]

    def unverified_chain(self) -> list[bytes]:
        leaf = self.peer_certificate(binary_form=True)
        return [leaf] if leaf is not None else []


class AgentConnection(RecordConnection):
    """A KTLSSocket's connection whose handshake the agent runs; the record layer is always the
    kernel's, both directions."""

    def __init__(self, context: AgentContext, sock, server_side: bool, server_hostname, owner=None,
                 session: AgentSession | None = None) -> None:
        self._channel: AgentChannel | None = None
        events = AuditTrail()
        super().__init__(context, sock, server_side, server_hostname, owner, policy=Policy.AFTER_FINISHED,
                         events=events, record_event=lambda source, what: events.append((source, what)),
                         free=self._close_channel)
        self._info = RemoteTLSInfo({}, server_side)  # the agent's facts, once it has run the handshake
        self._requested_session = session
        self._remote: RemotePostHandshake | None = None
        self._rx = self._tx = BeforeHandshake()

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()  # the agent drops its state for this connection

    def _negotiated_version(self) -> int:
        return self._handoff.version

    # --- the handshake ------------------------------------------------------------------------------

    @_guarded
    def do_handshake(self) -> None:
        with self._lock:
            if self._stage in (ConnectionState.KERNEL, ConnectionState.CLOSING):
                return
            if self._failure is not None:
                raise self._failure
            context = self._context
            self._event(f"handshake started through the agent ({context.mode} mode)")
            try:
                sock = self.owner
                timeout = sock.gettimeout() or context.timeout
                self._channel = AgentChannel(context.socket_path, timeout)
                if context.mode == "fd":
                    self._session = self._handshake_by_agent(self._request(sock), timeout)
                else:
                    self._session = self._handshake_forwarded(self._request(sock), timeout)
            except Exception as exc:
                self._check_open()
                self._failure, self._stage = exc, ConnectionState.FAILED
                self._event(f"handshake failed: {exc}")
                raise
            session = self._session
            self._rx = self._tx = session
            handoff = self._handoff = session.handoff
            self._status = KTLSStatus(self.policy, True, True, None, None,
                                      f"{handoff.cipher.display_name} ({handoff.suite})", self._info.version(),
                                      rekey_supported=session.rekeys)
            self._stage = ConnectionState.KERNEL
            self._event("handshake complete: the agent verified the peer's Finished; tx+rx in the kernel")

    def _request(self, sock) -> dict[str, Any]:
        context = self._context
        try:
            tcp_peer = "%s:%s" % sock.getpeername()[:2]
        except OSError:
            tcp_peer = None
        if context.post_handshake == "local" and context.post_handshake_auth:
            raise ValueError("post-handshake authentication needs the agent: post_handshake='agent'")
        return {"mode": context.mode, "post_handshake": context.post_handshake,
                "role": "server" if self.server_side else "client",
                "server_hostname": self.server_hostname, "alpn": list(context._alpn_protocols),
                "verify": _VERIFY_NAMES[context.verify_mode], "check_hostname": bool(context.check_hostname),
                "post_handshake_auth": bool(context.post_handshake_auth),
                "identity": context.identity, "tcp_peer": tcp_peer,
                "minimum_version": _VERSION_NAMES.get(context.minimum_version),
                "maximum_version": _VERSION_NAMES.get(context.maximum_version),
                "ciphers": context._ciphers, "ciphersuites": context._ciphersuites,
                "session": self._requested_session.handle if self._requested_session is not None else None}

    def _established(self, answer: Message) -> tuple[Handoff, RemotePostHandshake | KeyScheduleEngine]:
        """The agent's answer: the handoff, the facts, and the connection's post-handshake engine:
        the agent (RemotePostHandshake), or with post_handshake="local" the key schedule of the
        secrets it handed over (the agent connection then ends here)."""
        _expect(answer, "established", records=False)
        try:
            handoff = protocol.handoff_from_fields(answer.fields.get("handoff"))
            facts = answer.get("facts", dict)
            self._info = RemoteTLSInfo(facts, self.server_side)
            if self._context.post_handshake == "local":
                engine = KeyScheduleEngine(handoff, "the handshake agent handed this connection over "
                                                    "(post_handshake='local')")
                self._close_channel()
                return handoff, engine
        except (ProtocolError, ValueError) as exc:
            raise KTLSAgentError(0, f"the handshake agent broke the protocol: {exc}", "AGENT_PROTOCOL") from None
        self._remote = RemotePostHandshake(self._channel, handoff)
        return handoff, self._remote

    def _handshake_by_agent(self, request: dict[str, Any], timeout: float) -> KernelSession:
        """fd mode: the agent runs the handshake on our socket and installs the kernel's keys."""
        answer = self._channel.request("handshake", request, fds=(self._fd,), timeout=timeout + 5)
        self._check_open()
        handoff, remote = self._established(answer)
        self._event(f"RX and TX installed in the kernel by the agent at records {handoff.rx.seq}/{handoff.tx.seq}")
        return KernelSession(self._fd, handoff, tx_in_kernel=True, post_handshake=remote, event=self._event,
                             **self._session_options())

    def _handshake_forwarded(self, request: dict[str, Any], timeout: float) -> KernelSession:
        """forward mode: the peer's records go to the agent one at a time; its keys come back.
        While the peer is waited for, so is the agent: one that dies meanwhile ends the handshake
        at once (AGENT_GONE), not at the timeout."""
        engine = RemoteHandshakeEngine(self._channel, request)
        view = NoWaitSocket(self._fd)
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._channel.sock, select.POLLIN)
        try:
            pump = RecordPump(view, engine)
            while (want := pump.step()) != 0:
                poller.register(self._fd, select.POLLIN if want == WANT_READ else select.POLLOUT)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("The handshake operation timed out")
                events = poller.poll(max(1, int(remaining * 1000)))
                self._check_open()
                if any(fd == self._channel.sock.fileno() for fd, _ in events):
                    _expect(self._channel.receive(0), "nothing", records=False)  # EOF: AGENT_GONE
        finally:
            view.close()
        self._check_open()
        handoff, remote = self._established(engine.established)
        try:
            session = hand_over(self._fd, remote, event=self._event, **self._session_options())
        except (HandoffUnavailable, KernelTLSError) as exc:
            raise KTLSUnavailableError(0, f"the kernel cannot carry this connection: {exc}", "KTLS_REQUIRED") from None
        if session.tx_reason is not None:
            raise KTLSUnavailableError(0, f"the kernel cannot send for this connection ({session.tx_reason}); "
                                          "through the agent both directions must be in the kernel", "KTLS_REQUIRED")
        return session

    # --- information: the agent's facts (RecordConnection's methods), refreshed for certificates --

    @_guarded
    def getpeercert(self, binary_form: bool = False):
        return self._current_info().peer_certificate(binary_form)

    @_guarded
    def get_verified_chain(self) -> list[bytes]:
        return self._current_info().verified_chain()

    @_guarded
    def get_unverified_chain(self) -> list[bytes]:
        return self._current_info().unverified_chain()

    def _current_info(self) -> RemoteTLSInfo:
        """The peer's certificate as the agent holds it now: a post-handshake authentication may
        have brought the client's since the handshake."""
        if self._remote is not None and self.server_side and self._context.post_handshake_auth:
            with self._session.engine_lock:
                self._info = RemoteTLSInfo(self._remote.facts(), self.server_side)
        return self._info

    @property
    @_guarded
    def session(self) -> AgentSession | None:
        if self._stage is ConnectionState.HANDSHAKING:
            return self._requested_session
        if self._remote is None:
            return None  # post_handshake="local": the agent keeps nothing for this connection
        with self._session.engine_lock:
            return self._remote.get_session()

    @session.setter
    @_guarded
    def session(self, value: AgentSession | None) -> None:
        if value is not None and not isinstance(value, AgentSession):
            raise TypeError("Value is not an AgentSession.")
        if self.server_side:
            raise ValueError("Cannot set session for server-side SSLSocket.")
        if self._stage is not ConnectionState.HANDSHAKING:
            raise ValueError("Cannot set session after handshake.")
        self._requested_session = value

    @property
    def session_reused(self) -> bool:
        return self._info.session_reused()


class AgentContext:
    """Like ktls_ossl.SSLContext, for handshakes the agent at ``socket_path`` runs (see the module
    doc). Settings that concern the handshake travel with each request; the agent's own
    configuration (certificates, keys, trust anchors) decides the rest."""

    sslsocket_class = KTLSSocket
    _encode_hostname = ssl.SSLContext._encode_hostname

    def __init__(self, socket_path: str, protocol: int = ssl.PROTOCOL_TLS_CLIENT, *, mode: str = "fd",
                 post_handshake: str = "agent", timeout: float = 30.0) -> None:
        if protocol not in (ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS_SERVER):
            raise ValueError("AgentContext takes PROTOCOL_TLS_CLIENT or PROTOCOL_TLS_SERVER")
        if mode not in ("fd", "forward"):
            raise ValueError("mode is 'fd' (pass the socket) or 'forward' (forward its records)")
        if post_handshake not in ("agent", "local"):
            raise ValueError("post_handshake is 'agent' (every post-handshake message to the agent) or 'local' "
                             "(the agent hands over the TLS 1.3 traffic secrets and is done)")
        self.post_handshake = post_handshake
        self.socket_path = os.fspath(socket_path)
        self.protocol = protocol
        self.mode = mode
        self.timeout = timeout
        client = protocol == ssl.PROTOCOL_TLS_CLIENT
        self.check_hostname = client
        self.verify_mode = ssl.CERT_REQUIRED if client else ssl.CERT_NONE
        self.post_handshake_auth = False
        self.minimum_version: ssl.TLSVersion | None = None
        self.maximum_version: ssl.TLSVersion | None = None
        self.identity: str | None = None  # client role: the agent's certificate to present, by name
        self.key_update_records: int | None = None
        self.control_record_callback = None
        self.ktls_policy = Policy.AFTER_FINISHED
        self.require_ktls = True
        self._alpn_protocols: list[str] = []
        self._ciphers: str | None = None
        self._ciphersuites: str | None = None

    def set_alpn_protocols(self, alpn_protocols) -> None:
        names = list(alpn_protocols)
        for name in names:
            if not isinstance(name, str) or not 0 < len(name.encode("ascii")) < 256:
                raise ValueError(f"ALPN protocol {name!r} must be 1 to 255 ASCII bytes")
        self._alpn_protocols = names

    def set_ciphers(self, ciphers: str) -> None:
        """The TLS 1.2 cipher string the agent's OpenSSL uses for this context's handshakes."""
        self._ciphers = _cipher_string(ciphers)

    def set_ciphersuites(self, ciphersuites: str) -> None:
        """The TLS 1.3 suites, as ktls_ossl.SSLContext.set_ciphersuites."""
        self._ciphersuites = _cipher_string(ciphersuites)

    def wrap_socket(self, sock: socket.socket, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | None = None,
                    session: AgentSession | None = None) -> KTLSSocket:
        if server_side != (self.protocol == ssl.PROTOCOL_TLS_SERVER):
            raise ValueError("an AgentContext serves the role of its protocol (PROTOCOL_TLS_SERVER: server_side)")
        return self.sslsocket_class._create(sock=sock, server_side=server_side,
                                            do_handshake_on_connect=do_handshake_on_connect,
                                            suppress_ragged_eofs=suppress_ragged_eofs,
                                            server_hostname=server_hostname, context=self, session=session)

    def _wrap_socket(self, sock, server_side, server_hostname=None, *, owner=None, session=None):
        return AgentConnection(self, sock, bool(server_side), server_hostname, owner=owner, session=session)


def _cipher_string(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a cipher string is a str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError("embedded null character")
    return value
