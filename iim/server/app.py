"""The server process: configuration in, listeners up, sessions routed.

``Server`` wires the parts together and owns their lifetime: key material
and the TLS context (re-read on ``reload_certificates``, used by every new
TLS handshake, so established sessions keep theirs), the SQLite storage,
the router, and the client listener on ``iim_server.port``.
"""

from __future__ import annotations

import asyncio
import logging

from iim._fastmux import LinkTlsContext, LinkTlsError
from iim.conf import Config
from iim.keys.context import ServerTLS
from iim.keys.passwords import read_password_file, secret_file_warnings
from iim.limits import raise_nofile
from iim.text import host_port
from iim.xmpp.errors import StreamError, StreamErrorCondition
from iim.xmpp.jid import InvalidJID, prepare_domainpart
from iim.xmpp.server_stream import ServerPolicy

from .admission import Admission, Negotiating
from .c2s import SessionContext
from .control import apply_refresh, describe
from . import heap
from .federation import Federation
from .listener import ClientProtocol
from .muxlink import link_tls_context, start_mux_listener
from .quota import LimitLog
from .router import Router
from .servertls import load_server_tls
from .storage import Storage, StorageError


class StartupError(Exception):
    """One line for the operator; the server does not start."""


class Server:
    def __init__(self, config: Config, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.listeners: list[asyncio.AbstractServer] = []
        self.storage: Storage | None = None
        self.ctx: SessionContext | None = None
        self.mux_listener = None
        self.web = None                         # iim/server/web: the XMPP/HTTP gateway
        self.admission: Admission | None = None
        self.federation: Federation | None = None
        self.tls: ServerTLS | None = None       # the keystore's context and material
        self._trimmer: asyncio.Task | None = None   # heap.trim_after_bursts, once serving

    async def start(self) -> None:
        soft, _ = raise_nofile()
        server = self.config.server
        for warning in secret_file_warnings(self.config, "server"):
            self.log.warning("%s", warning)
        self.tls = load_server_tls(self.config, self.log)
        tls_context = self.tls.context if self.tls is not None else None
        self._warn_about_policy(tls_context)
        try:
            self.storage = Storage.open(server.database, limits=server.limits)
        except StorageError as exc:
            raise StartupError(f"iim_server.database: {server.database}: {exc}") from None
        try:
            policy = ServerPolicy(prepare_domainpart(server.domainname),
                                  tls_offered=tls_context is not None,
                                  tls_required=server.requiressl,
                                  max_stanza_bytes=server.maxstanzasize,
                                  max_auth_attempts=server.limits.max_auth_attempts,
                                  max_xmlns_per_stanza=server.limits.max_xmlns_per_stanza,
                                  sm_resume_seconds=server.limits.sm_resume_timeout)
        except InvalidJID as exc:
            raise StartupError(f"iim_server.domainname: {server.domainname!r}: {exc}") from None
        limit_log = LimitLog(self.log, server.limits.limit_log_interval)
        self.ctx = SessionContext(
            policy=policy, tls_context=tls_context,
            router=Router(server.domainname, self.storage, log=self.log, limits=server.limits,
                          limit_log=limit_log, max_stanza_bytes=server.maxstanzasize,
                          server_certificate=self._certificate),
            storage=self.storage, log=self.log,
            negotiation_timeout=server.negotiation_timeout,
            stanza_timeout=server.stanza_timeout,
            negotiating=Negotiating(server.limits.max_unauthenticated_per_source),
            limits=server.limits,
            limit_log=limit_log)
        self.admission = Admission.for_context(self.ctx)
        if server.useport:
            self.federation = Federation(self.config, self.ctx.router,
                                         _material(self.tls), self.log,
                                         negotiating=self.ctx.negotiating,
                                         limit_log=self.ctx.limit_log)
            self.ctx.router.federation = self.federation
            await self._listen(server.port)
        if server.usemuxport:
            await self._listen_for_mux()
        if server.httpport is not None:
            await self._listen_for_web()
        self._trimmer = asyncio.get_running_loop().create_task(heap.trim_after_bursts(
            lambda: self.ctx.turnover, server.stanza_timeout / 4 + heap.CHECK_SECONDS,
            self.log))
        self.log.info("serving %s (open-files limit %d)", server.domainname, soft)

    def _warn_about_policy(self, tls_context) -> None:
        server = self.config.server
        if server.requiressl and tls_context is None:
            raise StartupError("iim_server.requiressl is true but iim_server.sslkeystore is "
                               "not set: clients could never log in")
        if server.trust_all_cert:
            self.log.warning("iim_server.trust_all_cert is true: every peer certificate is "
                             "accepted; use this for testing only")
        if server.requiressl and self.config.mux.usessl:
            self.log.warning("iim_server.requiressl and iim_mux.usessl are both on: "
                             "legacy-SSL clients never ask for STARTTLS")

    async def _listen(self, where) -> None:
        loop = asyncio.get_running_loop()
        limit = self.config.server.max_unauthenticated
        try:
            listener = await loop.create_server(
                lambda: ClientProtocol(self.ctx, limit, self.federation, self.admission),
                where.host, where.port,
                reuse_address=True, backlog=1024)
        except OSError as exc:
            raise StartupError(f"iim_server.port: cannot listen on {where}: "
                               f"{exc.strerror or exc}") from None
        self.listeners.append(listener)
        for sock in listener.sockets:
            self.log.info("listening for client and server streams on %s",
                          host_port(*sock.getsockname()[:2]))

    async def _listen_for_mux(self) -> None:
        server, where = self.config.server, self.config.mux.serverport
        secret = None
        if server.muxlink_secretfile is not None:
            secret = read_password_file(server.muxlink_secretfile,
                                        "iim_server.muxlink_secretfile").password.encode()
        link_tls = self._link_tls_context(self.tls)
        if self.config.mux.maxsessions > server.limits.muxlink_max_sessions:
            self.log.warning("iim_mux.maxsessions (%d) is above iim_server.muxlink_max_sessions "
                             "(%d): a busy link would be closed with overload",
                             self.config.mux.maxsessions, server.limits.muxlink_max_sessions)
        try:
            self.mux_listener = await start_mux_listener(
                self.ctx, where.host, where.port, allow=server.muxlink_allow, secret=secret,
                max_unauthenticated=server.max_unauthenticated, admission=self.admission,
                tls_mode=server.muxlink_tls, tls_context=link_tls,
                max_sessions=server.limits.muxlink_max_sessions,
                open_rate=server.limits.muxlink_open_rate)
        except OSError as exc:
            raise StartupError(f"iim_mux.serverport: cannot listen on {where}: "
                               f"{exc.strerror or exc}") from None

    async def _listen_for_web(self) -> None:
        """The XMPP/HTTP gateway on iim_server.httpport (iim/server/web/app.py)."""
        from .web.app import GatewayError, WebGateway    # aiohttp only when the gateway is on
        server = self.config.server
        if server.requiressl and server.http_allow_plain:
            # On loopback (the development configuration) plain HTTP never crosses a
            # network: said, not warned about. Anywhere else it is a warning.
            say = self.log.info if server.httpport.loopback_only else self.log.warning
            say("iim_server.http_allow_plain is true: web sessions over plain HTTP are "
                "allowed although iim_server.requiressl is true%s",
                " (loopback only)" if server.httpport.loopback_only else "")
        self.web = WebGateway(lambda: self.config.server, self.ctx, self.admission,
                              lambda: self.ctx.tls_context, self.log,
                              certificate=lambda: self.tls.material.certificate
                              if self.tls is not None else None)
        try:
            await self.web.start()
        except GatewayError as exc:
            self.web = None
            raise StartupError(str(exc)) from None

    def _link_tls_context(self, tls: ServerTLS | None) -> LinkTlsContext | None:
        """TLS for mux links, with the keystore's certificate (None without a keystore)."""
        material = _material(tls)
        if material is None:
            if self.config.server.muxlink_tls == "on":
                raise StartupError("iim_server.muxlink_tls is on but iim_server.sslkeystore is "
                                   "not set: there is no certificate to present to the mux")
            return None
        try:
            return link_tls_context(material)
        except LinkTlsError as exc:
            raise StartupError(f"iim_server.sslkeystore: {material.source}: link TLS: "
                               f"{exc}") from None

    @property
    def addresses(self) -> list[tuple]:
        return [s.getsockname() for listener in self.listeners for s in listener.sockets]

    def _certificate(self):
        """The certificate STARTTLS presents now (iim.server.security_info)."""
        return self.tls.certificate if self.tls is not None else None

    def reload_certificates(self) -> None:
        """New handshakes use the re-read keystore; established sessions keep theirs."""
        try:
            self.tls = load_server_tls(self.config, self.log) or self.tls
            self.ctx.tls_context = self.tls.context if self.tls is not None else None
            if self.federation is not None:
                self.federation.use_material(_material(self.tls))
            if self.mux_listener is not None and self.config.server.muxlink_tls != "off":
                self.mux_listener.use_tls_context(self._link_tls_context(self.tls))
        except Exception as exc:  # noqa: BLE001 - a bad reload must not stop the server
            self.log.error("certificate reload failed, keeping the old one: %s", exc)

    # -- administration: iim.admin status / refresh (iim/server/control.py) --------------

    def status(self) -> dict:
        """Sessions by transport security, mux links, s2s peers, certificate (JSON-ready)."""
        return describe(self)

    def refresh(self, new_config: Config) -> dict:
        """Apply a re-read iim.conf and keystore to new connections without dropping
        a session; which changed parameters need a restart. RefreshRefused (one
        line, nothing changed) when it cannot be applied."""
        return apply_refresh(self, new_config)

    async def stop(self) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
        for listener in self.listeners:
            listener.close()
        if self.mux_listener is not None:
            self.mux_listener.close()
        if self.ctx is not None:
            shutdown = StreamError(StreamErrorCondition.SYSTEM_SHUTDOWN)
            for session in list(self.ctx.sessions):
                session.close(shutdown)
            self.ctx.router.shutdown()
        if self.web is not None:
            await self.web.stop()
        if self.federation is not None:
            self.federation.close()
        for listener in self.listeners:
            await listener.wait_closed()
        await self._drain_connections(timeout=5.0)
        if self.storage is not None:
            self.storage.close()
        self.log.info("stopped")


    async def _drain_connections(self, timeout: float) -> None:
        """Give closing connections time to flush their last bytes (the
        shutdown error, the last stanzas); lingering ones end on their own."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.ctx is not None and self.ctx.connections:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)


def _material(tls: ServerTLS | None):
    """The key material of ``tls``, or None without a keystore."""
    return tls.material if tls is not None else None
