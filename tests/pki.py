"""Certificates for tests, made on the fly with cryptography (trustme-style).

A :class:`CA` issues leaf and intermediate certificates; every knob a trust
test needs (validity window, names, EKU, key type) is a keyword argument.
Keystores and NSS databases are *not* made here: tests build those with the
real keytool / certutil (see tests/tools.py) from what this module writes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


def new_key(kind: str = "rsa"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(kind)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iim tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _san(names):
    entries = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


@dataclass
class Issued:
    key: object
    cert: x509.Certificate
    chain: tuple  # leaf first, without the root

    def key_pem(self, password: bytes | None = None) -> bytes:
        enc = (serialization.BestAvailableEncryption(password) if password
               else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8, enc)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


class CA:
    """A certificate authority; ``CA.root()`` or ``ca.intermediate()``."""

    def __init__(self, key, cert, parents=()):
        self.key, self.cert, self.parents = key, cert, tuple(parents)

    @classmethod
    def root(cls, cn: str = "iim test CA", key_kind: str = "rsa",
             not_before=NOW - DAY, not_after=NOW + 3650 * DAY):
        key = new_key(key_kind)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def intermediate(self, cn: str = "iim test intermediate CA", key_kind: str = "rsa"):
        key = new_key(key_kind)
        cert = self._builder(_name(cn), key.public_key(), NOW - DAY, NOW + 1800 * DAY) \
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True) \
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), critical=True) \
            .sign(self.key, hashes.SHA256())
        return CA(key, cert, (self.cert,) + self.parents)

    def issue(self, *names: str, key_kind: str = "rsa", not_before=NOW - DAY,
              not_after=NOW + 365 * DAY, eku=(ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH),
              key=None) -> Issued:
        key = key or new_key(key_kind)
        builder = self._builder(_name(names[0] if names else "no name"), key.public_key(),
                                not_before, not_after)
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        cert = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                     critical=True).sign(self.key, hashes.SHA256())
        chain = (cert, self.cert) + self.parents[:-1] if self.parents else (cert,)
        return Issued(key, cert, chain)

    def _builder(self, subject, public_key, not_before, not_after):
        return (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(self.cert.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False))

    def sign_csr(self, csr: x509.CertificateSigningRequest, *names: str,
                 not_after=NOW + 365 * DAY) -> x509.Certificate:
        """Sign a request (e.g. from ``keytool -certreq``) for ``names``."""
        builder = self._builder(csr.subject, csr.public_key(), NOW - DAY, not_after)
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        return (builder
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))

    @property
    def root_cert(self) -> x509.Certificate:
        return self.parents[-1] if self.parents else self.cert

    def cert_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)


def self_signed(*names: str, key_kind: str = "rsa", **kw) -> Issued:
    """A leaf that signs itself (what a careless peer presents)."""
    key = new_key(key_kind)
    ca = CA(key, x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(_name(names[0])).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
            .sign(key, hashes.SHA256()))
    issued = ca.issue(*names, key=key, **kw)
    return Issued(key, issued.cert, (issued.cert,))


def pkcs12_bytes(issued: Issued, name: str, password: bytes, roots=()) -> bytes:
    """A PKCS#12 file holding ``issued`` (key + chain, plus ``roots``) under ``name``."""
    from cryptography.hazmat.primitives.serialization import pkcs12
    return pkcs12.serialize_key_and_certificates(
        name.encode(), issued.key, issued.cert, list(issued.chain[1:]) + list(roots),
        serialization.BestAvailableEncryption(password))
