"""What the iim.conf reader says about a file: diagnostics and the one exception.

Every problem a user can cause in iim.conf becomes a `Diagnostic`: one line
naming the file, the line, the parameter and what was expected.  Errors are
collected, not raised one at a time; `ConfigError` carries all of them.

Values are echoed in messages to help the reader find them, but never the
value of a parameter whose name ends in ``password``.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

__all__ = ["ConfigError", "Diagnostic", "Severity", "is_secret", "show"]

#: Longest part of a value echoed in a message; the rest becomes "...".
SHOW_LIMIT = 40

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Severity(enum.Enum):
    """How serious something is.

    Log settings use all five levels; diagnostics about iim.conf itself are
    only ever ERROR (nothing starts) or WARNING (it starts, but look at this).
    """

    FATAL = "FATAL"
    ERROR = "ERROR"
    WARNING = "WARNING"
    INFO = "INFO"
    DEBUG = "DEBUG"

    @property
    def logging_level(self) -> int:
        """The matching level of the standard `logging` module."""
        return _LOGGING_LEVELS[self]


_LOGGING_LEVELS = {
    Severity.FATAL: logging.CRITICAL,
    Severity.ERROR: logging.ERROR,
    Severity.WARNING: logging.WARNING,
    Severity.INFO: logging.INFO,
    Severity.DEBUG: logging.DEBUG,
}


@dataclass(frozen=True)
class Diagnostic:
    """One finding about one place in one configuration file."""

    path: str
    line: int | None
    param: str | None
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [where, self.param, self.message]
        return ": ".join(part for part in parts if part is not None)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


class ConfigError(Exception):
    """iim.conf cannot be used; `diagnostics` lists every error found.

    Warnings found in the same pass are kept in `warnings`, apart, so that
    ``str(err)`` is exactly the errors, one per line.
    """

    def __init__(self, diagnostics, warnings=()) -> None:
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self.warnings: list[Diagnostic] = list(warnings)
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)


def is_secret(param: str | None) -> bool:
    """True for parameters whose values must never appear in a message."""
    return param is not None and param.lower().endswith("password")


def show(value: str, limit: int | None = SHOW_LIMIT) -> str:
    """`value` double-quoted for a one-line message, shortened past `limit`."""
    cut = limit is not None and len(value) > limit
    text = value[:limit] if cut else value
    escaped = "".join(_escape_char(c) for c in text)
    return f'"{escaped}..."' if cut else f'"{escaped}"'


def _escape_char(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF:
        return c
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
