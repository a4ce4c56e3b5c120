"""Key material from an NSS database (the multiplexor's ``iim_mux.secconfigdir``).

The database is read through libnss3 itself (``iim.keys._nss``), read-only.
This module decides the format before NSS sees the directory (cert9.db:
sql, cert8.db: dbm) and checks that the files the prefixes name exist, so a
wrong prefix gets a message naming the files looked for and never reaches
NSS, which could create empty databases there. It turns NSS failures into
one-line :class:`KeyMaterialError` messages that name the iim.conf
parameter to fix, and turns the DER that NSS hands out into cryptography
objects. The private key leaves NSS wrapped under a one-time password made
here (PBES2); it is unwrapped in memory and never written anywhere.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_private_key

from iim.keys import _nss
from iim.keys.errors import KeyMaterialError
from iim.keys.material import KeyMaterial, order_chain

# (NSS directory prefix, certificate database, key database), newest first.
FORMATS = (("sql", "cert9.db", "key4.db"), ("dbm", "cert8.db", "key3.db"))

# PBKDF2 rounds for the one-time wrapping password. It is 256 random bits
# and lives for one call, so stretching it buys nothing; keep it cheap.
TRANSPORT_ITERATIONS = 1000

SEC_ERROR_BAD_PASSWORD = -8177


@dataclass(frozen=True)
class _Database:
    """Where the database is and how the messages name it."""

    directory: str
    certdbprefix: str
    keydbprefix: str
    secmodfile: str
    param_prefix: str
    fmt: str = ""

    def param(self, name: str) -> str:
        return f"{self.param_prefix}.{name}"

    def named(self, *prefixes: str) -> str:
        """``NSS database DIR`` plus the non-empty prefixes asked for."""
        shown = [f'{p} "{getattr(self, p)}"' for p in prefixes if getattr(self, p)]
        return f"NSS database {self.directory}" + (f" ({', '.join(shown)})" if shown else "")

    @property
    def source(self) -> str:
        return (f'NSS database {self.directory} (certdbprefix "{self.certdbprefix}", '
                f'keydbprefix "{self.keydbprefix}")')


def load_nss(configdir, *, certdbprefix: str = "", keydbprefix: str = "",
             secmodfile: str = "secmod.db", nickname: str = "Multiplexor-Cert",
             password: str, param_prefix: str = "iim_mux") -> KeyMaterial:
    """Read key, chain and trusted CAs for ``nickname`` from an NSS database.

    ``configdir`` is the directory (``sql:``/``dbm:`` may force a format;
    otherwise cert9.db means sql and cert8.db means dbm). ``password`` is
    the key database password. Raises :class:`KeyMaterialError` with a
    one-line message naming ``<param_prefix>.<parameter>``.
    """
    configdir = os.fsdecode(configdir)
    _reject_nul(param_prefix, secconfigdir=configdir, certdbprefix=certdbprefix,
                keydbprefix=keydbprefix, secmodfile=secmodfile, certnickname=nickname,
                keystorepasswordfile=password)
    db = _locate(configdir, certdbprefix, keydbprefix, secmodfile, param_prefix)
    transport = secrets.token_hex(32).encode("ascii")
    try:
        contents = _nss.read(
            os.fsencode(f"{db.fmt}:{db.directory}"), os.fsencode(certdbprefix),
            os.fsencode(keydbprefix), os.fsencode(secmodfile), nickname.encode(),
            password.encode(), transport, TRANSPORT_ITERATIONS)
    except _nss.NSSError as exc:
        raise KeyMaterialError(_explain(exc, db, nickname)) from None
    return _material(contents, transport, db, nickname)


def _reject_nul(param_prefix: str, **values: str) -> None:
    """C strings end at NUL: the file we check must be the file NSS opens."""
    for param, value in values.items():
        if "\0" in value:
            raise KeyMaterialError(f"{param_prefix}.{param}: the value contains a NUL character")


def _locate(configdir: str, certdbprefix, keydbprefix, secmodfile, param_prefix) -> _Database:
    """Check the directory and database files exist; pick the format."""
    text = configdir
    forced, _, rest = text.partition(":")
    if forced in ("sql", "dbm") and rest:
        text = rest
    else:
        forced = ""
    directory = os.path.abspath(text)
    db = _Database(directory, certdbprefix, keydbprefix, secmodfile, param_prefix)
    if not os.path.exists(directory):
        raise KeyMaterialError(f"{db.param('secconfigdir')}: {directory}: no such directory")
    if not os.path.isdir(directory):
        raise KeyMaterialError(f"{db.param('secconfigdir')}: {directory}: not a directory")
    formats = [f for f in FORMATS if f[0] == forced] if forced else FORMATS
    fmt, certfile, keyfile = _certificate_database(db, formats)
    _key_database(db, certfile, keyfile)
    return replace(db, fmt=fmt)


def _certificate_database(db: _Database, formats) -> tuple[str, str, str]:
    for fmt, cert, key in formats:
        if os.path.exists(os.path.join(db.directory, db.certdbprefix + cert)):
            _readable(db, "secconfigdir", db.certdbprefix + cert)
            return fmt, db.certdbprefix + cert, db.keydbprefix + key
    looked = " or ".join(os.path.join(db.directory, db.certdbprefix + c) for _, c, _ in formats)
    present = _present(db.directory, tuple(c for _, c, _ in FORMATS))
    if not present:
        raise KeyMaterialError(f"{db.param('secconfigdir')}: no NSS certificate database in "
                               f"{db.directory}: there is no {looked}")
    raise KeyMaterialError(f'{db.param("certdbprefix")}: no NSS certificate database {looked} '
                           f'(certdbprefix "{db.certdbprefix}"); certificate databases there: '
                           f"{present}")


def _key_database(db: _Database, certfile: str, keyfile: str) -> None:
    if os.path.exists(os.path.join(db.directory, keyfile)):
        _readable(db, "secconfigdir", keyfile)
        return
    present = _present(db.directory, ("key4.db", "key3.db")) or "none"
    raise KeyMaterialError(f'{db.param("keydbprefix")}: no NSS key database '
                           f'{os.path.join(db.directory, keyfile)} for '
                           f'{os.path.join(db.directory, certfile)} '
                           f'(keydbprefix "{db.keydbprefix}"); key databases there: {present}')


def _present(directory: str, suffixes: tuple[str, ...]) -> str:
    names = sorted(n for n in os.listdir(directory) if n.endswith(suffixes))
    return ", ".join(names)


def _readable(db: _Database, param: str, name: str) -> None:
    path = os.path.join(db.directory, name)
    if not os.access(path, os.R_OK):
        raise KeyMaterialError(f"{db.param(param)}: {path}: permission denied "
                               f"(the database must be readable by this process)")


def _explain(exc: "_nss.NSSError", db: _Database, nickname: str) -> str:
    """The one-line message for a failed NSS step (never the password)."""
    nss = f"{exc.name} ({exc.text})"
    keys, both = db.named("keydbprefix"), db.named("certdbprefix", "keydbprefix")
    password, cert = db.param("keystorepasswordfile"), db.param("certnickname")
    if exc.stage == "login" and exc.code == SEC_ERROR_BAD_PASSWORD:
        return f"{password}: wrong password for {keys}"
    if exc.stage == "login":
        return f"{password}: cannot log in to {keys}: {nss}"
    if exc.stage == "nickname":
        return _unknown_nickname(exc.user_nicknames, db, nickname)
    if exc.stage == "key":
        return (f'{cert}: certificate "{nickname}" has no private key in {both}; '
                f"import it with its key (pk12util -i)")
    if exc.stage in ("export", "encode"):
        return f'{cert}: cannot export the key of "{nickname}" from {both}: {nss}'
    if exc.stage == "chain":
        return f'{cert}: cannot build the chain of "{nickname}" in {both}: {nss}'
    if exc.stage == "in-use":
        return (f"{db.param('secconfigdir')}: cannot open {both}: NSS is already initialised "
                f"by other code in this process")
    verb = "close" if exc.stage == "shutdown" else "open"
    return f"{db.param('secconfigdir')}: cannot {verb} {both}: {nss}"


def _unknown_nickname(user_nicknames, db: _Database, nickname: str) -> str:
    message = (f'{db.param("certnickname")}: no certificate "{nickname}" in '
               f"{db.named('certdbprefix')}")
    if not user_nicknames:
        return message + "; there are no certificates with keys there"
    listed = ", ".join(f'"{n}"' for n in user_nicknames)
    message += f"; certificates with keys there: {listed}"
    if any(n.lower() == nickname.lower() for n in user_nicknames):
        message += " (nicknames are case-sensitive)"
    return message


def _material(contents, transport: bytes, db: _Database, nickname: str) -> KeyMaterial:
    key = load_der_private_key(contents.encrypted_key, transport)
    certs = [x509.load_der_x509_certificate(der) for der in contents.chain]
    leaf = certs[0]
    if key.public_key() != leaf.public_key():
        raise KeyMaterialError(f'{db.param("certnickname")}: the private key NSS found for '
                               f'"{nickname}" in {db.named("certdbprefix", "keydbprefix")} '
                               f"does not match its certificate")
    return KeyMaterial(key=key, chain=order_chain(leaf, certs[1:]),
                       trust_anchors=_trust_anchors(contents.certificates),
                       source=db.source, alias=nickname, notes=_notes(db))


def _notes(db: _Database) -> tuple[str, ...]:
    """Warnings for the log. Read-only NSS quietly opens a dbm database whose
    module database is missing (it uses its internal module alone)."""
    path = os.path.join(db.directory, db.secmodfile)
    if db.fmt == "dbm" and not os.path.exists(path):
        return (f"{db.param('secmodfile')}: {path}: no such file; NSS used its internal "
                f"module only",)
    return ()


def _trust_anchors(certificates) -> tuple[x509.Certificate, ...]:
    """CA certificates with SSL trust "C" or "T" (certutil -t), each once."""
    seen, anchors = set(), []
    for der, _nickname, ssl_flags in certificates:
        if ssl_flags & _nss.TRUSTED_CA_FLAGS and der not in seen:
            seen.add(der)
            anchors.append(x509.load_der_x509_certificate(der))
    return tuple(anchors)
