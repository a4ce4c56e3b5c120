"""PKCS#12 keystores (what ``keytool -storetype PKCS12`` writes, the JDK default).

Theory of operation: ``cryptography.load_pkcs12`` checks the MAC (the store
password) and hands back every certificate with its friendly name, but only
the *first* private key. The shrouded key bags sit in an unencrypted
``data`` safe (RFC 7292 §4.2; keytool and OpenSSL both put them there), so we
walk that safe with a small DER reader, decrypt each key bag with
``load_der_private_key`` and pair keys with certificates by public key. The
friendly name of a key bag is its keytool alias.

Trust anchors: keytool writes a trustedCertEntry as a certificate bag named by
its alias (plus an Oracle trust attribute that sits in the encrypted safe, out
of our reach), and the certificates of a key entry's chain as bags named by
their subject DN. See ``_is_trusted_entry``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from . import der

DATA = der.oid("1.2.840.113549.1.7.1")
SHROUDED_KEY_BAG = der.oid("1.2.840.113549.1.12.10.1.2")
FRIENDLY_NAME = der.oid("1.2.840.113549.1.9.20")


@dataclass(frozen=True)
class Entry:
    alias: str
    key: object
    leaf: x509.Certificate


@dataclass(frozen=True)
class Store:
    entries: tuple[Entry, ...]
    certificates: tuple[x509.Certificate, ...]
    anchors: tuple[x509.Certificate, ...]


def read(data: bytes, password: str) -> Store:
    """Raise ValueError("password") on a wrong password, ValueError otherwise."""
    secret = password.encode()
    try:
        loaded = pkcs12.load_pkcs12(data, secret)
    except ValueError:
        raise ValueError("password") from None
    named = [c for c in [loaded.cert, *loaded.additional_certs] if c is not None]
    certs = tuple(c.certificate for c in named)
    entries = tuple(_entries(data, secret, loaded, named))
    chained = {c for e in entries for c in _chain_members(e.leaf, certs)}
    anchors = []
    for bag in named:
        if _is_trusted_entry(bag, chained, entries) and bag.certificate not in anchors:
            anchors.append(bag.certificate)
    return Store(entries, certs, tuple(anchors))


def _is_trusted_entry(bag, chained, entries) -> bool:
    """keytool names a chain certificate by its subject DN (Java's RFC 2253
    form, which differs from ours for some attributes) and a trusted entry by
    its alias. So a certificate on a key entry's chain is an anchor only when
    its name is not DN-like (has no ``=``): when in doubt, not trusted."""
    if not bag.friendly_name or any(bag.certificate == e.leaf for e in entries):
        return False
    name = bag.friendly_name.decode("utf-8", "replace")
    return bag.certificate not in chained or "=" not in name


def _entries(data, secret, loaded, named):
    try:
        bags = list(_key_bags(data))
    except (ValueError, IndexError):
        bags = []
    if not bags and loaded.key is not None:      # an unusual layout: one key is all we get
        name = loaded.cert.friendly_name if loaded.cert else None
        bags = [((name or b"").decode("utf-8", "replace"), None)]
        keys = [loaded.key]
    elif len(bags) == 1 and loaded.key is not None:
        # the one key load_pkcs12 decrypted already: a second decryption (the
        # PBKDF2 and RSA key checks) was ~45 ms of every server start
        keys = [loaded.key]
    else:
        keys = [serialization.load_der_private_key(blob, secret) for _, blob in bags]
    for (alias, _), key in zip(bags, keys):
        leaf = _leaf_for(key, alias, named)
        if leaf is not None:
            yield Entry(alias, key, leaf)


def _leaf_for(key, alias, named):
    """The certificate of ``key``: among those with its public key (a renewed
    certificate may reuse a key), the one named like the key bag, else the
    one valid longest."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    wanted = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    mine = [b for b in named
            if b.certificate.public_key().public_bytes(serialization.Encoding.DER, spki) == wanted]
    if not mine:
        return None
    mine.sort(key=lambda b: (b.friendly_name == alias.encode(), b.certificate.not_valid_after_utc))
    return mine[-1].certificate


def _chain_members(leaf, certs):
    from .material import order_chain
    return order_chain(leaf, certs)


def _key_bags(data: bytes):
    """(friendly name, EncryptedPrivateKeyInfo DER) for each shrouded key bag."""
    pfx, _ = der.read_tlv(data)
    auth_safe = pfx.children()[1]                        # ContentInfo
    for info in _data_contents(auth_safe):
        for safe in _sequence(info):                     # AuthenticatedSafe
            for bag_list in _data_contents(safe):
                for bag in _sequence(bag_list):          # SafeContents
                    yield from _shrouded(bag)


def _sequence(encoded: bytes) -> list[der.TLV]:
    outer, end = der.read_tlv(encoded)
    if outer.tag != 0x30 or end != len(encoded):
        raise ValueError("expected one SEQUENCE")
    return outer.children()


def _data_contents(content_info: der.TLV):
    """The OCTET STRING payload of a ContentInfo of type ``data`` (else nothing)."""
    kind, explicit = content_info.children()[:2]
    if kind.value == DATA:
        yield explicit.children()[0].value


def _shrouded(bag: der.TLV):
    parts = bag.children()
    if parts[0].value != SHROUDED_KEY_BAG:
        return
    blob = parts[1].children()[0].raw
    yield _friendly_name(parts[2] if len(parts) > 2 else None), blob


def _friendly_name(attributes) -> str:
    for attribute in (attributes.children() if attributes else []):
        attr_id, values = attribute.children()
        if attr_id.value == FRIENDLY_NAME:
            return values.children()[0].value.decode("utf-16-be")
    return ""
