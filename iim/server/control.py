"""The server's control socket (iim/control.py): status, refresh and stop.

Served by the server's own asyncio loop, so a request sees the sessions,
links and certificate exactly as they are between two events, with no
locking.

``refresh`` re-reads iim.conf (from the path the server was started with)
and the keystore, and applies them without dropping a session. Theory of
operation: everything new is built first (configuration, TLS context,
stream policy); only when all of it succeeded is it swapped in, in one
event-loop step. A failure at any point answers with its one line and
leaves the server exactly as it was. What is swapped affects *new*
connections only: an established session keeps its TLS connection and the
stream policy it started with, which is what lets it survive. Parameters
that live in sockets or files opened at start (ports, the database, the
domain name, federation peers, ...) are reported as needing a restart and
keep their running value (iim.conf.changes.merge), so the server never half
applies them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path

from iim import conf, control
from iim.control import certificate_info, one_line
from iim.conf import Config, ConfigError
from iim.conf.changes import changed, merge
from iim.keys.context import ServerTLS
from iim.keys.errors import KeyMaterialError
from iim.text import host_port

from .servertls import load_server_tls

__all__ = ["LIVE", "ControlServer", "apply_refresh", "certificate_info", "describe"]

#: The server's parameters a refresh applies at once (to new connections).
LIVE = frozenset({
    "iim_server.sslkeystore", "iim_server.keystorealias", "iim_server.keystorepasswordfile",
    "iim_server.keypasswordfile", "iim_server.requiressl", "iim_server.trust_all_cert",
    "iim_server.maxstanzasize", "iim_server.negotiation_timeout",
    "iim_server.stanza_timeout", "iim.log.iim_server.severity",
})

SECURITY = ("none", "legacy-ssl", "tls", "both")


class RefreshRefused(Exception):
    """The new configuration cannot be applied; one line, nothing changed."""


def concerns_server(param: str) -> bool:
    """Whether the server reads ``param`` (the rest is the multiplexor's business)."""
    return param.startswith(("iim_server.", "iim.log.iim_server.")) or \
        param in ("iim_mux.serverport", "iim.instancevardir")


# -- status ------------------------------------------------------------------------------

def describe(server) -> dict:
    """The server's status, JSON-ready (what ``iim.admin status`` prints)."""
    ctx = server.ctx
    return {
        "component": "server",
        "pid": os.getpid(),
        "domain": server.config.server.domainname,
        "listening": [host_port(*a[:2]) for a in server.addresses],
        "mux_listening": _mux_addresses(server),
        "http_listening": _http_addresses(server),
        "requiressl": ctx.policy.tls_required,
        **_sessions(ctx.sessions),
        "mux_links": _links(server),
        **_s2s(server),
        "certificate": certificate_info(_certificate(server.tls)),
    }


def _sessions(sessions) -> dict:
    counts = dict.fromkeys(SECURITY, 0)
    negotiating = 0
    for session in list(sessions):
        security = getattr(session, "transport_security", None)
        if security is None:
            continue                        # not a client session
        if session.established:
            counts[security] += 1
        else:
            negotiating += 1
    return {"sessions": counts, "negotiating": negotiating}


def _links(server) -> list[dict]:
    listener = server.mux_listener
    if listener is None:
        return []
    return sorted(({"name": link.name, "state": link.state.value,
                    "sessions": len(link.sessions)} for link in list(listener.links)),
                  key=lambda link: link["name"])


def _http_addresses(server) -> list[str]:
    """The XMPP/HTTP gateway's (iim_server.httpport), if it is on."""
    gateway = getattr(server, "web", None)
    return [] if gateway is None else [host_port(*a[:2]) for a in gateway.addresses]


def _mux_addresses(server) -> list[str]:
    listener = server.mux_listener
    return [] if listener is None else [host_port(*s.getsockname()[:2])
                                        for s in listener.sockets]


def _s2s(server) -> dict:
    """Federation peers from ``server.federation.describe()``, when federation exists."""
    federation = getattr(server, "federation", None)
    if federation is None:
        return {"s2s": []}
    try:
        return {"s2s": [dict(peer) for peer in federation.describe()]}
    except Exception as exc:  # noqa: BLE001 - status must answer even if a peer is odd
        server.log.exception("status: federation.describe() failed")
        return {"s2s": [], "s2s_error": f"{type(exc).__name__}: {exc}"}


# -- refresh ------------------------------------------------------------------------------

def reread(server) -> Config:
    """iim.conf again, from where the server read it; RefreshRefused with its error."""
    path = server.config.path
    if path is None:
        raise RefreshRefused("the server was not started from a file; nothing to re-read")
    try:
        return conf.load(path)
    except ConfigError as err:
        raise RefreshRefused(one_line(err)) from None


def apply_refresh(server, new: Config) -> dict:
    """Apply ``new`` to a running server (see the module docstring); RefreshRefused."""
    old = server.config
    differences = [p for p in changed(old, new) if concerns_server(p)]
    running = merge(old, new, LIVE)
    try:
        tls = load_server_tls(running, server.log)
    except KeyMaterialError as err:
        raise RefreshRefused(str(err)) from None
    policy = _policy(server.ctx.policy, running, tls)
    _swap(server, running, tls, policy)
    for warning in new.warnings:
        server.log.warning("%s", warning)
    applied = [p for p in differences if p in LIVE]
    restart = [p for p in differences if p not in LIVE]
    _log_refresh(server.log, running, applied, restart)
    return {"applied": applied, "restart": restart,
            "certificate": certificate_info(_certificate(tls)),
            "warnings": [str(w) for w in new.warnings]}


def _policy(current, running: Config, tls: ServerTLS | None):
    settings = running.server
    if settings.requiressl and tls is None:
        raise RefreshRefused("iim_server.requiressl is true but iim_server.sslkeystore is "
                             "not set: clients could never log in")
    return dataclasses.replace(current, tls_offered=tls is not None,
                               tls_required=settings.requiressl,
                               max_stanza_bytes=settings.maxstanzasize)


def _swap(server, running: Config, tls: ServerTLS | None, policy) -> None:
    """One event-loop step: new connections see all of it, established ones none."""
    ctx = server.ctx
    server.tls = tls
    ctx.tls_context = tls.context if tls is not None else None
    ctx.policy = policy
    ctx.negotiation_timeout = running.server.negotiation_timeout
    ctx.stanza_timeout = running.server.stanza_timeout
    server.config = running
    logging.getLogger("iim").setLevel(running.log.server.severity.logging_level)
    if server.federation is not None:
        # new s2s connections: the renewed certificate and the new TLS policy
        # (requiressl, trust_all_cert, stanza size); established ones keep theirs
        server.federation.refresh(running, tls.material if tls is not None else None)


def _certificate(tls: ServerTLS | None):
    return tls.certificate if tls is not None else None


def _log_refresh(log: logging.Logger, running: Config, applied, restart) -> None:
    log.info("refresh: iim.conf and the certificates re-read; applied: %s",
             ", ".join(applied) or "no parameter changed")
    for param in restart:
        log.warning("refresh: %s changed; takes effect after a restart", param)
    if "iim_server.trust_all_cert" in applied and running.server.trust_all_cert:
        log.warning("iim_server.trust_all_cert is true: every peer certificate is "
                    "accepted; use this for testing only")


# -- the socket -------------------------------------------------------------------------

class ControlServer:
    """The control socket on the server's event loop."""

    def __init__(self, server, path: Path, on_stop, started: float | None = None) -> None:
        self.server = server
        self.path = path
        self.on_stop = on_stop
        self.started = started if started is not None else time.time()
        self._listener: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = control.bind(self.path)
        self._listener = await asyncio.start_unix_server(self._client, sock=sock,
                                                         limit=control.MAX_MESSAGE)
        self.server.log.info("control socket %s", self.path)

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            if not control.peer_allowed(writer.get_extra_info("socket")):
                self.server.log.warning("control: connection from another user refused")
                return
            line = await asyncio.wait_for(reader.readline(), control.REQUEST_TIMEOUT)
            response, after = self.answer(line)
            writer.write(control.encode(response))
            await writer.drain()
            if after is not None:
                after()
        except (asyncio.TimeoutError, OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def answer(self, line: bytes) -> tuple[dict, object]:
        """The response to one request line, and what to do once it is sent."""
        try:
            request = control.decode(line)
        except ValueError:
            return {"ok": False, "error": "unreadable request"}, None
        problem = control.bad_request(request)
        if problem:
            return {"ok": False, "error": problem}, None
        try:
            return self._answers[request["op"]](self)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave iim.admin waiting
            self.server.log.exception("control: %s failed", request["op"])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}, None

    def _status(self):
        return {"ok": True, **self.server.status(), "started": self.started}, None

    def _refresh(self):
        try:
            result = self.server.refresh(reread(self.server))
        except RefreshRefused as err:
            self.server.log.error("refresh refused, running settings kept: %s", err)
            return {"ok": False, "error": str(err)}, None
        return {"ok": True, **result}, None

    def _stop(self):
        self.server.log.info("stop requested on the control socket")
        return {"ok": True, "pid": os.getpid()}, self.on_stop

    #: One answer per request (iim.control.OPS, which bad_request checked).
    _answers = {"status": _status, "refresh": _refresh, "stop": _stop}

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        control.unlink(self.path)
