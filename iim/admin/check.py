"""``iim.admin check``: is this configuration usable? One line per finding.

Each line starts with ``OK``, ``WARNING`` or ``ERROR`` and names the file
and parameter it is about. The configuration is usable when no line is an
ERROR. Keystores and NSS databases are opened for real (read-only), so a
wrong password or a missing nickname shows here rather than at start-up.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from cryptography.hazmat.primitives import serialization

from iim import conf
from iim.keys.errors import KeyMaterialError
from iim.keys.keystore import load_server_material
from iim.keys.material import KeyMaterial, is_self_signed, issued_by
from iim.keys.passwords import read_password_file, secret_file_warnings
from iim.keys.trust import matches, presented_names

EXPIRY_WARNING = dt.timedelta(days=30)


class Level(enum.Enum):
    OK = "OK"
    WARNING = "WARNING"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str

    def __str__(self) -> str:
        return f"{self.level.value}: {self.text}"


def check(path, *, now: dt.datetime | None = None) -> list[Finding]:
    """Every finding for the configuration at ``path``, in reading order."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        config = conf.load(path)
    except conf.ConfigError as err:
        return [Finding(_level(d), str(d)) for d in [*err.diagnostics, *err.warnings]]
    findings = [Finding(Level.WARNING, str(w)) for w in config.warnings]
    findings.append(Finding(Level.OK, f"{path}: configuration read"))
    findings += [Finding(Level.WARNING, w) for w in secret_file_warnings(config, "all")]
    findings += _server_findings(config, now)
    findings += _federation_findings(config)
    findings += _mux_findings(config, now)
    findings += _link_findings(config)
    findings += _gateway_findings(config)
    return findings


def _gateway_findings(config) -> list[Finding]:
    """The XMPP/HTTP gateway (iim/server/web): where, and what it allows over plain HTTP."""
    server = config.server
    where = server.httpport
    if where is None:
        return [Finding(Level.OK, "iim_server.httpport is not set: no XMPP over "
                                  "WebSocket/BOSH, no web client")]
    host = f"{where.host or 'this host'}:{where.port}"
    if server.sslkeystore is None:
        return [Finding(Level.WARNING, f"iim_server.httpport: the gateway on {host} serves "
                                       "plain HTTP only (no iim_server.sslkeystore): passwords "
                                       "cross the network unencrypted")]
    found = [Finding(Level.OK, f"iim_server.httpport: the gateway on {host}: web client at "
                               "https://, WebSocket at /ws, BOSH at /http-bind")]
    if server.http_allow_plain and server.requiressl:
        # As the server's start-up log: on loopback it is said, anywhere else a warning.
        local = where.loopback_only
        found.append(Finding(Level.OK if local else Level.WARNING,
                             "iim_server.http_allow_plain is true: web sessions over plain "
                             "HTTP are allowed although iim_server.requiressl is true "
                             f"({'loopback only; ' if local else ''}SASL PLAIN is not "
                             "offered on them)"))
    elif not server.requiressl:
        found.append(Finding(Level.OK, "iim_server.httpport: plain HTTP carries web sessions "
                                       "too (iim_server.requiressl is false)"))
    return found


def _link_findings(config) -> list[Finding]:
    """The multiplexor links (docs/muxlink.md): one line when they are not authenticated,
    one when a TLS setting cannot work."""
    server = config.server
    found = []
    if server.usemuxport and server.muxlink_secretfile is None:
        found.append(Finding(Level.WARNING, "mux links are not authenticated (no "
                             "iim_server.muxlink_secretfile): accepted from loopback only"))
    if server.usemuxport and server.muxlink_tls == "on" and server.sslkeystore is None:
        found.append(Finding(Level.ERROR, "iim_server.muxlink_tls is on but "
                             "iim_server.sslkeystore is not set: no certificate for the links"))
    return found


def _federation_findings(config) -> list[Finding]:
    """Coserver pairs (docs/federation.md: mirrored serverid/password) that cannot work."""
    server, found = config.server, []
    own = bool(server.serverid and server.password)
    if bool(server.serverid) != bool(server.password):
        found.append(Finding(Level.WARNING, "iim_server.serverid and iim_server.password go "
                             "together: with one alone this server proves nothing to its "
                             "coservers"))
    for coserver in config.coservers:
        where = f"iim_server.{coserver.name}"
        if bool(coserver.serverid) != bool(coserver.password):
            found.append(Finding(Level.WARNING, f"{where}.serverid and {where}.password go "
                                 f"together: with one alone {coserver.domain} is not asked "
                                 "for a coserver proof"))
        elif coserver.serverid and not own:
            found.append(Finding(Level.WARNING, f"{where}: {coserver.domain} must prove its "
                                 "serverid/password, but iim_server.serverid/password are not "
                                 "set: it will refuse this server's streams"))
        if not server.useport:
            found.append(Finding(Level.WARNING, f"{where}: iim_server.useport is false: no "
                                 "server-to-server streams, so coservers cannot reach us"))
            break
    return found


def usable(findings) -> bool:
    return not any(f.level is Level.ERROR for f in findings)


def _level(diagnostic) -> Level:
    return Level.ERROR if diagnostic.severity is conf.Severity.ERROR else Level.WARNING


def _server_findings(config, now):
    server = config.server
    if server.trust_all_cert:
        yield Finding(Level.WARNING, "iim_server.trust_all_cert is true: every peer certificate "
                                     "is accepted and logged; use this for testing only")
    if server.sslkeystore is None:
        yield Finding(Level.WARNING, "iim_server.sslkeystore is not set: the server offers no "
                                     "TLS")
        return
    try:
        material, warnings = _load_server(server)
    except KeyMaterialError as err:
        yield Finding(Level.ERROR, str(err))
        return
    yield from warnings
    yield from _material_findings(material, "iim_server.sslkeystore", server.domainname, now)
    if not material.trust_anchors and config.coservers and not server.trust_all_cert:
        yield Finding(Level.WARNING, "iim_server.sslkeystore: no trusted-certificate entry: "
                                     "coserver certificates cannot be verified")


def _mux_findings(config, now):
    mux = config.mux
    if mux.usessl and config.server.requiressl:
        yield Finding(Level.WARNING, "iim_mux.usessl and iim_server.requiressl are both on: "
                                     "legacy-SSL clients never ask for STARTTLS")
    if mux.secconfigdir is None:
        return
    try:
        material, warnings = _load_mux(mux)
    except KeyMaterialError as err:
        yield Finding(Level.ERROR if mux.usessl else Level.WARNING, str(err))
        return
    yield from warnings
    findings = _material_findings(material, "iim_mux.certnickname", config.server.domainname,
                                  now)
    if mux.usessl:
        yield from findings
    else:   # the database is not used yet: its problems are worth knowing, not fatal
        yield from (Finding(Level.WARNING, f.text) if f.level is Level.ERROR else f
                    for f in findings)


def _load_server(server):
    material, warnings = load_server_material(server)
    return material, [Finding(Level.WARNING, w) for w in warnings]


def _load_mux(mux):
    from iim.keys.nss import load_nss        # the NSS extension loads only when needed
    pwfile = read_password_file(mux.keystorepasswordfile, "iim_mux.keystorepasswordfile",
                                check_mode=False)
    material = load_nss(mux.secconfigdir, certdbprefix=mux.certdbprefix,
                        keydbprefix=mux.keydbprefix, secmodfile=mux.secmodfile,
                        nickname=mux.certnickname, password=pwfile.password)
    return material, [Finding(Level.WARNING, w) for w in pwfile.warnings]


def _material_findings(material: KeyMaterial, param: str, domain: str, now):
    where = f"{param}: {material.source}"
    yield _key_match(material, where)
    yield _key_kind(material, where)
    yield _completeness(material, where)
    yield from _expiry(material, where, now)
    yield _names(material, where, domain)


def _key_match(material, where) -> Finding:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = material.key.public_key().public_bytes(serialization.Encoding.DER, spki)
    theirs = material.certificate.public_key().public_bytes(serialization.Encoding.DER, spki)
    if ours != theirs:
        return Finding(Level.ERROR, f"{where}: the private key does not match the certificate")
    return Finding(Level.OK, f"{where}: key matches certificate "
                             f"{material.certificate.subject.rfc4514_string()}")


def _key_kind(material, where) -> Finding:
    """Which kind of key the certificate presents (ECDSA handshakes cost a fraction
    of RSA ones: bench/MUX.md)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    key = material.certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        kind = f"an RSA {key.key_size}-bit key"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        kind = f"an ECDSA {curves.get(key.curve.name, key.curve.name)} key"
    else:
        kind = f"a {type(key).__name__.removesuffix('PublicKey')} key"
    return Finding(Level.OK, f"{where}: serves {kind}")


def _completeness(material, where) -> Finding:
    last = material.chain[-1]
    anchored = is_self_signed(last) or any(issued_by(last, a) for a in material.trust_anchors)
    if not anchored:
        return Finding(Level.WARNING, f"{where}: chain incomplete: the issuer "
                                      f"{last.issuer.rfc4514_string()} is not in the store")
    count = len(material.chain)
    return Finding(Level.OK, f"{where}: chain complete ({count} certificate{'s' * (count > 1)})")


def _expiry(material, where, now):
    for cert in material.chain:
        ends = cert.not_valid_after_utc
        who = cert.subject.rfc4514_string()
        if now > ends:
            yield Finding(Level.ERROR, f"{where}: {who} expired on {ends:%Y-%m-%d}")
        elif now < cert.not_valid_before_utc:
            yield Finding(Level.ERROR, f"{where}: {who} is not valid before "
                                       f"{cert.not_valid_before_utc:%Y-%m-%d}")
        elif ends - now < EXPIRY_WARNING:
            yield Finding(Level.WARNING, f"{where}: {who} expires in {(ends - now).days} days "
                                         f"({ends:%Y-%m-%d})")
        else:
            yield Finding(Level.OK, f"{where}: {who} valid until {ends:%Y-%m-%d}")


def _names(material, where, domain) -> Finding:
    if matches(domain, material.certificate):
        return Finding(Level.OK, f"{where}: certificate names iim_server.domainname {domain}")
    shown = ", ".join(presented_names(material.certificate)) or "no DNS or IP names"
    return Finding(Level.ERROR, f"{where}: certificate does not name iim_server.domainname "
                                f"{domain} (it names {shown})")
