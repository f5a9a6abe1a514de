"""docs/SECURITY.md's outcome table is generated, complete, and says what the invariants require.

The per-case comparison with the running code is in test_hostile.py; this file keeps the document
and docs/security-outcomes.json in step, and refuses a regenerated table that documents a broken
invariant (so that 'make security-doc' cannot bless a regression).
"""
from __future__ import annotations

from .outcomes import DOC_PATH, LABELS, all_keys, generated_block, load_committed, render


def test_table_is_rendered_from_the_committed_outcomes():
    with open(DOC_PATH, encoding="utf-8") as source:
        block = generated_block(source.read())
    assert block == render(load_committed()), (
        "docs/SECURITY.md's generated table was edited or is stale: run 'scripts/security-table --write' "
        "(make security-doc)")


def test_committed_outcomes_cover_every_case_on_every_kernel():
    committed = load_committed()
    for label in LABELS:
        assert sorted(committed.get(label, {})) == sorted(all_keys()), f"outcomes for {label} are incomplete"


def test_documented_outcomes_keep_the_invariants():
    committed = load_committed()
    for label in LABELS:
        for key, outcome in committed[label].items():
            case, _, tls, policy = key.split()
            if "kernel_rx_key" in outcome:  # a handshake-phase case: the handshake failed
                assert outcome["error"] is not None, key
                if policy == "AFTER_FINISHED" or label == "host":
                    assert outcome["kernel_rx_key"] == "none", (label, key)
                    assert outcome["fd_read"] == "ciphertext or nothing", (label, key)
            if "forged" in outcome.get("fd_read", ""):
                assert policy == "AFTER_CCS" and tls == "TLS1.2", (label, key)


def test_after_ccs_shows_the_netdev_2018_gap_on_both_kernels():
    """The reason the project exists, as documented: OpenSSL's kTLS decrypts what follows a forged
    TLS 1.2 Finished; ktls_ossl's default does not."""
    committed = load_committed()
    for label in ("6.1", "7.2"):
        for role in ("client", "server"):
            ccs = committed[label][f"finished_wrong ours={role} TLS1.2 AFTER_CCS"]
            finished = committed[label][f"finished_wrong ours={role} TLS1.2 AFTER_FINISHED"]
            assert ccs["kernel_rx_key"].startswith("installed") and "forged" in ccs["fd_read"]
            assert finished["kernel_rx_key"] == "none"
