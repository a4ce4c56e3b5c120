"""XEP-0156 discovery: ``/.well-known/host-meta`` (XRD, RFC 6415) and ``host-meta.json``.

A web client that knows only the domain finds the gateway's endpoints here
(XEP-0156 §3.3): the WebSocket one under ``urn:xmpp:alt-connections:websocket``
(RFC 7395 §4) and the BOSH one under ``urn:xmpp:alt-connections:xbosh``. The
addresses are built from the host the client asked for (its ``Host``
header, checked to be a host and port) and the schemes the gateway serves:
the secure ones when a keystore is configured, the plain ones when plain
web sessions are allowed. The documents are public and read by scripts of
other origins, so they carry ``Access-Control-Allow-Origin: *`` (XEP-0156 §3).
"""

from __future__ import annotations

import json
import re
from xml.sax.saxutils import quoteattr

__all__ = ["WEBSOCKET_REL", "BOSH_REL", "endpoints", "safe_host", "xrd", "jrd"]

WEBSOCKET_REL = "urn:xmpp:alt-connections:websocket"
BOSH_REL = "urn:xmpp:alt-connections:xbosh"
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
WS_PATH = "/ws"                 # agreed with the web client: do not change
BOSH_PATH = "/http-bind"

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)"
                   r"(:[0-9]{1,5})?")


def safe_host(host: str | None, fallback: str) -> str:
    """``host`` (a Host header) when it is a host[:port], else ``fallback``."""
    if host and _HOST.fullmatch(host):
        return host.lower()
    return fallback


def endpoints(host: str, *, secure: bool, plain: bool) -> list[tuple[str, str]]:
    """(rel, href) pairs, secure ones first."""
    links = []
    if secure:
        links += [(WEBSOCKET_REL, f"wss://{host}{WS_PATH}"), (BOSH_REL, f"https://{host}{BOSH_PATH}")]
    if plain:
        links += [(WEBSOCKET_REL, f"ws://{host}{WS_PATH}"), (BOSH_REL, f"http://{host}{BOSH_PATH}")]
    return links


def xrd(links: list[tuple[str, str]]) -> str:
    """The host-meta XRD document (RFC 6415 §3)."""
    rows = "".join(f"  <Link rel={quoteattr(rel)} href={quoteattr(href)}/>\n"
                   for rel, href in links)
    return f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{XRD_NS}'>\n{rows}</XRD>\n"


def jrd(links: list[tuple[str, str]]) -> str:
    """The host-meta.json document (RFC 6415 Appendix A)."""
    return json.dumps({"links": [{"rel": rel, "href": href} for rel, href in links]},
                      indent=1) + "\n"
