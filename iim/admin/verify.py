"""``python -m iim.admin verify``: connect as a client would, and say whether it is secure.

This is the original product's "verify a secure Instant Messenger connection"
procedure (log in, look for the lock icon) as a command an operator can run
and a script can test: exit status 0 only when the lock would show.

Theory of operation
-------------------
The XMPP side is the project's own sans-I/O client, ``iim.xmpp.ClientStream``,
which negotiates exactly as RFC 6120 asks a client to (STARTTLS, SASL, resource
binding). This module only moves its bytes, blocking, over a socket:

    socket  ->  [TLS from the first byte: legacy SSL]  ->  [STARTTLS]  ->  XMPP

Each TLS layer is an ``iim.tlsbio.TLSLayer`` (TLS over memory BIOs; its
theory of operation is there) moved by a ``TLSTransport`` stacked on the
transport below it, so STARTTLS inside legacy SSL is one layer stacked on
another, with nothing special about it.

Trust is decided here, not by OpenSSL: the handshake runs with
``CERT_NONE`` so that the chain can be shown whatever it is worth, and the
chain is then judged by ``iim.keys.trust.verify_peer`` (the server's own rules:
RFC 6125 names as RFC 7590 profiles them for XMPP, validity dates, the path up
to a trusted CA, RFC 5280 validation), which says *why* a chain fails. Until
that verdict is in, nothing but the TLS handshake has gone over the layer:
a certificate that is not trusted ends the check before any credential is
sent, so verifying an impostor never hands it a password (even PLAIN's).

The certificate must name the XMPP domain of --user (RFC 7590 §3.2), not
the host we connect to: that is what a client checks.

Where TLS ends. The multiplexor relays bytes without reading them unless
``iim_mux.usessl`` is on; so STARTTLS through it is terminated by the server
(end to end), and legacy SSL (TLS from the first byte) is terminated by the
multiplexor, which then talks to the server in the clear over its link. The
report says so, and when it can read the local key material it also names
which certificate answered (the server's keystore entry, the multiplexor's
NSS certificate).
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import ssl
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from iim import conf
from iim.keys.errors import KeyMaterialError
from iim.keys.passwords import TOKEN_NAMES, read_password_file
from iim.keys.trust import Verdict, certificate_summary, verify_peer
from iim.tlsbio import UNEXPECTED_EOF, TLSFailed, TLSLayer
from iim.xmpp import sasl
from iim.xmpp.client_stream import ClientStream, TLSMode
from iim.xmpp.errors import StreamErrorCondition
from iim.xmpp.events import Authenticated, SessionEstablished, StartTLS, StreamEnded
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import SASL_NS, TLS_NS, q

__all__ = ["EXIT_CANNOT_CHECK", "EXIT_NOT_SECURE", "EXIT_SECURE", "add_verify_parser",
           "cmd_verify"]

EXIT_SECURE = 0
EXIT_NOT_SECURE = 1
EXIT_CANNOT_CHECK = 2
DEFAULT_TIMEOUT = 10.0
GOOD_VERSIONS = ("TLSv1.2", "TLSv1.3")
#: OpenSSL reasons that mean "the peer speaks only a TLS older than ours (1.2)".
OLD_TLS_REASONS = ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                   "NO_PROTOCOLS_AVAILABLE", "WRONG_SSL_VERSION")
#: OpenSSL reasons that mean "what came back was not TLS at all".
NOT_TLS_REASONS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                   "HTTP_REQUEST", "UNKNOWN_PROTOCOL")
#: The SASL refusal before explain_login_failure tells which it was.
LOGIN_REFUSED = "login failed: not-authorized"


class CannotCheck(Exception):
    """The check could not be made (no connection, bad input): one line, exit 2."""


class _Stop(Exception):
    """The conversation ends here; the report says why."""


# ---------------------------------------------------------------------------
# Transports: blocking, stackable


class SocketTransport:
    """The TCP connection; ``recv`` returns b"" at end of file."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where

    def send(self, data: bytes) -> None:
        if data:
            self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(65536)


class TLSTransport:
    """TLS (client side) over any transport below it: a ``TLSLayer`` whose
    bytes this moves, blocking, to and from ``lower``."""

    def __init__(self, lower, ctx: ssl.SSLContext, server_hostname: str) -> None:
        self.lower = lower
        self.where = lower.where
        self.layer = TLSLayer(ctx, server_side=False, server_hostname=server_hostname)
        self._early = b""           # plaintext that came in with the handshake's end

    def handshake(self) -> None:
        """Run the handshake to its end (TLSFailed when it fails)."""
        self.lower.send(self.layer.start())
        while not self.layer.handshake_done:
            data = self.lower.recv()
            if not data:
                self.layer.receive_eof()
            plain, out = self.layer.receive(data)
            self.lower.send(out)
            self._early += plain

    def send(self, data: bytes) -> None:
        if data:
            self.lower.send(self.layer.send(data))

    def recv(self) -> bytes:
        """Plaintext; b"" when the peer closed (close_notify or end of file)."""
        if self._early:
            data, self._early = self._early, b""
            return data
        while not self.layer.peer_closed:
            data = self.lower.recv()
            if not data:
                return b""
            plain, out = self.layer.receive(data)
            self.lower.send(out)            # TLS 1.3 may answer a key update
            if plain:
                return plain
        return b""

    def version(self) -> str:
        return self.layer.info().version

    def cipher(self) -> tuple[str, int]:
        info = self.layer.info()
        return info.cipher, info.bits

    def peer_chain(self) -> tuple[x509.Certificate, ...]:
        """The chain the peer sent, leaf first."""
        return tuple(x509.load_der_x509_certificate(der) for der in self.layer.info().peer_chain)


def client_context(*, alpn: bool) -> ssl.SSLContext:
    """TLS 1.2+; no verification by OpenSSL: ``verify_peer`` judges the chain
    right after the handshake, before anything else is sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(["xmpp-client"])      # XEP-0368, as the multiplexor expects
    return ctx


# ---------------------------------------------------------------------------
# What was seen


@dataclass
class Target:
    host: str
    port: int
    what: str                   # "the multiplexor (iim_mux.listenport)", ...
    legacy_ssl: bool
    via_mux: bool

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class Hop:
    """One TLS layer this client ran."""

    kind: str                   # "legacy SSL", "STARTTLS", "STARTTLS inside legacy SSL"
    version: str
    cipher: str
    bits: int
    chain: tuple[x509.Certificate, ...]
    verdict: Verdict


@dataclass
class Offer:
    """One <stream:features/> seen before logging in."""

    starttls: bool
    starttls_required: bool
    mechanisms: tuple[str, ...]


@dataclass
class Report:
    target: Target
    domain: str
    user: JID | None
    anchors_text: str
    hops: list[Hop] = field(default_factory=list)
    offers: list[Offer] = field(default_factory=list)
    mechanism: str | None = None
    bound: JID | None = None
    login_failure: str | None = None     # the SASL condition, e.g. "not-authorized"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def secure(self) -> bool:
        return bool(self.hops) and not self.problems


# ---------------------------------------------------------------------------
# The client


class _Probe(ClientStream):
    """ClientStream that remembers what the server offered, can stop before
    logging in, and, inside legacy SSL, STARTTLSes when asked or required."""

    def __init__(self, jid: JID, password: str, *, login: bool, inner_starttls: bool,
                 **kwargs) -> None:
        super().__init__(jid, password, **kwargs)
        self.login = login
        self.inner_starttls = inner_starttls
        self.offers: list[Offer] = []
        self._inner_asked = False

    def _on_features(self, features: Element):
        if not self.authenticated:
            self.offers.append(_offer(features))
        offer = self.offers[-1] if self.offers else None
        if (self.secure and not self._inner_asked and offer is not None and offer.starttls
                and not self.authenticated
                and (self.inner_starttls or offer.starttls_required)):
            self._inner_asked = True
            self._out += f"<starttls xmlns='{TLS_NS}'/>".encode()
            return []
        return super()._on_features(features)

    def _authenticate(self, features: Element):
        if not self.login:
            return self.close()
        return super()._authenticate(features)


def _offer(features: Element) -> Offer:
    starttls = features.find(q(TLS_NS, "starttls"))
    required = starttls is not None and starttls.find(q(TLS_NS, "required")) is not None
    mechanisms = tuple(m.text or "" for m in features.iter(q(SASL_NS, "mechanism")))
    return Offer(starttls is not None, required, mechanisms)


class Checker:
    """One verification: connect, (legacy SSL), negotiate, judge each TLS layer."""

    def __init__(self, report: Report, password: str, anchors, *, timeout: float,
                 mechanisms, inner_starttls: bool) -> None:
        self.report = report
        self.anchors = anchors
        self.timeout = timeout
        target = report.target
        self.probe = _Probe(report.user or JID.parse(report.domain), password,
                            login=report.user is not None, inner_starttls=inner_starttls,
                            tls=TLSMode.REQUIRED, mechanisms=mechanisms,
                            secure_transport=target.legacy_ssl)

    def run(self) -> Report:
        sock = _connect(self.report.target, self.timeout)
        transport = SocketTransport(sock, self.report.target.where)
        try:
            if self.report.target.legacy_ssl:
                transport = self._secure(transport, "legacy SSL")
            self._converse(transport)
        except _Stop:
            pass
        except socket.timeout:
            self.report.problems.append(
                f"no answer from {self.report.target.where} within {self.timeout:g} s "
                f"({self.probe.phase.value})")
        except TLSFailed as exc:
            self.report.problems.append(f"TLS failed after the handshake (OpenSSL: {exc})")
        except OSError as exc:
            self.report.problems.append(
                f"connection to {self.report.target.where} lost ({self.probe.phase.value}): "
                f"{exc.strerror or exc}")
        finally:
            sock.close()
        self.report.offers = self.probe.offers
        if self.probe.inner_starttls and self.report.target.legacy_ssl and self.report.offers \
                and not self.report.offers[0].starttls:
            self.report.problems.append("STARTTLS inside legacy SSL: not offered by the server "
                                        "(--inner-starttls)")
        return self.report

    def _converse(self, transport) -> None:
        probe = self.probe
        probe.start()
        transport.send(probe.data_to_send())
        while True:
            data = transport.recv()
            if not data:
                self.report.problems.append(self._closed_why())
                return
            for event in probe.receive_data(data):
                transport.send(probe.data_to_send())
                if isinstance(event, StartTLS):
                    kind = "STARTTLS inside legacy SSL" if self.report.hops else "STARTTLS"
                    transport = self._secure(transport, kind)
                    probe.tls_established()
                elif isinstance(event, Authenticated):
                    self.report.mechanism = event.mechanism
                elif isinstance(event, SessionEstablished):
                    self.report.bound = event.jid
                    probe.close()
                    transport.send(probe.data_to_send())
                    return
                elif isinstance(event, StreamEnded):
                    transport.send(probe.data_to_send())
                    self._ended(event)
                    return
            transport.send(probe.data_to_send())

    def _secure(self, lower, kind: str) -> TLSTransport:
        """Handshake, record the layer, judge its chain; _Stop when not trusted."""
        tls = TLSTransport(lower, client_context(alpn=kind == "legacy SSL"), self.report.domain)
        try:
            tls.handshake()
        except TLSFailed as exc:
            self.report.problems.append(_handshake_problem(exc, kind, self.report.target))
            raise _Stop from None
        chain = tls.peer_chain()
        verdict = verify_peer(chain, self.anchors, self.report.domain)
        name, bits = tls.cipher()
        self.report.hops.append(Hop(kind, tls.version(), name, bits, chain, verdict))
        if tls.version() not in GOOD_VERSIONS:
            self.report.problems.append(f"{kind}: {tls.version()} is older than TLS 1.2")
            raise _Stop
        if not verdict.ok:
            self.report.problems.append(f"{kind}: the certificate is not trusted: {verdict} "
                                        f"(no credential was sent)")
            raise _Stop
        return tls

    def _ended(self, event: StreamEnded) -> None:
        error = event.error
        if error is None and not event.sent_by_peer:
            return                                  # our own close: TLS-only check
        if event.sent_by_peer:
            self.report.problems.append(_peer_ended(error, self.report))
            return
        self.report.problems.append(self._our_error(error))

    def _our_error(self, error) -> str:
        offers = self.probe.offers
        text = error.text or error.condition.value
        if error.condition is StreamErrorCondition.NOT_AUTHORIZED:
            condition = text.rsplit(": ", 1)[-1]
            self.report.login_failure = condition
            return LOGIN_REFUSED if condition == "not-authorized" else \
                f"login failed: {condition}"
        if not offers and not self.report.hops:
            return (f"{self.report.target.where} did not answer with XMPP ({text}); does it "
                    f"expect legacy SSL? try --legacy-ssl")
        if not self.report.hops and offers and not offers[-1].starttls:
            return ("no TLS offered: the server's features have no STARTTLS "
                    "(iim_server.sslkeystore not set?)")
        if "mechanism" in text and offers:
            shown = ", ".join(offers[-1].mechanisms) or "none"
            return f"login not attempted: no SASL mechanism in common (the server offers {shown})"
        return f"the client gave up: {text}"

    def _closed_why(self) -> str:
        phase = self.probe.phase.value
        if not self.report.hops and not self.probe.offers and not self.report.target.legacy_ssl:
            return (f"{self.report.target.where} closed the connection before any XMPP "
                    f"answer (does it expect legacy SSL? try --legacy-ssl)")
        return f"{self.report.target.where} closed the connection ({phase})"


def _connect(target: Target, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except socket.timeout:
        raise CannotCheck(f"cannot connect to {target.where} ({target.what}): no answer "
                          f"within {timeout:g} s") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = f" (is {_component(target)} running?)" if isinstance(
            exc, ConnectionRefusedError) else ""
        raise CannotCheck(f"cannot connect to {target.where} ({target.what}): "
                          f"{reason.lower()}{hint}") from None
    sock.settimeout(timeout)
    return sock


def _component(target: Target) -> str:
    return "the multiplexor" if target.via_mux else "the server"


def _handshake_problem(exc: TLSFailed, kind: str, target: Target) -> str:
    reason = str(exc)
    if reason in OLD_TLS_REASONS:
        return f"{kind}: the peer offers only TLS older than 1.2 (OpenSSL: {reason})"
    if reason in NOT_TLS_REASONS and kind == "legacy SSL":
        return (f"legacy SSL: {target.where} did not answer with TLS (OpenSSL: {reason}); is "
                f"iim_mux.usessl off? then verify without --legacy-ssl")
    if reason == UNEXPECTED_EOF:
        return f"{kind}: the peer closed the connection during the TLS handshake"
    return f"{kind}: TLS handshake failed (OpenSSL: {reason})"


def _peer_ended(error, report: Report) -> str:
    if error is None:
        return "the server closed the stream"
    text = f" ({error.text})" if error.text else ""
    return f"the server ended the stream: {error.condition.value}{text}" + \
        _stream_error_hint(error, report)


def _stream_error_hint(error, report: Report) -> str:
    if error.condition is StreamErrorCondition.HOST_UNKNOWN:
        return f"; the server does not serve {report.domain} (iim_server.domainname)"
    if error.condition is StreamErrorCondition.POLICY_VIOLATION and report.target.legacy_ssl:
        return "; the server may require STARTTLS inside legacy SSL: try --inner-starttls"
    return ""


# ---------------------------------------------------------------------------
# Trust anchors


def load_anchors(cafile: str | None, server_material):
    """(anchors, how they were chosen): --cafile alone, else the system store
    plus the trusted entries of iim_server.sslkeystore."""
    if cafile:
        certs = _read_pem_file(Path(cafile), "--cafile")
        if not certs:
            raise CannotCheck(f"--cafile: {cafile}: no PEM certificate in it")
        return certs, f"{cafile} ({len(certs)} CA certificate{'s' * (len(certs) != 1)})"
    system = _system_store()
    parts = [f"the system store ({len(system)} CAs)"]
    keystore = list(server_material.trust_anchors) if server_material is not None else []
    if keystore:
        parts.append(f"{len(keystore)} trusted entr{'ies' if len(keystore) != 1 else 'y'} of "
                     f"iim_server.sslkeystore")
    return [*system, *keystore], " + ".join(parts)


def _system_store() -> list[x509.Certificate]:
    paths = ssl.get_default_verify_paths()
    certs = []
    with warnings.catch_warnings():       # old roots with odd serial numbers: not ours to fix
        warnings.simplefilter("ignore")
        if paths.cafile and os.path.isfile(paths.cafile):
            return _read_pem_file(Path(paths.cafile), "system CA file", quiet=True)
        if paths.capath and os.path.isdir(paths.capath):
            for entry in sorted(Path(paths.capath).iterdir()):
                certs += _read_pem_file(entry, "system CA directory", quiet=True)
    return _unique(certs)


def server_material(config, notes: list[str]):
    """The server's keystore (its certificate, its trusted entries), or None
    with a note saying why it was not read."""
    if config is None or config.server.sslkeystore is None:
        return None
    from iim.keys.keystore import load_server_material
    try:
        return load_server_material(config.server)[0]
    except KeyMaterialError as exc:
        notes.append(f"iim_server.sslkeystore not read ({exc}); its trusted entries are "
                     f"not used")
        return None


def _read_pem_file(path: Path, what: str, *, quiet: bool = False) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        if quiet:
            return []
        raise CannotCheck(f"{what}: {path}: cannot read: {exc.strerror or exc}") from None
    certs = []
    for block in data.split(b"-----BEGIN CERTIFICATE-----")[1:]:
        pem = b"-----BEGIN CERTIFICATE-----" + block.split(b"-----END CERTIFICATE-----")[0] \
            + b"-----END CERTIFICATE-----\n"
        try:
            certs.append(x509.load_pem_x509_certificate(pem))
        except ValueError:
            if not quiet:
                raise CannotCheck(f"{what}: {path}: a damaged PEM certificate") from None
    return certs


def _unique(certs):
    seen, out = set(), []
    for cert in certs:
        key = cert.fingerprint(hashes.SHA256())
        if key not in seen:
            seen.add(key)
            out.append(cert)
    return out


# ---------------------------------------------------------------------------
# Where TLS ends


def describe_ends(report: Report, config, material, notes: list[str]) -> list[str]:
    """One line per TLS layer: who holds its other end."""
    known = _known_certificates(report, config, material, notes)
    lines = []
    for hop in report.hops:
        where = _ends_at(hop, report.target)
        leaf = hop.chain[0] if hop.chain else None
        if leaf is not None and leaf.fingerprint(hashes.SHA256()) in known:
            where += f"; its certificate is {known[leaf.fingerprint(hashes.SHA256())]}"
        lines.append(f"{hop.kind}: {where}")
    return lines


def _ends_at(hop: Hop, target: Target) -> str:
    if hop.kind == "legacy SSL":
        return ("ends at the multiplexor (legacy SSL: it decrypts, then relays to the server "
                "over its link, which TLS does not protect)")
    if hop.kind == "STARTTLS inside legacy SSL":
        return "ends at the server, inside the multiplexor's TLS (end to end)"
    if target.via_mux:
        return ("ends at the server (the multiplexor relays STARTTLS untouched: TLS runs "
                "end to end)")
    return f"ends at {target.what}"


def _known_certificates(report: Report, config, material, notes: list[str]) -> dict:
    """SHA-256 -> name, for the local certificates a layer may present."""
    if config is None:
        return {}
    known = {}
    if material is not None:
        known[material.certificate.fingerprint(hashes.SHA256())] = \
            "the server's (iim_server.sslkeystore)"
    if any(h.kind == "legacy SSL" for h in report.hops) and config.mux.usessl:
        try:
            from iim.mux.tls import load_material
            mux = load_material(config.mux)[0]
        except (KeyMaterialError, ImportError) as exc:
            notes.append(f"the multiplexor's certificate was not read ({exc})")
        else:
            known[mux.certificate.fingerprint(hashes.SHA256())] = (
                f"the multiplexor's ({config.mux.certnickname!r} in iim_mux.secconfigdir)")
    return known


# ---------------------------------------------------------------------------
# Output


def render(report: Report, ends: list[str]) -> list[str]:
    """The report, one labelled line each (continuations indented)."""
    target = report.target
    how = "legacy SSL (TLS from the first byte)" if target.legacy_ssl else "STARTTLS"
    out = [_row("lock", lock_line(report)),
           _row("connection", f"{target.where}, {target.what}, {how}")]
    for hop in report.hops:
        out += _hop_rows(hop, report)
    for line in ends:
        out.append(_row("TLS ends", line))
    inside = _inside_line(report)
    if inside:
        out.append(_row("inside", inside))
    out.append(_row("login", _login_line(report)))
    for note in report.notes:
        out.append(_row("note", note))
    return out


def _hop_rows(hop: Hop, report: Report) -> list[str]:
    rows = [_row("TLS", f"{hop.kind}: {hop.version}, cipher {hop.cipher} ({hop.bits} bits)")]
    for i, cert in enumerate(hop.chain):
        rows.append(_row("certificate" if i == 0 else "", f"[{i}] {certificate_summary(cert)}"))
    verdict = "verified" if hop.verdict.ok else "NOT verified"
    why = "" if hop.verdict.ok else f": {hop.verdict}"
    rows.append(_row("trust", f"{verdict} for {report.domain} against {report.anchors_text}{why}"))
    return rows


def lock_line(report: Report) -> str:
    if not report.secure:
        return "NOT secure: " + (report.problems[0] if report.problems else "no TLS")
    layers = " and, inside it, ".join(_hop_phrase(hop, report.target) for hop in report.hops)
    who = f", logged in as {report.bound or report.user}" if report.user else \
        " (login not checked: give --user)"
    verified = "certificate" if len(report.hops) == 1 else "certificates"
    return f"secure: {layers}, {verified} verified for {report.domain}{who}"


def _hop_phrase(hop: Hop, target: Target) -> str:
    if hop.kind == "legacy SSL":
        return f"{hop.version} to the multiplexor (legacy SSL)"
    if hop.kind == "STARTTLS" and not target.via_mux:
        return f"{hop.version} to {target.what.split(' (')[0]}"
    return f"{hop.version} end to end to the server"


def _inside_line(report: Report) -> str | None:
    if not report.target.legacy_ssl or not report.offers:
        return None
    first = report.offers[0]
    ran = any(h.kind == "STARTTLS inside legacy SSL" for h in report.hops)
    if first.starttls_required:
        return ("the server requires STARTTLS inside legacy SSL (iim_server.requiressl): "
                + ("this client ran it; " if ran else "")
                + "clients that speak only legacy SSL cannot log in")
    if ran:
        return "this client also ran STARTTLS inside legacy SSL: TLS end to end to the server too"
    if first.starttls:
        return ("the server offers STARTTLS inside legacy SSL: a client that uses it gets TLS "
                "end to end to the server as well (check it with --inner-starttls)")
    return "the server offers no STARTTLS inside legacy SSL"


def _login_line(report: Report) -> str:
    if report.user is None:
        return "not attempted (no --user)"
    if report.bound is not None:
        return f"{report.user} with {report.mechanism}: ok, bound {report.bound}"
    if report.login_failure is not None:
        return f"{report.user}: failed ({report.login_failure})"
    return f"{report.user}: not attempted"


def _row(label: str, text: str) -> str:
    return f"{label:<12} {text}"


# ---------------------------------------------------------------------------
# Inputs


def read_password(args, jid: JID) -> str:
    """--password-file, else $IIM_PASSWORD, else a prompt (terminal) or stdin's first line."""
    if args.password_file:
        return password_from_file(Path(args.password_file))
    if os.environ.get("IIM_PASSWORD"):
        return os.environ["IIM_PASSWORD"]
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            password = getpass.getpass(f"Password for {jid.bare}: ")
        except EOFError:
            password = ""
    else:
        password = _strip_line_end(sys.stdin.readline() if sys.stdin else "")
    if not password:
        raise CannotCheck("no password: give --password-file FILE, set $IIM_PASSWORD, or "
                          "type it at the prompt")
    return password


def password_from_file(path: Path) -> str:
    """iim's password-file format (``Internal (Software) Token:PASSWORD``), or, as
    ``user add --password-file`` reads it, the password alone on the first line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CannotCheck(f"--password-file: {path}: cannot read: {exc.strerror or exc}") \
            from None
    except UnicodeDecodeError:
        raise CannotCheck(f"--password-file: {path}: not UTF-8 text") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if any(first.startswith(name + ":") for name in TOKEN_NAMES):
        try:
            found = read_password_file(path, "--password-file")
        except KeyMaterialError as exc:
            raise CannotCheck(str(exc)) from None
        for warning in found.warnings:
            print(f"verify: warning: {warning}", file=sys.stderr)
        return found.password
    if not first:
        raise CannotCheck(f"--password-file: {path}: the file is empty")
    _warn_if_shared(path)
    return _strip_line_end(text.split("\n", 1)[0])


def _warn_if_shared(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"verify: warning: --password-file: {path}: readable by group or others "
              f"(mode {mode:04o}); run chmod 600 {path}", file=sys.stderr)


def _strip_line_end(line: str) -> str:
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line


def _jid(text: str) -> JID:
    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise argparse.ArgumentTypeError(f"not a JID: {exc}") from None
    if jid.local is None:
        raise argparse.ArgumentTypeError("expected user@domain (a JID with a localpart)")
    return jid


def _load_config(args):
    path = conf.config_path(args.config)
    if not path.exists() and args.config is None and args.port is not None:
        return None                         # no iim.conf: --host/--port/--user suffice
    try:
        return conf.load(path, check_files=False)
    except conf.ConfigError as err:
        raise CannotCheck(str(err).splitlines()[0]) from None


def choose_target(args, config) -> Target:
    listen = config.mux.listenport if config else None
    server = config.server.port if config else None
    port = args.port or (listen.port if listen else None)
    if port is None:
        raise CannotCheck("no port: give --port, or -c iim.conf with iim_mux.listenport")
    host = args.host or _connect_host(listen.host if listen and port == listen.port else
                                      (server.host if server and port == server.port else None))
    via_mux = listen is not None and port == listen.port
    what = ("the multiplexor (iim_mux.listenport)" if via_mux else
            "the server (iim_server.port)" if server is not None and port == server.port else
            "the given address")
    if args.legacy_ssl is None:
        legacy = bool(via_mux and config.mux.usessl)
    else:
        legacy = args.legacy_ssl
    return Target(host, port, what, legacy, via_mux)


def _connect_host(configured: str | None) -> str:
    """A listen address of "every address" is reached on loopback."""
    if configured in (None, "", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if configured == "::" else configured


def _mechanisms(name: str | None):
    if name is None:
        return tuple(sasl.Mechanism)
    return (sasl.Mechanism(name),)


def explain_login_failure(report: Report, config) -> None:
    """Tell an unknown user from a wrong password by looking in the server's
    database (the server itself answers both alike, on purpose)."""
    if report.login_failure != "not-authorized" or report.user is None or config is None:
        return
    if report.user.domain != config.server.domainname:
        return
    from iim.server.storage import Storage, StorageError
    try:
        with Storage.open(config.server.database, create=False) as storage:
            exists = storage.user_exists(report.user.local)
    except StorageError:
        why = ("login failed: not-authorized (wrong password or unknown user; "
               "iim_server.database is not readable here to tell which)")
    else:
        why = (f"login failed: wrong password for {report.user.bare}" if exists else
               f"login failed: unknown user {report.user.local!r} (not in "
               f"iim_server.database; python -m iim.admin user add {report.user.local})")
    report.problems = [why if p == LOGIN_REFUSED else p for p in report.problems]


# ---------------------------------------------------------------------------
# The command


def cmd_verify(args) -> int:
    try:
        return _verify(args)
    except CannotCheck as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    except KeyboardInterrupt:
        print("verify: interrupted", file=sys.stderr)
        return EXIT_CANNOT_CHECK


def _verify(args) -> int:
    config = _load_config(args)
    user = args.user
    domain = user.domain if user else (config.server.domainname if config else None)
    if domain is None:
        raise CannotCheck("no domain: give --user user@domain, or -c iim.conf")
    target = choose_target(args, config)
    password = read_password(args, user) if user else ""
    notes: list[str] = []
    material = server_material(config, notes)
    anchors, anchors_text = load_anchors(args.cafile, material)
    report = Report(target, domain, user, anchors_text)
    Checker(report, password, anchors, timeout=args.timeout,
            mechanisms=_mechanisms(args.mechanism),
            inner_starttls=args.inner_starttls).run()
    explain_login_failure(report, config)
    ends = describe_ends(report, config, material, notes)
    report.notes += notes
    if [hop.kind for hop in report.hops] == ["legacy SSL"]:
        report.notes.append("the multiplexor-to-server link is not encrypted: keep it on a "
                            "trusted network (iim_server.muxlink_allow, muxlink_secretfile)")
    for line in render(report, ends):
        print(line)
    return EXIT_SECURE if report.secure else EXIT_NOT_SECURE


DESCRIPTION = """\
Connect to the multiplexor (iim_mux.listenport) as an XMPP client would, secure
the connection, log in as --user, and report whether the connection is secure:
the "lock icon" of the original product's procedure "To Verify a Secure Instant
Messenger Connection", with the evidence behind it.

The connection is secured with STARTTLS, which the multiplexor relays untouched
so that TLS runs end to end between client and server; or, when the
multiplexor has iim_mux.usessl on (or with --legacy-ssl), with legacy SSL: TLS
from the first byte, terminated by the multiplexor. Inside legacy SSL the
command also runs STARTTLS when the server requires it, or with
--inner-starttls whenever it is offered (as third-party clients do).

The certificate must chain to a trusted CA and name the XMPP domain of --user
(RFC 7590). Trusted CAs: --cafile FILE alone when given; otherwise the system
store plus the trusted-certificate entries of iim_server.sslkeystore (read with
iim_server.keystorepasswordfile, when readable). A certificate that is not
trusted ends the check before any credential is sent.

The password is read from --password-file FILE (iim's password-file format,
"Internal (Software) Token:PASSWORD", or the password alone on the first
line), else from $IIM_PASSWORD, else asked at the terminal without echo (or
read as one line from stdin when it is not a terminal). It is never taken
from the command line, never printed and never logged.
"""

EPILOG = """\
example:
  $ python -m iim.admin verify -c /etc/iim/iim.conf --user alice@example.com
  Password for alice@example.com:
  lock         secure: TLSv1.3 end to end to the server, certificate verified for example.com, logged in as alice@example.com/iim-3f2a9c
  connection   127.0.0.1:5222, the multiplexor (iim_mux.listenport), STARTTLS
  TLS          STARTTLS: TLSv1.3, cipher TLS_AES_256_GCM_SHA384 (256 bits)
  certificate  [0] subject=CN=im.example.com; issuer=CN=Example CA; SANs=example.com; valid 2026-01-01T00:00:00Z to 2027-01-01T00:00:00Z; sha256=3A:...
  trust        verified for example.com against the system store (146 CAs) + 1 trusted entry of iim_server.sslkeystore
  TLS ends     STARTTLS: ends at the server (the multiplexor relays STARTTLS untouched: TLS runs end to end); its certificate is the server's (iim_server.sslkeystore)
  login        alice@example.com with SCRAM-SHA-256: ok, bound alice@example.com/iim-3f2a9c

  Not secure (exit status 1), the reason on the lock line, e.g.:
  lock         NOT secure: no TLS offered: the server's features have no STARTTLS (iim_server.sslkeystore not set?)
  lock         NOT secure: STARTTLS: the certificate is not trusted: unknown CA: issuer CN=Other CA is not trusted (no credential was sent)
  lock         NOT secure: login failed: wrong password for alice@example.com

exit status:
  0  secure: TLS 1.2 or later on every layer, chain verified, name matched, logged in
     (or, without --user, everything up to the login)
  1  NOT secure: no TLS offered, TLS older than 1.2, chain not verified, name
     mismatch, login failed, ... (the lock line says which)
  2  could not check: connection refused or timed out, bad option, unreadable
     iim.conf, --cafile or --password-file (one line on stderr)
"""


def add_verify_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``verify`` on ``python -m iim.admin``'s subparsers."""
    verify = subparsers.add_parser(
        "verify", help="connect as a client and say whether the connection is secure",
        description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    verify.add_argument("-c", "--config", metavar="FILE",
                        help="iim.conf (default: $IIM_CONF, else ./iim.conf)")
    verify.add_argument("--user", type=_jid, metavar="JID",
                        help="log in as this user (user@domain); without it the check stops "
                             "before the login, and the domain is iim_server.domainname")
    verify.add_argument("--password-file", metavar="FILE",
                        help="the user's password (see above); never on the command line")
    mode = verify.add_mutually_exclusive_group()
    mode.add_argument("--legacy-ssl", dest="legacy_ssl", action="store_true", default=None,
                      help="TLS from the first byte (multiplexor with iim_mux.usessl on; the "
                           "default when iim.conf says so and the target is the multiplexor)")
    mode.add_argument("--starttls", dest="legacy_ssl", action="store_false",
                      help="STARTTLS (the default otherwise)")
    verify.add_argument("--inner-starttls", action="store_true",
                        help="inside legacy SSL, also STARTTLS whenever the server offers it")
    verify.add_argument("--host", help="connect here instead of iim_mux.listenport's host")
    verify.add_argument("--port", type=int, help="connect here instead of iim_mux.listenport's "
                                                 "port (e.g. iim_server.port: the server itself)")
    verify.add_argument("--cafile", metavar="FILE",
                        help="trust only the CA certificates in this PEM file")
    verify.add_argument("--mechanism", choices=[m.value for m in sasl.Mechanism],
                        help="SASL mechanism to use (default: the strongest offered; PLAIN "
                             "only under TLS)")
    verify.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"for the connection and each answer (default {DEFAULT_TIMEOUT:g})")
    verify.set_defaults(run=cmd_verify)
    return verify
