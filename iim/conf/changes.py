"""What changed between two loads of iim.conf, and the running mix of both.

``iim.admin refresh`` makes a running component re-read iim.conf. Some
parameters can take effect at once (a certificate, a log severity, a
timeout for new connections); others are baked into what the process set up
at start (a listening port, the database, the domain name). A component
names its *live* parameters; ``changed`` lists every parameter whose typed
value differs, and ``merge`` builds the configuration the process runs with
afterwards: the new values of live parameters, the old values of the rest
(until a restart), so no part of the process sees a value that is not in
effect.

Parameters are named as in iim.conf (``iim_server.port``); coserver
parameters by their coserver's name (``iim_server.coserver1.host``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from .settings import (
    COSERVER_PARAMS, INSTANCE_PARAMS, LOG_PARAMS, MUX_PARAMS, SERVER_PARAMS, Config,
    LogSettings,
)

__all__ = ["changed", "merge"]

#: (parameter prefix, how to reach its settings object in a Config, its table)
_SECTIONS = (
    ("iim_server.", lambda c: c.server, SERVER_PARAMS),
    ("iim_mux.", lambda c: c.mux, MUX_PARAMS),
    ("iim.log.iim_server.", lambda c: c.log.server, LOG_PARAMS),
    ("iim.log.iim_mux.", lambda c: c.log.mux, LOG_PARAMS),
)


def changed(old: Config, new: Config) -> list[str]:
    """Every parameter whose value differs between ``old`` and ``new``, in table order."""
    found = []
    for prefix, section, params in _SECTIONS:
        before, after = section(old), section(new)
        found += [prefix + p.name for p in params
                  if getattr(before, p.field_name) != getattr(after, p.field_name)]
    found += _coserver_changes(old, new)
    found += ["iim." + p.name for p in INSTANCE_PARAMS
              if getattr(old, p.field_name) != getattr(new, p.field_name)]
    return found


def _coserver_changes(old: Config, new: Config) -> list[str]:
    names = list(dict.fromkeys([c.name for c in old.coservers] + [c.name for c in new.coservers]))
    found = []
    for name in names:
        before, after = old.coserver(name), new.coserver(name)
        if before is None or after is None:
            continue                        # listed or unlisted: iim_server.coservers says it
        found += [f"iim_server.{name}.{p.name}" for p in COSERVER_PARAMS
                  if getattr(before, p.field_name) != getattr(after, p.field_name)]
    return found


def merge(old: Config, new: Config, live: Iterable[str]) -> Config:
    """``new`` with every parameter not in ``live`` kept at its ``old`` value."""
    live = set(live)

    def section(prefix: str, get, params):
        picked = {p.field_name: getattr(get(new), p.field_name) for p in params
                  if prefix + p.name in live}
        return replace(get(old), **picked)

    server, mux, log_server, log_mux = (section(*s) for s in _SECTIONS)
    instance = {p.field_name: getattr(new if "iim." + p.name in live else old, p.field_name)
                for p in INSTANCE_PARAMS}
    return replace(new, server=server, mux=mux, log=LogSettings(log_server, log_mux),
                   coservers=old.coservers, **instance)

