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

Pure: no I/O, and no lock: a reader thread and a writer thread may append while a third reads
(``sock.ktls_events``). Each step is one operation the interpreter performs whole (taking the next
number of an ``itertools.count``, appending to a list or a deque, copying one), which is enough for
the trail to stay bounded and in order per thread; a lock would cost a clock read per event, a
system call under User-Mode Linux, on every handshake.
"""
from __future__ import annotations

import itertools
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


_TAIL_CREATION = threading.Lock()


class AuditTrail:
    """The first ``head`` and the last ``tail`` events appended, and how many there were in all.

    Memory is O(head + tail) whatever number of events is appended. Iteration yields the kept head,
    then (only if events were dropped) ``omitted_marker(omitted)``, then the kept tail; ``len()`` is
    the number of items iteration yields.
    """

    __slots__ = ("_appended", "_head", "_head_limit", "_tail", "_tail_limit")

    def __init__(self, head: int = HEAD, tail: int = TAIL) -> None:
        if head < 0 or tail < 1:
            raise ValueError(f"an audit trail keeps head >= 0 and tail >= 1 events (got {head}, {tail})")
        self._head: list[Event] = []
        self._head_limit = head
        # The tail must be at least 1: the last event appended is always kept.
        # Made when the head is full: most connections never need it, and an empty deque takes
        # most of a kilobyte.
        self._tail: deque[Event] | None = None
        self._tail_limit = tail
        self._appended = itertools.count()  # next(): the number of the event being appended

    @property
    def head_limit(self) -> int:
        return self._head_limit

    @property
    def tail_limit(self) -> int:
        return self._tail_limit

    def append(self, event: Event) -> None:
        """Keep ``event`` (it may push the oldest event of the tail out)."""
        if next(self._appended) < self._head_limit:
            self._head.append(event)
            return
        tail = self._tail
        if tail is None:
            with _TAIL_CREATION:  # threads that overflow the head at once make one tail
                if self._tail is None:
                    self._tail = deque(maxlen=self._tail_limit)
                tail = self._tail
        tail.append(event)

    @property
    def total(self) -> int:
        """Events ever appended, kept or not."""
        # The counter's next number, without taking it: its repr is "count(N)" (copying or
        # pickling itertools objects is deprecated from Python 3.12).
        return int(repr(self._appended)[len("count("):-1])

    @property
    def omitted(self) -> int:
        """Events appended but no longer kept (0 until more than head + tail were appended)."""
        return self._omitted(self.total, len(self._head), len(self._tail or ()))

    @staticmethod
    def _omitted(total: int, head: int, tail: int) -> int:
        # Appends that land between reading the total and copying the containers make the
        # difference negative, never too large.
        return max(0, total - head - tail)

    def snapshot(self) -> list[Event]:
        """What iteration yields, as one list."""
        total = self.total
        events = list(self._head)
        tail = list(self._tail or ())
        omitted = self._omitted(total, len(events), len(tail))
        if omitted:
            events.append(omitted_marker(omitted))
        events.extend(tail)
        return events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        head, tail = len(self._head), len(self._tail or ())
        return head + tail + (1 if self._omitted(self.total, head, tail) else 0)

    def __repr__(self) -> str:
        return (f"<AuditTrail total={self.total} kept={len(self._head) + len(self._tail or ())} "
                f"head<={self._head_limit} tail<={self.tail_limit}>")
