"""A progress line for long-running commands (fetch, demo, bench), rewritten in place.

Only on a terminal: where the stream is a pipe or a file the line would be noise in a log or in
what a script parses, so it is never written there (as curl's meter stays off when its output is
not for a person).
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

MIB = 1 << 20
# At most this often a rewrite of the same step: more is flicker and costs a write per chunk.
MIN_INTERVAL = 0.25
_CLEAR_LINE = "\r\033[K"


class Progress:
    """``label`` and how far a job of ``total`` units is (None: total unknown), on one line of
    ``stream`` (default stdout) that each update rewrites; ``close()`` clears it.

    ``unit="bytes"`` shows MiB, a percentage and the rate; any other unit (e.g. "runs") shows
    "done/total unit", the elapsed time and the text of the step that is running. The line is
    rewritten at most every MIN_INTERVAL seconds, except when the step's text changes: a new step
    is shown at once, so the line never names one that has finished. Disabled (every call does
    nothing) when ``enabled`` is false or the stream is not a terminal."""

    def __init__(self, total: int | None, label: str, *, stream: TextIO | None = None,
                 unit: str = "bytes", enabled: bool = True):
        self.stream = sys.stdout if stream is None else stream
        self.total, self.label, self.unit = total, label, unit
        self.enabled = enabled and self.stream.isatty()
        self.done = 0
        self.started = time.monotonic()
        self._written_at: float | None = None
        self._written_text: str | None = None
        self._shown = False

    def update(self, done: int, text: str = "") -> None:
        """``done`` units so far; ``text``: the step now running."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if (text == self._written_text and self._written_at is not None
                and now - self._written_at < MIN_INTERVAL):
            return
        self._written_at, self._written_text = now, text
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write(_CLEAR_LINE + self._line(now - self.started, text)[:width])
        self.stream.flush()
        self._shown = True

    def advance(self, count: int = 1, text: str = "") -> None:
        self.update(self.done + count, text)

    def close(self, summary: str | None = None) -> None:
        """Clears the line; writes ``summary`` (a line of its own) in its place if given."""
        if not self.enabled:
            return
        if self._shown:
            self.stream.write(_CLEAR_LINE)
            self._shown = False
        if summary is not None:
            self.stream.write(summary + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _line(self, elapsed: float, text: str) -> str:
        if self.unit != "bytes":
            of = f"/{self.total}" if self.total is not None else ""
            return f"{self.label} {self.done}{of} {self.unit} {elapsed:4.0f}s  {text}".rstrip()
        # A rate over the first instants would be the size of one read divided by almost nothing.
        rate = f"{self.done / MIB / elapsed:.1f} MiB/s" if elapsed >= MIN_INTERVAL else ""
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * round(share * 20)
            return (f"{self.label} [{bar:<20}] {share:4.0%} {self.done / MIB:.1f}/{self.total / MIB:.1f} MiB "
                    f"{rate} {text}").rstrip()
        return f"{self.label} {self.done / MIB:.1f} MiB {rate} {text}".rstrip()


__all__ = ["Progress"]
