"""Test PKI: a CA and leaf certificates made with cryptography, written as PEM files."""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key(kind: str):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(kind)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "XY"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ktls_ossl tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


@dataclass
class Issued:
    cert: x509.Certificate
    key: object
    cert_path: str
    key_path: str
    chain_path: str  # leaf followed by issuer, for load_cert_chain


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as out:
        out.write(data)
    return path


class CertificateAuthority:
    """A CA that issues server and client certificates into a directory."""

    def __init__(self, directory: str, kind: str = "ecdsa", name: str = "ktls_ossl test CA"):
        self.directory = directory
        self.kind = kind
        self.ca_key = new_key(kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = _write(os.path.join(directory, f"ca-{kind}-{id(self)}.pem"),
                              self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, dns=(), ips=(), client=False, kind=None,
              password: bytes | None = None, days: int = 365, not_before_days: int = -1) -> Issued:
        key = new_key(kind or self.kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=not_before_days))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        stem = os.path.join(self.directory, f"{common_name.replace('*', 'star')}-{id(cert)}")
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return Issued(
            cert=cert,
            key=key,
            cert_path=_write(stem + ".crt", cert_pem),
            key_path=_write(stem + ".key", key_pem),
            chain_path=_write(stem + ".chain.pem", cert_pem + self.ca_cert.public_bytes(serialization.Encoding.PEM)),
        )
