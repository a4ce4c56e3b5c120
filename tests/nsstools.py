"""NSS databases for tests, built with the real certutil and pk12util.

The format matters (sql cert9/key4 vs legacy dbm cert8/key3, prefixes,
renamed files), so nothing here writes a database by hand: every file in a
:class:`NSSDatabase` directory was made by NSS's own tools, exactly as an
administrator would make it.

Certificates and keys come from tests/pki.py. Password files handed to the
NSS tools hold just the password line (certutil's ``-f`` format), never the
``Internal (Software) Token:`` form of iim's sslpassword.conf.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import Issued, pkcs12_bytes


class ToolError(AssertionError):
    """An NSS tool failed while a test was building its database."""


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_tool_env())
    if proc.returncode != 0:
        raise ToolError(f"{' '.join(argv)}: exit {proc.returncode}: "
                        f"{proc.stdout.strip()} {proc.stderr.strip()}")
    return proc.stdout


def _tool_env() -> dict[str, str]:
    """The tools' environment, without an NSS_DEFAULT_DB_TYPE that would change the format."""
    env = dict(os.environ)
    env.pop("NSS_DEFAULT_DB_TYPE", None)
    return env


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """``{name: (size, mtime_ns)}`` of every entry in ``directory``."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(directory).iterdir())}


@dataclass
class NSSDatabase:
    """A database made by ``certutil -N`` in ``directory``.

    ``prefix`` is certutil's ``-P`` (it names cert and key database alike);
    :meth:`rename_key_db` and :meth:`rename_secmod` then give the key
    database and the module database names of their own.
    """

    directory: Path
    password: str
    fmt: str = "sql"          # "sql" (cert9/key4) or "dbm" (cert8/key3)
    prefix: str = ""
    keyprefix: str | None = None
    secmod: str = "secmod.db"
    issued: Issued | None = None   # the last key + chain imported

    @classmethod
    def create(cls, directory: Path, password: str, *, fmt: str = "sql",
               prefix: str = "") -> "NSSDatabase":
        directory.mkdir(parents=True, exist_ok=True)
        db = cls(Path(directory), password, fmt, prefix)
        run("certutil", "-N", *db._common(), "-f", str(db._pwfile()))
        return db

    @property
    def spec(self) -> str:
        return f"{self.fmt}:{self.directory}"

    @property
    def certdbprefix(self) -> str:
        return self.prefix

    @property
    def keydbprefix(self) -> str:
        return self.prefix if self.keyprefix is None else self.keyprefix

    def import_pkcs12(self, issued: Issued, nickname: str, roots=()) -> None:
        """``pk12util -i``: key + chain of ``issued`` under ``nickname``."""
        self.issued = issued
        p12pass = "p12-transport"
        p12 = self._scratch("import.p12")
        p12.write_bytes(pkcs12_bytes(issued, nickname, p12pass.encode(), roots))
        p12pw = self._scratch("p12.pw")
        p12pw.write_text(p12pass + "\n")
        try:
            run("pk12util", "-i", str(p12), *self._common(),
                "-k", str(self._pwfile()), "-w", str(p12pw))
        finally:
            p12.unlink()
            p12pw.unlink()

    def add_cert(self, cert: x509.Certificate, nickname: str, trust: str = "C,,") -> None:
        """``certutil -A -t TRUST``: a certificate without a key."""
        pem = self._scratch("add.pem")
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        try:
            run("certutil", "-A", *self._common(), "-n", nickname, "-t", trust,
                "-i", str(pem), "-f", str(self._pwfile()))
        finally:
            pem.unlink()

    def nicknames(self) -> str:
        """``certutil -L`` output (for debugging a failing test)."""
        return run("certutil", "-L", *self._common())

    def rename_key_db(self, keyprefix: str) -> None:
        """Give the key database its own prefix (certutil cannot)."""
        old = self.directory / f"{self.keydbprefix}{self._keyfile}"
        old.rename(self.directory / f"{keyprefix}{self._keyfile}")
        self.keyprefix = keyprefix

    def rename_secmod(self, name: str) -> None:
        """Give the (dbm) module database a custom name."""
        (self.directory / self.secmod).rename(self.directory / name)
        self.secmod = name

    @property
    def _keyfile(self) -> str:
        return "key4.db" if self.fmt == "sql" else "key3.db"

    def _common(self) -> list[str]:
        if self.keyprefix is not None and self.keyprefix != self.prefix:
            raise ToolError("certutil cannot open a database whose key prefix was renamed")
        return ["-d", self.spec, "-P", self.prefix]

    def _pwfile(self) -> Path:
        path = self._scratch("db.pw")
        path.write_text(self.password + "\n")
        return path

    def _scratch(self, name: str) -> Path:
        scratch = self.directory.parent / f"{self.directory.name}.scratch"
        scratch.mkdir(exist_ok=True)
        return scratch / name
