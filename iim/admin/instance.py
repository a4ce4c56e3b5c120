"""An iim instance as ``iim.admin`` sees it: one iim.conf, its runtime folder,
its components (the server, the multiplexor), and the one-line output of
the commands. ``daemon`` (start, stop) and ``status`` (status, refresh)
both act on it; neither imports the other for it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from iim import conf, runtime
from iim.conf import Config, ConfigError
from iim.conf.syntax import lex_bytes
from iim.conf.values import Invalid, parse_bool, parse_path
from iim.runtime import RuntimePaths

__all__ = ["AdminError", "CHOICES", "COMPONENTS", "Component", "Instance", "MUX", "SERVER",
           "err", "out", "selected", "untrusted_pid"]


class AdminError(Exception):
    """One line for standard error; the command fails."""


@dataclass(frozen=True)
class Component:
    name: str           # as printed and typed: "server", "multiplexor"
    stem: str           # runtime file names: server.pid, mux.sock ...
    module: str         # what runs it: python -m MODULE

    def __str__(self) -> str:
        return self.name


SERVER = Component("server", "server", "iim.server")
MUX = Component("multiplexor", "mux", "iim.mux")
COMPONENTS = (SERVER, MUX)
CHOICES = {"server": SERVER, "multiplexor": MUX, "mux": MUX}


@dataclass
class Instance:
    """One iim.conf and its runtime folder, as iim.admin sees them."""

    conf_path: Path
    folder: Path
    config: Config | None           # None when iim.conf has errors (see ``error``)
    error: ConfigError | None
    usemuxport: bool

    @classmethod
    def load(cls, option: str | None, *, strict: bool) -> "Instance":
        """The instance of ``-c FILE``. ``strict``: a broken iim.conf is an
        AdminError carrying its errors; otherwise the runtime folder is still
        found from the lines that are readable (to stop or look at a running
        instance whose iim.conf is being edited)."""
        path = conf.config_path(option).absolute()
        try:
            config = conf.load(path)
        except ConfigError as err:
            if strict:
                raise AdminError(str(err)) from None
            return cls._tolerant(path, err)
        return cls(path, runtime.runtime_folder(config), config, None,
                   config.server.usemuxport)

    @classmethod
    def _tolerant(cls, path: Path, err: ConfigError) -> "Instance":
        try:
            raw = lex_bytes(path.read_bytes(), str(path)).raw
        except OSError:
            raise AdminError(str(err)) from None
        folder = _raw_value(raw, "iim.instancevardir", parse_path, Path("."))
        folder = folder if folder.is_absolute() else path.parent / folder
        usemuxport = _raw_value(raw, "iim_server.usemuxport", parse_bool, True)
        return cls(path, Path(os.path.normpath(folder)), None, err, usemuxport)

    def paths(self, component: Component) -> RuntimePaths:
        return RuntimePaths(self.folder, component.stem)

    def should_run(self, component: Component) -> bool:
        return component is SERVER or self.usemuxport


def _raw_value(raw, key: str, convert, default):
    value = raw.get(key)
    if value is None:
        return default
    try:
        return convert(value.value)
    except Invalid:
        return default


def selected(instance: Instance, name: str | None) -> list[Component]:
    """The components a command acts on, in start order (server first)."""
    if name is not None:
        return [CHOICES[name]]
    return [c for c in COMPONENTS if instance.should_run(c)]


def out(line: str) -> None:
    print(line, flush=True)


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def untrusted_pid(instance: Instance, component: Component, pid: int | None) -> str | None:
    """Why the pid in ``component``'s locked pid file is not to be acted on
    (None: it is this instance's component); see runtime.foreign."""
    pidfile = instance.paths(component).pidfile
    if not pid:
        return f"{pidfile} names no pid"
    why = runtime.foreign(pid, pidfile, component.stem, instance.conf_path)
    return f"{pidfile} names pid {pid}, which is not this instance's {component}: {why}" \
        if why else None
