"""The XMPP/HTTP gateway: one port (``iim_server.httpport``), HTTPS and, if allowed, HTTP.

Theory of operation. The gateway is one more way for a client stream to reach
the server, beside ``iim_server.port`` and the mux links (docs/architecture.md
"Three carriers"): every XMPP session it carries is a ``ClientSession``, over
a WebSocket (``/ws``, RFC 7395, iim/server/web/websocket.py) or a BOSH
session (``/http-bind``, XEP-0124/0206, iim/server/web/bosh.py). Around them
it serves the web client's static files (``/`` -> ``/im.html``, ``/static/``)
and XEP-0156 discovery (``/.well-known/host-meta[.json]``). aiohttp speaks
HTTP/1.1 and WebSocket; nothing here parses HTTP by hand.

The port speaks both TLS and plain HTTP (iim/server/web/listener.py: the
first byte of a connection says which; slow or idle connections are cut off;
new connections are rate limited per source). A plain request gets what the
policy says:

- web sessions (``/ws``, ``/http-bind``) over plain HTTP are refused with 403
  and a one-line reason when ``iim_server.requiressl`` is true, unless the
  operator allowed them (``iim_server.http_allow_plain``: a test page that
  shows what an insecure connection looks like). Without a keystore there is
  no HTTPS at all, and requiressl cannot be on.
- other plain requests are redirected to https when plain sessions are
  refused, else served.

Origins (browsers only send ``Origin`` cross-site or on WebSocket). A web
session may be opened from the gateway's own origin (the scheme, host and
port the request came to) and from those listed in ``iim_server.http_origins``
(``*``: any); a request without ``Origin`` is not from a browser page and is
allowed. Another origin gets 403 on ``/ws`` and on ``/http-bind``, and no
CORS headers; an allowed one gets ``Access-Control-Allow-Origin`` naming it
(BOSH from another origin needs CORS, XEP-0124 §7: preflight ``OPTIONS``).
The check stops another site's page from riding on a user's browser; it is
no authentication (SASL is). Refusals are logged as limits are (one line per
parameter and ``limit_log_interval``).

A new XMPP session passes the per-source gate of iim/server/admission.py,
like one on any other carrier.

Behind a reverse proxy every client counts under the proxy's address for the
per-source limits: ``X-Forwarded-For`` is not trusted (anyone can send it).

Every response carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and a Content-Security-Policy that allows scripts, styles and
connections to this origin and its ws/wss endpoint only, and no framing;
HTML is never cached. When plain web sessions are refused, HTTPS responses
carry ``Strict-Transport-Security`` (a year; not for subdomains, which may be
other servers), so a browser that came once never tries plain HTTP again.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from iim.conf.settings import ServerSettings
from iim.text import host_port, printable

from ..admission import Admission
from ..c2s import SessionContext
from . import hostmeta
from .bosh import BoshSessions
from .carrier import GatewayContext
from .listener import HttpListener
from .websocket import HEARTBEAT, serve_websocket

__all__ = ["STATIC_DIR", "WebGateway", "GatewayError"]

STATIC_DIR = Path(__file__).parent / "static"
INDEX = "/im.html"
_UTF8 = "; charset=utf-8"
# A request head aiohttp will hold: a line (the request line, or one header's name
# and value) of at most 8190 bytes, at most 32 headers, so at most ~270 KB while
# it arrives (within negotiation_timeout, listener.py); beyond, 400 and the
# connection is closed. Browsers send ~10-20 headers; Cookie, the longest, may
# carry other applications' cookies of the same host, hence no smaller line.
HEAD_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 32}
_TYPES = {   # set explicitly: aiohttp would say application/javascript (RFC 9239: text/javascript)
    ".html": "text/html" + _UTF8, ".js": "text/javascript" + _UTF8,
    ".mjs": "text/javascript" + _UTF8, ".css": "text/css" + _UTF8,
    ".txt": "text/plain" + _UTF8, ".md": "text/plain" + _UTF8, ".map": "application/json",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".woff2": "font/woff2", ".wasm": "application/wasm",
}


class GatewayError(Exception):
    """One line for the operator; the server does not start."""


class WebGateway:
    """The aiohttp application and its listener on ``iim_server.httpport``."""

    def __init__(self, settings: Callable[[], ServerSettings], ctx: SessionContext,
                 admission: Admission | None, tls_context: Callable[[], ssl.SSLContext | None],
                 log: logging.Logger, *, heartbeat: float = HEARTBEAT,
                 static_dir: Path = STATIC_DIR,
                 certificate: Callable[[], object | None] = lambda: None) -> None:
        self._settings = settings               # the running iim_server.* (refresh changes it)
        self.ctx = GatewayContext(ctx)
        self.admission = admission
        self.tls_context = tls_context
        self.certificate = certificate          # the server's, for the security query
        self.log = log
        self.heartbeat = heartbeat
        self.static_dir = static_dir
        self.bosh = BoshSessions(self)          # /http-bind
        self._runner: web.AppRunner | None = None
        self.listener = HttpListener(tls_context, lambda: self.ctx.negotiation_timeout,
                                     ctx.limits.accept_rate_per_source, ctx.limit_log, log,
                                     ctx.limits.max_unauthenticated_per_source)

    # -- what iim.conf says now (iim.admin refresh: requiressl and maxstanzasize are live) --

    @property
    def settings(self) -> ServerSettings:
        return self._settings()

    @property
    def max_stanza_bytes(self) -> int:
        return self.settings.maxstanzasize

    @property
    def max_xmlns(self) -> int:
        return self.settings.limits.max_xmlns_per_stanza

    @property
    def max_unauthenticated(self) -> int:
        return self.settings.max_unauthenticated

    @property
    def origins(self) -> tuple[str, ...]:
        return self.settings.http_origins

    @property
    def plain_allowed(self) -> bool:
        """Plain HTTP carries web sessions (see the module docstring)."""
        settings = self.settings
        return settings.http_allow_plain or not settings.requiressl

    # -- the application -----------------------------------------------------------------

    def application(self) -> web.Application:
        # the body limit is fixed when the gateway starts (a refresh that raises
        # maxstanzasize lets larger stanzas through the core, BOSH bodies at restart)
        app = web.Application(client_max_size=self.max_stanza_bytes + 16384,
                              middlewares=[self._watched])
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/.well-known/host-meta", self._host_meta)
        app.router.add_get("/.well-known/host-meta.json", self._host_meta_json)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{path:.+}", self._static)
        app.router.add_get("/{name:[A-Za-z0-9_.-]+}", self._root_file)
        self.bosh.add_routes(app)
        app.on_response_prepare.append(self._security_headers)
        return app

    @web.middleware
    async def _watched(self, request: web.Request, handler) -> web.StreamResponse:
        """Tell the connection's HeadWatch that a request is being handled."""
        watch = self.listener.watches.get(request.protocol)
        if watch is not None:
            watch.started()
        try:
            return await handler(request)
        finally:
            if watch is not None:
                watch.finished()

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.check_session_request(request)
        return await serve_websocket(request, self)

    def check_session_request(self, request: web.Request) -> None:
        """TLS policy and Origin, for ``/ws`` and ``/http-bind``: HTTPForbidden if refused."""
        if not request.secure and not self.plain_allowed:
            self._refused("iim_server.requiressl", request, "plain HTTP")
            raise web.HTTPForbidden(text="plain HTTP carries no XMPP session here "
                                         "(iim_server.requiressl): use "
                                         f"{self._secure_url(request)}\n")
        if not self.origin_allowed(request):
            origin = request.headers.get("Origin", "")
            self._refused("iim_server.http_origins", request, f"origin {printable(origin)}")
            raise web.HTTPForbidden(text=f"origin {origin!r} may not "
                                         "open XMPP sessions here (iim_server.http_origins)\n")

    def _refused(self, param: str, request: web.Request, detail: str) -> None:
        """One log line per parameter and interval (iim/server/quota.py LimitLog)."""
        if self.ctx.limit_log is not None:
            self.ctx.limit_log.hit(param, self.ctx.now(),
                                   f"{detail} from {request.remote} to {request.path}")

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.origins:
            return True
        origin = _normal_origin(origin)
        return origin in self.origins or origin == self.own_origin(request)

    def own_origin(self, request: web.Request) -> str:
        scheme = "https" if request.secure else "http"
        return _normal_origin(f"{scheme}://{self.host_of(request)}")

    def host_of(self, request: web.Request) -> str:
        where = self.settings.httpport
        return hostmeta.safe_host(request.host, host_port(where.host or "localhost", where.port))

    def _secure_url(self, request: web.Request) -> str:
        scheme = "wss" if request.path == hostmeta.WS_PATH else "https"
        return f"{scheme}://{self.host_of(request)}{request.path}"

    # -- discovery (XEP-0156) ---------------------------------------------------------------

    def _links(self, request: web.Request) -> list[tuple[str, str]]:
        return hostmeta.endpoints(self.host_of(request), secure=self.tls_context() is not None,
                                  plain=self.plain_allowed)

    async def _host_meta(self, request: web.Request) -> web.Response:
        self._plain_redirect(request)
        return web.Response(text=hostmeta.xrd(self._links(request)),
                            content_type="application/xrd+xml",
                            headers={"Access-Control-Allow-Origin": "*"})

    async def _host_meta_json(self, request: web.Request) -> web.Response:
        self._plain_redirect(request)
        return web.Response(text=hostmeta.jrd(self._links(request)),
                            content_type="application/json",
                            headers={"Access-Control-Allow-Origin": "*"})

    # -- static files (the web client, iim/server/web/static/) -------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        self._plain_redirect(request)
        raise web.HTTPFound(INDEX)

    async def _root_file(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, request.match_info["name"])

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, request.match_info["path"])

    def _file(self, request: web.Request, relative: str) -> web.StreamResponse:
        self._plain_redirect(request)
        root = self.static_dir.resolve()
        path = (root / relative).resolve()
        if root not in path.parents or not path.is_file() or path.name.startswith("."):
            raise web.HTTPNotFound(text="not found\n")
        kind = _TYPES.get(path.suffix.lower())
        return web.FileResponse(path, headers={"Content-Type": kind} if kind else None)

    def _plain_redirect(self, request: web.Request) -> None:
        """Plain requests go to https when plain sessions are refused."""
        if not request.secure and not self.plain_allowed:
            raise web.HTTPMovedPermanently(
                f"https://{self.host_of(request)}{request.path_qs}")

    async def _security_headers(self, request: web.Request,
                                 response: web.StreamResponse) -> None:
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        headers["Content-Security-Policy"] = self._csp(request)
        if request.secure and not self.plain_allowed:    # HTTPS only here: browsers remember
            headers["Strict-Transport-Security"] = "max-age=31536000"
        if response.content_type == "text/html" or request.path in ("/", hostmeta.BOSH_PATH):
            headers["Cache-Control"] = "no-store"
        elif "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-cache"

    def _csp(self, request: web.Request) -> str:
        host = self.host_of(request)
        sockets = f"wss://{host}" + (f" ws://{host}" if self.plain_allowed else "")
        return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                f"font-src 'self'; connect-src 'self' {sockets}; manifest-src 'self'; "
                "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

    # -- running ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.tls_context() is None and not self.plain_allowed:
            raise GatewayError("iim_server.httpport: no keystore (iim_server.sslkeystore) for "
                               "HTTPS, and plain HTTP is not allowed")
        self._runner = web.AppRunner(self.application(), handle_signals=False, access_log=None,
                                     shutdown_timeout=2.0, **HEAD_LIMITS,
                                     keepalive_timeout=self.ctx.negotiation_timeout,
                                     logger=_PeerErrors(logging.getLogger("aiohttp.server"), {}))
        await self._runner.setup()
        where = self.settings.httpport
        try:
            await self.listener.start(where, self._runner.server)
        except OSError as exc:
            await self.stop()
            raise GatewayError(f"iim_server.httpport: cannot listen on {where}: "
                               f"{exc.strerror or exc}") from None
        for address in self.listener.addresses:
            self.log.info("listening for XMPP over WebSocket and BOSH on %s (%s)",
                          host_port(*address[:2]),
                          "HTTPS" + (" and HTTP" if self.plain_allowed else "")
                          if self.tls_context() is not None else "HTTP only")

    @property
    def addresses(self) -> list[tuple]:
        return self.listener.addresses

    async def stop(self) -> None:
        self.listener.stop()
        self.bosh.close()
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None

class _PeerErrors(logging.LoggerAdapter):
    """aiohttp's server log, where a malformed request (a head over HEAD_LIMITS,
    bytes that are not HTTP: the peer got its 400) is a debug line instead of
    an ERROR with a traceback each time, which any peer could repeat to flood
    the log. An exception in the application is still an ERROR."""

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug(msg + ": %s", *args, exc_info, **kwargs)
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def _normal_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-case, without the scheme's default port."""
    origin = origin.strip().lower().rstrip("/")
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin

