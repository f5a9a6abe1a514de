"""Issue 12: conformance cases, the way a TLS conformance suite plays them (a scripted peer sends a
malformed record, then reads the answer: the alert, then how the connection ends).

Each case is a script for the hostile peer (tests/hostile/peer.py) against our side, in the role
and with the kernel cipher it is run with. Most cases share one shape: an honest handshake, then
without waiting for anything from our side, ``BEFORE`` (authentic data our side must deliver) and
the record under test, in one TCP segment; then the peer waits until our TCP has acknowledged all of
it (no sleep orders anything here) and reads our answer until our side closes. A case whose record is
legal input (``legal``) goes on with ``AFTER`` and close_notify, which our side must then deliver
and read as the end of the data. An illegal case sends nothing behind the record under test: a
conformance suite does not, and bytes left unread in our receive queue when our side closes would
make any kernel answer the close with a reset, hiding the one our side chose.

The classes are those of issue 12:
 1 a byte of the AEAD output flipped (first ciphertext byte, middle, last tag byte)
 2 records over the size limits (and the largest legal one beside them)
 3 records of a type that may not come there, or of a malformed size (zero inner type, empty alert,
   ChangeCipherSpec after Finished, alerts of 1 and 3 bytes)
 4 records shorter than the AEAD tag
 5 legal oddities of TLS 1.3 (empty application data with maximal padding) and a KeyUpdate cut in
   two with application data between the halves
 6 every handshake message in one-byte records (TLS 1.2)
 7 two KeyUpdates in one record
 8 post-handshake client authentication after the client sent a KeyUpdate (both roles)
 9 records with a bad header version or an unknown content type
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Callable

from ktls_ossl.keys import KernelCipher
from ktls_ossl.records import MAX_PLAINTEXT, AlertDescription, ContentType

from ..hostile.peer import CCS_RECORD, Endpoint, fragment
from .cases import AFTER, BEFORE, FORGED, KEY_UPDATE, PEER_ACK_TIMEOUT, READY, TLS12, TLS13, Case

ALL_CIPHERS = (KernelCipher.AES_GCM_128, KernelCipher.AES_GCM_256, KernelCipher.AES_CCM_128,
               KernelCipher.CHACHA20_POLY1305)
# Every class runs over all four ciphers with our server (the role of issue 12's reports), and
# with one cipher with our client. ChaCha20-Poly1305 there: its TLS 1.2 records carry no explicit
# nonce (RFC 7905), the other layout from the one AES-GCM has.
MAIN_ROLE = "server"
OTHER_ROLE_CIPHER = KernelCipher.CHACHA20_POLY1305
PLEASE = b"PLEASE:authenticate yourself;"
CLOSE_NOTIFY = b"\x01\x00"


OVERSIZE = b"OVERSIZE:authentic data in a record over a limit;"


def payload(size: int) -> bytes:
    """``size`` bytes of OVERSIZE, repeated: authentic data in a record too large (whether our
    side delivers it is the oracle's to say)."""
    return (OVERSIZE * (size // len(OVERSIZE) + 1))[:size]


@dataclass(frozen=True)
class Conformance:
    name: str
    klass: int  # the class of issue 12 (see the module docstring)
    title: str
    # What the peer does after the handshake and BEFORE (for the default script), or the whole
    # script(peer, control) when ``script`` is given.
    attack: Callable[[Endpoint], object] | None = None
    script: Callable | None = None
    legal: bool = False  # AFTER and close_notify follow; our side must read them
    versions: tuple[int, ...] = (TLS12, TLS13)
    roles: tuple[str, ...] = ("server", "client")  # our side's
    max_fragment: int | None = None  # the peer's handshake records during the handshake
    # A legitimate TLS 1.3 KeyUpdate reaches or leaves our side: a kernel that cannot rekey (before
    # Linux 6.14) ends the connection there with KTLSRekeyUnsupportedError (as in test_framing).
    needs_rekey: bool = False
    # Our side after the handshake, run_case's ``ours`` (None: read until EOF or error); and
    # setup(context, client_cert, ca_path) for our context.
    ours: Callable | None = None
    setup: Callable | None = None
    # The hostile client needs its own certificate (post-handshake authentication).
    client_certificate: bool = False

    def as_case(self) -> Case:
        """The harness's Case (phase "conformance": our side sends no READY)."""
        return Case(self.name, self.title, "conformance", self.script or conformance_script(self),
                    our_roles=self.roles, versions=self.versions, needs_rekey=self.needs_rekey)


def conformance_script(case: Conformance):
    def script(peer, control):
        if case.max_fragment is not None:
            peer.max_fragment = case.max_fragment
        peer.complete()
        peer.max_fragment = MAX_PLAINTEXT
        peer.queue_record(ContentType.APPLICATION_DATA, BEFORE)
        case.attack(peer)
        if case.legal:
            peer.queue_record(ContentType.APPLICATION_DATA, AFTER)
            peer.queue_record(ContentType.ALERT, CLOSE_NOTIFY)
        peer.wait_delivered(PEER_ACK_TIMEOUT)  # all of it is in our receive queue before drain()
    return script


CONFORMANCE: list[Conformance] = []


def conformance(name, klass, title, **options):
    def register(attack):
        CONFORMANCE.append(Conformance(name, klass, title, attack, **options))
        return attack
    return register


# --- 1: a byte of the AEAD output altered -------------------------------------------------------------

def _flip_middle(peer) -> int:
    ciphertext = len(FORGED) + (1 if peer.tls13 else 0)  # TLS 1.3: the inner content type too
    return (ciphertext + peer.write.tag_size) // 2


FLIPS = {"first_ciphertext_byte": lambda peer: 0, "middle": _flip_middle, "last_tag_byte": lambda peer: -1}

for _where, _position in FLIPS.items():
    def _flipped(peer, position=_position):
        peer.queue_record(ContentType.APPLICATION_DATA, FORGED, flip=position(peer))
    conformance(f"flipped_{_where}", 1, f"application data record with its {_where.replace('_', ' ')} "
                "inverted")(_flipped)


# --- 2: records over the limits -------------------------------------------------------------------------

TLS13_MAX_CIPHERTEXT = MAX_PLAINTEXT + 256  # RFC 8446 5.2
TLS12_MAX_CIPHERTEXT = MAX_PLAINTEXT + 2048  # RFC 5246 6.2.3


@conformance("tls13_ciphertext_over_limit", 2, "TLS 1.3 record of 2^14 + 257 bytes (2^14 of data, 240 of padding)",
             versions=(TLS13,))
def _tls13_ciphertext_over_limit(peer):
    padding = TLS13_MAX_CIPHERTEXT + 1 - peer.write.tag_size - 1 - MAX_PLAINTEXT
    peer.queue_record(ContentType.APPLICATION_DATA, payload(MAX_PLAINTEXT), padding=padding)


# RFC 8446 5.4: "the full encoded TLSInnerPlaintext MUST NOT exceed 2^14 + 1 octets", but OpenSSL 3.0
# only limits the ciphertext (2^14 + 256) and the data (2^14) and delivers this record: legal for
# the oracle, so AFTER and close_notify follow it (else our side would wait for them until it times
# out).
@conformance("tls13_inner_plaintext_padding_over", 2,
             "TLS 1.3 inner plaintext of 2^14 + 2 bytes: 2^14 of data, the type, one byte of padding",
             versions=(TLS13,), legal=True)
def _tls13_padding_over(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, payload(MAX_PLAINTEXT), padding=1)


@conformance("tls13_inner_plaintext_data_over", 2, "TLS 1.3 record with 2^14 + 1 bytes of data", versions=(TLS13,))
def _tls13_data_over(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, payload(MAX_PLAINTEXT + 1))


@conformance("tls12_ciphertext_over_limit", 2, "TLS 1.2 record of 2^14 + 2049 bytes", versions=(TLS12,))
def _tls12_ciphertext_over_limit(peer):
    size = TLS12_MAX_CIPHERTEXT + 1 - peer.write.explicit_nonce - peer.write.tag_size
    peer.queue_record(ContentType.APPLICATION_DATA, payload(size))


@conformance("tls12_plaintext_over", 2, "TLS 1.2 record with 2^14 + 1 bytes of data", versions=(TLS12,))
def _tls12_plaintext_over(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, payload(MAX_PLAINTEXT + 1))


LARGEST = (b"LARGEST:" * (MAX_PLAINTEXT // 8 + 1))[:MAX_PLAINTEXT]  # authentic: delivered


@conformance("largest_record", 2, "record with 2^14 bytes of data (the largest legal one)", legal=True)
def _largest_record(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, LARGEST)


# --- 3: types that may not come here, sizes that are wrong ------------------------------------------

@conformance("zero_inner_content_type", 3, "TLS 1.3 record whose inner plaintext is 32 zero bytes (no type)",
             versions=(TLS13,))
def _zero_inner(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, b"", inner=bytes(32))


@conformance("empty_alert", 3, "alert record with no bytes (under the application keys)")
def _empty_alert(peer):
    peer.queue_record(ContentType.ALERT, b"")


@conformance("ccs_protected_after_finished", 3, "ChangeCipherSpec after Finished, under the application keys")
def _ccs_protected(peer):
    peer.queue_record(ContentType.CHANGE_CIPHER_SPEC, b"\x01")


@conformance("ccs_plaintext_after_finished", 3, "ChangeCipherSpec after Finished, in plaintext")
def _ccs_plaintext(peer):
    peer.queue_raw(CCS_RECORD)


@conformance("alert_1_byte", 3, "alert record of 1 byte (fatal, no description)")
def _alert_1_byte(peer):
    peer.queue_record(ContentType.ALERT, b"\x02")


@conformance("alert_3_bytes", 3, "alert record of 3 bytes (warning user_canceled and one byte more)")
def _alert_3_bytes(peer):
    peer.queue_record(ContentType.ALERT, bytes([1, AlertDescription.user_canceled, 0]))


# --- 4: shorter than the tag ---------------------------------------------------------------------------

@conformance("shorter_than_tag", 4, "record whose AEAD part is one byte shorter than the tag")
def _shorter_than_tag(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED,
                      body_length=peer.write.explicit_nonce + peer.write.tag_size - 1)


# --- 5: legal TLS 1.3 oddities, and a KeyUpdate with data inside ----------------------------------------

@conformance("empty_data_max_padding", 5,
             "TLS 1.3 application data record with no data and 2^14 bytes of padding (legal)",
             versions=(TLS13,), legal=True)
def _empty_data_max_padding(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, b"", padding=MAX_PLAINTEXT)


# The KeyUpdate's second fragment is not sent: the connection must fail at the data, and bytes
# behind it would stay unread in our receive queue (OpenSSL reads no further), which turns any
# close into a reset, and whether the kernel has taken them by then is a race.
@conformance("data_inside_fragmented_key_update", 5,
             "the first 2 bytes of a KeyUpdate, then application data (where the rest should be)",
             versions=(TLS13,))
def _data_inside_key_update(peer):
    first, _ = fragment(KEY_UPDATE, [2])
    peer.queue_handshake_bytes(first)
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED)


# --- 6: one-byte handshake records ----------------------------------------------------------------------

def _nothing(peer):
    """Nothing after the handshake: its framing was the test."""


CONFORMANCE.append(Conformance("handshake_in_1_byte_records", 6,
                               "every handshake message of the peer in records of one byte (legal)",
                               _nothing, legal=True, versions=(TLS12,), max_fragment=1))


# --- 7: two KeyUpdates in one record --------------------------------------------------------------------

@conformance("two_key_updates_in_one_record", 7, "two KeyUpdates in one record", versions=(TLS13,))
def _two_key_updates(peer):
    peer.queue_handshake_bytes(KEY_UPDATE * 2)
    peer.next_write_key()
    peer.next_write_key()


# --- 8: post-handshake client authentication after a client KeyUpdate ------------------------------------

def _read_exactly(sock, m, size: int) -> None:
    while len(m.delivered) < size:
        chunk = sock.recv(size - len(m.delivered))
        if not chunk:
            raise ConnectionError("EOF in the middle of the exchange")
        m.delivered += chunk


def _read_to_eof(sock, m) -> None:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            m.orderly_eof = True
            return
        m.delivered += chunk


def _common_name(certificate) -> str | None:
    if not certificate:
        return None
    return dict(item[0] for item in certificate["subject"]).get("commonName")


def _pha_server_setup(context, client_cert, ca_path):
    context.verify_mode = ssl.CERT_REQUIRED
    context.post_handshake_auth = True
    context.load_verify_locations(ca_path)


def _pha_server_ours(sock, m):
    """Our server: BEFORE arrives (behind the client's KeyUpdate), then a CertificateRequest and
    PLEASE; the client answers and sends AFTER and close_notify."""
    m.extra["certificate before"] = _common_name(sock.getpeercert())
    _read_exactly(sock, m, len(BEFORE))
    sock.verify_client_post_handshake()
    sock.sendall(PLEASE)
    _read_to_eof(sock, m)
    m.extra["certificate after"] = _common_name(sock.getpeercert())


def _pha_hostile_client(peer, control):
    peer.complete()
    peer.key_update(requested=False)
    peer.send_app(BEFORE)
    peer.recv_app(PLEASE)  # the CertificateRequest comes first
    if len(peer.certificate_requests) != 1:
        raise AssertionError(f"{len(peer.certificate_requests)} CertificateRequests before PLEASE")
    peer.answer_certificate_request(peer.certificate_requests[0])
    peer.queue_record(ContentType.APPLICATION_DATA, AFTER)
    peer.queue_record(ContentType.ALERT, CLOSE_NOTIFY)
    peer.wait_delivered(PEER_ACK_TIMEOUT)


CONFORMANCE.append(Conformance(
    "pha_after_client_key_update", 8,
    "the client sends a KeyUpdate, then our server asks for its certificate (post-handshake)",
    script=_pha_hostile_client, legal=True, versions=(TLS13,), roles=("server",), needs_rekey=True,
    ours=_pha_server_ours, setup=_pha_server_setup, client_certificate=True))


def _pha_client_setup(context, client_cert, ca_path):
    context.post_handshake_auth = True
    context.load_cert_chain(client_cert.chain_path, client_cert.key_path)


def _pha_client_ours(sock, m):
    """Our client: a KeyUpdate, READY, then whatever comes (a CertificateRequest it answers,
    BEFORE, AFTER, close_notify)."""
    try:
        sock.key_update()
    except Exception:
        # The connection stays up (nothing was sent) and the peer waits for READY: the harness's
        # read after a failure must not wait for it.
        sock.settimeout(0)
        raise
    sock.sendall(READY)
    _read_to_eof(sock, m)


def _pha_hostile_server(peer, control):
    peer.complete()
    peer.recv_app(READY)  # behind our client's KeyUpdate: the peer's read keys move first
    peer.queue_certificate_request()
    peer.queue_record(ContentType.APPLICATION_DATA, BEFORE)
    peer.flush()
    peer.recv_client_authentication()  # Finished checked with our client's updated secret
    peer.queue_record(ContentType.APPLICATION_DATA, AFTER)
    peer.queue_record(ContentType.ALERT, CLOSE_NOTIFY)
    peer.wait_delivered(PEER_ACK_TIMEOUT)


CONFORMANCE.append(Conformance(
    "key_update_then_pha", 8,
    "our client sends a KeyUpdate, then the server asks for its certificate (post-handshake)",
    script=_pha_hostile_server, legal=True, versions=(TLS13,), roles=("client",), needs_rekey=True,
    ours=_pha_client_ours, setup=_pha_client_setup))


# --- 9: header version and type ---------------------------------------------------------------------------

for _version in (0x0301, 0x0300):
    def _header_version(peer, version=_version):
        peer.queue_record(ContentType.APPLICATION_DATA, FORGED, header_version=version)
    conformance(f"header_version_{_version:04x}", 9,
                f"record with version 0x{_version:04x} in its header (authenticated as such)")(_header_version)


@conformance("record_type_99", 9, "record of content type 99 in its header (authenticated as such)")
def _record_type_99(peer):
    peer.queue_record(ContentType.APPLICATION_DATA, FORGED, outer_type=99)


@conformance("inner_type_99", 9, "TLS 1.3 record whose inner content type is 99", versions=(TLS13,))
def _inner_type_99(peer):
    peer.queue_record(99, FORGED)


# --- the variants that run ----------------------------------------------------------------------------------

def variants():
    """(case, our_role, version, cipher): every case over all ciphers with our server and with
    OTHER_ROLE_CIPHER with our client; a case for one role only (class 8) over all ciphers there."""
    for case in CONFORMANCE:
        for version in case.versions:
            for role in case.roles:
                ciphers = ALL_CIPHERS if role == MAIN_ROLE or len(case.roles) == 1 else (OTHER_ROLE_CIPHER,)
                for cipher in ciphers:
                    yield case, role, version, cipher


def variant_id(case: Conformance, role: str, version: int, cipher: KernelCipher) -> str:
    return f"{case.name}-ours_{role}-tls{'1.2' if version == TLS12 else '1.3'}-{cipher.name.lower()}"

