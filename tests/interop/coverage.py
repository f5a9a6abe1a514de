"""The interop coverage table: what ran against which peer, and how it ended.

Matrix tests say which cell they cover (peer, role, version, cipher); feature tests say which
feature and peer. The conftest hook turns each test's outcome into the cell's entry. Cells a peer
cannot do are declared here with the reason, so the table shows them instead of leaving a hole.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

from .peers import CELLS, CIPHER_LABEL, VERSION_LABEL

ROLE_OUR_CLIENT = "our client"
ROLE_OUR_SERVER = "our server"

# Matrix rows, in display order: (peer, role). The peer name says what the peer is.
MATRIX_ROWS = [
    ("openssl s_server (userspace)", ROLE_OUR_CLIENT),
    ("openssl s_server (OpenSSL kTLS)", ROLE_OUR_CLIENT),
    ("gnutls-serv --echo", ROLE_OUR_CLIENT),
    ("openssl s_client (userspace)", ROLE_OUR_SERVER),
    ("openssl s_client (OpenSSL kTLS)", ROLE_OUR_SERVER),
    ("gnutls-cli", ROLE_OUR_SERVER),
    ("curl (OpenSSL)", ROLE_OUR_SERVER),
    ("wget (GnuTLS)", ROLE_OUR_SERVER),
]
COLUMNS = [(VERSION_LABEL[v], CIPHER_LABEL[c]) for v, c in CELLS]

# (peer, role, version label, cipher label) -> reason the peer cannot do it. The matrix runs
# ECDSA P-256 certificates, for which every peer here offers every cell; the RSA rows of the
# certificate-type feature test are where a suite can be missing (no ECDHE-RSA AES-CCM suite).
NOT_APPLICABLE: dict[tuple[str, str, str, str], str] = {}


@dataclass
class Entry:
    status: str  # pass, FAIL, skip, pending, n/a
    note: str = ""
    tests: list[str] = field(default_factory=list)
    paths: str = ""  # our I/O paths in this cell, shown inside it


@dataclass
class Coverage:
    matrix: dict = field(default_factory=dict)  # (peer, role, version, cipher) -> Entry
    features: dict = field(default_factory=dict)  # (feature, peer, role) -> Entry
    durations: dict = field(default_factory=dict)  # nodeid -> seconds
    row_notes: dict = field(default_factory=dict)  # (peer, role) or (feature, peer) -> [notes]

    def add(self, table: dict, key, status: str, note: str, nodeid: str, paths: str = "",
            row_note: str = "") -> None:
        if row_note:
            row = key[:2]
            notes = self.row_notes.setdefault(row, [])
            if row_note not in notes:
                notes.append(row_note)
        entry = table.get(key)
        if entry is None:
            table[key] = Entry(status, note, [nodeid], paths)
            return
        if paths and not entry.paths:
            entry.paths = paths
        # Several tests may cover one cell: the worst outcome wins, notes accumulate.
        order = ["FAIL", "pending", "skip", "pass", "n/a"]
        if order.index(status) < order.index(entry.status):
            entry.status = status
        if note and note not in entry.note:
            entry.note = f"{entry.note}; {note}" if entry.note else note
        entry.tests.append(nodeid)

    def empty(self) -> bool:
        return not self.matrix and not self.features

    def render(self, kernel_label: str, release: str, ktls: bool, elapsed: float) -> str:
        lines = [f"# Interop coverage: kernel {kernel_label} ({release})", ""]
        lines.append(f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
                     f"kernel TLS {'carries our side' if ktls else 'unavailable: our side runs the OpenSSL fallback'}; "
                     f"interop tests took {elapsed:.0f} s.")
        lines.append("")
        lines.append("## Bulk-data matrix: peer x role x version x cipher")
        lines.append("")
        lines.append("Each cell: handshake pinned to the version and suite, payloads 0, 1, 16383, 16384, 16385 "
                     "bytes and 1 MiB both ways with SHA-256 compared on both ends, our side's record layer "
                     "checked (sock.ktls, /proc/net/tls_stat in the VM).")
        lines.append("")
        header = "| peer | role | " + " | ".join(f"{v} {c}" for v, c in COLUMNS) + " |"
        lines.append(header)
        lines.append("|" + "---|" * (2 + len(COLUMNS)))
        footnotes: dict[str, int] = {}

        def footnote(text: str) -> str:
            number = footnotes.setdefault(text, len(footnotes) + 1)
            return f"[{number}]"

        def mark(entry: Entry | None, na: str | None) -> str:
            if entry is None and na is None:
                return "not run"
            if entry is None:
                return f"n/a {footnote(na)}"
            text = entry.status
            if entry.paths:
                text += f" ({entry.paths})"
            if entry.note:
                text += " " + footnote(entry.note)
            return text

        rows = list(MATRIX_ROWS)
        for key in self.matrix:
            if (key[0], key[1]) not in rows:
                rows.append((key[0], key[1]))
        for peer, role in rows:
            cells = []
            for version, cipher in COLUMNS:
                key = (peer, role, version, cipher)
                cells.append(mark(self.matrix.get(key), NOT_APPLICABLE.get(key)))
            if all(c == "not run" for c in cells):
                continue
            row_notes = self.row_notes.get((peer, role), [])
            label = peer + ("".join(" " + footnote(n) for n in row_notes))
            lines.append(f"| {label} | {role} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("(paths) are our side's: send/receive path for our client, read/write path of our "
                     "echo server, or GET/POST path of our file server.")
        lines.append("")
        if self.features:
            lines.append("## Features and edge cases")
            lines.append("")
            lines.append("| feature | peer | role | result |")
            lines.append("|---|---|---|---|")
            for (feature, peer, role), entry in sorted(self.features.items()):
                lines.append(f"| {feature} | {peer} | {role} | {mark(entry, None)} |")
            lines.append("")
        if footnotes:
            lines.append("## Notes")
            lines.append("")
            lines.extend(f"{number}. {text}" for text, number in footnotes.items())
            lines.append("")
        failed = [(key, e) for table in (self.matrix, self.features) for key, e in table.items()
                  if e.status == "FAIL"]
        lines.append(f"Failing cells: {len(failed)}" + ("" if not failed else ": " + "; ".join(
            " / ".join(key) + f" ({', '.join(e.tests)})" for key, e in failed)))
        lines.append("")
        return "\n".join(lines)


COVERAGE = Coverage()


def results_path(kernel_label: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "test-results", f"interop-{kernel_label}.md")
