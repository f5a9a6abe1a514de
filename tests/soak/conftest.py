"""The reliability suite's scale and bookkeeping (issue 19).

Every case runs in two sizes. ``make test`` runs the short one (seconds per case: it proves the case
works and catches regressions); ``make soak`` (scripts/soak) sets ``KTLS_SOAK=full`` and runs the
sizes the figures in docs/RELIABILITY.md are quoted at: 1,000 connections, 1 GiB per combination,
a 30-minute soak (``KTLS_SOAK_MINUTES``).

A case reports what it measured through the ``reliability`` fixture (``reliability.figure(name,
value)``). At full scale each case's figures, outcome, kernel, Python and date are appended as one
JSON line to test-results/reliability/<kernel>.jsonl (or to ``KTLS_RELIABILITY_FILE``) when the case
ends, and scripts/reliability-table builds docs/RELIABILITY.md from those lines (tests/soak/report.py). A case's short parameters are a
subset of its full ones, so that every case make test runs has a documented full-scale result.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import threading
import time

import pytest

from .report import RESULTS_DIR

SCALE_ENV = "KTLS_SOAK"
MINUTES_ENV = "KTLS_SOAK_MINUTES"
RESULTS_ENV = "KTLS_RELIABILITY_FILE"
_WRITE_LOCK = threading.Lock()


class SoakScale:
    """Which size this run is: ``full`` under make soak, short otherwise."""

    def __init__(self, full: bool, minutes: float):
        self.full = full
        self.minutes = minutes

    def pick(self, short, full):
        """``full`` under make soak, ``short`` in make test."""
        return full if self.full else short

    @property
    def name(self) -> str:
        return "full" if self.full else "short"


def soak_scale() -> SoakScale:
    full = os.environ.get(SCALE_ENV, "") == "full"
    return SoakScale(full, float(os.environ.get(MINUTES_ENV) or 30))


@pytest.fixture(scope="session")
def soak() -> SoakScale:
    return soak_scale()


class CaseReport:
    """What one case measured: named figures (numbers or short strings), in the order reported."""

    def __init__(self, case: str, title: str):
        self.case = case
        self.title = title
        self.figures: dict[str, object] = {}
        self.started = time.monotonic()

    def figure(self, name: str, value) -> None:
        self.figures[name] = value


def _title(item) -> str:
    doc = getattr(item.function, "__doc__", None) or ""
    return " ".join(doc.strip().split("\n\n")[0].split()) or item.name


def _case_report(item) -> CaseReport:
    return CaseReport(item.nodeid.split("tests/soak/", 1)[-1], _title(item))


@pytest.fixture
def reliability(request) -> CaseReport:
    report = request.node._reliability_report = _case_report(request.node)
    return report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    result = outcome.get_result()
    report = getattr(item, "_reliability_report", None)
    if report is None and "reliability" in getattr(item, "fixturenames", ()):
        # A case that skipped or failed in a fixture set up before ``reliability`` (netem where tc
        # cannot add the qdisc): it is documented all the same, with why.
        report = item._reliability_report = _case_report(item)
    path = os.environ.get(RESULTS_ENV)
    if not path and soak_scale().full:
        path = os.path.join(RESULTS_DIR, f"{os.environ.get('KTLS_VM_KERNEL', 'host')}.jsonl")
    if report is None or not path:
        return
    # One line per case: its call's outcome, or its setup's when setup did not pass.
    if not (result.when == "call" or (result.when == "setup" and not result.passed)):
        return
    error = None
    if result.failed:
        error = str(getattr(result.longrepr, "reprcrash", None) and result.longrepr.reprcrash.message
                    or result.longrepr).splitlines()[0][:300]
    elif result.skipped:
        error = str(result.longrepr[-1]) if isinstance(result.longrepr, tuple) else str(result.longrepr)
    line = {
        "case": report.case,
        "title": report.title,
        "outcome": result.outcome,
        "error": error,
        "figures": report.figures,
        "seconds": round(time.monotonic() - report.started, 1),
        "kernel": os.environ.get("KTLS_VM_KERNEL", "host"),
        "release": os.uname().release,
        "python": platform.python_version(),
        "scale": soak_scale().name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _WRITE_LOCK, open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")


# --- resources a case watches ------------------------------------------------------------------------

def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    """This process's resident set (VmRSS), KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmRSS line")


def raise_fd_limit(needed: int) -> None:
    """Lift this process's soft RLIMIT_NOFILE to ``needed`` (up to the hard limit); skip the case
    when the hard limit is lower, saying so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors; RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
