"""A connection's life across threads: who may touch its fd and OpenSSL object, and until when.

Theory of operation
-------------------
Any thread may close a socket while others are inside a call on it. Two things must then never
happen: OpenSSL's SSL object freed under a thread that is using it, and a system call on the fd
*number* after the socket was closed (the number is reused by the next socket the process opens,
and a stale reader would get another connection's data, decrypted with its keys). So every call
that touches the fd or the SSL object is a *user*: it ``enter()``s first and ``leave()``s last.
``release()``, called when the socket closes, moves the lifetime to CLOSING (a user that enters
later gets OSError EBADF, as CPython's ssl) and, while users are inside, takes over the fd from the
socket object instead of letting it be closed: it shuts the TCP connection down, which wakes every
blocked user, and the last user to leave frees the SSL object and closes the fd (CLOSED). Users
``check_open()`` after each wait, so a closed socket ends every call in progress with that OSError.

Entering and leaving take no lock (list.append and list.pop are atomic, and a lock costs a system
call per call under User-Mode Linux); the rare paths, release and free, take one. They are also
cheap enough to run around every send and receive: ``guard(method)`` makes a method a user with
the two steps written into its wrapper, not called.

A connection that failed closes so that the peer still receives what we sent (``linger``).
"""
from __future__ import annotations

import enum
import errno
import functools
import os
import select
import socket as _socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import kernel

__all__ = ["LINGER_AFTER_FAILURE", "ConnectionLifetime", "LifeState", "closed_error", "guard"]

# The longest close() waits, after a failure, for the peer to acknowledge what we sent (linger).
LINGER_AFTER_FAILURE = 2.0


class LifeState(enum.Enum):
    OPEN = "open"
    CLOSING = "closed by the application; calls still inside are being ended"
    CLOSED = "closed: the SSL object is freed and the fd is no longer ours"  # final


_OPEN = LifeState.OPEN  # every call checks it twice: a global is faster than the enum's attribute


def closed_error() -> OSError:
    """What a call gets when the socket was (or is being) closed by another thread: the EBADF
    that CPython's ssl gives once the descriptor is gone."""
    return OSError(errno.EBADF, f"{os.strerror(errno.EBADF)}: the socket was closed")


def guard(method, *, on_error: Callable[[Any, BaseException], None] | None = None):
    """``method(owner, ...)`` as a user of ``owner._life`` (a ConnectionLifetime): enter() and
    leave() around it, written out here because every send and receive runs through this wrapper.
    ``on_error(owner, exc)`` sees what the method raised before it propagates."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        life = self._life
        inside = life.inside
        inside.append(None)  # enter()
        try:
            if life.state is not _OPEN:
                raise closed_error()
            return method(self, *args, **kwargs)
        except BaseException as exc:
            if on_error is not None:
                on_error(self, exc)
            raise
        finally:
            inside.pop()  # leave()
            if life.state is not _OPEN and not inside:
                life._free()
    return guarded


class ConnectionLifetime:
    """The users of one connection's fd and OpenSSL object, and their end (see the module doc).

    ``free`` releases the OpenSSL object (called once, by release() or by the last user to leave);
    ``event`` adds to the connection's audit trail."""

    def __init__(self, fd: int, *, free: Callable[[], None], event: Callable[[str], None]) -> None:
        self._fd = fd
        self._free_engine: Callable[[], None] | None = free
        self._event = event
        self.inside: list = []  # one item per call inside
        self.state = LifeState.OPEN
        self._close_fd: Callable[[], None] | None = None
        self._linger_limit = 0.0
        self._freed = False
        self._lock = threading.Lock()
        # A call failed with an error that ends the connection: close() lingers (linger()).
        self.ended_in_error = False

    def enter(self) -> None:
        # In first, then look: a release() that did not see this call has already moved the
        # state on, and this call leaves again without touching anything.
        self.inside.append(None)
        if self.state is not _OPEN:
            self.leave()
            raise closed_error()

    def leave(self) -> None:
        self.inside.pop()
        if self.state is not _OPEN and not self.inside:
            self._free()

    def check_open(self) -> None:
        """Raise if the socket was closed while this call was waiting or working."""
        if self.state is not _OPEN:
            raise closed_error()

    def release(self, close_fd: Callable[[], None] | None = None, *, timeout: float | None = None) -> None:
        """The socket is closed (or unwrapped): no new call may start. OpenSSL's state goes now,
        not at the next garbage collection, unless a call is inside: then the last one frees it.
        ``close_fd`` closes the descriptor; where calls are inside it runs when the last one
        leaves, after their blocking system calls were ended by shutting the connection down.
        ``timeout`` (the socket's) bounds the linger of a connection that failed."""
        if close_fd is not None:
            self._linger_limit = LINGER_AFTER_FAILURE if timeout is None else min(timeout, LINGER_AFTER_FAILURE)
            self._close_fd = close_fd  # before the state: whoever sees CLOSING sees it too
        if self.state is LifeState.OPEN:
            self.state = LifeState.CLOSING
        if not self.inside:
            self._free()
        elif close_fd is not None:
            kernel.shutdown(self._fd, _socket.SHUT_RDWR)  # ends the waits of the calls inside

    def _free(self) -> None:
        """Free OpenSSL's state and close the fd where asked: once each, whichever of release()
        and the last call leaving gets here (both may)."""
        with self._lock:
            free_engine, self._freed = not self._freed, True
            close_fd, self._close_fd = self._close_fd, None
        if free_engine:
            # Dropped once called: it is usually a method of the connection that holds this
            # lifetime, a reference cycle that would otherwise outlive the close.
            free, self._free_engine = self._free_engine, None
            free()
        if close_fd is not None:
            if self.ended_in_error:
                self.linger()
            try:
                close_fd()
            except OSError:
                pass  # a socket's close() has nothing to report here that anyone could act on
        if not self.inside:
            self.state = LifeState.CLOSED

    def linger(self) -> None:
        """A connection that failed closes the way a user-space TLS stack's effectively does: the
        peer receives everything we sent (the tickets written after the handshake, the fatal
        alert), then a FIN.

        Linux answers close() with an RST, and drops whatever the peer has not acknowledged yet,
        when unread data is left in the receive queue; and a kTLS socket whose record layer failed
        cannot be drained (the kernel refuses to read past the record it refused, which itself
        stays queued). So where data is left unread, the write side is shut down first (FIN behind
        our data) and close() waits, for at most the socket's timeout or LINGER_AFTER_FAILURE,
        until the peer's TCP has acknowledged everything, FIN included; the RST that close() then
        sends loses nothing. A non-blocking socket never waits here."""
        fd = self._fd
        try:
            if kernel.unread_bytes(fd) == 0:
                return  # close() sends a FIN behind our data by itself
            kernel.shutdown(fd, _socket.SHUT_WR)
            if self._linger_limit <= 0:
                return
            deadline = time.monotonic() + self._linger_limit
            poller = select.poll()
            poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
            delay = 0.0005
            while kernel.unacknowledged_bytes(fd) > 0:
                if any(events & (select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0)):
                    return  # reset by the peer: nothing more will be acknowledged
                if time.monotonic() >= deadline:
                    self._event("closed before the peer acknowledged everything sent")
                    return
                # An acknowledgement wakes nothing one could wait on: look again, less often.
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except OSError:
            return  # not a connected socket any more: close() has nothing to save
