"""Documents generated from recorded results (docs/SECURITY.md, docs/RELIABILITY.md): the results
file and the generated block between two marker lines, which scripts rewrite and tests compare."""
from __future__ import annotations

import json
import os


def load_json(path: str) -> dict:
    """The committed results; empty before the first run wrote them."""
    try:
        with open(path, encoding="utf-8") as source:
            return json.load(source)
    except FileNotFoundError:
        return {}


def write_json(path: str, data: dict, *, sort_keys: bool = True) -> None:
    """``sort_keys=False`` keeps the order the data was built in (what a document shows in it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1, sort_keys=sort_keys)
        out.write("\n")


def generated_block(document: str, begin: str, end: str, path: str) -> str:
    """The text from the ``begin`` line to the ``end`` line, both included."""
    start, stop = document.find(begin), document.find(end)
    if start < 0 or stop < 0:
        raise ValueError(f"{path} has no generated block ({begin!r} ... {end!r})")
    return document[start:stop + len(end)]
