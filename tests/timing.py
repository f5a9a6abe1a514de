"""One time scale for the machine the tests run on, so that timeouts grow with it.

A timeout in a test bounds a wait that must end; on a loaded 2-core machine, or under User-Mode
Linux (where every system call and every switch between threads is handled by a kernel that itself
runs as host processes), the same wait takes many times longer. A fixed timeout then turns a slow run into a
failure, and in the security suite into a mismatch with docs/SECURITY.md. So every such timeout is
written as ``scaled(seconds on an idle development machine)``.

The scale is measured once per process (the first time it is asked for): a fixed workload shaped
like the tests themselves (round trips between two threads over a loopback TCP connection, which
cost system calls and thread switches, plus some hashing for the CPU), timed, divided by what it
takes on an idle development machine, and clamped to [1, 50]. ``KTLS_TIME_SCALE`` overrides it
(a positive number, not clamped). A timeout never becomes shorter than written.
"""
from __future__ import annotations

import hashlib
import math
import os
import socket
import statistics
import threading
import time

ENV = "KTLS_TIME_SCALE"
MIN_SCALE, MAX_SCALE = 1.0, 50.0
ROUND_TRIPS = 500
HASHED = 8 << 20
# The workload's median time on an idle development machine (2 cores, host kernel 6.18: 0.029 to
# 0.034 s with measure_workload()), rounded up a little so that an idle machine measures 1. Under UML
# the same machine measures about 0.4 s (scale 10).
REFERENCE_SECONDS = 0.04


def _round_trips(count: int) -> None:
    """``count`` 64-byte request/response round trips between this thread and an echo thread."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        server, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.settimeout(30)

    def echo() -> None:
        for _ in range(count):
            server.sendall(server.recv(64))

    thread = threading.Thread(target=echo, daemon=True, name="time-scale-echo")
    with client, server:
        thread.start()
        message = b"x" * 64
        for _ in range(count):
            client.sendall(message)
            received = 0
            while received < len(message):
                chunk = client.recv(64)
                if not chunk:
                    raise ConnectionError("the echo thread closed the connection")
                received += len(chunk)
        thread.join(30)


def measure_workload() -> float:
    """Seconds the fixed workload took: the median of three runs."""
    data = bytes(HASHED)
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        _round_trips(ROUND_TRIPS)
        hashlib.sha256(data).digest()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


_scale: float | None = None  # once measured (or read from the environment), for the whole process


def time_scale() -> float:
    """How many times slower than an idle development machine this one runs the tests."""
    global _scale
    if _scale is None:
        _scale = _from_environment() or min(MAX_SCALE, max(MIN_SCALE, measure_workload() / REFERENCE_SECONDS))
    return _scale


def _from_environment() -> float | None:
    override = os.environ.get(ENV)
    if not override:
        return None
    try:
        value = float(override)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{ENV}={override!r}: expected a positive number")
    return value


def scaled(seconds: float) -> float:
    """A timeout written for an idle development machine, on this one (never shorter)."""
    return seconds * max(1.0, time_scale())
