"""The security suite's bookkeeping: the outcomes each session produced, written for the table.

Every session that ran hostile cases writes test-results/security/<kernel>.json (kernel: the VM
label from scripts/ktls-vm, or "host"); scripts/security-table builds docs/SECURITY.md from them.
"""
from __future__ import annotations

import os

import pytest

from ..generated_docs import write_json
from .outcomes import RESULTS_DIR, kernel_label, python_label

RUN_OUTCOMES: dict[str, dict] = {}


@pytest.fixture(scope="session")
def record_outcome():
    def record(key: str, outcome: dict) -> None:
        RUN_OUTCOMES[key] = outcome
    return record


def pytest_sessionfinish(session, exitstatus):
    if RUN_OUTCOMES:
        write_json(os.path.join(RESULTS_DIR, f"{kernel_label()}.json"),
                   {"kernel": kernel_label(), "release": os.uname().release, "python": python_label(),
                    "outcomes": RUN_OUTCOMES})
