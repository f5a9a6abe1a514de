"""Traffic keys for the kernel: the cipher table and the key schedules (pure functions, no I/O).

Everything here is checked against published vectors (RFC 8448 for TLS 1.3, RFC 5246's PRF
construction for TLS 1.2) and against the keys OpenSSL itself uses; see tests/test_keys.py.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ._ossl import lib

# From the compiled <linux/tls.h> (cffi_build/linux/tls.py), never hand-copied.
TLS_1_2_VERSION = lib.TLS_1_2_VERSION
TLS_1_3_VERSION = lib.TLS_1_3_VERSION
VERSION_NAMES = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}

# The largest record sequence number a 64-bit counter can hold; TLS forbids wrapping it.
MAX_SEQUENCE = (1 << 64) - 1


class Direction(enum.IntEnum):
    """One direction of a connection, seen from our side. The value is OpenSSL's ``write_p`` (0 for
    what it read, 1 for what it wrote), so OpenSSL's per-direction counters index by it."""

    RX = 0
    TX = 1

    @property
    def optname(self) -> int:
        """The kernel's socket option for this direction's keys (TLS_RX / TLS_TX)."""
        return lib.TLS_TX if self is Direction.TX else lib.TLS_RX


class KernelCipher(enum.IntEnum):
    """The kernel's cipher ids (include/uapi/linux/tls.h) that ktls_ossl drives.

    Each value knows the sizes of the kernel's crypto_info fields: ``iv`` is what the kernel calls
    iv (the explicit nonce part for GCM/CCM, the whole write IV for ChaCha20), ``salt`` the
    implicit part.
    """

    AES_GCM_128 = lib.TLS_CIPHER_AES_GCM_128
    AES_GCM_256 = lib.TLS_CIPHER_AES_GCM_256
    AES_CCM_128 = lib.TLS_CIPHER_AES_CCM_128
    CHACHA20_POLY1305 = lib.TLS_CIPHER_CHACHA20_POLY1305

    @property
    def key_size(self) -> int:
        return _CIPHER_SIZES[self][0]

    @property
    def iv_size(self) -> int:
        return _CIPHER_SIZES[self][1]

    @property
    def salt_size(self) -> int:
        return _CIPHER_SIZES[self][2]

    @property
    def tag_size(self) -> int:
        return 16

    @property
    def display_name(self) -> str:
        return _CIPHER_DISPLAY[self]


# (key, iv, salt) sizes of each crypto_info struct.
_CIPHER_SIZES = {
    KernelCipher.AES_GCM_128: (16, 8, 4),
    KernelCipher.AES_GCM_256: (32, 8, 4),
    KernelCipher.AES_CCM_128: (16, 8, 4),
    KernelCipher.CHACHA20_POLY1305: (32, 12, 0),
}

_CIPHER_DISPLAY = {
    KernelCipher.AES_GCM_128: "AES-128-GCM",
    KernelCipher.AES_GCM_256: "AES-256-GCM",
    KernelCipher.AES_CCM_128: "AES-128-CCM",
    KernelCipher.CHACHA20_POLY1305: "CHACHA20-POLY1305",
}

# The bulk-cipher part of an IANA suite name (after "TLS_" for TLS 1.3, after "_WITH_" for TLS 1.2,
# without the PRF hash suffix). AES_128_CCM_8 is deliberately absent: the kernel only does 16-byte
# tags, so those suites stay in user space.
_BULK_TO_KERNEL = {
    "AES_128_GCM": KernelCipher.AES_GCM_128,
    "AES_256_GCM": KernelCipher.AES_GCM_256,
    "AES_128_CCM": KernelCipher.AES_CCM_128,
    "CHACHA20_POLY1305": KernelCipher.CHACHA20_POLY1305,
}


# Records one key may protect (RFC 8446 section 5.5: 2^24.5 full-size records for AES-GCM; AES-CCM
# with 16-byte tags is held to the same bound; ChaCha20-Poly1305's 2^62 is out of reach).
AEAD_RECORD_LIMITS = {
    KernelCipher.AES_GCM_128: int(2 ** 24.5),
    KernelCipher.AES_GCM_256: int(2 ** 24.5),
    KernelCipher.AES_CCM_128: int(2 ** 24.5),
    KernelCipher.CHACHA20_POLY1305: 2 ** 62,
}
# When to update keys on our own initiative: well before the limit.
DEFAULT_KEY_UPDATE_RECORDS = {cipher: limit // 2 for cipher, limit in AEAD_RECORD_LIMITS.items()}


class UnsupportedCipher(ValueError):
    """The negotiated suite has no kernel cipher; the caller falls back to user space."""


def kernel_cipher_for_suite(standard_name: str) -> KernelCipher:
    """Map an IANA cipher suite name (SSL_CIPHER_standard_name) to the kernel cipher.

    >>> kernel_cipher_for_suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384").name
    'AES_GCM_256'
    """
    if not standard_name.startswith("TLS_"):
        raise UnsupportedCipher(f"{standard_name!r} is not an IANA TLS cipher suite name")
    body = standard_name[4:]
    if "_WITH_" in body:
        body = body.split("_WITH_", 1)[1]
    for suffix in ("_SHA256", "_SHA384"):
        if body.endswith(suffix):
            body = body[: -len(suffix)]
            break
    try:
        return _BULK_TO_KERNEL[body]
    except KeyError:
        raise UnsupportedCipher(
            f"cipher suite {standard_name} has no kernel TLS cipher "
            f"(the kernel offers {', '.join(c.display_name for c in KernelCipher)})"
        ) from None


def hash_name_for_suite(standard_name: str) -> str:
    """The hash of an IANA cipher suite's key schedule (TLS 1.3 HKDF, TLS 1.2 PRF): SHA-384 where
    the name says so, else SHA-256 (also for suites whose name gives none, such as the AES-CCM ones).

    >>> hash_name_for_suite("TLS_AES_256_GCM_SHA384"), hash_name_for_suite("TLS_ECDHE_ECDSA_WITH_AES_128_CCM")
    ('sha384', 'sha256')
    """
    return "sha384" if standard_name.endswith("_SHA384") else "sha256"


@dataclass(frozen=True)
class TrafficKeys:
    """What the kernel needs for one direction: the crypto_info fields and the next record number.

    ``iv`` and ``salt`` are in the kernel's sense (see KernelCipher). The repr never shows key
    material: these values end up in logs and tracebacks.
    """

    version: int
    cipher: KernelCipher
    key: bytes
    iv: bytes
    salt: bytes
    seq: int = 0

    def __post_init__(self) -> None:
        if self.version not in VERSION_NAMES:
            raise ValueError(f"unsupported TLS version 0x{self.version:04x}")
        cipher = _kernel_cipher(self.cipher)
        object.__setattr__(self, "cipher", cipher)
        for field, size in (("key", cipher.key_size), ("iv", cipher.iv_size), ("salt", cipher.salt_size)):
            value = getattr(self, field)
            if len(value) != size:
                raise ValueError(f"{cipher.display_name} needs a {size}-byte {field}, got {len(value)}")
        if not 0 <= self.seq <= MAX_SEQUENCE:
            raise ValueError(f"record sequence number {self.seq} out of range")

    def __repr__(self) -> str:
        return (
            f"TrafficKeys({VERSION_NAMES[self.version]}, {self.cipher.display_name}, "
            f"key=<{len(self.key)} bytes>, seq={self.seq})"
        )

    @property
    def rec_seq(self) -> bytes:
        return struct.pack(">Q", self.seq)

    @property
    def nonce_base(self) -> bytes:
        """The 12-byte per-connection nonce base (salt || iv for TLS 1.3 and ChaCha20)."""
        return self.salt + self.iv

    def with_seq(self, seq: int) -> "TrafficKeys":
        if self.version == TLS_1_2_VERSION and self.cipher is not KernelCipher.CHACHA20_POLY1305:
            return TrafficKeys(self.version, self.cipher, self.key, struct.pack(">Q", seq), self.salt, seq)
        return TrafficKeys(self.version, self.cipher, self.key, self.iv, self.salt, seq)


def _kernel_cipher(value) -> KernelCipher:
    # The enum's constructor is a slow path for a value that already is one (the usual case).
    return value if type(value) is KernelCipher else KernelCipher(value)


def _hash_algorithm(hash_name: str) -> hashes.HashAlgorithm:
    name = hash_name.lower().replace("-", "")
    if name == "sha256":
        return hashes.SHA256()
    if name == "sha384":
        return hashes.SHA384()
    raise ValueError(f"unsupported TLS hash {hash_name!r}")


def hash_length(hash_name: str) -> int:
    return _hash_algorithm(hash_name).digest_size


# --- TLS 1.3 (RFC 8446 section 7) -------------------------------------------------------------

def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand-Label(Secret, Label, Context, Length) of RFC 8446 section 7.1."""
    full_label = b"tls13 " + label.encode("ascii")
    if len(full_label) > 255 or len(context) > 255:
        raise ValueError("HKDF label or context too long")
    info = struct.pack(">HB", length, len(full_label)) + full_label + struct.pack(">B", len(context)) + context
    return HKDFExpand(algorithm=_hash_algorithm(hash_name), length=length, info=info).derive(secret)


def tls13_traffic_keys(secret: bytes, cipher: KernelCipher, hash_name: str, seq: int = 0) -> TrafficKeys:
    """Key and IV for one direction from a TLS 1.3 traffic secret (RFC 8446 section 7.3)."""
    cipher = _kernel_cipher(cipher)
    key = hkdf_expand_label(secret, "key", b"", cipher.key_size, hash_name)
    write_iv = hkdf_expand_label(secret, "iv", b"", 12, hash_name)
    salt, iv = write_iv[: cipher.salt_size], write_iv[cipher.salt_size:]
    return TrafficKeys(TLS_1_3_VERSION, cipher, key, iv, salt, seq)


def tls13_next_secret(secret: bytes, hash_name: str) -> bytes:
    """application_traffic_secret_N+1 after a KeyUpdate (RFC 8446 section 7.2)."""
    return hkdf_expand_label(secret, "traffic upd", b"", hash_length(hash_name), hash_name)


# --- TLS 1.2 (RFC 5246 section 5 and 6.3, RFC 5288, RFC 6655, RFC 7905) -----------------------

def tls12_prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """PRF(secret, label, seed) = P_hash(secret, label + seed), RFC 5246 section 5."""
    digest = getattr(hashlib, _hash_algorithm(hash_name).name)
    label_seed = label + seed
    out = bytearray()
    a = label_seed
    while len(out) < length:
        a = hmac.new(secret, a, digest).digest()
        out += hmac.new(secret, a + label_seed, digest).digest()
    return bytes(out[:length])


@dataclass(frozen=True)
class Tls12KeyBlock:
    client_write_key: bytes
    server_write_key: bytes
    client_write_iv: bytes
    server_write_iv: bytes


def tls12_key_block(
    master_secret: bytes, client_random: bytes, server_random: bytes, cipher: KernelCipher, hash_name: str
) -> Tls12KeyBlock:
    """Split the AEAD key block: no MAC keys; the write IV is the 4-byte salt for GCM/CCM
    (RFC 5288, RFC 6655) and the full 12 bytes for ChaCha20-Poly1305 (RFC 7905)."""
    cipher = _kernel_cipher(cipher)
    if len(master_secret) != 48:
        raise ValueError(f"a TLS 1.2 master secret has 48 bytes, got {len(master_secret)}")
    if len(client_random) != 32 or len(server_random) != 32:
        raise ValueError("TLS 1.2 client and server randoms have 32 bytes each")
    key_len = cipher.key_size
    iv_len = 12 if cipher is KernelCipher.CHACHA20_POLY1305 else cipher.salt_size
    block = tls12_prf(master_secret, b"key expansion", server_random + client_random, 2 * (key_len + iv_len), hash_name)
    return Tls12KeyBlock(
        client_write_key=block[:key_len],
        server_write_key=block[key_len : 2 * key_len],
        client_write_iv=block[2 * key_len : 2 * key_len + iv_len],
        server_write_iv=block[2 * key_len + iv_len :],
    )


def tls12_traffic_keys(write_key: bytes, write_iv: bytes, cipher: KernelCipher, seq: int) -> TrafficKeys:
    """Kernel crypto_info for one TLS 1.2 direction.

    For GCM/CCM the kernel's ``iv`` is the 8-byte explicit nonce it writes into each record and then
    increments; starting it at the sequence number makes every nonce unique under this key (and is
    what OpenSSL does). On receive the kernel reads the explicit nonce from each record instead.
    """
    cipher = _kernel_cipher(cipher)
    if cipher is KernelCipher.CHACHA20_POLY1305:
        return TrafficKeys(TLS_1_2_VERSION, cipher, write_key, write_iv, b"", seq)
    return TrafficKeys(TLS_1_2_VERSION, cipher, write_key, struct.pack(">Q", seq), write_iv, seq)


def tls12_connection_keys(
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    cipher: KernelCipher,
    hash_name: str,
    *,
    server_side: bool,
    tx_seq: int,
    rx_seq: int,
) -> tuple[TrafficKeys, TrafficKeys]:
    """(TX, RX) TrafficKeys for our end of a TLS 1.2 connection."""
    block = tls12_key_block(master_secret, client_random, server_random, cipher, hash_name)
    client = (block.client_write_key, block.client_write_iv)
    server = (block.server_write_key, block.server_write_iv)
    ours, theirs = (server, client) if server_side else (client, server)
    return (
        tls12_traffic_keys(*ours, cipher, tx_seq),
        tls12_traffic_keys(*theirs, cipher, rx_seq),
    )


def record_nonce(keys: TrafficKeys, seq: int, explicit_nonce: bytes | None = None) -> bytes:
    """The AEAD nonce of record ``seq`` under ``keys`` (for tests and the user-space record code)."""
    if keys.version == TLS_1_3_VERSION or keys.cipher is KernelCipher.CHACHA20_POLY1305:
        base = keys.nonce_base
        return (int.from_bytes(base, "big") ^ seq).to_bytes(len(base), "big")
    if explicit_nonce is None:
        explicit_nonce = struct.pack(">Q", seq)
    return keys.salt + explicit_nonce
