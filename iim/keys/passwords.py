"""Password files (``sslpassword.conf``), as the original product writes them.

One line ``Internal (Software) Token:password``: the token name, a colon, the
password. The line is split on the *first* colon so a password may contain
colons. NSS names its internal token ``NSS Certificate DB``; both names are
accepted. No message made here ever contains the password (or anything from
the line that could be it).

Every file that holds a secret, not only password files, must be readable by
its owner alone. ``mode_warning`` is the one check, and ``secret_files``
lists what each component reads; the server and the multiplexor log
``secret_file_warnings`` at start-up and ``iim.admin check`` prints them, so
the three say the same line about the same file.
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


def read_password_file(path, param: str = "iim_server.keystorepasswordfile", *,
                       check_mode: bool = True) -> PasswordFile:
    """Read ``path``; raise KeyMaterialError with one clear line when unusable.
    ``check_mode``: warn when group or others may read it (callers whose
    files ``secret_file_warnings`` already covers pass False)."""
    path = Path(path)
    where = f"{param}: {path}"
    lines = _read_lines(path, where)
    if not any(line.strip() for line in lines):
        raise KeyMaterialError(f"{where}: the file is empty; expected one line {EXPECTED}")
    password = _password_from(lines, where)
    warning = mode_warning(path, param) if check_mode else None
    return PasswordFile(path, password, (warning,) if warning else ())


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


def mode_warning(path, param: str) -> str | None:
    """The one line for a secret file (``param``'s) that group or others may
    read or write; None when only its owner may, or when it is not there."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None                     # missing files are reported where they are read
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{param}: {path}: readable by group or others (mode {mode:04o}); "
                f"run chmod 600 {path}")
    return None


#: SQLite's companions of a database file, which hold the same data.
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
#: NSS database files by format: certificates, keys, modules.
NSS_FILES = ("cert9.db", "key4.db", "pkcs11.txt", "cert8.db", "key3.db")


def secret_files(config, component: str) -> list[tuple[str, Path]]:
    """``(parameter, file)`` for every file holding a secret that ``component``
    ("server", "mux", or "all" for both) reads; missing ones included."""
    files: list[tuple[str, Path]] = []
    if component in ("server", "all"):
        files += _server_secret_files(config)
    if component in ("mux", "all"):
        files += _mux_secret_files(config)
    seen, unique = set(), []
    for param, path in files:
        if (param, path) not in seen:
            seen.add((param, path))
            unique.append((param, path))
    return unique


def secret_file_warnings(config, component: str) -> list[str]:
    """``mode_warning`` for each of ``secret_files(config, component)``."""
    lines = (mode_warning(path, param) for param, path in secret_files(config, component))
    return [line for line in lines if line]


def _server_secret_files(config) -> list[tuple[str, Path]]:
    server = config.server
    files = [("iim_server.database", Path(f"{server.database}{suffix}"))
             for suffix in SQLITE_COMPANIONS]
    for param in ("sslkeystore", "keystorepasswordfile", "keypasswordfile",
                  "muxlink_secretfile", "dialback_secretfile"):
        value = getattr(server, param, None)
        if value is not None:
            files.append((f"iim_server.{param}", Path(value)))
    path = getattr(config, "path", None)
    if path is not None:
        holders = (["iim_server.password"] if server.password else []) + \
            [f"iim_server.{c.name}.password" for c in config.coservers if c.password]
        files += [(param, Path(path)) for param in holders[:1]]
    return files


def _mux_secret_files(config) -> list[tuple[str, Path]]:
    from iim.conf.values import split_nss_kind
    mux = config.mux
    files = [("iim_mux.keystorepasswordfile", Path(mux.keystorepasswordfile))]
    if getattr(mux, "muxlink_secretfile", None) is not None:
        files.append(("iim_mux.muxlink_secretfile", Path(mux.muxlink_secretfile)))
    if mux.secconfigdir is not None:
        folder = split_nss_kind(mux.secconfigdir)[1]
        names = [mux.certdbprefix + n if n.startswith("cert") else
                 mux.keydbprefix + n if n.startswith("key") else n for n in NSS_FILES]
        files += [("iim_mux.secconfigdir", folder / name) for name in names + [mux.secmodfile]]
    return files
