"""keys.py against published vectors (RFC 8448; IETF TLS WG PRF vectors)."""
import pytest

from ktls_ossl import keys
from ktls_ossl.keys import KernelCipher, TrafficKeys

from . import vectors as v


def test_hkdf_expand_label_rfc8448_handshake_keys():
    assert keys.hkdf_expand_label(v.RFC8448_SERVER_HS_TRAFFIC, "key", b"", 16, "sha256") == v.RFC8448_SERVER_HS_KEY
    assert keys.hkdf_expand_label(v.RFC8448_SERVER_HS_TRAFFIC, "iv", b"", 12, "sha256") == v.RFC8448_SERVER_HS_IV
    assert keys.hkdf_expand_label(v.RFC8448_CLIENT_HS_TRAFFIC, "key", b"", 16, "sha256") == v.RFC8448_CLIENT_HS_KEY
    assert keys.hkdf_expand_label(v.RFC8448_CLIENT_HS_TRAFFIC, "iv", b"", 12, "sha256") == v.RFC8448_CLIENT_HS_IV


@pytest.mark.parametrize("secret, key, iv", [
    (v.RFC8448_CLIENT_AP_TRAFFIC, v.RFC8448_CLIENT_AP_KEY, v.RFC8448_CLIENT_AP_IV),
    (v.RFC8448_SERVER_AP_TRAFFIC, v.RFC8448_SERVER_AP_KEY, v.RFC8448_SERVER_AP_IV),
])
def test_tls13_traffic_keys_rfc8448_application(secret, key, iv):
    traffic = keys.tls13_traffic_keys(secret, KernelCipher.AES_GCM_128, "sha256", seq=7)
    assert traffic.version == keys.TLS_1_3_VERSION
    assert traffic.key == key
    # The kernel wants the 12-byte write IV split into a 4-byte salt and an 8-byte iv.
    assert traffic.salt == iv[:4]
    assert traffic.iv == iv[4:]
    assert traffic.nonce_base == iv
    assert traffic.rec_seq == (7).to_bytes(8, "big")


def test_tls13_chacha20_keeps_the_whole_iv():
    traffic = keys.tls13_traffic_keys(v.RFC8448_CLIENT_AP_TRAFFIC, KernelCipher.CHACHA20_POLY1305, "sha256")
    assert traffic.salt == b""
    assert traffic.iv == v.RFC8448_CLIENT_AP_IV
    # The length is part of the HKDF label, so a 32-byte key is not an extension of the 16-byte one.
    assert traffic.key == keys.hkdf_expand_label(v.RFC8448_CLIENT_AP_TRAFFIC, "key", b"", 32, "sha256")
    assert traffic.key[:16] != v.RFC8448_CLIENT_AP_KEY


def test_tls13_next_secret_is_the_traffic_upd_label():
    expected = keys.hkdf_expand_label(v.RFC8448_CLIENT_AP_TRAFFIC, "traffic upd", b"", 32, "sha256")
    following = keys.tls13_next_secret(v.RFC8448_CLIENT_AP_TRAFFIC, "sha256")
    assert following == expected
    assert following != v.RFC8448_CLIENT_AP_TRAFFIC
    assert len(keys.tls13_next_secret(bytes(48), "sha384")) == 48


def test_tls12_prf_sha256_vector():
    out = keys.tls12_prf(v.PRF_SHA256_SECRET, b"test label", v.PRF_SHA256_SEED, 100, "sha256")
    assert out == v.PRF_SHA256_OUTPUT


def test_tls12_prf_sha384_vector():
    out = keys.tls12_prf(v.PRF_SHA384_SECRET, b"test label", v.PRF_SHA384_SEED, 148, "sha384")
    assert out.startswith(v.PRF_SHA384_OUTPUT_PREFIX)
    assert len(out) == 148


def test_tls12_key_block_layout_matches_the_prf_stream():
    master, client_random, server_random = bytes(range(48)), b"c" * 32, b"s" * 32
    stream = keys.tls12_prf(master, b"key expansion", server_random + client_random, 40, "sha256")
    block = keys.tls12_key_block(master, client_random, server_random, KernelCipher.AES_GCM_128, "sha256")
    assert (block.client_write_key, block.server_write_key) == (stream[:16], stream[16:32])
    assert (block.client_write_iv, block.server_write_iv) == (stream[32:36], stream[36:40])
    chacha = keys.tls12_key_block(master, client_random, server_random, KernelCipher.CHACHA20_POLY1305, "sha256")
    stream = keys.tls12_prf(master, b"key expansion", server_random + client_random, 88, "sha256")
    assert chacha.client_write_iv == stream[64:76] and chacha.server_write_iv == stream[76:88]


def test_tls12_connection_keys_are_mirrored_between_ends():
    args = (bytes(48), b"c" * 32, b"s" * 32, KernelCipher.AES_GCM_256, "sha384")
    client_tx, client_rx = keys.tls12_connection_keys(*args, server_side=False, tx_seq=1, rx_seq=1)
    server_tx, server_rx = keys.tls12_connection_keys(*args, server_side=True, tx_seq=1, rx_seq=1)
    assert client_tx == server_rx and server_tx == client_rx
    assert client_tx.key != server_tx.key
    # GCM: the kernel's iv is the explicit nonce, started at the sequence number.
    assert client_tx.iv == (1).to_bytes(8, "big") and len(client_tx.salt) == 4


@pytest.mark.parametrize("name, cipher", [
    ("TLS_AES_128_GCM_SHA256", KernelCipher.AES_GCM_128),
    ("TLS_AES_256_GCM_SHA384", KernelCipher.AES_GCM_256),
    ("TLS_CHACHA20_POLY1305_SHA256", KernelCipher.CHACHA20_POLY1305),
    ("TLS_AES_128_CCM_SHA256", KernelCipher.AES_CCM_128),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", KernelCipher.AES_GCM_128),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", KernelCipher.AES_GCM_256),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", KernelCipher.CHACHA20_POLY1305),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CCM", KernelCipher.AES_CCM_128),
    ("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", KernelCipher.AES_GCM_128),
])
def test_suite_to_kernel_cipher(name, cipher):
    assert keys.kernel_cipher_for_suite(name) is cipher


@pytest.mark.parametrize("name", [
    "TLS_AES_128_CCM_8_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_ARIA_128_GCM_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
])
def test_suites_without_kernel_cipher_are_refused_with_the_reason(name):
    with pytest.raises(keys.UnsupportedCipher, match="kernel|IANA"):
        keys.kernel_cipher_for_suite(name)


def test_traffic_keys_validate_sizes_and_hide_the_key():
    good = TrafficKeys(keys.TLS_1_3_VERSION, KernelCipher.AES_GCM_128, b"K" * 16, b"i" * 8, b"s" * 4, 5)
    assert "KKKK" not in repr(good) and "<16 bytes>" in repr(good)
    with pytest.raises(ValueError, match="16-byte key"):
        TrafficKeys(keys.TLS_1_3_VERSION, KernelCipher.AES_GCM_128, b"K" * 15, b"i" * 8, b"s" * 4)
    with pytest.raises(ValueError, match="12-byte iv"):
        TrafficKeys(keys.TLS_1_3_VERSION, KernelCipher.CHACHA20_POLY1305, b"K" * 32, b"i" * 8, b"")
    with pytest.raises(ValueError, match="version"):
        TrafficKeys(0x0301, KernelCipher.AES_GCM_128, b"K" * 16, b"i" * 8, b"s" * 4)
    with pytest.raises(ValueError, match="sequence"):
        TrafficKeys(keys.TLS_1_3_VERSION, KernelCipher.AES_GCM_128, b"K" * 16, b"i" * 8, b"s" * 4, 1 << 64)


def test_with_seq_moves_the_tls12_explicit_nonce_too():
    base = keys.tls12_traffic_keys(b"K" * 16, b"salt", KernelCipher.AES_CCM_128, 0)
    moved = base.with_seq(300)
    assert moved.seq == 300 and moved.iv == (300).to_bytes(8, "big") and moved.salt == b"salt"
    tls13 = keys.tls13_traffic_keys(bytes(32), KernelCipher.AES_GCM_128, "sha256")
    assert tls13.with_seq(9).iv == tls13.iv


@pytest.mark.parametrize("suite, expected", [
    ("TLS_AES_128_GCM_SHA256", "sha256"), ("TLS_AES_256_GCM_SHA384", "sha384"),
    ("TLS_CHACHA20_POLY1305_SHA256", "sha256"), ("TLS_AES_128_CCM_SHA256", "sha256"),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "sha384"), ("TLS_ECDHE_ECDSA_WITH_AES_128_CCM", "sha256"),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "sha256"),
])
def test_hash_name_for_suite(suite, expected):
    """RFC 8446 B.4 and RFC 5246 5 (the PRF's hash, SHA-256 unless the suite names another)."""
    assert keys.hash_name_for_suite(suite) == expected
