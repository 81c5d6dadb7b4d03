"""The mesh's private CA and its members' certificates, with the identity contract of dayu.runtime.tls:
subject CN `COMPONENT.NODE`, O `dayu`, SAN DNS `dayu-mesh` (the CA: CN `dayu-mesh-ca`). EC P-256 keys,
a year's validity. hack/make_certs.py makes a mesh's set; `dayu cluster` makes its own at start.

A member's folder holds what its Kubernetes Secret (`dayu-tls-COMPONENT-NODE`) holds: ca.crt, tls.crt
and tls.key (the key readable by its owner only)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dayu.runtime.tls import CA_FILE, CA_NAME, CERT_FILE, KEY_FILE, MESH_NAME, ORGANIZATION, TlsSettings, common_name

VALIDITY = datetime.timedelta(days=365)
BACKDATE = datetime.timedelta(minutes=5)  # tolerates clocks a little behind the one that issued


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and key, which sign the members' certificates."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, folder: Path) -> Path:
        """Writes ca.crt and ca.key into `folder`; returns the certificate's path."""
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "ca.key", _key_pem(self.key), private=True)
        _write(folder / CA_FILE, self.pem)
        return folder / CA_FILE

    @classmethod
    def load(cls, folder: Path) -> Authority:
        """A CA written by `write`."""
        certificate = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{folder / 'ca.key'} is not an EC key")
        return cls(certificate, key)


@dataclass(frozen=True)
class Issued:
    """A member's certificate and key, with the CA that signed it: a Secret's three files."""

    ca: bytes
    cert: bytes
    key: bytes

    def files(self) -> dict[str, bytes]:
        return {CA_FILE: self.ca, CERT_FILE: self.cert, KEY_FILE: self.key}

    def write(self, folder: Path) -> TlsSettings:
        """Writes ca.crt, tls.crt and tls.key into `folder`; returns the settings naming them."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            _write(folder / name, data, private=name == KEY_FILE)
        return TlsSettings.in_directory(folder)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def make_ca(name: str = CA_NAME, validity: datetime.timedelta = VALIDITY) -> Authority:
    """A new CA (self-signed, may sign members only: path length 0)."""
    key = _key()
    now = _now()
    subject = _name(name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def issue(ca: Authority, component: str, node: str, validity: datetime.timedelta = VALIDITY) -> Issued:
    """A certificate for `component` on `node` (CN COMPONENT.NODE, O dayu, DNS dayu-mesh), signed by
    `ca`, good as server and as client."""
    key = _key()
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name(component, node)))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(MESH_NAME)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(ca.pem, certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))
