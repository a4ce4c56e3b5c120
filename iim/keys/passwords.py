"""Password files (``sslpassword.conf``), as the original product writes them.

One line ``Internal (Software) Token:password``: the token name, a colon, the
password. The line is split on the *first* colon so a password may contain
colons. NSS names its internal token ``NSS Certificate DB``; both names are
accepted. No message made here ever contains the password (or anything from
the line that could be it).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import KeyMaterialError

TOKEN_NAMES = ("Internal (Software) Token", "NSS Certificate DB")
EXPECTED = '"Internal (Software) Token:PASSWORD"'


@dataclass(frozen=True)
class PasswordFile:
    path: Path
    password: str
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"PasswordFile(path={str(self.path)!r}, password=<hidden>)"


def read_password_file(path, param: str = "iim_server.keystorepasswordfile") -> PasswordFile:
    """Read ``path``; raise KeyMaterialError with one clear line when unusable."""
    path = Path(path)
    where = f"{param}: {path}"
    lines = _read_lines(path, where)
    if not any(line.strip() for line in lines):
        raise KeyMaterialError(f"{where}: the file is empty; expected one line {EXPECTED}")
    password = _password_from(lines, where)
    return PasswordFile(path, password, tuple(_permission_warnings(path, where)))


def _read_lines(path: Path, where: str) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"{where}: no such file; create it with one line {EXPECTED} (chmod 600)") from None
    except IsADirectoryError:
        raise KeyMaterialError(f"{where}: is a directory, not a password file") from None
    except OSError as exc:
        raise KeyMaterialError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KeyMaterialError(f"{where}: not UTF-8 text; expected one line {EXPECTED}") from None
    return text.splitlines()


def _password_from(lines: list[str], where: str) -> str:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        token, colon, password = line.partition(":")
        if not colon:
            raise KeyMaterialError(
                f"{where}:{number}: expected {EXPECTED} (token name, colon, password)")
        if token.strip() not in TOKEN_NAMES:
            names = ", ".join(f'"{n}"' for n in TOKEN_NAMES)
            raise KeyMaterialError(
                f"{where}:{number}: the token name before the first colon is not one of {names}")
        if not password:
            raise KeyMaterialError(f"{where}:{number}: the password after the colon is empty")
        return password
    raise AssertionError("unreachable: caller checked for a non-blank line")


def _permission_warnings(path: Path, where: str):
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        yield (f"{where}: readable by group or others (mode {mode:04o}); "
               f"run chmod 600 {path}")
