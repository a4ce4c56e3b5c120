"""KeyMaterial: what every key source (JKS, PKCS#12, NSS) is reduced to."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


@dataclass(frozen=True)
class KeyMaterial:
    """A private key, its certificate chain and the CAs trusted for peers.

    ``chain`` starts with the certificate of ``key`` and is ordered so that
    each certificate is issued by the next. ``trust_anchors`` are the CA
    certificates the store marks as trusted (keytool trustedCertEntry, NSS
    CA trust flags); they verify peers, they are not sent.
    """

    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    trust_anchors: tuple[x509.Certificate, ...] = ()
    source: str = ""
    alias: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (names match and signature verifies)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def order_chain(leaf: x509.Certificate, others) -> tuple[x509.Certificate, ...]:
    """``leaf`` followed by its issuers found in ``others``, nearest first.

    Certificates that are not on the leaf's path are dropped; the walk stops
    at a self-signed certificate or when no issuer is found, so a store whose
    chain is listed root-first (as some tools write it) still comes out
    leaf-first.
    """
    chain = [leaf]
    pool = [c for c in others if c != leaf]
    while not is_self_signed(chain[-1]):
        parent = next((c for c in pool if issued_by(chain[-1], c)), None)
        if parent is None:
            break
        chain.append(parent)
        pool.remove(parent)
    return tuple(chain)
