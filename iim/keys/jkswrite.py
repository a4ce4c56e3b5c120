"""Write a JKS keystore (pyjks) holding one key entry and trusted CA entries.

JKS is the keystore the original product documents. Its key protection is
Sun's own scheme (a SHA-1 keystream), weaker than PKCS#12's PBES2: prefer
PKCS#12 unless a Java program that only reads JKS needs the file.

keytool lower-cases JKS aliases and pyjks does the same, so two aliases that
differ only in case would name one entry; that is refused. The key entry may
have its own password (keytool's ``-keypass``); iim's reader then needs
``iim_server.keypasswordfile``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from .pkcs12write import check_aliases


def build(key, chain, anchors, *, alias: str, password: str,
          key_password: str | None = None) -> bytes:
    """The JKS file: ``key`` + ``chain`` (leaf first) under ``alias`` and
    ``anchors`` (``[(certificate, alias), ...]``) as trusted entries."""
    import jks      # loaded only when a JKS store is written (see keystore._parse_jks)
    check_aliases(alias, [a for _, a in anchors])
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    entry = jks.PrivateKeyEntry.new(alias, [_der(c) for c in chain], pkcs8)
    entry.encrypt(key_password if key_password is not None else password)
    trusted = [jks.TrustedCertEntry.new(ca_alias, _der(c)) for c, ca_alias in anchors]
    return jks.KeyStore.new("jks", [entry, *trusted]).saves(password)


def _der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
