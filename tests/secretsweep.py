"""After the whole run: no password any test wrote down appears in any log.

Every test that runs a real server or multiplexor leaves its files under
pytest's base temporary folder: password files (``Token:password``),
``dev-users.txt``, iim.conf files with coserver passwords, and the logs
(``*.log``, rotated ``*.log.N``, captured ``*.stderr``). This sweep collects
every password from the former and looks for each in the latter, so a new
test or a new log line that leaks one fails the run, whichever test caused it.
"""

from __future__ import annotations

import re
from pathlib import Path

TOKEN_LINE = re.compile(r"^(?:Internal \(Software\) Token|NSS Certificate DB):(.+)$", re.M)
CONF_PASSWORD = re.compile(r"^\s*iim_server\.(?:coserver\d+\.)?password\s*=\s*\"?([^\"\n]+)",
                           re.M)
USERS_LINE = re.compile(r"^\S+@\S+ (\S+)$", re.M)
MIN_LENGTH = 8          # shorter strings match ordinary words and numbers by chance
LOG_NAMES = re.compile(r"(\.log(\.\d+)?|\.stderr)$")


def passwords_written(base: Path) -> set[str]:
    found: set[str] = set()
    for path in _files(base):
        if LOG_NAMES.search(path.name):
            continue
        text = _text(path)
        if text is None:
            continue
        patterns = [TOKEN_LINE, CONF_PASSWORD]
        if path.name == "dev-users.txt":
            patterns.append(USERS_LINE)
        for pattern in patterns:
            found.update(m.strip() for m in pattern.findall(text))
    return {p for p in found if len(p) >= MIN_LENGTH and "PASSWORD" not in p}


def leaks(base: Path, secrets: set[str] | None = None) -> list[str]:
    """The log files under ``base`` that contain one of ``secrets`` (by default,
    ``passwords_written(base)``)."""
    secrets = passwords_written(base) if secrets is None else secrets
    found = []
    for path in _files(base):
        if not LOG_NAMES.search(path.name):
            continue
        text = _text(path) or ""
        for secret in secrets:
            if secret in text:
                found.append(f"{path}: contains a password written to a password file")
                break
    return found


def _files(base: Path):
    return (p for p in base.rglob("*") if p.is_file() and not p.is_symlink())


def _text(path: Path) -> str | None:
    try:
        if path.stat().st_size > 5_000_000:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
