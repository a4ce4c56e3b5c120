"""What the web carriers share: the sessions' context and the admission of a new one.

A web session is a ``ClientSession`` like one on a socket or a mux link
(docs/architecture.md, "Three carriers"), with two differences, both here:

- its context (``GatewayContext``) is the server's ``SessionContext`` with
  another ``ServerPolicy``: no STARTTLS is offered or required, because TLS
  belongs to the HTTP connection (RFC 7395 §3.8, XEP-0206 §4) and a request
  may not switch it on half-way. Whether a plain HTTP connection may carry a
  session at all is decided before (``iim_server.requiressl``,
  ``iim_server.http_allow_plain``: iim/server/web/app.py). Over HTTPS the
  session is ``secure_transport`` (SASL PLAIN allowed, as under legacy SSL);
  over plain HTTP it is not (SCRAM only). Everything else, limits, timers,
  counters, sets of sessions, is the server's own object, read through, so a
  refresh of iim.conf reaches web sessions too.
- a new session passes the same per-source gate as other carriers
  (iim/server/admission.py): over its source's accept rate it is refused
  before anything is made for it; over the per-source or global count of
  negotiating sessions it gets the same stream error a socket would.
"""

from __future__ import annotations

from dataclasses import replace

from iim.xmpp.errors import StreamError, StreamErrorCondition
from iim.xmpp.server_stream import ServerPolicy

from ..admission import Admission, Refusal
from ..c2s import Carrier, ClientSession, SessionContext
from ..security_info import CarrierTLS, Layer, TLSEnd

__all__ = ["GatewayContext", "RateRefused", "WebSession", "admit", "https_tls", "open_session"]


class RateRefused(Exception):
    """The source opened sessions faster than ``iim_server.accept_rate_per_source``."""


class GatewayContext:
    """The server's SessionContext, with a policy that offers no STARTTLS."""

    __slots__ = ("_ctx", "_base", "_policy")

    def __init__(self, ctx: SessionContext) -> None:
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "_base", None)
        object.__setattr__(self, "_policy", None)

    @property
    def policy(self) -> ServerPolicy:
        base = self._ctx.policy
        if base is not self._base:              # a refresh replaced it: derive again
            object.__setattr__(self, "_base", base)
            object.__setattr__(self, "_policy",
                               replace(base, tls_offered=False, tls_required=False))
        return self._policy

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._ctx, name, value)         # turnover and the like: the server's count


class WebSession(ClientSession):
    """A ClientSession whose TLS, if any, is its HTTPS connection's (the carrier's
    ``transport_tls``, iim/server/security_info.py): logs and status say so."""

    __slots__ = ()

    def security(self) -> str:
        tls = getattr(self.carrier, "transport_tls", None)
        return f"{tls.version} {tls.cipher} (HTTPS)" if tls is not None else "no TLS (plain HTTP)"

    @property
    def transport_security(self) -> str:
        """For status: ``tls`` (HTTPS, ended by this server) or ``none``."""
        return "tls" if getattr(self.carrier, "transport_tls", None) is not None else "none"


def https_tls(transport, certificate) -> CarrierTLS | None:
    """The TLS of an HTTP connection (``transport``: aiohttp's request.transport),
    None over plain HTTP; ``certificate()``: the server's, for the security query."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None or not ssl_object.version():
        return None
    name, _, bits = ssl_object.cipher() or ("", "", 0)
    return CarrierTLS(Layer.HTTPS, TLSEnd.SERVER, ssl_object.version(), name, bits or 0,
                      certificate())


def admit(admission: Admission | None, source: str) -> Refusal | None:
    """The per-source gate's word on a new web stream; RateRefused when nothing
    may be made for it (over the source's accept rate)."""
    refusal = admission.refusal(source) if admission is not None else None
    if refusal is Refusal.RATE:
        raise RateRefused(refusal.value)
    return refusal


def open_session(ctx: GatewayContext, carrier: Carrier, *, secure: bool,
                 refusal: Refusal | None, max_unauthenticated: int) -> ClientSession:
    """A ClientSession for a new web stream, or one already closed with the
    stream error that says why not (``refusal`` from ``admit``)."""
    session = WebSession(ctx, carrier, secure_transport=secure)
    if refusal is Refusal.COUNT:
        session.close(refusal.stream_error())
    elif len(ctx.negotiating) > max_unauthenticated:
        ctx.log.warning("c2s %s: refused: %d connections still negotiating", carrier.peer,
                        len(ctx.negotiating) - 1)
        session.close(StreamError(StreamErrorCondition.RESOURCE_CONSTRAINT,
                                  "too many connections negotiating"))
    return session
