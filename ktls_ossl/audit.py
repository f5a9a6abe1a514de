"""A connection's audit trail, bounded: what ``sock.ktls_events`` shows.

Every audited event of a connection (handshake steps, key installs, control records, KeyUpdates,
close) is appended here as ``(source, what)``. A peer decides how many of those there are: 100,000
warning alerts, each followed by a byte of data, are 200,000 events, and an unbounded list grew by
about 32 MB for them. So the trail keeps at most ``HEAD + TAIL`` events, whatever is appended:

* the first ``HEAD`` (64) events, which hold the handshake and the handoff to the kernel, and
* the last ``TAIL`` (192) events, which hold how the connection ended (the last event is always the
  last one appended, e.g. "socket closed");
* between them, only when events were dropped, one marker ``("audit", "<N> events omitted")``, so
  that a reader sees the gap and its size. ``total`` counts every event ever appended.

Up to ``HEAD + TAIL`` events the trail iterates exactly as a list of the appended events would.
Every event still reaches the "ktls_ossl" logger as it happens (handshake.py); only what is kept in
memory is bounded.

Pure: no I/O. ``append`` and iteration take a lock, so a trail appended to by a reader thread and a
writer thread, and read from a third (``sock.ktls_events``), never shows a torn state.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

HEAD = 64  # events kept from the start of the connection
TAIL = 192  # events kept from its end
MARKER_SOURCE = "audit"  # the source of the marker that stands for the omitted events

Event = tuple[str, str]  # (source, what)


def omitted_marker(count: int) -> Event:
    """The event that stands, in iteration, for ``count`` dropped events."""
    return (MARKER_SOURCE, f"{count} events omitted")


class AuditTrail:
    """The first ``head`` and the last ``tail`` events appended, and how many there were in all.

    Memory is O(head + tail) whatever number of events is appended. Iteration yields the kept head,
    then (only if events were dropped) ``omitted_marker(omitted)``, then the kept tail; ``len()`` is
    the number of items iteration yields.
    """

    __slots__ = ("_head", "_head_limit", "_lock", "_tail", "_total")

    def __init__(self, head: int = HEAD, tail: int = TAIL) -> None:
        if head < 0 or tail < 1:
            raise ValueError(f"an audit trail keeps head >= 0 and tail >= 1 events (got {head}, {tail})")
        self._head: list[Event] = []
        self._head_limit = head
        # The tail must be at least 1: the last event appended is always kept.
        self._tail: deque[Event] = deque(maxlen=tail)
        self._total = 0
        self._lock = threading.Lock()

    @property
    def head_limit(self) -> int:
        return self._head_limit

    @property
    def tail_limit(self) -> int:
        maxlen = self._tail.maxlen
        assert maxlen is not None
        return maxlen

    def append(self, event: Event) -> None:
        """Keep ``event`` (it may push the oldest event of the tail out)."""
        with self._lock:
            self._total += 1
            if len(self._head) < self._head_limit:
                self._head.append(event)
            else:
                self._tail.append(event)

    @property
    def total(self) -> int:
        """Events ever appended, kept or not."""
        return self._total

    @property
    def omitted(self) -> int:
        """Events appended but no longer kept (0 until more than head + tail were appended)."""
        with self._lock:
            return self._omitted()

    def _omitted(self) -> int:
        return self._total - len(self._head) - len(self._tail)

    def snapshot(self) -> list[Event]:
        """What iteration yields, as one consistent list."""
        with self._lock:
            events = list(self._head)
            omitted = self._omitted()
            if omitted:
                events.append(omitted_marker(omitted))
            events.extend(self._tail)
        return events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._head) + len(self._tail) + (1 if self._omitted() else 0)

    def __repr__(self) -> str:
        return (f"<AuditTrail total={self._total} kept={len(self._head) + len(self._tail)} "
                f"head<={self._head_limit} tail<={self.tail_limit}>")
