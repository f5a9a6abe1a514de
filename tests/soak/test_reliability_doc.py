"""docs/RELIABILITY.md is generated from the last full-scale run (make soak) and covers every case.

The figures themselves are measured by the cases in this directory; this file keeps the document and
docs/reliability-results.json in step with them: the block is their rendering, every case of the suite
has a result on the host and on each VM kernel, and none of the documented results is a failure.
"""
from __future__ import annotations

import pytest

from .report import DOC_PATH, LABELS, generated_block, load_committed, render


def test_document_is_rendered_from_the_committed_results():
    with open(DOC_PATH, encoding="utf-8") as source:
        block = generated_block(source.read())
    assert block == render(load_committed()), (
        "docs/RELIABILITY.md's generated block was edited or is stale: run 'scripts/reliability-table --write' "
        "(make soak)")


def test_committed_results_cover_every_case_of_the_suite_on_every_kernel(request):
    """Every case this session collected from tests/soak has a full-scale result on each kernel: a new or
    renamed case needs a make soak run before it lands."""
    cases = {item.nodeid.split("tests/soak/", 1)[1] for item in request.session.items
             if "tests/soak/" in item.nodeid and "reliability" in getattr(item, "fixturenames", ())}
    if not cases:
        pytest.skip("no reliability case was collected in this session")
    committed = load_committed()
    for label in LABELS:
        missing = sorted(cases - set(committed.get(label, {})))
        assert not missing, f"docs/reliability-results.json has no result on {label} for {missing[:5]}"


def test_no_documented_result_is_a_failure():
    failures = [(label, case, line["error"]) for label, cases in load_committed().items()
                for case, line in cases.items() if line["outcome"] == "failed"]
    assert not failures, failures
