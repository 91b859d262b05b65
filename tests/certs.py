"""Certificates made in the test with ``cryptography``: a CA, a server certificate for
127.0.0.1 / ::1 / localhost, and client certificates (one from the CA, one from another CA)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM bytes and as files."""

    cert: bytes
    key: bytes
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Certs:
    ca: Pair
    server: Pair
    client: Pair
    other_ca: Pair
    stranger: Pair  # a client certificate signed by other_ca


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    return Pair(cert_pem, key_pem, cert_file, key_file)


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey):
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _ca(directory: Path, stem: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(f"companion test {stem}", _name(f"companion test {stem}"), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key, _write(directory, stem, cert, key)


def _leaf(directory: Path, stem: str, ca_cert, ca_key, server: bool) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(stem, ca_cert.subject, key).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate it signed (127.0.0.1, ::1, localhost), a client certificate
    it signed, and a client certificate signed by another CA; PEM files in ``directory``."""
    ca_cert, ca_key, ca = _ca(directory, "ca")
    other_cert, other_key, other = _ca(directory, "other-ca")
    return Certs(
        ca=ca,
        server=_leaf(directory, "server", ca_cert, ca_key, server=True),
        client=_leaf(directory, "client", ca_cert, ca_key, server=False),
        other_ca=other,
        stranger=_leaf(directory, "stranger", other_cert, other_key, server=False),
    )
