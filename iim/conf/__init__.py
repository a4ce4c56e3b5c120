"""The iim.conf reader: one file, typed settings, errors that name file and line.

    config = iim.conf.load("/etc/iim/iim.conf")
    config.mux.maxsessions          # 2000 unless the file says otherwise

Layers: `syntax` (text -> raw keys and values), `values` (one raw string ->
one type), `settings` (the parameter tables, defaults and cross-checks).
`ConfigError` is the only exception that leaves `load` and `from_text`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .diagnostics import ConfigError, Diagnostic, Severity
from .settings import (
    KNOWN_PARAMETERS, ComponentLog, Config, CoserverSettings, LogSettings, MuxSettings,
    ServerSettings, build,
)
from .syntax import RawConfig, RawValue, lex, lex_bytes, parse_text
from .values import HostPort, format_value

__all__ = [
    "config_path",
    "load_for_command",
    "ComponentLog", "Config", "ConfigError", "CoserverSettings", "Diagnostic", "HostPort",
    "KNOWN_PARAMETERS", "LogSettings", "MuxSettings", "RawConfig", "RawValue",
    "ServerSettings", "Severity", "format_value", "from_text", "load", "parse_text",
]

#: A bigger "iim.conf" is a mistake (a log file, a device), not a configuration.
MAX_FILE_SIZE = 16 * 1024 * 1024


def load(path: str | os.PathLike, *, check_files: bool = True) -> Config:
    """Read, parse, type and check the iim.conf at `path`.

    Relative paths in it are resolved against the directory holding it.  With
    `check_files`, the key and password files that will be used must exist.
    """
    source = os.fspath(path)
    data = _read(source)
    base_dir = Path(os.path.abspath(source)).parent
    return build(lex_bytes(data, source), source, Path(source), base_dir, check_files)


def from_text(text: str, path: str = "iim.conf", *, base_dir: str | os.PathLike | None = None,
              check_files: bool = False) -> Config:
    """Like `load`, for text already in memory; `path` only names it in messages.

    Relative paths are resolved against `base_dir`, by default the directory
    `path` would be in.
    """
    base = Path(os.path.abspath(base_dir if base_dir is not None else os.path.dirname(path) or "."))
    return build(lex(text, path), path, None, base, check_files)


def _read(source: str) -> bytes:
    try:
        with open(source, "rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as error:
        raise ConfigError([Diagnostic(source, None, None, f"cannot read: {error.strerror}")]) \
            from None
    except ValueError:
        raise ConfigError([Diagnostic(source, None, None, "cannot read: invalid file name")]) \
            from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError([Diagnostic(source, None, None,
                                      f"larger than {MAX_FILE_SIZE} bytes; not an iim.conf")])
    return data


def config_path(option: str | None = None) -> Path:
    """The iim.conf a command reads: ``-c FILE``, else $IIM_CONF, else ./iim.conf."""
    return Path(option or os.environ.get("IIM_CONF") or "iim.conf")


def load_for_command(option: str | None = None) -> Config:
    """What ``python -m iim.server`` / ``iim.mux`` start with: the
    configuration, or its errors on standard error and exit status 1."""
    import sys
    try:
        return load(config_path(option))
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(1) from None
