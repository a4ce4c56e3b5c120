"""Logging for the server and the multiplexor, from ``iim.log.<component>.*``.

One line per event: ``2026-11-26T20:00:00.123Z INFO iim.server c2s: ...``.
A file named by ``url`` rotates at ``maxlogfilesize`` keeping ``maxlogfiles``
old files; without ``url`` the log goes to standard error. Nothing iim logs
carries a password: messages are built from names, addresses and reasons.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time

from .conf import ComponentLog

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


def setup(component: str, settings: ComponentLog) -> logging.Logger:
    """Configure the ``iim`` logger for ``component`` ("server" or "mux")."""
    root = logging.getLogger("iim")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.addHandler(_handler(settings))
    root.setLevel(settings.severity.logging_level)
    root.propagate = False
    return logging.getLogger(f"iim.{component}")


def _handler(settings: ComponentLog) -> logging.Handler:
    if settings.url is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        settings.url.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            settings.url, maxBytes=settings.maxlogfilesize,
            backupCount=settings.maxlogfiles, encoding="utf-8")
    handler.setFormatter(_UTCFormatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    return handler
