"""The server's TLS, read from ``iim_server.sslkeystore``.

One loader for the three moments the keystore is read: start (``app``),
SIGHUP (``app.Server.reload_certificates``) and ``iim.admin refresh``
(``control``). Both of those import it; neither imports the other for it.
"""

from __future__ import annotations

import logging

from iim.conf import Config
from iim.keys.context import ServerTLS
from iim.keys.keystore import load_server_material


def load_server_tls(config: Config, log: logging.Logger | None = None) -> ServerTLS | None:
    """The server's context and key material, or None without a keystore."""
    server = config.server
    if server.sslkeystore is None:
        return None
    material, warnings = load_server_material(server)
    if log:
        for warning in warnings:
            log.warning("%s", warning)
        log.info("certificate %s from %s (alias %s)",
                 material.certificate.subject.rfc4514_string(), material.source, material.alias)
    return ServerTLS.from_material(material)
