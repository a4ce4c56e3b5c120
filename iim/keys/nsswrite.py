"""Create the multiplexor's NSS database from a key and its chain, without NSS tools.

This is the Python half of ``iim.keys._nss.write`` (libnss3 itself does the
writing; see the theory of operation there). It only ever makes a *new*
database: when the files the prefixes name are already there it refuses,
because adding to a database that may be shared with other products is
certutil's job, not an installer's. If NSS fails half-way, the files it
created in this call are removed again, so a retry starts clean. The result
is read back with iim's own reader (``iim.keys.nss.load_nss``) before the
command reports success.

The clear PKCS#8 key handed to NSS lives only in this process's memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .errors import KeyMaterialError
from .material import KeyMaterial

# (files certutil -N makes, by format): cert database, key database.
FILES = {"sql": ("cert9.db", "key4.db"), "dbm": ("cert8.db", "key3.db")}
CA_TRUST = b"C,,"            # trusted CA for TLS servers (certutil -t "C,,")
DEFAULT_NICKNAME = "Multiplexor-Cert"
# PK11_ImportCertForKeyToSlot's error when no key in the token matches the
# certificate (libssl's error table, which this extension does not load).
SSL_ERROR_NO_CERTIFICATE = -12285


@dataclass(frozen=True)
class Target:
    """Where the database goes and under which names."""

    directory: Path
    dbtype: str = "sql"
    certdbprefix: str = ""
    keydbprefix: str = ""
    secmodfile: str = "secmod.db"

    @property
    def files(self) -> tuple[Path, Path]:
        cert, key = FILES[self.dbtype]
        return (self.directory / f"{self.certdbprefix}{cert}",
                self.directory / f"{self.keydbprefix}{key}")

    @property
    def spec(self) -> str:
        return f"{self.dbtype}:{self.directory}"


def create(target: Target, *, key, chain, anchors, nickname: str = DEFAULT_NICKNAME,
           password: str) -> KeyMaterial:
    """Write ``key`` + ``chain`` (leaf first) under ``nickname`` and ``anchors``
    (``[(certificate, nickname), ...]``, trusted "C,,") into a new database.

    Returns the key material as iim's reader loads it back. Raises
    :class:`KeyMaterialError` with one line.
    """
    from . import _nss                      # the extension loads only when needed
    _check_names(target, nickname, [n for _, n in anchors], password)
    made_folder = not target.directory.exists()
    _prepare(target)
    before = set(os.listdir(target.directory))
    try:
        _nss.write(os.fsencode(target.spec), os.fsencode(target.certdbprefix),
                   os.fsencode(target.keydbprefix), os.fsencode(target.secmodfile),
                   password.encode(), _pkcs8(key), _public_value(key), nickname.encode(),
                   _certificates(chain, anchors, nickname))
        return _read_back(target, nickname, password)
    except _nss.NSSError as exc:
        _undo(target.directory, before, made_folder)
        raise KeyMaterialError(_explain(exc, target)) from None
    except KeyMaterialError as exc:
        _undo(target.directory, before, made_folder)
        raise KeyMaterialError(f"the database written cannot be read back: {exc}") from None


def _check_names(target: Target, nickname: str, ca_nicknames, password: str) -> None:
    if target.dbtype not in FILES:
        raise KeyMaterialError(f'--dbtype "{target.dbtype}": use sql or dbm')
    values = {"nickname": nickname, "certdbprefix": target.certdbprefix,
              "keydbprefix": target.keydbprefix, "secmodfile": target.secmodfile}
    for option, value in values.items():
        if "\0" in value or "/" in value:
            raise KeyMaterialError(f'--{option} "{value}": no "/" or NUL characters')
    if not nickname.strip():
        raise KeyMaterialError("--nickname: give a non-empty nickname")
    if nickname in ca_nicknames:
        raise KeyMaterialError(f'--ca-nickname "{nickname}" is the nickname of the key\'s '
                               "certificate: give the CA another one")
    if "\0" in password:
        raise KeyMaterialError("the database password contains a NUL character")


def _prepare(target: Target) -> None:
    """The folder exists (made 0700 when new) and holds no database by these names."""
    directory = target.directory
    if directory.exists() and not directory.is_dir():
        raise KeyMaterialError(f"{directory}: not a directory")
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise KeyMaterialError(f"{directory}: cannot create the folder: {exc.strerror}") \
            from None
    present = [str(p) for p in target.files if p.exists()]
    if present:
        raise KeyMaterialError(f"{directory}: an NSS database is already there "
                               f"({', '.join(present)}); choose another folder or "
                               "prefix, or remove those files first")
    if not os.access(directory, os.W_OK):
        raise KeyMaterialError(f"{directory}: permission denied (cannot write there)")


def _pkcs8(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_value(key) -> bytes:
    """What NSS derives the key id from: the RSA modulus or the EC point."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        modulus = public.public_numbers().n
        return modulus.to_bytes((modulus.bit_length() + 7) // 8, "big")
    if isinstance(public, ec.EllipticCurvePublicKey):
        return public.public_bytes(serialization.Encoding.X962,
                                   serialization.PublicFormat.UncompressedPoint)
    raise KeyMaterialError("the key is neither RSA nor EC; NSS import supports those")


def _certificates(chain, anchors, nickname: str) -> tuple:
    """``((DER, nickname, trust), ...)``: the leaf, intermediates (no trust,
    named by their common name), then the trusted CAs."""
    anchor_ders = {_der(c) for c, _ in anchors}
    out = [(_der(chain[0]), nickname.encode(), None)]
    used = {nickname}
    for cert in chain[1:]:
        if _der(cert) in anchor_ders:
            continue
        name = _unique(_common_name(cert), used)
        out.append((_der(cert), name.encode(), None))
    for cert, ca_nickname in anchors:
        out.append((_der(cert), ca_nickname.encode(), CA_TRUST))
    return tuple(out)


def _common_name(cert) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _unique(name: str, used: set) -> str:
    candidate, number = name, 2
    while candidate in used:
        candidate, number = f"{name} #{number}", number + 1
    used.add(candidate)
    return candidate


def _der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _undo(directory: Path, before: set, made_folder: bool) -> None:
    """Remove the files this call created (and the folder, if it made it)."""
    for name in set(os.listdir(directory)) - before:
        try:
            os.unlink(directory / name)
        except OSError:
            pass
    if made_folder:
        try:
            directory.rmdir()
        except OSError:
            pass


def _explain(exc, target: Target) -> str:
    where = f"NSS database {target.directory}"
    nss = f"{exc.name} ({exc.text})"
    if exc.stage == "import-cert" and exc.code == SSL_ERROR_NO_CERTIFICATE:
        return f"{where}: NSS found no private key for the certificate (they do not match)"
    return {
        "in-use": f"{where}: NSS is already initialised by other code in this process",
        "init": f"{where}: NSS cannot create it: {nss}",
        "not-new": f"{where}: the key database already has a password; "
                   "choose another folder or prefix",
        "password": f"{where}: NSS cannot set the database password: {nss}",
        "login": f"{where}: NSS cannot log in with the new password: {nss}",
        "import-key": f"{where}: NSS refused the private key: {nss}",
        "import-cert": f"{where}: NSS refused a certificate: {nss}",
        "trust": f"{where}: NSS cannot set the CA's trust: {nss}",
        "shutdown": f"{where}: NSS cannot close it: {nss}",
    }.get(exc.stage, f"{where}: {exc.stage}: {nss}")


def _read_back(target: Target, nickname: str, password: str) -> KeyMaterial:
    from .nss import load_nss
    return load_nss(target.spec, certdbprefix=target.certdbprefix,
                    keydbprefix=target.keydbprefix, secmodfile=target.secmodfile,
                    nickname=nickname, password=password, param_prefix="make-nssdb")
