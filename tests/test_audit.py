"""The bounded audit trail (ktls_ossl.audit): what it keeps, what it shows, and that its memory does
not grow with what a peer makes it record (issue 11: 100,000 warning alerts + 1 byte of data each
made an unbounded list 200,009 entries and 31.6 MB long)."""
from __future__ import annotations

import sys
import threading
import tracemalloc

import pytest

from ktls_ossl import audit
from ktls_ossl.audit import HEAD, MARKER_SOURCE, TAIL, AuditTrail, omitted_marker


def events(count: int, start: int = 0) -> list[tuple[str, str]]:
    return [("ktls" if n % 2 else "openssl", f"event {n}") for n in range(start, start + count)]


def filled(count: int, **limits) -> AuditTrail:
    trail = AuditTrail(**limits)
    for event in events(count):
        trail.append(event)
    return trail


def test_the_bound_is_the_documented_one():
    assert (HEAD, TAIL) == (64, 192)
    assert f"the first ``HEAD`` ({HEAD}) events" in audit.__doc__
    assert f"the last ``TAIL`` ({TAIL}) events" in audit.__doc__
    trail = AuditTrail()
    assert (trail.head_limit, trail.tail_limit) == (HEAD, TAIL)


@pytest.mark.parametrize("count", [0, 1, 10, HEAD, HEAD + 1, HEAD + TAIL - 1, HEAD + TAIL])
def test_up_to_the_bound_it_is_the_list(count):
    trail = filled(count)
    assert list(trail) == events(count)
    assert len(trail) == count == trail.total
    assert trail.omitted == 0
    assert bool(trail) is (count > 0)


def test_one_past_the_bound_shows_the_gap():
    trail = filled(HEAD + TAIL + 1)
    expected = events(HEAD) + [(MARKER_SOURCE, "1 events omitted")] + events(TAIL, start=HEAD + 1)
    assert list(trail) == expected
    assert len(trail) == HEAD + TAIL + 1
    assert (trail.total, trail.omitted) == (HEAD + TAIL + 1, 1)


def test_100000_events_keep_the_first_and_the_last():
    count = 100_000
    trail = filled(count)
    shown = list(trail)
    assert shown[:HEAD] == events(HEAD)
    assert shown[HEAD] == omitted_marker(count - HEAD - TAIL) == ("audit", "99744 events omitted")
    assert shown[HEAD + 1:] == events(TAIL, start=count - TAIL)
    assert shown[-1] == ("ktls", "event 99999")  # the last event is still the last one
    assert len(trail) == len(shown) == HEAD + TAIL + 1
    assert (trail.total, trail.omitted) == (count, count - HEAD - TAIL)


def test_what_readers_do_with_it_still_works():
    """sock.ktls_events is list(trail): index(), [-1] and slices as the tests use them."""
    trail = filled(10_000)
    trail.append(("ktls", "socket closed"))
    whats = [what for _, what in trail]
    assert whats[-1] == "socket closed"
    assert whats.index("event 0") == 0
    assert whats.index("9745 events omitted") == HEAD


@pytest.mark.parametrize("head, tail", [(0, 1), (0, 3), (2, 1), (3, 5)])
def test_other_bounds(head, tail):
    count = 20
    trail = filled(count, head=head, tail=tail)
    assert list(trail) == events(head) + [omitted_marker(count - head - tail)] + events(tail, start=count - tail)
    assert (trail.head_limit, trail.tail_limit) == (head, tail)


@pytest.mark.parametrize("head, tail", [(-1, 5), (5, 0)])
def test_a_bound_that_could_lose_the_last_event_is_refused(head, tail):
    with pytest.raises(ValueError):
        AuditTrail(head=head, tail=tail)


def test_iteration_is_a_snapshot():
    trail = filled(HEAD + TAIL + 5)
    iterator = iter(trail)
    first = next(iterator)
    for event in events(1000, start=10_000):
        trail.append(event)
    rest = list(iterator)
    assert [first] + rest == events(HEAD) + [omitted_marker(5)] + events(TAIL, start=HEAD + 5)


def _container_bytes(trail: AuditTrail) -> int:
    return sys.getsizeof(trail._head) + sys.getsizeof(trail._tail)


def test_containers_stop_growing_at_the_bound():
    sizes = [_container_bytes(filled(count)) for count in (HEAD + TAIL, 10 * (HEAD + TAIL), 100_000)]
    # A list of 64 references and a deque of at most 192 (in blocks of 64): a few KB, whatever the count.
    assert max(sizes) < 4096, sizes


def test_memory_does_not_grow_with_the_number_of_events():
    """tracemalloc: what 100,000 appends leave allocated is what 1,000 leave (a list held all of
    them: several MB), and the peak on the way stays as small."""
    def appended(count: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            trail = AuditTrail()
            for n in range(count):
                trail.append(("ktls", f"alert received: user_canceled (warning), #{n}"))
            current, peak = tracemalloc.get_traced_memory()
            assert trail.total == count
            return current - before, peak - before
        finally:
            tracemalloc.stop()

    small_current, small_peak = appended(1_000)
    large_current, large_peak = appended(100_000)
    assert large_current < small_current + 4096, (small_current, large_current)
    assert large_peak < small_peak + 4096, (small_peak, large_peak)
    # An absolute bound too: 256 short events and two containers, far below the unbounded list's.
    assert large_peak < 128 * 1024, large_peak


def test_threads_append_while_another_reads():
    trail = AuditTrail()
    start = threading.Barrier(3)
    failures = []

    def writer(name):
        start.wait()
        for n in range(20_000):
            trail.append((name, f"event {n}"))

    def reader():
        start.wait()
        try:
            for _ in range(200):
                shown = list(trail)
                assert len(shown) <= HEAD + TAIL + 1
                omitted = [what for source, what in shown if source == MARKER_SOURCE]
                assert len(omitted) <= 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("tx", "rx")]
    threads.append(threading.Thread(target=reader))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert trail.total == 40_000 and trail.omitted == 40_000 - HEAD - TAIL
    assert len(list(trail)) == len(trail) == HEAD + TAIL + 1
    # Each thread's events stay in its own order.
    for name in ("tx", "rx"):
        numbers = [int(what.split()[1]) for source, what in trail if source == name]
        assert numbers == sorted(numbers)
