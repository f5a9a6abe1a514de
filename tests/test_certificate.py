"""decode_certificate() against CPython's own getpeercert() decoder.

The reference is ``_ssl._test_decode_cert(pem_path)``: the same C function (_decode_certificate)
that builds ``SSLSocket.getpeercert()``'s dict. Every certificate here is compared whole, with ==;
each case also checks that the reference really shows what the case is about, so a case cannot
pass by testing nothing.

Certificates come from cryptography's CertificateBuilder, RSA and ECDSA. The builder only writes
version 3, serial numbers from 1 to 20 bytes, dates from 1950, name values cryptography itself
would accept, and extensions it can encode; everything else here (versions 1, 2 and beyond,
serial numbers of 0, negative or over 35 bytes, GeneralizedTime before 1950, Latin-1 bytes and
PrintableString characters that cryptography refuses, X400Address and EDIPartyName, duplicate
extensions) is made by rewriting a built certificate's TBSCertificate with the small DER helpers
below and signing it again with the same key. Then the system CA bundle, every certificate in it.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import warnings

import _ssl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from ktls_ossl.certificate import CertificateDecodeError, decode_certificate

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UTC = datetime.timezone.utc
START = datetime.datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
END = datetime.datetime(2034, 6, 1, 12, 0, 0, tzinfo=UTC)


# --- keys, builders, the comparison -----------------------------------------------------------

@pytest.fixture(scope="module")
def keys():
    return {
        "ecdsa": ec.generate_private_key(ec.SECP256R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture
def ec_key(keys):
    return keys["ecdsa"]


def _name(*attributes) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


DEFAULT_NAME = _name((NameOID.COUNTRY_NAME, "XY"), (NameOID.ORGANIZATION_NAME, "ktls_ossl tests"),
                     (NameOID.COMMON_NAME, "decode.test"))


def build(key, *, subject=DEFAULT_NAME, issuer=None, serial=0x1234, not_before=START,
          not_after=END, extensions=()) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def reference(der: bytes, tmp_path) -> dict:
    """CPython's dict for ``der``, from _ssl._test_decode_cert on a PEM file."""
    path = tmp_path / f"cert-{len(os.listdir(tmp_path))}.pem"
    path.write_text(ssl.DER_cert_to_PEM_cert(der))
    return _ssl._test_decode_cert(str(path))


def _der(cert) -> bytes:
    if isinstance(cert, bytes):
        return cert
    return cert.public_bytes(serialization.Encoding.DER)


def check(cert, tmp_path) -> dict:
    """decode_certificate(der) == CPython's dict; returns that dict for the case's own checks."""
    der = _der(cert)
    expected = reference(der, tmp_path)
    assert decode_certificate(der) == expected
    return expected


# --- DER, for certificates the builder cannot make --------------------------------------------

def _encode(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    length = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _elements(data: bytes) -> list[bytes]:
    """The whole TLVs inside the contents of the constructed element that is ``data``."""
    def header(pos):
        length = data[pos + 1]
        if length & 0x80:
            count = length & 0x7F
            return pos + 2 + count, int.from_bytes(data[pos + 2:pos + 2 + count], "big")
        return pos + 2, length

    start, length = header(0)
    end, out, pos = start + length, [], start
    while pos < end:
        content, length = header(pos)
        out.append(data[pos:content + length])
        pos = content + length
    return out


def _encode_integer(value: int) -> bytes:
    magnitude = value if value >= 0 else ~value
    return _encode(0x02, value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def _encode_oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _encode(0x06, bytes(out))


def raw_name(*rdns) -> bytes:
    """A Name from RDNs of (dotted OID, ASN.1 tag, raw value bytes)."""
    return _encode(0x30, b"".join(
        _encode(0x31, b"".join(_encode(0x30, _encode_oid(oid) + _encode(tag, value))
                               for oid, tag, value in rdn))
        for rdn in rdns))


KEEP = object()


def rewrite(cert: x509.Certificate, key, *, version=KEEP, serial=KEEP, subject=KEEP, issuer=KEEP,
            validity=KEEP, drop_extensions=False, extra_extensions=()) -> bytes:
    """``cert`` with TBSCertificate fields replaced, signed again with ``key``.
    version: the INTEGER to encode (0 for v1 ... 2 for v3), or None to leave the field out as
    DER does for v1; serial: an int; subject/issuer: Name DER; validity: (notBefore, notAfter)
    as (tag, text) pairs; extra_extensions: whole Extension TLVs to append."""
    fields = _elements(cert.tbs_certificate_bytes)
    assert fields[0][0] == 0xA0  # the builder always writes v3
    if version is not KEEP:
        fields[0] = None if version is None else _encode(0xA0, _encode_integer(version))
    if serial is not KEEP:
        fields[1] = _encode_integer(serial)
    if issuer is not KEEP:
        fields[3] = issuer
    if validity is not KEEP:
        fields[4] = _encode(0x30, b"".join(_encode(tag, text.encode("ascii")) for tag, text in validity))
    if subject is not KEEP:
        fields[5] = subject
    if drop_extensions:
        fields = fields[:7]
    if extra_extensions:
        present = _elements(_elements(fields[7])[0]) if len(fields) > 7 else []
        fields[7:] = [_encode(0xA3, _encode(0x30, b"".join(present + list(extra_extensions))))]
    tbs = _encode(0x30, b"".join(f for f in fields if f is not None))
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = _elements(_der(cert))[1]
    return _encode(0x30, tbs + algorithm + _encode(0x03, b"\0" + signature))


# --- keys and signatures ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_no_extensions_at_all(keys, kind, tmp_path):
    cert = build(keys[kind])
    assert len(cert.extensions) == 0
    got = check(cert, tmp_path)
    assert got == {
        "subject": ((("countryName", "XY"),), (("organizationName", "ktls_ossl tests"),),
                    (("commonName", "decode.test"),)),
        "issuer": ((("countryName", "XY"),), (("organizationName", "ktls_ossl tests"),),
                   (("commonName", "decode.test"),)),
        "version": 3,
        "serialNumber": "1234",
        "notBefore": "Jun  1 12:00:00 2024 GMT",
        "notAfter": "Jun  1 12:00:00 2034 GMT",
    }


def test_extensions_that_getpeercert_does_not_show(ec_key, tmp_path):
    cert = build(ec_key, extensions=[
        x509.BasicConstraints(ca=True, path_length=1),
        x509.KeyUsage(True, False, False, False, False, True, True, False, False),
        x509.SubjectKeyIdentifier.from_public_key(ec_key.public_key()),
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.IssuerAlternativeName([x509.DNSName("issuer.example")]),
    ])
    got = check(cert, tmp_path)
    assert set(got) == {"subject", "issuer", "version", "serialNumber", "notBefore", "notAfter"}


# --- names ------------------------------------------------------------------------------------

def _every_name_oid():
    skip = {"X500_UNIQUE_IDENTIFIER"}  # a BIT STRING: test_bit_string_attribute
    two_letters = {"COUNTRY_NAME", "JURISDICTION_COUNTRY_NAME"}
    out = []
    for attr in sorted(dir(NameOID)):
        oid = getattr(NameOID, attr)
        if attr.startswith("_") or attr in skip or not isinstance(oid, x509.ObjectIdentifier):
            continue
        out.append((oid, "DE" if attr in two_letters else attr.lower().replace("_", " ")))
    if not hasattr(NameOID, "ORGANIZATION_IDENTIFIER"):  # named from cryptography 42 on; OpenSSL knows it
        out.append((x509.ObjectIdentifier("2.5.4.97"), "organization identifier"))
    return out


def test_every_name_attribute_cryptography_knows(ec_key, tmp_path):
    attributes = _every_name_oid()
    assert len(attributes) >= 29  # cryptography 41, the oldest supported, names 28 of them
    subject = _name(*attributes)
    cert = build(ec_key, subject=subject, issuer=DEFAULT_NAME)
    got = check(cert, tmp_path)
    names = {name for (name, _), in got["subject"]}
    assert len(got["subject"]) == len(attributes)
    for expected in ("countryName", "stateOrProvinceName", "localityName", "organizationName",
                     "organizationalUnitName", "commonName", "emailAddress", "serialNumber",
                     "domainComponent", "userId", "title", "givenName", "surname", "pseudonym",
                     "businessCategory", "jurisdictionCountryName", "jurisdictionStateOrProvinceName",
                     "jurisdictionLocalityName", "streetAddress", "postalCode", "organizationIdentifier",
                     "dnQualifier", "generationQualifier", "initials", "unstructuredName"):
        assert expected in names


def test_unknown_and_odd_oids_print_dotted(ec_key, tmp_path):
    subject = _name(
        (x509.ObjectIdentifier("1.3.6.1.4.1.99999.1.2.3"), "private arc"),
        (x509.ObjectIdentifier("2.999.1"), "example arc"),
        (x509.ObjectIdentifier("1.2.840.113549.1.9.2"), "unstructuredName by number"),
        (NameOID.COMMON_NAME, "known"),
    )
    got = check(build(ec_key, subject=subject), tmp_path)
    assert got["subject"][0] == (("1.3.6.1.4.1.99999.1.2.3", "private arc"),)
    # longer than CPython's 256-byte buffer, and than cryptography's OIDs (63 bytes), so by hand
    long_oid = "1.3.6.1.4.1.99999." + ".".join(["1234567890123"] * 25)
    der = rewrite(build(ec_key), ec_key, subject=raw_name([(long_oid, 12, b"long")]))
    assert check(der, tmp_path)["subject"] == (((long_oid, "long"),),)
    # a 128-bit arc (cryptography 41 cannot encode it): by hand too
    uuid_oid = "2.25.329800735698586629295641978511506172918"
    der = rewrite(build(ec_key), ec_key, subject=raw_name([(uuid_oid, 12, b"uuid arc")]))
    assert check(der, tmp_path)["subject"] == (((uuid_oid, "uuid arc"),),)
    assert got["subject"][1] == (("2.999.1", "example arc"),)


def test_multi_valued_rdns(ec_key, tmp_path):
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "XY")]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Unit one"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Unit two"),
        ]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.COMMON_NAME, "multi"),
            x509.NameAttribute(NameOID.USER_ID, "uid-7"),
        ]),
    ])
    issuer = x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "com"),
    ])])
    got = check(build(ec_key, subject=subject, issuer=issuer), tmp_path)
    assert [len(rdn) for rdn in got["subject"]] == [1, 3, 2]
    assert [len(rdn) for rdn in got["issuer"]] == [2]


def test_repeated_attributes_and_empty_names(ec_key, tmp_path):
    subject = _name((NameOID.DOMAIN_COMPONENT, "com"), (NameOID.DOMAIN_COMPONENT, "example"),
                    (NameOID.DOMAIN_COMPONENT, "www"), (NameOID.COMMON_NAME, "a"),
                    (NameOID.COMMON_NAME, "b"))
    got = check(build(ec_key, subject=subject, issuer=x509.Name([])), tmp_path)
    assert got["issuer"] == ()
    assert len(got["subject"]) == 5
    got = check(build(ec_key, subject=x509.Name([])), tmp_path)
    assert got["subject"] == () and got["issuer"] == ()


@pytest.mark.parametrize("asn1_type, value", [
    (_ASN1Type.UTF8String, "Zürich — 東京 — Ελλάδα"),
    (_ASN1Type.UTF8String, "astral 🔒 𝔘"),
    (_ASN1Type.UTF8String, "nul\x00inside and\nnewline"),
    (_ASN1Type.UTF8String, ""),
    (_ASN1Type.BMPString, "Ünïcödé ÆØÅ 中文"),
    (_ASN1Type.UniversalString, "universal 🔒 ü"),
    (_ASN1Type.PrintableString, "Printable 'String' (1+2=3)?"),
    (_ASN1Type.IA5String, "ia5@example.com"),
    (_ASN1Type.T61String, "teletex"),
    (_ASN1Type.T61String, "Müller"),  # UTF-8 bytes that OpenSSL reads as Latin-1: mojibake
    (_ASN1Type.NumericString, "0123 456"),
    (_ASN1Type.UTF8String, "x" * 300),
])
def test_string_types(ec_key, asn1_type, value, tmp_path):
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, value, asn1_type),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plain")])
    got = check(build(ec_key, subject=subject, issuer=DEFAULT_NAME), tmp_path)
    if asn1_type is _ASN1Type.T61String and not value.isascii():
        value = value.encode("utf-8").decode("latin-1")
    assert got["subject"][0] == (("organizationalUnitName", value),)


def test_latin1_bytes_in_raw_strings(ec_key, tmp_path):
    """Bytes that are not UTF-8 in one-byte-a-character strings: OpenSSL reads them as Latin-1
    (cryptography's Name refuses them, so this goes through the raw TBS)."""
    subject = raw_name(
        [("2.5.4.6", 19, b"DE")],
        [("2.5.4.7", 20, b"M\xfcnchen")],                     # T61String
        [("2.5.4.10", 22, b"Caf\xe9 \xa9")],                 # IA5String, outside ASCII
        [("2.5.4.3", 12, "Grüße".encode()), ("0.9.2342.19200300.100.1.1", 19, b"print\xff")],
        [("2.5.4.11", 30, "BMP Ω".encode("utf-16-be"))],
        [("2.5.4.5", 18, b"00042")],
    )
    der = rewrite(build(ec_key), ec_key, subject=subject)
    got = check(der, tmp_path)
    assert got["subject"][1] == (("localityName", "München"),)
    assert got["subject"][3] == (("commonName", "Grüße"), ("userId", "printÿ"))


def test_printable_strings_cryptography_refuses(ec_key, tmp_path):
    """PrintableString has no '*', '@', '_' or '&', but real certificates put them there; OpenSSL
    loads them and so must we (cryptography 42 and later refuse them in a Name, hence raw DER)."""
    subject = raw_name([("2.5.4.3", 19, b"*.wild_card.example")],
                       [("1.2.840.113549.1.9.1", 19, b"admin@example.com")],
                       [("2.5.4.10", 19, b"Smith & Sons")])
    issuer = raw_name([("2.5.4.3", 19, b"Issuer_CA *")])
    der = rewrite(build(ec_key), ec_key, subject=subject, issuer=issuer)
    got = check(der, tmp_path)
    assert got["subject"][0] == (("commonName", "*.wild_card.example"),)


@pytest.mark.parametrize("content, shown", [
    (b"\x00\x01\x02", b"\x01\x02"),   # the first octet counts the unused bits
    (b"\x03\xff", b"\xf8"),            # which OpenSSL clears
    (b"\x00", None),                    # no bytes at all: Py_BuildValue("y#", NULL, 0)
])
def test_bit_string_attribute(ec_key, content, shown, tmp_path):
    """CPython shows a BIT STRING value (x500UniqueIdentifier) as bytes, not text."""
    subject = x509.Name([
        x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, content, _ASN1Type.BitString),
        x509.NameAttribute(NameOID.COMMON_NAME, "bits"),
    ])
    got = check(build(ec_key, subject=subject, issuer=DEFAULT_NAME), tmp_path)
    assert got["subject"][0] == (("x500UniqueIdentifier", shown),)


@pytest.mark.parametrize("asn1_type, value", [
    # a BMPString can only hold the BMP: OpenSSL reads a surrogate pair as two bad characters
    (_ASN1Type.BMPString, "a🔒"),
    # types OpenSSL does not accept in a name at all: it cannot load the certificate
    (_ASN1Type.VisibleString, "visible"),
    (_ASN1Type.UTCTime, "240601120000Z"),
    (_ASN1Type.GeneralizedTime, "20240601120000Z"),
], ids=["bmp-surrogates", "visible-string", "utctime", "generalizedtime"])
def test_values_cpython_cannot_render_raise(ec_key, asn1_type, value, tmp_path):
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, value, asn1_type)])
    der = _der(build(ec_key, subject=subject, issuer=DEFAULT_NAME))
    with pytest.raises(ssl.SSLError):
        reference(der, tmp_path)
    with pytest.raises(CertificateDecodeError, match="cannot decode certificate"):
        decode_certificate(der)


# --- subjectAltName ---------------------------------------------------------------------------

def _othername(oid: str, value: bytes) -> x509.OtherName:
    return x509.OtherName(x509.ObjectIdentifier(oid), value)


def test_subject_alt_name_every_kind(ec_key, tmp_path):
    dirname = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "XY")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dir Org"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, "dir ü")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.LOCALITY_NAME, "Ω", _ASN1Type.BMPString)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.STREET_ADDRESS, "Müll", _ASN1Type.T61String)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, b"\x01\xfe",
                                                           _ASN1Type.BitString)]),
    ])
    names = [
        x509.DNSName("example.com"),
        x509.DNSName("*.wild.example.com"),
        x509.DNSName("xn--bcher-kva.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("255.0.10.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.IPAddress(ipaddress.ip_address("::")),
        x509.IPAddress(ipaddress.ip_address("2001:db8:85a3::8a2e:370:7334")),
        x509.IPAddress(ipaddress.ip_address("fe80:abcd:ef01:2345:6789:0abc:def0:ffff")),
        x509.IPAddress(ipaddress.ip_address("::ffff:192.0.2.1")),
        x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),       # 8 bytes: '<invalid>'
        x509.IPAddress(ipaddress.ip_network("2001:db8::/32")),    # 32 bytes: '<invalid>'
        x509.RFC822Name("user@example.com"),
        x509.UniformResourceIdentifier("https://example.com/path?q=1#frag"),
        x509.DirectoryName(dirname),
        x509.DirectoryName(x509.Name([])),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.840.113549.1.1.1")),
        x509.RegisteredID(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7")),
        _othername("1.3.6.1.4.1.311.20.2.3", b"\x0c\x0fuser@realm.test"),       # UPN
        _othername("1.3.6.1.5.5.7.8.5", _encode(0x0C, "jid@xmpp.ørg".encode())),  # XmppAddr
        _othername("1.3.6.1.5.5.7.8.7", b"\x16\x0b_xmpp.a.com"),                 # SRVName
        _othername("1.3.6.1.5.5.7.8.8", b"\x0c\x05realm"),                       # NAIRealm
        _othername("1.3.6.1.5.5.7.8.9", b"\x0c\x06\xc3\xbc@a.b"),               # SmtpUTF8Mailbox
        _othername("1.3.6.1.5.5.7.8.7", b"\x0c\x03srv"),      # SRVName must be IA5String
        _othername("1.3.6.1.4.1.311.20.2.3", b"\x16\x03upn"),  # UPN must be UTF8String
        _othername("1.3.6.1.4.1.99999.3", b"\x0c\x03abc"),     # unknown type
        _othername("1.3.6.1.4.1.99999.4", b"\x30\x03\x02\x01\x05"),
        _othername("1.3.6.1.4.1.311.20.2.3", b"\x0c\x07ab\x00cdef"),  # %.*s stops at the NUL
        _othername("1.3.6.1.5.5.7.8.5", b"\x0c\x05ab\ncd"),           # BIO_gets keeps one line
    ]
    cert = build(ec_key, extensions=[x509.SubjectAlternativeName(names)])
    got = check(cert, tmp_path)
    san = got["subjectAltName"]
    assert len(san) == len(names)
    assert ("IP Address", "0:0:0:0:0:0:0:1") in san
    assert ("IP Address", "2001:DB8:85A3:0:0:8A2E:370:7334") in san
    assert ("IP Address", "<invalid>") in san
    assert ("othername", "UPN:user@realm.test") in san
    assert ("othername", "<unsupported>") in san
    assert ("Registered ID", "rsaEncryption") in san
    assert san[14][0] == "DirName" and len(san[14][1]) == 5


@pytest.mark.parametrize("value", [
    "u" * 3000,            # GENERAL_NAME_print's line, as BIO_gets reads it: 2046 characters
    "x" + "ü" * 1200,      # ... cut in the middle of a character: CPython cannot decode it
    "line one\nline two",  # ... and only up to the first newline
])
def test_othername_cut_like_bio_gets(ec_key, value, tmp_path):
    name = _othername("1.3.6.1.4.1.311.20.2.3", _encode(0x0C, value.encode()))
    der = _der(build(ec_key, extensions=[x509.SubjectAlternativeName([name])]))
    try:
        expected = reference(der, tmp_path)
    except UnicodeDecodeError:
        with pytest.raises(CertificateDecodeError):
            decode_certificate(der)
        assert len(("othername:UPN:" + value).encode()) > 2046
        return
    assert decode_certificate(der) == expected
    assert len(expected["subjectAltName"][0][1]) < len("UPN:" + value)


@pytest.mark.parametrize("names", [
    [],
    [x509.DNSName("only.example")],
    [x509.IPAddress(ipaddress.ip_address("192.168.0.1"))],
    [x509.UniformResourceIdentifier("urn:uuid:0a0b"), x509.RFC822Name("a@b")],
], ids=["empty", "dns", "ipv4", "uri-email"])
def test_subject_alt_name_small(ec_key, names, tmp_path):
    got = check(build(ec_key, extensions=[x509.SubjectAlternativeName(names)]), tmp_path)
    assert len(got["subjectAltName"]) == len(names)  # present even when empty


def _extension_der(oid: x509.ObjectIdentifier, value: bytes, critical: bool = False) -> bytes:
    return _encode(0x30, _encode_oid(oid.dotted_string) + (b"\x01\x01\xff" if critical else b"")
                   + _encode(0x04, value))


def _san_value(*general_names: bytes) -> bytes:
    return _encode(0x30, b"".join(general_names))


DNS_A, DNS_B = _encode(0x82, b"a.example"), _encode(0x82, b"b.example")
X400 = _encode(0xA3, _encode(0x30, _encode(0x30, b"")))                  # an (empty) ORAddress
EDI_PARTY = _encode(0xA5, _encode(0xA1, _encode(0x0C, b"party")))      # partyName [1]


def test_x400_and_edi_party_names(ec_key, tmp_path):
    """cryptography cannot load these; GENERAL_NAME_print calls them <unsupported>."""
    san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
                                     _san_value(X400, DNS_A, EDI_PARTY, X400, DNS_B))
    got = check(build(ec_key, extensions=[san]), tmp_path)
    assert got["subjectAltName"] == (
        ("X400Name", "<unsupported>"), ("DNS", "a.example"), ("EdiPartyName", "<unsupported>"),
        ("X400Name", "<unsupported>"), ("DNS", "b.example"))
    san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, _san_value(EDI_PARTY))
    assert check(build(ec_key, extensions=[san]), tmp_path)["subjectAltName"] == (
        ("EdiPartyName", "<unsupported>"),)


def test_raw_ip_addresses_and_dirnames(ec_key, tmp_path):
    """Entries cryptography would refuse: IP addresses of odd lengths or with a netmask that is
    not a prefix, and DirNames with PrintableString characters it rejects or Latin-1 bytes."""
    dirname = raw_name([("2.5.4.3", 19, b"*.dir_name@example")], [("2.5.4.7", 20, b"K\xf6ln")],
                       [("2.5.4.10", 12, b"org"), ("2.5.4.11", 22, b"unit")])
    san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, _san_value(
        _encode(0x87, b"\x01\x02\x03\x04\x05"),                     # 5 bytes
        _encode(0x87, b"\x0a\x00\x00\x00\xff\x00\xff\x00"),         # 8: mask not a prefix
        _encode(0x87, b""),
        _encode(0x87, b"\x7f\x00\x00\x01"),
        _encode(0xA4, dirname),
        DNS_A,
        _encode(0xA4, raw_name()),
    ))
    got = check(build(ec_key, extensions=[san]), tmp_path)
    assert got["subjectAltName"] == (
        ("IP Address", "<invalid>"), ("IP Address", "<invalid>"), ("IP Address", "<invalid>"),
        ("IP Address", "127.0.0.1"),
        ("DirName", ((("commonName", "*.dir_name@example"),), (("localityName", "Köln"),),
                     (("organizationName", "org"), ("organizationalUnitName", "unit")))),
        ("DNS", "a.example"), ("DirName", ()))


def test_critical_subject_alt_name(ec_key, tmp_path):
    cert = build(ec_key, subject=x509.Name([]))
    der = rewrite(cert, ec_key, extra_extensions=[
        _extension_der(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, _san_value(DNS_A, X400), critical=True)])
    assert check(der, tmp_path)["subjectAltName"] == (("DNS", "a.example"), ("X400Name", "<unsupported>"))


def test_duplicate_extensions_are_not_shown(ec_key, tmp_path):
    """X509_get_ext_d2i() gives NULL for an extension that appears twice: no key at all."""
    uri = _encode(0x86, b"http://crl.example/c.crl")
    crl = _encode(0x30, _encode(0x30, _encode(0xA0, _encode(0xA0, uri))))
    cert = build(ec_key, extensions=[x509.SubjectAlternativeName([x509.DNSName("first.example")]),
                                     x509.BasicConstraints(ca=False, path_length=None)])
    der = rewrite(cert, ec_key, extra_extensions=[
        _extension_der(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, _san_value(DNS_B)),
        _extension_der(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x00"),
        _extension_der(ExtensionOID.CRL_DISTRIBUTION_POINTS, crl),
    ])
    got = check(der, tmp_path)
    assert "subjectAltName" not in got
    assert got["crlDistributionPoints"] == ("http://crl.example/c.crl",)


def test_extensions_cryptography_refuses_but_getpeercert_ignores(ec_key, tmp_path):
    cert = build(ec_key, extensions=[
        x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x01\x02"),        # not DER at all
        x509.AuthorityKeyIdentifier(b"\x01" * 20, [x509.DirectoryName(DEFAULT_NAME)], 0),  # serial 0
        x509.SubjectAlternativeName([x509.DNSName("ok.example")]),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = check(cert, tmp_path)
    assert got["subjectAltName"] == (("DNS", "ok.example"),)


def test_dirname_openssl_cannot_parse_drops_subject_alt_name(ec_key, tmp_path):
    """A DirName holding a type OpenSSL's name parser refuses makes the whole extension
    unreadable to it: CPython shows no subjectAltName."""
    dirname = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "visible", _ASN1Type.VisibleString)])
    cert = build(ec_key, extensions=[x509.SubjectAlternativeName([x509.DNSName("a.example"),
                                                                  x509.DirectoryName(dirname)])])
    got = check(cert, tmp_path)
    assert "subjectAltName" not in got


def test_malformed_subject_alt_name_is_an_error(ec_key, tmp_path):
    """A known difference: OpenSSL skips a subjectAltName it cannot parse (CPython shows no key);
    cryptography refuses it, and so does decode_certificate, with a clear error. OpenSSL marks
    such a certificate invalid, so it never passes verification to reach getpeercert()."""
    san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x82\x05a")
    der = _der(build(ec_key, extensions=[san]))
    assert "subjectAltName" not in reference(der, tmp_path)
    with pytest.raises(CertificateDecodeError, match="cannot decode certificate"):
        decode_certificate(der)


# --- AIA and CRL distribution points ----------------------------------------------------------

def _access(method, location):
    return x509.AccessDescription(method, location)


def test_authority_information_access(ec_key, tmp_path):
    ocsp, issuers = AuthorityInformationAccessOID.OCSP, AuthorityInformationAccessOID.CA_ISSUERS
    uri = x509.UniformResourceIdentifier
    aia = x509.AuthorityInformationAccess([
        _access(ocsp, uri("http://ocsp.one.example")),
        _access(issuers, uri("http://ca.one.example/ca.der")),
        _access(ocsp, x509.DNSName("not-a-uri.example")),         # skipped: not a URI
        _access(ocsp, uri("http://ocsp.two.example/")),
        _access(x509.ObjectIdentifier("1.3.6.1.5.5.7.48.5"), uri("http://repository.example")),
        _access(issuers, uri("ldap://ca.two.example/cn=CA")),
        _access(issuers, uri("http://ca.three.example/ca.p7c")),
    ])
    got = check(build(ec_key, extensions=[aia]), tmp_path)
    assert got["OCSP"] == ("http://ocsp.one.example", "http://ocsp.two.example/")
    assert len(got["caIssuers"]) == 3


@pytest.mark.parametrize("which", ["ocsp-only", "issuers-only", "neither"])
def test_authority_information_access_one_side(ec_key, which, tmp_path):
    uri = x509.UniformResourceIdentifier("http://only.example")
    method = {"ocsp-only": AuthorityInformationAccessOID.OCSP,
              "issuers-only": AuthorityInformationAccessOID.CA_ISSUERS,
              "neither": x509.ObjectIdentifier("1.3.6.1.5.5.7.48.5")}[which]
    got = check(build(ec_key, extensions=[x509.AuthorityInformationAccess([_access(method, uri)])]), tmp_path)
    assert ("OCSP" in got) == (which == "ocsp-only")
    assert ("caIssuers" in got) == (which == "issuers-only")


def test_crl_distribution_points(ec_key, tmp_path):
    uri = x509.UniformResourceIdentifier
    points = x509.CRLDistributionPoints([
        x509.DistributionPoint([uri("http://crl.one.example/a.crl"), uri("ldap://crl.one.example/cn=x")],
                               None, None, None),
        x509.DistributionPoint(None, x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.COMMON_NAME, "relative")]), None, None),
        x509.DistributionPoint(None, None, frozenset({x509.ReasonFlags.key_compromise}),
                               [x509.DirectoryName(DEFAULT_NAME)]),
        x509.DistributionPoint([x509.DirectoryName(DEFAULT_NAME), uri("http://crl.two.example/b.crl")],
                               None, frozenset({x509.ReasonFlags.ca_compromise}), None),
        x509.DistributionPoint([uri("http://crl.three.example/c.crl")], None, None,
                               [x509.DNSName("issuer.example")]),
    ])
    got = check(build(ec_key, extensions=[points]), tmp_path)
    assert got["crlDistributionPoints"] == (
        "http://crl.one.example/a.crl", "ldap://crl.one.example/cn=x",
        "http://crl.two.example/b.crl", "http://crl.three.example/c.crl")


def test_crl_distribution_points_without_uris(ec_key, tmp_path):
    points = x509.CRLDistributionPoints([
        x509.DistributionPoint([x509.DirectoryName(DEFAULT_NAME)], None, None, None),
        x509.DistributionPoint(None, None, None, [x509.DNSName("issuer.example")]),
    ])
    got = check(build(ec_key, extensions=[points]), tmp_path)
    assert "crlDistributionPoints" not in got


def test_everything_together_rsa(keys, tmp_path):
    key = keys["rsa"]
    uri = x509.UniformResourceIdentifier
    cert = build(key, serial=x509.random_serial_number(), extensions=[
        x509.SubjectAlternativeName([x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("::1"))]),
        x509.AuthorityInformationAccess([
            _access(AuthorityInformationAccessOID.OCSP, uri("http://ocsp.example")),
            _access(AuthorityInformationAccessOID.CA_ISSUERS, uri("http://ca.example/ca.der")),
        ]),
        x509.CRLDistributionPoints([x509.DistributionPoint([uri("http://crl.example/c.crl")], None, None, None)]),
    ])
    got = check(cert, tmp_path)
    assert {"subjectAltName", "OCSP", "caIssuers", "crlDistributionPoints"} <= set(got)


# --- serial numbers, dates, versions ----------------------------------------------------------

@pytest.mark.parametrize("serial, text", [
    (1, "01"),
    (0x7F, "7F"),
    (0x80, "80"),                                   # high bit: a 00 pad in DER, not printed
    (0xFF, "FF"),
    (0x100, "0100"),
    (0xABCDE, "0ABCDE"),                            # whole bytes: a leading 0 digit
    (0x8000000000000000, "8000000000000000"),
    ((1 << 159) - 1, "7F" + "FF" * 19),              # the builder's limit: 20 bytes
    ((1 << 152) + 5, "01" + "00" * 18 + "05"),
])
def test_serial_numbers_the_builder_makes(ec_key, serial, text, tmp_path):
    got = check(build(ec_key, serial=serial), tmp_path)
    assert got["serialNumber"] == text


@pytest.mark.parametrize("serial, text", [
    (0, "00"),
    (-1, "-01"),
    (-128, "-80"),
    (-129, "-81"),
    (-0x8000, "-8000"),
    ((1 << 320) + 0x1234, None),   # 41 bytes: i2a_ASN1_INTEGER wraps at 35 bytes
    (1 << 279, None),              # exactly 35 bytes: no wrap
])
def test_serial_numbers_by_rewriting(ec_key, serial, text, tmp_path):
    der = rewrite(build(ec_key), ec_key, serial=serial)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cryptography warns about serial numbers <= 0
        got = check(der, tmp_path)
    if text is not None:
        assert got["serialNumber"] == text
    elif serial.bit_length() > 35 * 8:
        assert got["serialNumber"].endswith("\\\n") and len(got["serialNumber"]) == 72
    else:
        assert len(got["serialNumber"]) == 70


@pytest.mark.parametrize("not_before, not_after", [
    (datetime.datetime(2024, 6, 1, 0, 0, 0), datetime.datetime(2024, 6, 9, 23, 59, 59)),   # single-digit days
    (datetime.datetime(2049, 12, 31, 23, 59, 59), datetime.datetime(2050, 1, 1, 0, 0, 0)),  # UTCTime / GeneralizedTime
    (datetime.datetime(1950, 1, 1, 0, 0, 0), datetime.datetime(2051, 2, 28, 1, 2, 3)),
    (datetime.datetime(1999, 12, 31, 23, 59, 59), datetime.datetime(9999, 12, 31, 23, 59, 59)),
    (datetime.datetime(1970, 1, 1, 0, 0, 0), datetime.datetime(2038, 1, 19, 3, 14, 8)),
    (datetime.datetime(2000, 2, 29, 12, 30, 45), datetime.datetime(2100, 10, 10, 10, 10, 10)),
])
def test_dates(ec_key, not_before, not_after, tmp_path):
    cert = build(ec_key, not_before=not_before.replace(tzinfo=UTC), not_after=not_after.replace(tzinfo=UTC))
    got = check(cert, tmp_path)
    assert got["notBefore"][:6] == f"{not_before:%b} {not_before.day:2d}"
    assert got["notAfter"].endswith(f"{not_after.year} GMT")


UTCTIME, GENERALIZEDTIME = 0x17, 0x18


@pytest.mark.parametrize("validity, shown", [
    # the builder refuses dates before 1950; GeneralizedTime holds them
    (((GENERALIZEDTIME, "19491231235959Z"), (UTCTIME, "500101000000Z")),
     ("Dec 31 23:59:59 1949 GMT", "Jan  1 00:00:00 1950 GMT")),
    (((GENERALIZEDTIME, "00010101000000Z"), (GENERALIZEDTIME, "19000228000000Z")),
     ("Jan  1 00:00:00 1 GMT", "Feb 28 00:00:00 1900 GMT")),
    # UTCTime's two-digit years: 49 is 2049, 50 is 1950
    (((UTCTIME, "491231235959Z"), (UTCTIME, "500101000000Z")),
     ("Dec 31 23:59:59 2049 GMT", "Jan  1 00:00:00 1950 GMT")),
    # GeneralizedTime where UTCTime would do (RFC 5280 says not to; both parsers accept it)
    (((GENERALIZEDTIME, "20240601120000Z"), (GENERALIZEDTIME, "20491231235959Z")),
     ("Jun  1 12:00:00 2024 GMT", "Dec 31 23:59:59 2049 GMT")),
])
def test_dates_written_by_hand(ec_key, validity, shown, tmp_path):
    got = check(rewrite(build(ec_key), ec_key, validity=validity), tmp_path)
    assert (got["notBefore"], got["notAfter"]) == shown


@pytest.mark.parametrize("validity", [
    ((GENERALIZEDTIME, "20240601120000.5Z"), (UTCTIME, "340601120000Z")),   # fractional seconds
    ((UTCTIME, "2406011200Z"), (UTCTIME, "340601120000Z")),                  # no seconds
    ((UTCTIME, "240601120000+0100"), (UTCTIME, "340601120000Z")),            # an offset
], ids=["fraction", "no-seconds", "offset"])
def test_time_encodings_cryptography_refuses(ec_key, validity, tmp_path):
    """A known difference: RFC 5280 (and DER, for all but the fraction) rules these out, and
    cryptography refuses them; OpenSSL prints them. decode_certificate says it cannot decode."""
    der = rewrite(build(ec_key), ec_key, validity=validity)
    assert reference(der, tmp_path)["notAfter"] == "Jun  1 12:00:00 2034 GMT"
    with pytest.raises(CertificateDecodeError, match="cannot decode certificate"):
        decode_certificate(der)


def test_every_month(ec_key, tmp_path):
    for month in range(1, 13):
        when = datetime.datetime(2030, month, month, month, month, month, tzinfo=UTC)
        check(build(ec_key, not_before=when, not_after=when), tmp_path)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_version_1(keys, kind, tmp_path):
    """cryptography's builder only writes v3; a v1 certificate leaves the version out and has no
    extensions."""
    key = keys[kind]
    der = rewrite(build(key), key, version=None, drop_extensions=True)
    assert x509.load_der_x509_certificate(der).version is x509.Version.v1
    got = check(der, tmp_path)
    assert got["version"] == 1


@pytest.mark.parametrize("version, shown", [
    (0, 1),              # v1 written out, though DER leaves a DEFAULT out (cryptography refuses it)
    (1, 2),              # v2, which cryptography refuses
    (3, 4), (255, 256),  # versions that do not exist, which OpenSSL loads all the same
    (-1, 0),
    ((1 << 63) - 1, -(1 << 63)),  # CPython adds 1 in a C long
    (1 << 64, 0),        # too big for ASN1_INTEGER_get(), which says -1
])
def test_other_versions(ec_key, version, shown, tmp_path):
    cert = build(ec_key, extensions=[x509.SubjectAlternativeName([x509.DNSName("v.example")])])
    got = check(rewrite(cert, ec_key, version=version), tmp_path)
    assert got["version"] == shown
    assert got["subjectAltName"] == (("DNS", "v.example"),)  # OpenSSL reads extensions in any version


def test_version_1_with_extensions(ec_key, tmp_path):
    cert = build(ec_key, extensions=[x509.SubjectAlternativeName([x509.DNSName("v1.example")])])
    got = check(rewrite(cert, ec_key, version=None), tmp_path)
    assert got["version"] == 1 and got["subjectAltName"] == (("DNS", "v1.example"),)


def test_odd_version_and_serial_together(ec_key, tmp_path):
    got = check(rewrite(build(ec_key), ec_key, version=1, serial=-5), tmp_path)
    assert (got["version"], got["serialNumber"]) == (2, "-05")


def test_issuer_and_subject_rewritten_independently(ec_key, tmp_path):
    issuer = raw_name([("2.5.4.3", 19, b"Raw Issuer")], [("1.2.840.113549.1.9.1", 22, b"ca@example.com")])
    der = rewrite(build(ec_key), ec_key, issuer=issuer)
    got = check(der, tmp_path)
    assert got["issuer"] == ((("commonName", "Raw Issuer"),), (("emailAddress", "ca@example.com"),))


# --- real certificates ------------------------------------------------------------------------

def _bundle_certificates():
    if not os.path.exists(CA_BUNDLE):
        return []
    with open(CA_BUNDLE, encoding="ascii", errors="replace") as bundle:
        return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle.read(), re.S)


def test_system_ca_bundle(tmp_path):
    pems = _bundle_certificates()
    if not pems:
        pytest.skip(f"no CA bundle at {CA_BUNDLE}")
    mismatches = []
    for index, pem in enumerate(pems):
        path = tmp_path / f"ca-{index}.pem"
        path.write_text(pem + "\n")
        expected = _ssl._test_decode_cert(str(path))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # not even cryptography's zero-serial warning
                got = decode_certificate(ssl.PEM_cert_to_DER_cert(pem))
        except Exception as exc:  # a failure is a mismatch, reported with the others
            got = exc
        if got != expected:
            mismatches.append((index, expected.get("subject"), got))
    assert not mismatches, f"{len(mismatches)} of {len(pems)} differ: {mismatches[:3]}"


def test_pki_fixture_certificates(pki, server_cert, tmp_path):
    for cert in (pki.ca_cert, server_cert.cert):
        check(cert, tmp_path)


def test_same_as_getpeercert_after_a_handshake(pki, server_cert):
    """The reference is getpeercert() itself: an in-memory handshake with CPython's ssl."""
    client_ctx = ssl.create_default_context(cafile=pki.ca_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert.chain_path, server_cert.key_path)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="localhost")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if done == 2:
            break
    peer = client.getpeercert()
    assert peer and "subjectAltName" in peer
    assert decode_certificate(client.getpeercert(binary_form=True)) == peer


# --- input and errors -------------------------------------------------------------------------

def test_bytes_like_input(ec_key, tmp_path):
    der = _der(build(ec_key))
    expected = reference(der, tmp_path)
    assert decode_certificate(bytearray(der)) == expected
    assert decode_certificate(memoryview(der)) == expected


@pytest.mark.parametrize("data", [b"", b"\x30\x00", b"not a certificate", b"\x30\x82\xff\xff\x30"])
def test_invalid_der(data):
    with pytest.raises(CertificateDecodeError, match="not a DER X.509 certificate") as info:
        decode_certificate(data)
    assert isinstance(info.value, ssl.SSLError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith("cannot decode certificate: not a DER X.509 certificate (")


def test_truncated_and_trailing_data(ec_key):
    der = _der(build(ec_key))
    with pytest.raises(CertificateDecodeError):
        decode_certificate(der[:-1])
    with pytest.raises(CertificateDecodeError):
        decode_certificate(der + b"\x00")


def test_pem_text_is_refused(ec_key):
    pem = ssl.DER_cert_to_PEM_cert(_der(build(ec_key)))
    with pytest.raises(TypeError, match="PEM_cert_to_DER_cert"):
        decode_certificate(pem)
