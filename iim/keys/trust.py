"""Is a peer's certificate trusted for a domain, and if not, why?

``verify_peer`` answers with a :class:`Verdict` whose ``failure`` is one
:class:`TrustFailure` per cause an operator can act on (expired, not yet
valid, self-signed, unknown CA, name mismatch, wrong purpose). The checks run
from the cheapest, most specific cause to the general one, so the reason
logged is the one to fix first; a chain that passes them all is then run
through cryptography's RFC 5280 path validator, whose refusal is reported as
``INVALID_CHAIN``.

Path validation is RFC 5280 §6.1 as the TLS stacks of our peers apply it
(OpenSSL under Prosody, ejabberd and slixmpp; Java's PKIX), not the stricter
CA/Browser Forum profile cryptography's verifier defaults to. The one place
they differ in practice is keyUsage on CA certificates: the web profile
demands it, RFC 5280 §6.1.4 (n) checks keyCertSign only *when keyUsage is
present*, and the JDK's keytool makes CAs with basicConstraints alone
(``keytool -genkeypair -ext bc:c``). So the CA extension policy below is the
web one with keyUsage optional (keyCertSign still required when it is there).
What matters is kept strictly: every issuer, the trust anchor included, must
be a CA by basicConstraints (a v1 certificate has none and is refused); pathLen
is honoured; every signature verifies; every certificate on the path is in
its validity period; the leaf names the domain (RFC 6125/7590) and, when it
has an EKU, allows serverAuth. ``_issuers`` checks the CA rules first, one
certificate at a time, so a refusal names the certificate and the cause
("CA certificate CN=X: not a CA (basicConstraints CA:FALSE)").

Names follow RFC 6125 as profiled for XMPP by RFC 7590: a DNS-ID in the
subjectAltName (a ``*.`` wildcard stands for one left-most label), or an
IP address SAN when the domain is an IP literal. The common name is not used.

EKU: peers act as TLS *clients* in s2s but present server certificates, so
a leaf is accepted when it has no EKU or its EKU includes serverAuth.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from .material import is_self_signed, issued_by


class TrustFailure(enum.Enum):
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    SELF_SIGNED = "self-signed"
    UNKNOWN_CA = "unknown CA"
    NAME_MISMATCH = "name mismatch"
    WRONG_PURPOSE = "not a server certificate (EKU lacks serverAuth)"
    INVALID_CHAIN = "invalid chain"
    NO_CERTIFICATE = "no certificate"


@dataclass(frozen=True)
class Verdict:
    failure: TrustFailure | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None

    def __str__(self) -> str:
        if self.ok:
            return "trusted"
        return f"{self.failure.value}: {self.detail}" if self.detail else self.failure.value


def verify_peer(chain, anchors, domain: str, *, now: dt.datetime | None = None) -> Verdict:
    """Check ``chain`` (leaf first, as the peer sent it) for ``domain``."""
    if not chain:
        return Verdict(TrustFailure.NO_CERTIFICATE)
    now = now or dt.datetime.now(dt.timezone.utc)
    reference = reference_identity(domain)
    if reference is None:
        return Verdict(TrustFailure.NAME_MISMATCH, f"{domain!r} is not a valid domain name")
    leaf, anchors = chain[0], list(anchors)
    path, anchored = build_path(leaf, chain[1:], anchors)
    for check in (_dates, _self_signed, _anchored, _name, _purpose, _issuers):
        verdict = check(leaf, path, anchored, reference, now)
        if not verdict.ok:
            return verdict
    return _rfc5280(leaf, chain, anchors, reference, now)


def build_path(leaf, sent, anchors):
    """(certificates from the leaf up, the anchor that vouches for the last one).

    The anchor is the last certificate itself when it is trusted as it is,
    the trusted certificate that issued it otherwise, None when there is none.
    Only certificates on the path count: an unrelated, expired certificate
    the peer also sent (an old cross-sign, say) changes nothing.
    """
    path, pool = [leaf], list(sent)
    while True:
        cert = path[-1]
        if cert in anchors:
            return path, cert
        anchor = next((a for a in anchors if issued_by(cert, a)), None)
        if anchor is not None:
            return path, anchor
        parent = next((c for c in pool if issued_by(cert, c)), None)
        if parent is None:
            return path, None
        pool.remove(parent)
        path.append(parent)


def reference_identity(domain: str):
    """The peer's domain as the certificate must name it: an ``ip_address``, or
    an A-label DNS name (RFC 5890) without a trailing dot. None when invalid."""
    name = domain.strip().rstrip(".")
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _dates(leaf, path, anchored, reference, now) -> Verdict:
    for cert in [leaf] + _issuer_path(path, anchored):
        who = "certificate" if cert is leaf else f"issuer {_cn(cert)}"
        if now > cert.not_valid_after_utc:
            return Verdict(TrustFailure.EXPIRED,
                           f"{who} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")
        if now < cert.not_valid_before_utc:
            return Verdict(TrustFailure.NOT_YET_VALID,
                           f"{who} valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}")
    return Verdict()


def _self_signed(leaf, path, anchored, reference, now) -> Verdict:
    if is_self_signed(leaf) and anchored is None:
        return Verdict(TrustFailure.SELF_SIGNED, f"issuer {_cn(leaf)} is the certificate itself")
    return Verdict()


def _anchored(leaf, path, anchored, reference, now) -> Verdict:
    if anchored is not None:
        return Verdict()
    return Verdict(TrustFailure.UNKNOWN_CA,
                   f"issuer {_name_text(path[-1].issuer)} is not trusted")


def _name(leaf, path, anchored, reference, now) -> Verdict:
    if _matches_reference(reference, leaf):
        return Verdict()
    shown = ", ".join(presented_names(leaf)) or "none"
    return Verdict(TrustFailure.NAME_MISMATCH, f"wanted {reference}, certificate names {shown}")


def _purpose(leaf, path, anchored, reference, now) -> Verdict:
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return Verdict()
    if ExtendedKeyUsageOID.SERVER_AUTH in eku:
        return Verdict()
    return Verdict(TrustFailure.WRONG_PURPOSE)


def _issuers(leaf, path, anchored, reference, now) -> Verdict:
    """RFC 5280 §6.1.4 for each issuer on the path, nearest first, ending with
    the trust anchor: a CA by basicConstraints, keyCertSign when keyUsage is
    present, pathLen not exceeded. (Signatures were checked as the path was
    built: ``issued_by``.)"""
    for depth, issuer in enumerate(_issuer_path(path, anchored)):
        problem = _not_a_ca(issuer) or _path_too_long(issuer, depth)
        if problem:
            return Verdict(TrustFailure.INVALID_CHAIN, problem)
    return Verdict()


def _issuer_path(path, anchored):
    """The certificates above the leaf: the rest of ``path`` and, when the top
    of the path is vouched for rather than itself an anchor, the anchor."""
    vouching = [anchored] if anchored is not None and anchored is not path[-1] else []
    return list(path[1:]) + vouching


def _not_a_ca(cert) -> str:
    who = f"CA certificate {_cn(cert)}"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"{who}: not a CA (no basicConstraints; reissue it with CA:TRUE)"
    if not constraints.ca:
        return f"{who}: not a CA (basicConstraints CA:FALSE)"
    usage = _key_usage(cert)
    if usage is not None and not usage.key_cert_sign:
        return (f"{who}: may not sign certificates "
                f"(keyUsage present without keyCertSign)")
    return ""


def _path_too_long(cert, cas_below: int) -> str:
    """``cas_below``: CA certificates between ``cert`` and the leaf."""
    limit = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    if limit is None or cas_below <= limit:
        return ""
    return (f"CA certificate {_cn(cert)}: pathLen {limit} allows {limit} CA(s) below it, "
            f"the chain has {cas_below}")


def _key_usage(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _ca_key_usage(policy, cert, usage) -> None:
    """RFC 5280 §6.1.4 (n): keyCertSign is checked when keyUsage is present."""
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("keyUsage present without keyCertSign")


_CA_POLICY = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.KeyUsage, verification.Criticality.AGNOSTIC, _ca_key_usage)


def _rfc5280(leaf, chain, anchors, reference, now) -> Verdict:
    try:
        subject = (x509.DNSName(reference) if isinstance(reference, str)
                   else x509.IPAddress(reference))
        verifier = (verification.PolicyBuilder().store(verification.Store(anchors)).time(now)
                    .extension_policies(
                        ca_policy=_CA_POLICY,
                        ee_policy=verification.ExtensionPolicy.webpki_defaults_ee())
                    .build_server_verifier(subject))
        verifier.verify(leaf, list(chain[1:]))
    except (verification.VerificationError, ValueError) as exc:
        # ValueError: a name or store the validator will not take.
        reason = str(exc).splitlines()[0][:160]
        return Verdict(TrustFailure.INVALID_CHAIN,
                       f"certificate {_cn(leaf)}: RFC 5280 path validation refused it ({reason})")
    return Verdict()


def presented_names(cert: x509.Certificate) -> list[str]:
    """The DNS and IP subjectAltNames, as text."""
    dns, ips = _sans(cert)
    return dns + [str(ip) for ip in ips]


def _sans(cert: x509.Certificate):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(san.get_values_for_type(x509.DNSName)), list(san.get_values_for_type(x509.IPAddress))


def matches(domain: str, cert: x509.Certificate) -> bool:
    """RFC 6125 DNS-ID / IP match of ``domain`` against ``cert``'s SANs."""
    reference = reference_identity(domain)
    return reference is not None and _matches_reference(reference, cert)


def _matches_reference(reference, cert: x509.Certificate) -> bool:
    dns, ips = _sans(cert)
    if not isinstance(reference, str):
        return reference in ips                     # an IP domain: iPAddress SANs only
    return any(_dns_match(reference, name.lower()) for name in dns)


def _dns_match(domain: str, pattern: str) -> bool:
    if pattern.endswith("."):                       # RFC 5280 §4.2.1.6: not a valid dNSName
        return False
    if not pattern.startswith("*."):
        return domain == pattern
    head, _, rest = domain.partition(".")
    return bool(head) and rest == pattern[2:] and "." in rest


def certificate_summary(cert: x509.Certificate) -> str:
    """One line for the log: subject, issuer, SANs, validity, SHA-256 fingerprint."""
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    names = ",".join(presented_names(cert)) or "none"
    return (f"subject={_name_text(cert.subject)}; issuer={_name_text(cert.issuer)}; "
            f"SANs={names}; valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}; sha256={fingerprint}")


def _name_text(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty)"


def _cn(cert: x509.Certificate) -> str:
    return _name_text(cert.subject)
