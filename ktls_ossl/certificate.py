"""Certificates as ``ssl.SSLSocket.getpeercert()`` shows them.

``decode_certificate(der)`` returns, for a DER certificate, exactly the dict CPython's
``getpeercert()`` returns for it (CPython builds it in ``_decode_certificate`` in Modules/_ssl.c):
the same keys, present in the same cases, and the same values, down to OpenSSL's long names for
attribute types, its serial number and date printing, CPython's IP address formatting, and the
bytes (not text) of a BIT STRING attribute such as x500UniqueIdentifier.

The certificate is parsed with ``cryptography.x509``; object identifiers are named by OpenSSL's
own object table (through the cffi bindings), so a name is the one CPython prints. Where
cryptography's reading is not OpenSSL's, the field is read from the certificate's own DER instead:

* the version: cryptography loads only versions 1 and 3 (and no explicit v1); OpenSSL loads any,
  and CPython shows ``v + 1``;
* the serial number: cryptography warns about, and will refuse, zero and negative ones, which real
  CA certificates have (several in the usual system bundle);
* the subject, the issuer and directoryName entries: OpenSSL takes the bytes of a one-byte-a-
  character string (T61String, IA5String, PrintableString, NumericString) as Latin-1 and does not
  check PrintableString's alphabet, where cryptography insists on UTF-8 and refuses '*', '@', '_';
* subjectAltName entries cryptography cannot load: X400Address and EDIPartyName ('<unsupported>'
  to CPython) and IP addresses of other than 4 or 16 bytes ('<invalid>').

cryptography itself reads the validity dates, authorityInfoAccess, cRLDistributionPoints and the
rest of subjectAltName, from a copy of the certificate that holds only what it is asked about:
version 3, serial number 1, empty names, and just those three extensions, each only if it appears
once (OpenSSL's X509_get_ext_d2i() ignores a duplicated one). So an extension getpeercert() does
not show cannot make cryptography refuse the certificate. The signature is not checked on load.

A certificate that is not DER, or that CPython could not render either (a name value OpenSSL
cannot convert to UTF-8, a name type OpenSSL does not parse), raises :class:`CertificateDecodeError`,
an ``ssl.SSLError`` that is also a ``ValueError``, with a message that says why. (CPython raises
ssl.SSLError or UnicodeDecodeError there; for a peer certificate that OpenSSL has parsed and
verified neither can happen.) One known difference remains: where OpenSSL cannot parse a
subjectAltName, authorityInfoAccess or cRLDistributionPoints extension, CPython leaves its keys
out, but cryptography refuses it and this function raises; the same goes for one cryptography
alone refuses (an X400Address in authorityInfoAccess, say, which CPython would skip). OpenSSL
marks a certificate whose subjectAltName or cRLDistributionPoints it cannot parse invalid, so
that one does not pass verification to reach getpeercert().

PEM conversion is ``ssl.DER_cert_to_PEM_cert`` / ``ssl.PEM_cert_to_DER_cert``; nothing here
duplicates it.
"""
from __future__ import annotations

import functools
import ipaddress
import ssl

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from ._ossl import ffi, lib

__all__ = ["CertificateDecodeError", "decode_certificate"]


class CertificateDecodeError(ssl.SSLError, ValueError):
    """A certificate that is not DER, or that CPython's getpeercert() could not render either."""

    library = None
    reason = None

    def __str__(self) -> str:
        # ssl.SSLError shows a lone argument as a tuple; the message reads better on its own
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class _NotDER(Exception):
    pass


class _RejectedName(Exception):
    """A name OpenSSL's X509_NAME parser refuses (CPython never gets to render it)."""


def decode_certificate(der: bytes | bytearray | memoryview) -> dict:
    """The dict ``ssl.SSLSocket.getpeercert()`` returns for the DER certificate ``der``.

    Keys: subject, issuer, version, serialNumber, notBefore, notAfter, and, only when the
    certificate has them, subjectAltName, OCSP, caIssuers and crlDistributionPoints.
    Raises CertificateDecodeError (an ssl.SSLError and a ValueError) for anything else.
    """
    if isinstance(der, str):
        raise TypeError("decode_certificate() takes DER bytes, not str (see ssl.PEM_cert_to_DER_cert)")
    der = bytes(der)
    try:
        raw = _RawCertificate(der)
    except _NotDER as exc:
        raise CertificateDecodeError(f"cannot decode certificate: not a DER X.509 certificate ({exc})") from None
    try:
        cert = x509.load_der_x509_certificate(raw.for_cryptography())
    except ValueError as exc:
        raise CertificateDecodeError(
            f"cannot decode certificate: cryptography cannot read its dates or extensions ({exc})") from None
    try:
        return _decode(raw, cert)
    except CertificateDecodeError:
        raise
    except _RejectedName as exc:
        raise CertificateDecodeError(f"cannot decode certificate: {exc}") from None
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateDecodeError(f"cannot decode certificate: {exc}") from exc


def _decode(raw: _RawCertificate, cert: x509.Certificate) -> dict:
    result = {
        "subject": _name_from_der(raw.data, *raw.subject),
        "issuer": _name_from_der(raw.data, *raw.issuer),
        "version": raw.shown_version(),
        "serialNumber": _serial_text(raw.serial),
        "notBefore": _time_text(_utc(cert, "not_valid_before")),
        "notAfter": _time_text(_utc(cert, "not_valid_after")),
    }
    extensions = cert.extensions
    san = _extension(extensions, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is not None:
        try:
            names = [_general_name(name) for name in san]
            for index, (kind, value) in sorted(raw.san_entries.items()):
                if kind == "DirName":
                    value = _name_from_der(raw.data, *value)
                names.insert(index, (kind, value))
            result["subjectAltName"] = tuple(names)
        except _RejectedName:
            pass  # OpenSSL cannot parse the extension: X509_get_ext_d2i() gives NULL, no key
    aia = _extension(extensions, ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    if aia is not None:
        for key, method in (("OCSP", AuthorityInformationAccessOID.OCSP),
                            ("caIssuers", AuthorityInformationAccessOID.CA_ISSUERS)):
            uris = tuple(d.access_location.value for d in aia
                         if d.access_method == method
                         and isinstance(d.access_location, x509.UniformResourceIdentifier))
            if uris:
                result[key] = uris
    cdp = _extension(extensions, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    if cdp is not None:
        # CPython reads only full names; a point with a name relative to the issuer adds nothing.
        uris = tuple(name.value for point in cdp for name in (point.full_name or ())
                     if isinstance(name, x509.UniformResourceIdentifier))
        if uris:
            result["crlDistributionPoints"] = uris
    return result


def _extension(extensions: x509.Extensions, oid: x509.ObjectIdentifier):
    try:
        return extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _utc(cert: x509.Certificate, field: str):
    value = getattr(cert, field + "_utc", None)  # cryptography >= 42
    return value if value is not None else getattr(cert, field)


# --- DER ------------------------------------------------------------------------------------

def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at data[pos]."""
    if pos + 2 > end:
        raise _NotDER("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise _NotDER("multi-byte tag")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or pos + count > end:
            raise _NotDER("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise _NotDER("truncated element")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int, *, with_start: bool = False):
    """(tag, content start, content end) of each element in data[start:end], and where the
    element itself starts first when ``with_start``."""
    while start < end:
        tag, content, stop = _tlv(data, start, end)
        yield (start, tag, content, stop) if with_start else (tag, content, stop)
        start = stop


def _encode(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    length = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


# subjectAltName, authorityInfoAccess, cRLDistributionPoints, as DER OBJECT IDENTIFIER contents
_SAN = b"\x55\x1d\x11"
_SHOWN_EXTENSIONS = (_SAN, b"\x2b\x06\x01\x05\x05\x07\x01\x01", b"\x55\x1d\x1f")
# [3] x400Address and [5] ediPartyName, both constructed
_UNSUPPORTED_GENERAL_NAMES = {0xA3: "X400Name", 0xA5: "EdiPartyName"}


def _oid_from_der(content: bytes) -> str:
    arcs = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or content[-1] & 0x80:
        raise _NotDER("bad OBJECT IDENTIFIER")
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


# The rest of the certificate for_cryptography() writes: [0] v3, serial 1; an algorithm of an OID
# no one uses (2.999: the example arc) without parameters; an empty name; a key and a signature
# of no bits.
_COPY_VERSION_SERIAL = b"\xa0\x03\x02\x01\x02" + b"\x02\x01\x01"
_COPY_ALGORITHM = b"\x30\x04\x06\x02\x88\x37"
_EMPTY_NAME = b"\x30\x00"
_COPY_KEY = _encode(0x30, _COPY_ALGORITHM + b"\x03\x01\x00")
_COPY_SIGNATURE = b"\x03\x01\x00"


class _RawCertificate:
    """The fields of a Certificate's TBSCertificate that are read from its bytes."""

    def __init__(self, data: bytes):
        self.data = data
        tag, start, end = _tlv(data, 0, len(data))
        if tag != 0x30 or end != len(data):
            raise _NotDER("not a single SEQUENCE")
        outer = list(_children(data, start, end))
        if len(outer) != 3 or outer[0][0] != 0x30:
            raise _NotDER("not a Certificate")
        fields = list(_children(data, outer[0][1], outer[0][2], with_start=True))
        self.version = 0  # absent: the DEFAULT, v1
        if fields and fields[0][1] == 0xA0:  # [0] EXPLICIT Version
            tag, vstart, vend = _tlv(data, fields[0][2], fields[0][3])
            if tag != 0x02 or vstart == vend:
                raise _NotDER("bad version")
            self.version = int.from_bytes(data[vstart:vend], "big", signed=True)
            del fields[0]
        starts = [field[0] for field in fields]
        tbs = [field[1:] for field in fields]
        if len(tbs) < 6 or [f[0] for f in tbs[:6]] != [0x02, 0x30, 0x30, 0x30, 0x30, 0x30]:
            raise _NotDER("not a TBSCertificate")
        serial, _, issuer, _, subject, _ = tbs[:6]
        if serial[1] == serial[2]:
            raise _NotDER("empty serial number")
        self.serial = int.from_bytes(data[serial[1]:serial[2]], "big", signed=True)
        self.issuer = issuer[1:]
        self.subject = subject[1:]
        self._starts = starts
        self._extensions = b""
        self.san_entries: dict[int, tuple] = {}  # see _san_for_cryptography
        for start, tag, content, stop in fields[6:]:
            if tag == 0xA3:  # [3] EXPLICIT Extensions
                self._extensions = self._shown_extensions(content, stop)

    def _shown_extensions(self, start: int, end: int) -> bytes:
        """The [3] Extensions element with only the extensions getpeercert() shows, and none of
        those that appear more than once: X509_get_ext_d2i() returns NULL for a duplicate."""
        data = self.data
        tag, start, end = _tlv(data, start, end)
        if tag != 0x30:
            raise _NotDER("bad extensions")
        found: dict[bytes, list[bytes]] = {}
        for ext_start, tag, content, stop in _children(data, start, end, with_start=True):
            parts = list(_children(data, content, stop, with_start=True))
            if tag != 0x30 or not 2 <= len(parts) <= 3 or parts[0][1] != 0x06 or parts[-1][1] != 0x04:
                raise _NotDER("bad extension")
            oid = data[parts[0][2]:parts[0][3]]
            if oid == _SAN:
                head = data[content:parts[-1][0]]  # extnID and critical, as they are
                value = self._san_for_cryptography(parts[-1][2], parts[-1][3])
                found.setdefault(oid, []).append(_encode(0x30, head + _encode(0x04, value)))
            else:
                found.setdefault(oid, []).append(data[ext_start:stop])
        kept = b"".join(found[oid][0] for oid in _SHOWN_EXTENSIONS if len(found.get(oid, ())) == 1)
        return _encode(0xA3, _encode(0x30, kept)) if kept else b""

    def _san_for_cryptography(self, start: int, end: int) -> bytes:
        """subjectAltName's GeneralNames for cryptography, less the entries read here, which are
        kept in ``san_entries`` by their index: X400Address and EDIPartyName (cryptography cannot
        load them; CPython shows '<unsupported>'), an iPAddress of other than 4 or 16 bytes
        (cryptography reads 8 and 32 as a network, or refuses it; CPython shows '<invalid>'),
        and a directoryName (as ("DirName", (start, end)) of its RDNSequence contents, read like
        the subject, which cryptography's Name would be stricter about)."""
        data = self.data
        tag, start, end = _tlv(data, start, end)
        if tag != 0x30:
            return data[start:end]  # let cryptography say what is wrong with it
        kept, self.san_entries = [], {}
        for index, (name_start, tag, content, stop) in enumerate(
                _children(data, start, end, with_start=True)):
            if tag in _UNSUPPORTED_GENERAL_NAMES:
                self.san_entries[index] = (_UNSUPPORTED_GENERAL_NAMES[tag], "<unsupported>")
            elif tag == 0x87 and stop - content not in (4, 16):  # [7] iPAddress
                self.san_entries[index] = ("IP Address", "<invalid>")
            elif tag == 0xA4:  # [4] EXPLICIT directoryName
                name_tag, name_start, name_end = _tlv(data, content, stop)
                if name_tag != 0x30:
                    raise _NotDER("bad directoryName")
                self.san_entries[index] = ("DirName", (name_start, name_end))
            else:
                kept.append(data[name_start:stop])
        return _encode(0x30, b"".join(kept))

    def shown_version(self) -> int:
        """X509_get_version() + 1 as CPython computes it: ASN1_INTEGER_get() gives -1 for a
        value outside a C long, and the sum is a C long."""
        version = self.version if -(1 << 63) <= self.version < (1 << 63) else -1
        return (version + 1 + (1 << 63)) % (1 << 64) - (1 << 63)

    def for_cryptography(self) -> bytes:
        """A certificate for cryptography to read the dates and the shown extensions from: the
        original's validity and those extensions, with version 3, serial number 1, empty names,
        and a placeholder algorithm, key and signature around them. Nothing else of the
        original reaches cryptography, which refuses some things OpenSSL loads (a zero serial
        number in an authorityKeyIdentifier, an explicitly encoded default in RSA-PSS
        parameters, ...)."""
        validity, subject = self._starts[3:5]
        tbs = (_COPY_VERSION_SERIAL + _COPY_ALGORITHM + _EMPTY_NAME + self.data[validity:subject]
               + _EMPTY_NAME + _COPY_KEY + self._extensions)
        return _encode(0x30, _encode(0x30, tbs) + _COPY_ALGORITHM + _COPY_SIGNATURE)


# --- object identifiers: OpenSSL's names ------------------------------------------------------

@functools.lru_cache(maxsize=1024)
def _oid_text(dotted: str) -> str:
    """OBJ_obj2txt(..., no_name=0): OpenSSL's long name for a known OID, else the dotted form."""
    obj = lib.OBJ_txt2obj(dotted.encode("ascii"), 1)
    if obj == ffi.NULL:
        lib.ERR_clear_error()  # leave OpenSSL's error queue as it was for the TLS code
        raise CertificateDecodeError(f"cannot decode certificate: OpenSSL rejects the OID {dotted}")
    try:
        size = 256
        while True:
            buf = ffi.new("char[]", size)
            length = lib.OBJ_obj2txt(buf, size, obj, 0)
            if length < 0:
                lib.ERR_clear_error()
                raise CertificateDecodeError(f"cannot decode certificate: OpenSSL cannot print the OID {dotted}")
            if length < size:
                return ffi.string(buf, length).decode("utf-8")
            size = length + 1
    finally:
        lib.ASN1_OBJECT_free(obj)


# --- names ------------------------------------------------------------------------------------

_BITSTRING, _UTF8STRING, _IA5STRING, _UNIVERSALSTRING, _BMPSTRING = 3, 12, 22, 28, 30
# NumericString, PrintableString, T61String, IA5String: one byte a character, which
# ASN1_STRING_to_UTF8 takes as Latin-1. With the ones above, these are the only types OpenSSL's
# X509_NAME parser accepts for a value; any other makes the whole name unparseable.
_BYTE_STRINGS = frozenset({18, 19, 20, _IA5STRING})


def _string_text(tag: int, raw: bytes) -> str | bytes | None:
    """A name value as CPython shows it: ASN1_STRING_to_UTF8 then UTF-8 decoding (an error where
    either fails); for a BIT STRING, the bytes OpenSSL keeps (None for none)."""
    if tag == _BITSTRING:
        if not raw or raw[0] > 7:
            raise _RejectedName("a name holds a malformed BIT STRING")
        data = bytearray(raw[1:])
        if not data:
            return None  # Py_BuildValue("y#", NULL, 0)
        data[-1] &= (0xFF << raw[0]) & 0xFF  # OpenSSL clears the unused bits
        return bytes(data)
    try:
        if tag == _UTF8STRING:
            return raw.decode("utf-8")
        if tag in _BYTE_STRINGS:
            return raw.decode("latin-1")
        if tag == _BMPSTRING:
            text = raw.decode("utf-16-be")
            # OpenSSL reads each 16-bit unit on its own: a surrogate pair is two bad characters.
            if any(ord(ch) > 0xFFFF for ch in text):
                raise ValueError("surrogate in a BMPString")
            return text
        if tag == _UNIVERSALSTRING:
            return raw.decode("utf-32-be")
    except ValueError as exc:
        raise CertificateDecodeError(
            f"cannot decode certificate: a name value cannot be converted to UTF-8 ({exc})") from None
    raise _RejectedName(f"a name value has ASN.1 type {tag}, which OpenSSL does not accept in a name")


def _name_from_der(data: bytes, start: int, end: int) -> tuple:
    """CPython's _create_tuple_for_X509_NAME, from the contents of an RDNSequence."""
    try:
        rdns = []
        for tag, set_start, set_end in _children(data, start, end):
            if tag != 0x31:
                raise _NotDER("a name holds something other than a SET")
            rdn = []
            for tag, atv_start, atv_end in _children(data, set_start, set_end):
                parts = list(_children(data, atv_start, atv_end))
                if tag != 0x30 or len(parts) != 2 or parts[0][0] != 0x06:
                    raise _NotDER("malformed name attribute")
                (_, oid_start, oid_end), (value_tag, value_start, value_end) = parts
                rdn.append((_oid_text(_oid_from_der(data[oid_start:oid_end])),
                            _string_text(value_tag, data[value_start:value_end])))
            if rdn:
                rdns.append(tuple(rdn))
        return tuple(rdns)
    except _NotDER as exc:
        raise CertificateDecodeError(f"cannot decode certificate: {exc}") from None


# --- serial number and dates ------------------------------------------------------------------

def _serial_text(value: int) -> str:
    """i2a_ASN1_INTEGER as CPython reads it back: uppercase hex of the magnitude's bytes (a '-'
    before a negative one), a backslash-newline after every 35 bytes, and only the first line."""
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "big")
    text = magnitude[:35].hex().upper()
    if len(magnitude) > 35:
        text += "\\\n"
    return ("-" if value < 0 else "") + text


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _time_text(when) -> str:
    """ASN1_TIME_print: 'Jun  1 12:00:00 2024 GMT'. (cryptography loads only whole-second UTC
    times, so there is never a fraction or an offset to print.)"""
    return (f"{_MONTHS[when.month - 1]} {when.day:2d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {when.year} GMT")


# --- subjectAltName ---------------------------------------------------------------------------

# OtherName types GENERAL_NAME_print shows, with the ASN.1 type it insists on (else <unsupported>).
_OTHERNAMES = {
    "1.3.6.1.5.5.7.8.9": ("SmtpUTF8Mailbox", _UTF8STRING),
    "1.3.6.1.5.5.7.8.5": ("XmppAddr", _UTF8STRING),
    "1.3.6.1.5.5.7.8.7": ("SRVName", _IA5STRING),
    "1.3.6.1.4.1.311.20.2.3": ("UPN", _UTF8STRING),
    "1.3.6.1.5.5.7.8.8": ("NAIRealm", _UTF8STRING),
}


def _ip_text(address) -> str:
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    packed = address.packed  # IPv6: other lengths never reach cryptography
    return ":".join(f"{packed[i] << 8 | packed[i + 1]:X}" for i in range(0, 16, 2))


def _othername_text(name: x509.OtherName) -> str:
    """GENERAL_NAME_print's text after 'othername:', cut as CPython's BIO_gets cuts it."""
    label, want = _OTHERNAMES.get(name.type_id.dotted_string, (None, None))
    value = name.value
    try:
        tag, start, end = _tlv(value, 0, len(value))
    except _NotDER:
        tag = None
    if label is None or tag != want:
        return "<unsupported>"
    line = f"othername:{label}:".encode("ascii") + value[start:end].split(b"\0", 1)[0]  # %.*s
    newline = line.find(b"\n")
    if newline >= 0:
        line = line[:newline + 1]
    line = line[:2046]  # BIO_gets(bio, buf, sizeof(buf) - 1) with a 2048-byte buf
    return line.decode("utf-8")[len("othername:"):]


def _general_name(name) -> tuple:
    if isinstance(name, x509.DNSName):
        return ("DNS", name.value)
    if isinstance(name, x509.IPAddress):
        return ("IP Address", _ip_text(name.value))
    if isinstance(name, x509.RFC822Name):
        return ("email", name.value)
    if isinstance(name, x509.UniformResourceIdentifier):
        return ("URI", name.value)
    if isinstance(name, x509.RegisteredID):
        # i2t_ASN1_OBJECT into a 2048-byte buffer, "<INVALID>" when it does not fit
        text = _oid_text(name.value.dotted_string)
        return ("Registered ID", text if len(text.encode("utf-8")) < 2048 else "<INVALID>")
    if isinstance(name, x509.OtherName):
        return ("othername", _othername_text(name))
    raise CertificateDecodeError(f"cannot decode certificate: unknown general name {name!r}")
