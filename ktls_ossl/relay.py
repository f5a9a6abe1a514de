"""A kernel session's post-handshake engine: what goes to it, and what follows from its verdicts.

After the handoff the kernel carries the records, but the handshake engine still owns everything
that is not data: session tickets, the TLS 1.3 key schedule (KeyUpdate), post-handshake client
authentication. ``PostHandshakeRelay`` is the session's side of that engine (a PostHandshakeEngine:
OpenSSL's SSL object today; pyOpenSSL's or the agent's tomorrow): it feeds each post-handshake
message to it, sends its answers through the session's KernelSender, moves the kernel's receive
key where the engine moved its own, and ends the session where the engine refuses a message.
The reading and the sending thread both use the engine, so every call into it is made under
``lock``.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import control, kernel
from .control import ControlState
from .errors import KernelTLSError, KTLSRekeyUnsupportedError
from .keys import Direction
from .records import Alert, AlertDescription, AlertLevel, ContentType

if TYPE_CHECKING:
    from .sender import KernelSender
    from .session import PostHandshakeEngine

__all__ = ["PostHandshakeRelay"]


class PostHandshakeRelay:
    """``sender``: the session's KernelSender (whether TX is in the kernel is its to say).
    ``terminate(exc, event)`` ends the session (the caller raises); ``check_open()`` raises
    where the owner closed the socket meanwhile; ``event(text)`` records to the audit trail."""

    def __init__(self, fd: int, engine: PostHandshakeEngine, sender: KernelSender, *, lock: threading.RLock,
                 control_state: ControlState, terminate: Callable[[BaseException, str], BaseException],
                 check_open: Callable[[], None], event: Callable[[str], None]) -> None:
        self.fd = fd
        self.engine = engine
        self.sender = sender  # the engine's answers go out through it
        self.lock = lock
        self._control = control_state
        self._terminate = terminate
        self._check_open = check_open
        self._event = event

    def feed(self, decision: control.Decision, *, key_update: bool = False) -> bool:
        """The engine processes the message (it owns sessions, the key schedule and certificate
        checks); its answer goes out through the kernel. A rejection fails the session (after
        the engine's alert). Returns whether the answer holds a KeyUpdate of the engine's."""
        message = decision.handshake.pack()
        try:
            with self.lock:
                if key_update:
                    answer = self.engine.feed_key_update(message)
                else:
                    answer = self.engine.feed(ContentType.HANDSHAKE, message)
        except BaseException as exc:
            self._check_open()
            self.sender.queue_own_records(getattr(exc, "ktls_outgoing", []))
            self.sender.flush("read", best_effort=True)
            self._terminate(exc, f"OpenSSL rejected a post-handshake message: {exc}")
            raise
        return self.sender.queue_own_records(answer)

    def client_authentication(self, decision: control.Decision) -> None:
        """The client's answer to our post-handshake CertificateRequest, one message at a time."""
        self.feed(decision)
        if not self.engine.in_handshake:
            self._control.client_auth = None
            self._event("client authenticated after the handshake")

    def request_client_certificate(self) -> None:
        """A post-handshake CertificateRequest (TLS 1.3, server side): the engine writes it, it goes
        out now, and the client's answer is judged by the engine when it arrives; no data behind
        that answer is delivered before the engine accepted it."""
        with self.sender.key_lock:
            with self.lock:
                self.engine.verify_client_post_handshake()
                answer = self.engine.emit()  # OpenSSL sends it itself where TX is its own
            if self.sender.tx_in_kernel:
                self.sender.queue_own_records(answer)
                self.sender.flush("write")
            self._control.client_auth = "requested"
            self._event("post-handshake CertificateRequest sent")

    def peer_key_update(self, decision: control.Decision) -> None:
        """The peer's KeyUpdate: the engine moves its receive key, the kernel follows; where the
        peer asks for ours and the engine has not written it, the sender updates."""
        if not kernel.probe().rekey_supported:
            error = KTLSRekeyUnsupportedError(
                0, f"the peer updated its TLS 1.3 keys (KeyUpdate) but kernel "
                   f"{kernel.probe().kernel_release} cannot install the next receive key "
                   "(TLS 1.3 rekey needs Linux 6.14+); the connection cannot continue",
                "KEY_UPDATE_UNSUPPORTED")
            self._terminate(error, "KeyUpdate received; this kernel cannot rekey")
            self.sender.send_final_alert(Alert(AlertLevel.FATAL, AlertDescription.internal_error))
            raise error
        # The engine owns the key schedule, in both directions, and the kernel's keys follow it (a
        # post-handshake authentication depends on its secrets): it learns of the peer's
        # KeyUpdate, the kernel gets the receive key the engine moved to, and where the peer asks
        # for our update, the engine writes it (at once, or when asked, depending on its version).
        answered = self.feed(decision, key_update=True)
        try:
            with self.lock:
                next_keys = self.engine.read_keys
            kernel.rekey(self.fd, Direction.RX, next_keys)
        except KernelTLSError as exc:
            raise self._terminate(exc, f"KeyUpdate received; the kernel refused the next RX key: {exc}") from None
        self._event("KeyUpdate received: RX rekeyed")
        if decision.update_requested and not answered and self.sender.tx_in_kernel:
            self.sender.update_tx_keys(request_peer=False)

    def note_close_notify(self, *, sent: bool = False, received: bool = False) -> None:
        with self.lock:
            self.engine.note_close_notify(sent=sent, received=received)

    def forget_session(self) -> None:
        with self.lock:
            self.engine.forget_session()

    def shutdown_step(self) -> int:
        """close_notify where the engine still sends on the socket itself (TX not in the kernel)."""
        with self.lock:
            return self.engine.shutdown_step()
