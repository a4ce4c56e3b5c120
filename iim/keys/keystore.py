"""The server's keystore: JKS, JCEKS (pyjks) or PKCS#12 (cryptography).

The format is told by content, never by file name: JKS starts with the magic
0xFEEDFEED, JCEKS with 0xCECECECE, PKCS#12 is a DER SEQUENCE. The store
yields one private-key entry (the only one, or the alias we are told) with
its chain, and its trusted-certificate entries become the trust anchors.

Aliases: keytool lower-cases JKS aliases, so an alias is matched exactly
first and then case-insensitively. A JKS key password that differs from the
store password leaves the entry encrypted until ``decrypt(key_password)``.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from . import pkcs12
from .errors import KeyMaterialError
from .material import KeyMaterial, order_chain
from .passwords import read_password_file

JKS_MAGIC = b"\xfe\xed\xfe\xed"
JCEKS_MAGIC = b"\xce\xce\xce\xce"


def load_keystore(path, password: str, *, alias: str | None = None,
                  key_password: str | None = None,
                  param: str = "iim_server.sslkeystore") -> KeyMaterial:
    """Read the keystore at ``path`` into KeyMaterial, or raise one clear line."""
    path = Path(path)
    where = f"{param}: {path}"
    data = _read(path, where)
    if data[:4] in (JKS_MAGIC, JCEKS_MAGIC):
        kind = "JKS" if data[:4] == JKS_MAGIC else "JCEKS"
        return _from_jks(data, password, alias, key_password, where, kind)
    if data[:1] == b"\x30":
        return _from_pkcs12(data, password, alias, where)
    raise KeyMaterialError(f"{where}: not a JKS, JCEKS or PKCS#12 keystore")


def load_server_material(server) -> tuple[KeyMaterial, tuple[str, ...]]:
    """The server's key material from its settings (``iim_server.sslkeystore``,
    ``keystorealias``, ``keystorepasswordfile``, ``keypasswordfile``), with
    no warnings (their modes are checked by passwords.secret_file_warnings, with
    every other secret file of the server)."""
    pwfile = read_password_file(server.keystorepasswordfile, "iim_server.keystorepasswordfile",
                                check_mode=False)
    key_password = None
    if server.keypasswordfile is not None:
        key_password = read_password_file(server.keypasswordfile, "iim_server.keypasswordfile",
                                          check_mode=False).password
    material = load_keystore(server.sslkeystore, pwfile.password, alias=server.keystorealias,
                             key_password=key_password)
    return material, pwfile.warnings


def _read(path: Path, where: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise KeyMaterialError(f"{where}: is a directory, not a keystore") from None
    except OSError as exc:
        raise KeyMaterialError(f"{where}: cannot read: {exc.strerror}") from None
    if not data:
        raise KeyMaterialError(f"{where}: the file is empty")
    return data


def pick_alias(aliases, wanted: str | None, where: str) -> str:
    """The alias to use: ``wanted`` (exact, then case-insensitive) or the only one."""
    aliases = sorted(aliases)
    listed = ", ".join(f'"{a}"' for a in aliases) or "none"
    if wanted is None:
        if len(aliases) == 1:
            return aliases[0]
        if not aliases:
            raise KeyMaterialError(f"{where}: holds no private-key entry")
        raise KeyMaterialError(f"{where}: holds {len(aliases)} private-key entries ({listed}); "
                               "set iim_server.keystorealias to choose one")
    if wanted in aliases:
        return wanted
    folded = [a for a in aliases if a.casefold() == wanted.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise KeyMaterialError(f'{where}: no private-key entry with alias "{wanted}"; '
                           f"key entries: {listed}")


def _from_jks(data, password, alias, key_password, where, kind) -> KeyMaterial:
    store = _parse_jks(data, password, where, kind)
    name = pick_alias(store.private_keys, alias, where)
    entry = store.private_keys[name]
    if not entry.is_decrypted():
        _decrypt_entry(entry, name, key_password, where)
    try:
        key = serialization.load_der_private_key(entry.pkey_pkcs8, None)
        certs = [x509.load_der_x509_certificate(der) for _, der in entry.cert_chain]
        anchors = tuple(x509.load_der_x509_certificate(c.cert) for c in store.certs.values())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyMaterialError(f'{where}: entry "{name}" is damaged ({_short(exc)})') from None
    if not certs:
        raise KeyMaterialError(f'{where}: entry "{name}" has no certificate')
    return _material(key, certs, anchors, where, name, kind)


def _parse_jks(data, password, where, kind):
    import jks      # pyjks (and pyasn1, pycryptodome) load only for a JKS or JCEKS store: ~0.15 s
    try:
        return jks.KeyStore.loads(data, password, try_decrypt_keys=True)
    except jks.util.KeystoreSignatureException:
        raise KeyMaterialError(f"{where}: wrong keystore password "
                               "(iim_server.keystorepasswordfile)") from None
    except Exception as exc:  # noqa: BLE001 - pyjks/pyasn1/struct raise many types on bad input
        raise KeyMaterialError(f"{where}: damaged {kind} keystore ({_short(exc)})") from None


def _decrypt_entry(entry, name, key_password, where) -> None:
    if key_password is None:
        raise KeyMaterialError(f'{where}: the key of entry "{name}" has a password other '
                               "than the store password: set iim_server.keypasswordfile")
    import jks
    try:
        entry.decrypt(key_password)
    except jks.util.DecryptionFailureException:
        raise KeyMaterialError(f'{where}: cannot decrypt the key of entry "{name}": '
                               "wrong key password (iim_server.keypasswordfile)") from None
    except Exception as exc:  # noqa: BLE001 - unsupported protection algorithm, bad ASN.1
        raise KeyMaterialError(f'{where}: entry "{name}" is damaged ({_short(exc)})') from None


def _from_pkcs12(data, password, alias, where) -> KeyMaterial:
    try:
        store = pkcs12.read(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if str(exc) == "password":
            raise KeyMaterialError(f"{where}: wrong keystore password "
                                   "(iim_server.keystorepasswordfile) or damaged PKCS#12 file"
                                   ) from None
        raise KeyMaterialError(f"{where}: damaged PKCS#12 keystore") from None
    by_alias = {e.alias: e for e in store.entries}
    entry = by_alias[pick_alias(by_alias, alias, where)]
    return _material(entry.key, [entry.leaf, *store.certificates], store.anchors, where,
                     entry.alias, "PKCS12")


def _material(key, certs, anchors, where, alias, kind) -> KeyMaterial:
    chain = order_chain(certs[0], certs[1:])
    return KeyMaterial(key=key, chain=chain, trust_anchors=tuple(anchors),
                       source=f"{kind} {where.split(': ', 1)[1]}", alias=alias)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:80]
