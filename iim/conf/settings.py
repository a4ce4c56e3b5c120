"""Typed settings: the parameters this system reads, their defaults and checks.

The tables `SERVER_PARAMS`, `MUX_PARAMS`, `COSERVER_PARAMS` and `LOG_PARAMS`
are the single list of what iim.conf may hold.  Defaults are written as they
would be in iim.conf and go through the same converter as a real value.
`build` reads every table, then checks what spans several parameters
(coservers, legacy SSL, files), collecting every error before raising.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .diagnostics import ConfigError, Diagnostic, Severity, is_secret, show
from .limits import MUX_LIMITS, SERVER_LIMITS, MuxLimits, ServerLimits, defaults
from .syntax import Lexed, RawConfig
from .values import (
    HostPort, Invalid, at_least, host_domain, optional, parse_bool, parse_domain,
    parse_listen, parse_log_url, parse_names, parse_nonempty, parse_origins, parse_path, parse_peer,
    parse_host_overrides, parse_nameservers, parse_networks, parse_severity, parse_size,
    parse_text_value, positive, split_nss_kind,
)

__all__ = [
    "ComponentLog", "Config", "CoserverSettings", "LogSettings", "MuxSettings",
    "ServerSettings", "KNOWN_PARAMETERS", "build",
]

_COSERVER_NAME = re.compile(r"coserver[0-9]+")


@dataclass(frozen=True)
class _Param:
    """One parameter: its name after the section prefix, type and default."""

    name: str
    convert: Callable[[str], Any]
    default: str | None = None
    attr: str | None = None

    @property
    def field_name(self) -> str:
        return self.attr or self.name


_text = optional(parse_text_value)


def parse_link_tls(text: str) -> str:
    """``iim_server.muxlink_tls`` / ``iim_mux.muxlink_tls``: auto, on or off."""
    value = text.strip().lower()
    if value not in ("auto", "on", "off"):
        raise Invalid("expected auto, on or off")
    return value

SERVER_PARAMS = (
    _Param("sslkeystore", optional(parse_path)),
    _Param("keystorealias", _text),
    _Param("keystorepasswordfile", parse_path, "sslpassword.conf"),
    _Param("keypasswordfile", optional(parse_path)),
    _Param("requiressl", parse_bool, "false"),
    _Param("trust_all_cert", parse_bool, "false"),
    _Param("domainname", optional(parse_domain)),
    _Param("port", parse_listen, "5269"),
    _Param("useport", parse_bool, "true"),
    _Param("serverid", _text),
    _Param("password", _text),
    _Param("coservers", parse_names, "", attr="coserver_names"),
    _Param("usemuxport", parse_bool, "true"),
    _Param("database", parse_path, "iim.db"),
    _Param("maxstanzasize", at_least(10000, "expected a size in bytes, at least 10000"),
           "262144"),
    _Param("negotiation_timeout", at_least(1, "expected a number of seconds, at least 1"), "30"),
    _Param("stanza_timeout", at_least(1, "expected a number of seconds, at least 1"), "60"),
    _Param("max_unauthenticated", positive, "5000"),
    _Param("muxlink_allow", parse_networks, "127.0.0.0/8, ::1"),
    _Param("muxlink_secretfile", optional(parse_path)),
    _Param("muxlink_tls", parse_link_tls, "auto"),
    _Param("s2s_hosts", parse_host_overrides, ""),
    _Param("s2s_nameservers", parse_nameservers, ""),
    _Param("dialback_secretfile", optional(parse_path)),
    _Param("s2s_idle_timeout", at_least(1, "expected a number of seconds, at least 1"), "600"),
    _Param("s2s_queue_limit", positive, "1000"),
    _Param("httpport", optional(parse_listen)),
    _Param("http_allow_plain", parse_bool, "false"),
    _Param("http_origins", parse_origins, ""),
)

MUX_PARAMS = (
    _Param("listenport", parse_listen, ":5222"),
    _Param("serverport", parse_listen, "45222"),
    _Param("numinstances", positive, "1"),
    _Param("maxthreads", positive, "5"),
    _Param("maxsessions", positive, "2000"),
    _Param("stat_frequency", at_least(10, "expected a number of seconds, at least 10"), "600"),
    _Param("usessl", parse_bool, "off"),
    _Param("secconfigdir", optional(parse_path)),
    _Param("keydbprefix", parse_text_value, ""),
    _Param("certdbprefix", parse_text_value, ""),
    _Param("secmodfile", parse_nonempty, "secmod.db"),
    _Param("certnickname", parse_nonempty, "Multiplexor-Cert"),
    _Param("keystorepasswordfile", parse_path, "sslpassword.conf"),
    _Param("muxlink_secretfile", optional(parse_path)),
    _Param("muxlink_tls", parse_link_tls, "auto"),
    _Param("muxlink_cafile", optional(parse_path)),
)

COSERVER_PARAMS = (
    _Param("serverid", _text),
    _Param("password", _text),
    _Param("host", optional(parse_peer)),
    _Param("domain", optional(parse_domain)),
    _Param("requiressl", optional(parse_bool)),
)

LOG_PARAMS = (
    _Param("severity", parse_severity, "INFO"),
    _Param("url", optional(parse_log_url)),
    _Param("maxlogfilesize", parse_size, "10M"),
    _Param("maxlogfiles", positive, "10"),
)

#: ``iim.*`` parameters of the instance as a whole (both processes and iim.admin).
INSTANCE_PARAMS = (
    _Param("instancevardir", parse_path, "."),
)

#: Section prefix -> its parameters.  Coservers live under "iim_server.<name>.".
_SECTIONS = {
    "iim_server.": SERVER_PARAMS,
    "iim_mux.": MUX_PARAMS,
    "iim.log.iim_server.": LOG_PARAMS,
    "iim.log.iim_mux.": LOG_PARAMS,
}

#: Section prefix -> its limits (iim/conf/limits.py) and their dataclass.
_LIMIT_SECTIONS = {
    "iim_server.": (SERVER_LIMITS, ServerLimits),
    "iim_mux.": (MUX_LIMITS, MuxLimits),
}

#: Every parameter name, coserver ones spelt with "coserverN".
KNOWN_PARAMETERS: tuple[str, ...] = tuple(
    [prefix + p.name for prefix, params in _SECTIONS.items() for p in params]
    + [prefix + limit.name for prefix, (table, _) in _LIMIT_SECTIONS.items() for limit in table]
    + ["iim_server.coserverN." + p.name for p in COSERVER_PARAMS]
    + ["iim." + p.name for p in INSTANCE_PARAMS]
)


@dataclass(frozen=True)
class ServerSettings:
    """``iim_server.*``: the XMPP server's TLS, identity and federation."""

    sslkeystore: Path | None
    """Java keystore (JKS, JCEKS or PKCS#12) with the server key; None: no TLS."""
    keystorealias: str | None
    """Alias of the private-key entry to use; None: the keystore's only one."""
    keystorepasswordfile: Path
    """File holding ``Internal (Software) Token:password`` for the keystore."""
    keypasswordfile: Path | None
    """Same form, for a key entry whose password differs; None: the store's."""
    requiressl: bool
    """Refuse every stream (client or server) that does not STARTTLS first."""
    trust_all_cert: bool
    """Accept any peer certificate, logging it (testing only)."""
    domainname: str
    """The XMPP domain served; default: this host's DNS domain."""
    port: HostPort
    """Where streams from servers (and direct clients such as gateways) arrive."""
    useport: bool
    """Listen on `port` at all."""
    serverid: str | None
    """Our name towards coservers (their ``coserverN.serverid`` for us)."""
    password: str | None = field(repr=False)
    """Our secret towards coservers (their ``coserverN.password`` for us)."""
    coserver_names: tuple[str, ...]
    """``iim_server.coservers``, lower-cased, in order."""
    usemuxport: bool
    """Accept multiplexor links on ``iim_mux.serverport``."""
    database: Path
    """SQLite database: users (salted SCRAM credentials), rosters, offline messages."""
    maxstanzasize: int
    """Largest stanza accepted, in bytes (advertised per XEP-0478)."""
    negotiation_timeout: int
    """Seconds a new connection has to finish TLS, authentication and binding."""
    stanza_timeout: int
    """Seconds a started stanza may take to finish arriving (slow-drip defence)."""
    max_unauthenticated: int
    """Connections still negotiating, at most; more are refused at once."""
    muxlink_allow: tuple
    """Networks multiplexor links may come from (default: loopback only)."""
    muxlink_secretfile: Path | None
    """Password file with the secret multiplexor links must prove; None: none
    (then links are accepted from loopback only)."""
    muxlink_tls: str = "auto"
    """TLS 1.3 on multiplexor links (our keystore's certificate): ``auto`` unless
    the link is loopback, ``on`` always, ``off`` never (non-loopback links refused)."""
    s2s_hosts: tuple = ()
    """(domain, HostPort) pairs: where to reach a domain instead of DNS SRV."""
    s2s_nameservers: tuple = ()
    """HostPort DNS servers for SRV/A lookups; empty: the system's."""
    dialback_secretfile: Path | None = None
    """Password file with the dialback secret (XEP-0185); None: random per start."""
    s2s_idle_timeout: int = 600
    """Seconds an s2s stream may carry nothing before it is closed."""
    s2s_queue_limit: int = 1000
    """Stanzas waiting for one remote domain while its connection is set up."""
    httpport: HostPort | None = None
    """The XMPP/HTTP gateway (WebSocket, BOSH, the web client) listens here; None: off."""
    http_allow_plain: bool = False
    """Web sessions over plain HTTP even when ``requiressl`` is true (a test page)."""
    http_origins: tuple = ()
    """Web origins that may open web sessions besides the gateway's own; ("*",): any."""
    limits: ServerLimits = ServerLimits()
    """The bounds on what peers can make the server hold (iim/conf/limits.py)."""


@dataclass(frozen=True)
class MuxSettings:
    """``iim_mux.*``: the multiplexor."""

    listenport: HostPort
    """Where clients connect; host optional (all addresses)."""
    serverport: HostPort
    """Where the server listens for multiplexor links and the mux connects."""
    numinstances: int
    """Multiplexor processes."""
    maxthreads: int
    """Relay threads (and so server links) per process."""
    maxsessions: int
    """Client connections per process."""
    stat_frequency: int
    """Seconds between statistics lines (at least 10)."""
    usessl: bool
    """Terminate legacy SSL (TLS from the first byte) at the multiplexor."""
    secconfigdir: Path | None
    """Directory of the NSS database holding the multiplexor's certificate."""
    keydbprefix: str
    """Prefix of the NSS key database file name."""
    certdbprefix: str
    """Prefix of the NSS certificate database file name."""
    secmodfile: str
    """NSS security module database file name."""
    certnickname: str
    """Nickname of the certificate in the NSS database (case-sensitive)."""
    keystorepasswordfile: Path
    """File holding ``Internal (Software) Token:password`` for the NSS database."""
    muxlink_secretfile: Path | None
    """Password file with the secret proved to the server on each link; None: none
    (then the mux links only to a loopback server address)."""
    muxlink_tls: str = "auto"
    """TLS 1.3 on the links: ``auto`` unless the server address is loopback, ``on``
    always, ``off`` never (a non-loopback server address is then refused)."""
    muxlink_cafile: Path | None = None
    """PEM trust anchors for the server's link certificate; None: the system's."""
    limits: MuxLimits = MuxLimits()
    """Per-source bounds on client connections (iim/conf/limits.py)."""


@dataclass(frozen=True)
class CoserverSettings:
    """``iim_server.<name>.*``: one federated peer server."""

    name: str
    """The name listed in ``iim_server.coservers``, e.g. ``coserver1``."""
    serverid: str | None
    """The peer's id (our ``serverid`` on the peer)."""
    password: str | None = field(repr=False)
    """The peer's secret (our ``password`` on the peer)."""
    host: HostPort
    """Where the peer listens (port 5269 unless given)."""
    domain: str
    """The peer's XMPP domain; default: the host name."""
    requiressl: bool | None
    """TLS required with this peer; None: as ``iim_server.requiressl``."""

    def effective_requiressl(self, global_requiressl: bool) -> bool:
        """Whether TLS is required with this peer, given ``iim_server.requiressl``."""
        return global_requiressl or bool(self.requiressl)


@dataclass(frozen=True)
class ComponentLog:
    """``iim.log.<component>.*``: one process's log."""

    severity: Severity
    """Least severe level written."""
    url: Path | None
    """Log file (a path or a file:// URL); None: standard error."""
    maxlogfilesize: int
    """Bytes before the file is rotated."""
    maxlogfiles: int
    """Rotated files kept."""


@dataclass(frozen=True)
class LogSettings:
    server: ComponentLog
    mux: ComponentLog


@dataclass(frozen=True)
class Config:
    """Everything read from one iim.conf, typed and checked."""

    path: Path | None
    base_dir: Path
    server: ServerSettings
    mux: MuxSettings
    coservers: tuple[CoserverSettings, ...]
    log: LogSettings
    warnings: tuple[Diagnostic, ...]
    raw: RawConfig = field(repr=False)
    source: str = "iim.conf"
    """The file name used in diagnostics (the path as given)."""
    instancevardir: Path | None = None
    """``iim.instancevardir``: the runtime folder (pid files, control sockets,
    captured standard error); default: the folder holding iim.conf."""

    def line_of(self, param: str) -> int | None:
        """The line that set `param`, or None when it has its default."""
        value = self.raw.get(param)
        return None if value is None else value.line

    def diagnostic(self, param: str, message: str,
                   severity: Severity = Severity.ERROR) -> Diagnostic:
        """A finding about `param` made after loading, pointing at its line."""
        return Diagnostic(self.source, self.line_of(param), param, message, severity)

    def coserver(self, name: str) -> CoserverSettings | None:
        return next((c for c in self.coservers if c.name == name.lower()), None)


class _Reader:
    """Typed reads from one lexed file, collecting diagnostics."""

    def __init__(self, lexed: Lexed, source: str, base_dir: Path) -> None:
        self.raw = lexed.raw
        self.source = source
        self.base_dir = base_dir
        self.failed: set[str] = set(lexed.broken)
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def section(self, prefix: str, params: tuple[_Param, ...]) -> dict[str, Any]:
        return {p.field_name: self.value(prefix + p.name, p) for p in params}

    def value(self, key: str, param: _Param) -> Any:
        """`key` typed by `param`; its default when unset or wrong."""
        raw = self.raw.entries.get(key)
        if raw is not None and key not in self.failed:
            try:
                return self._resolve(param.convert(raw.value))
            except Invalid as bad:
                self.failed.add(key)
                self.error(raw.line, key, _invalid_message(str(bad), key, raw.value))
        return None if param.default is None else self._resolve(param.convert(param.default))

    def present(self, key: str) -> bool:
        """Set in the file, even if wrongly."""
        return key in self.raw.entries or key in self.failed

    def line(self, key: str) -> int | None:
        raw = self.raw.entries.get(key)
        return None if raw is None else raw.line

    def error(self, line: int | None, param: str | None, message: str) -> None:
        self.errors.append(Diagnostic(self.source, line, param, message))

    def warn(self, line: int | None, param: str | None, message: str) -> None:
        self.warnings.append(Diagnostic(self.source, line, param, message, Severity.WARNING))

    def _resolve(self, value: Any) -> Any:
        kind, bare = split_nss_kind(value) if isinstance(value, Path) else ("", value)
        if kind:                                    # "sql:dir" / "dbm:dir", as NSS tools take it
            return Path(kind + str(self._resolve(bare)))
        if isinstance(value, Path) and not value.is_absolute():
            return self.base_dir / value
        return value


def _invalid_message(expected: str, key: str, value: str) -> str:
    return expected if is_secret(key) else f"{expected}, got {show(value)}"


def build(lexed: Lexed, source: str, path: Path | None, base_dir: Path,
          check_files: bool) -> Config:
    """Type and check a lexed file; ConfigError with every error found."""
    reader = _Reader(lexed, source, base_dir)
    server = _server(reader)
    mux = MuxSettings(**reader.section("iim_mux.", MUX_PARAMS),
                      limits=_limits(reader, "iim_mux."))
    coservers = _coservers(reader, server)
    log = LogSettings(_log(reader, "iim_server"), _log(reader, "iim_mux"))
    instancevardir = reader.value("iim.instancevardir", INSTANCE_PARAMS[0])
    _check_legacy_ssl(reader, mux)
    _check_gateway(reader, server, mux)
    _warn_unknown(reader, server)
    if check_files:
        _check_files(reader, server, mux)
    errors = _by_line(lexed.errors + reader.errors)
    warnings = _by_line(lexed.raw.warnings + reader.warnings)
    if errors:
        raise ConfigError(errors, warnings)
    return Config(path, base_dir, server, mux, coservers, log, tuple(warnings),
                  lexed.raw, source, instancevardir)


def _by_line(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=lambda d: (d.line is None, d.line or 0))


def _server(reader: _Reader) -> ServerSettings:
    values = reader.section("iim_server.", SERVER_PARAMS)
    if values["domainname"] is None:
        values["domainname"] = host_domain()
    return ServerSettings(**values, limits=_limits(reader, "iim_server."))


def _limits(reader: _Reader, prefix: str):
    """A section's limits; a value outside its sane range is warned about."""
    table, dataclass_ = _LIMIT_SECTIONS[prefix]
    default = defaults(dataclass_)
    values = {}
    for limit in table:
        key = prefix + limit.name
        values[limit.name] = value = reader.value(
            key, _Param(limit.name, limit.convert, default[limit.name]))
        low, high = limit.sane
        if not low <= value <= high and reader.present(key):
            reader.warn(reader.line(key), key, _absurd(value, low, high, default[limit.name]))
    return dataclass_(**values)


def _absurd(value: int, low: int, high: int, default: str) -> str:
    if value < low:
        return (f"{value} is below {low}, the least this limit is meant for: it will refuse "
                f"legitimate use (default {default})")
    return (f"{value} is above {high}, the most this limit is meant for: it protects "
            f"nothing (default {default})")


def _log(reader: _Reader, component: str) -> ComponentLog:
    return ComponentLog(**reader.section(f"iim.log.{component}.", LOG_PARAMS))


def _coservers(reader: _Reader, server: ServerSettings) -> tuple[CoserverSettings, ...]:
    found = (_coserver(reader, name, server) for name in server.coserver_names)
    return tuple(coserver for coserver in found if coserver is not None)


def _coserver(reader: _Reader, name: str, server: ServerSettings) -> CoserverSettings | None:
    prefix = f"iim_server.{name}."
    keys = [key for key in reader.failed | reader.raw.entries.keys() if key.startswith(prefix)]
    if not keys:
        reader.error(reader.line("iim_server.coservers"), "iim_server.coservers",
                     f'"{name}" has no parameters (expected {prefix}host at least)')
        return None
    values = reader.section(prefix, COSERVER_PARAMS)
    if values["host"] is None:
        host_key = prefix + "host"
        if not reader.present(host_key):
            lines = [line for line in map(reader.line, keys) if line is not None]
            reader.error(min(lines, default=None), host_key,
                         "missing; every coserver needs a host")
        elif host_key not in reader.failed:          # present but empty
            reader.error(reader.line(host_key), host_key, "empty; every coserver needs a host")
        return None
    values["domain"] = values["domain"] or values["host"].host.lower()
    _warn_requiressl_override(reader, prefix, values["requiressl"], server.requiressl)
    return CoserverSettings(name=name, **values)


def _warn_requiressl_override(reader: _Reader, prefix: str, requiressl: bool | None,
                              global_requiressl: bool) -> None:
    if requiressl is False and global_requiressl:
        key = prefix + "requiressl"
        reader.warn(reader.line(key), key, "has no effect: iim_server.requiressl is true, "
                                           "so every coserver must use TLS")


def _check_legacy_ssl(reader: _Reader, mux: MuxSettings) -> None:
    if mux.usessl and not reader.present("iim_mux.secconfigdir"):
        reader.error(reader.line("iim_mux.usessl"), "iim_mux.secconfigdir",
                     "missing; iim_mux.usessl is on and needs the NSS database directory")


def _check_gateway(reader: _Reader, server: ServerSettings, mux: MuxSettings) -> None:
    """The XMPP/HTTP gateway (iim/server/web): a port of its own. (What it allows
    over plain HTTP is iim.admin check's to say, and the server's at start.)"""
    where = server.httpport
    if where is None:
        return
    taken = [("iim_server.port", server.port, server.useport),
             ("iim_mux.serverport", mux.serverport, server.usemuxport)]
    for key, other, used in taken:
        if used and other.port == where.port and (other.host == where.host or None in
                                                  (other.host, where.host)):
            reader.error(reader.line("iim_server.httpport"), "iim_server.httpport",
                         f"{where} is also {key}; the gateway needs a port of its own")


def _check_files(reader: _Reader, server: ServerSettings, mux: MuxSettings) -> None:
    if server.sslkeystore is not None:
        _check_file(reader, "iim_server.sslkeystore", server.sslkeystore)
        _check_file(reader, "iim_server.keystorepasswordfile", server.keystorepasswordfile)
        if server.keypasswordfile is not None:
            _check_file(reader, "iim_server.keypasswordfile", server.keypasswordfile)
    if mux.usessl:
        _check_file(reader, "iim_mux.keystorepasswordfile", mux.keystorepasswordfile)
        if mux.secconfigdir is not None:
            _check_dir(reader, "iim_mux.secconfigdir", split_nss_kind(mux.secconfigdir)[1])


def _check_file(reader: _Reader, key: str, path: Path) -> None:
    if os.path.isdir(path):
        _file_error(reader, key, "expected a file, found a directory", path)
    elif not os.path.isfile(path):
        _file_error(reader, key, "file not found", path)


def _check_dir(reader: _Reader, key: str, path: Path) -> None:
    if os.path.isfile(path):
        _file_error(reader, key, "expected a directory, found a file", path)
    elif not os.path.isdir(path):
        _file_error(reader, key, "directory not found", path)


def _file_error(reader: _Reader, key: str, message: str, path: Path) -> None:
    if key not in reader.failed:
        reader.error(reader.line(key), key, f"{message}: {show(str(path), None)[1:-1]}")


def _warn_unknown(reader: _Reader, server: ServerSettings) -> None:
    """Warn about keys in our sections that nothing reads."""
    names = server.coserver_names
    report_unlisted = "iim_server.coservers" not in reader.failed
    reported: set[str] = set()
    candidates = {prefix: _candidates(prefix, names) for prefix in _SECTIONS}
    for key, line in sorted(_first_lines(reader.raw).items(), key=lambda item: item[1]):
        prefix = _section_prefix(key)
        rest = key[len(prefix or ""):]
        if prefix is None or rest in candidates[prefix]:
            continue
        unlisted = _unlisted_coserver(prefix, rest, names)
        if unlisted is None:
            reader.warn(line, key, _unknown_message(prefix, rest, candidates[prefix]))
        elif report_unlisted and unlisted not in reported:
            reported.add(unlisted)
            reader.warn(line, key, f'"{unlisted}" is not listed in iim_server.coservers; '
                                   "its parameters are ignored")


def _unlisted_coserver(prefix: str, rest: str, names: tuple[str, ...]) -> str | None:
    """The coserver name in ``iim_server.coserverN.x`` when N is not listed."""
    name, dot, _ = rest.partition(".")
    if prefix == "iim_server." and dot and _COSERVER_NAME.fullmatch(name) and name not in names:
        return name
    return None


def _first_lines(raw: RawConfig) -> dict[str, int]:
    lines = {key: value.line for key, value in raw.entries.items()}
    for key, variants in raw.variants.items():
        first = min(value.line for value in variants.values())
        lines[key] = min(lines.get(key, first), first)
    return lines


def _section_prefix(key: str) -> str | None:
    return next((prefix for prefix in _SECTIONS if key.startswith(prefix)), None)


def _candidates(prefix: str, coserver_names: tuple[str, ...]) -> dict[str, None]:
    """What may follow `prefix`, as an ordered set."""
    names = [p.name for p in _SECTIONS[prefix]]
    names += [limit.name for limit in _LIMIT_SECTIONS.get(prefix, ((), None))[0]]
    if prefix == "iim_server.":
        names += [f"{c}.{p.name}" for c in coserver_names for p in COSERVER_PARAMS]
    return dict.fromkeys(names)


def _unknown_message(prefix: str, rest: str, candidates: dict[str, None]) -> str:
    close = difflib.get_close_matches(rest, list(candidates), n=1, cutoff=0.75)
    hint = f'; did you mean "{prefix}{close[0]}"?' if close else ""
    return f"unknown parameter (ignored){hint}"
