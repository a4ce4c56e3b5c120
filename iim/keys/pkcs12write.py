"""Write a PKCS#12 keystore the way keytool does, so keytool and iim read it alike.

Theory of operation
-------------------
A keystore for the server holds one private-key entry (the key with its
chain) and the CA roots it trusts for peers. cryptography can write a key
and certificates, but not the one thing that makes keytool list a
certificate as a ``trustedCertEntry``: Oracle's trusted-key-usage bag
attribute (OID 2.16.840.1.113894.746875.1.1, value anyExtendedKeyUsage).
Without it keytool shows the CA only as part of the chain, and a Java
server would trust nothing. So the file is built here, bag by bag (RFC 7292):

* a ``data`` safe with one shrouded key bag (PBES2, ``iim.keys.pbes2``),
  named by the alias, with a local key id;
* a ``data`` safe of certificate bags, laid out like keytool's:
  the leaf (the alias and the same local key id), each other chain
  certificate named by its subject DN, and each trusted CA named by its own
  alias and carrying the trusted-key-usage attribute;
* a MAC over the safes: HMAC-SHA256 keyed from the store password with the
  PKCS#12 key derivation (RFC 7292 Appendix B.2), 10,000 rounds as keytool.

Certificates are public, so their safe is not encrypted (as ``openssl
pkcs12 -certpbe NONE``): anyone with the store password could read them
anyway, and it costs nothing in compatibility.

iim's reader (``iim.keys.pkcs12``) cannot see the trust attribute when
keytool encrypts the certificate safe, so it tells a trusted entry from a
chain certificate by its name: chain certificates are named by their DN
(contains ``=``), trusted entries by an alias. The writer keeps that
contract: CA aliases may not contain ``=`` (:func:`check_alias`).

PKCS#12 has one password: keytool refuses a key password that differs from
the store password, and so does this writer.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives import serialization

from . import derwrite as d
from .pbes2 import encrypt_private_key

DATA = "1.2.840.113549.1.7.1"
SHROUDED_KEY_BAG = "1.2.840.113549.1.12.10.1.2"
CERT_BAG = "1.2.840.113549.1.12.10.1.3"
X509_CERTIFICATE = "1.2.840.113549.1.9.22.1"
FRIENDLY_NAME = "1.2.840.113549.1.9.20"
LOCAL_KEY_ID = "1.2.840.113549.1.9.21"
ORACLE_TRUSTED_KEY_USAGE = "2.16.840.1.113894.746875.1.1"
ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0"
SHA256 = "2.16.840.1.101.3.4.2.1"

MAC_ITERATIONS = 10_000
MAC_ID = 3                      # RFC 7292 B.3: ID 3 derives MAC keys


def check_alias(alias: str, what: str = "alias") -> None:
    """An alias iim's reader and keytool both take for a name, not a DN."""
    if not alias or alias != alias.strip():
        raise ValueError(f"{what} must be non-empty without leading or trailing spaces")
    if "=" in alias:
        raise ValueError(f'{what} "{alias}" contains "="; keystore readers take such '
                         "a name for a certificate's DN")


def check_aliases(alias: str, ca_aliases) -> None:
    """Every alias usable, and no two the same: Java keystores (JKS and
    PKCS#12 alike) compare aliases ignoring case."""
    check_alias(alias)
    seen = {alias.lower()}
    for ca_alias in ca_aliases:
        check_alias(ca_alias, "CA alias")
        if ca_alias.lower() in seen:
            raise ValueError(f'CA alias "{ca_alias}" names an entry already in the store '
                             "(aliases ignore case)")
        seen.add(ca_alias.lower())


def build(key, chain, anchors, *, alias: str, password: str) -> bytes:
    """The PKCS#12 file: ``key`` with ``chain`` (leaf first) under ``alias``,
    and ``anchors`` (``[(certificate, alias), ...]``) as trusted entries."""
    check_aliases(alias, [a for _, a in anchors])
    key_id = hashlib.sha256(_der(chain[0])).digest()[:20]
    key_bag = _bag(SHROUDED_KEY_BAG, encrypt_private_key(key, password),
                   _friendly_name(alias), _local_key_id(key_id))
    cert_bags = [_cert_bag(chain[0], _friendly_name(alias), _local_key_id(key_id))]
    cert_bags += [_cert_bag(c, _friendly_name(c.subject.rfc4514_string())) for c in chain[1:]]
    cert_bags += [_cert_bag(c, _friendly_name(a), _trusted_usage()) for c, a in anchors]
    safes = d.sequence(_data(d.sequence(key_bag)), _data(d.sequence(*cert_bags)))
    return d.sequence(d.integer(3), _data(safes), _mac_data(safes, password))


def _der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _data(contents: bytes) -> bytes:
    """ContentInfo of type data: [0] EXPLICIT OCTET STRING."""
    return d.sequence(d.oid(DATA), d.explicit(0, d.octet_string(contents)))


def _bag(kind: str, value: bytes, *attributes: bytes) -> bytes:
    """SafeBag ::= SEQUENCE { bagId, [0] EXPLICIT bagValue, SET OF Attribute }."""
    return d.sequence(d.oid(kind), d.explicit(0, value), d.set_of(*attributes))


def _cert_bag(cert, *attributes: bytes) -> bytes:
    value = d.sequence(d.oid(X509_CERTIFICATE), d.explicit(0, d.octet_string(_der(cert))))
    return _bag(CERT_BAG, value, *attributes)


def _attribute(kind: str, value: bytes) -> bytes:
    return d.sequence(d.oid(kind), d.set_of(value))


def _friendly_name(name: str) -> bytes:
    return _attribute(FRIENDLY_NAME, d.bmp_string(name))


def _local_key_id(key_id: bytes) -> bytes:
    return _attribute(LOCAL_KEY_ID, d.octet_string(key_id))


def _trusted_usage() -> bytes:
    return _attribute(ORACLE_TRUSTED_KEY_USAGE, d.oid(ANY_EXTENDED_KEY_USAGE))


def _mac_data(safes: bytes, password: str) -> bytes:
    """MacData over the AuthenticatedSafe's encoding (RFC 7292 §4, §5.1)."""
    salt = os.urandom(20)
    secret = pkcs12_kdf(password, salt, MAC_ID, MAC_ITERATIONS, 32)
    digest = hmac.new(secret, safes, hashlib.sha256).digest()
    digest_info = d.sequence(d.algorithm(SHA256, d.null()), d.octet_string(digest))
    return d.sequence(digest_info, d.octet_string(salt), d.integer(MAC_ITERATIONS))


def pkcs12_kdf(password: str, salt: bytes, purpose: int, iterations: int, size: int) -> bytes:
    """RFC 7292 Appendix B.2 with SHA-256 (u = 32, v = 64).

    The password is a BMPString with its two-zero-byte terminator; the salt
    and password are each repeated to a multiple of the block size, and each
    output block is H^iterations(D || I), after which I is stepped by that
    block plus one, modulo 2^512, 64 bytes at a time.
    """
    block = 64
    secret = password.encode("utf-16-be") + b"\0\0"
    diversifier = bytes([purpose]) * block
    state = bytearray(_fill(salt, block) + _fill(secret, block))
    out = b""
    while len(out) < size:
        digest = hashlib.sha256(diversifier + state).digest()
        for _ in range(iterations - 1):
            digest = hashlib.sha256(digest).digest()
        out += digest
        step = int.from_bytes(_fill(digest, block), "big") + 1
        for start in range(0, len(state), block):
            chunk = int.from_bytes(state[start:start + block], "big")
            state[start:start + block] = ((chunk + step) % (1 << (8 * block))).to_bytes(block,
                                                                                         "big")
    return out[:size]


def _fill(data: bytes, block: int) -> bytes:
    """``data`` repeated to the next multiple of ``block`` bytes (empty stays empty)."""
    if not data:
        return b""
    length = block * ((len(data) + block - 1) // block)
    return (data * (length // len(data) + 1))[:length]
