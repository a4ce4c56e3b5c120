"""A small certificate authority: keys, a root, requests, signing (RFC 5280).

What it makes follows the TLS policy in docs/architecture.md:

* the root: CA:TRUE (critical), keyUsage keyCertSign + cRLSign (critical),
  a subject key identifier;
* a request (PKCS#10) for a domain: subjectAltName dNSName = the domain,
  plus any extra names (DNS names, ``*.`` wildcards, IP addresses);
* a server certificate: the request's names, CA:FALSE, keyUsage
  digitalSignature (+ keyEncipherment for RSA), extendedKeyUsage serverAuth
  *and* clientAuth, because a server is a TLS client when it opens a
  server-to-server stream; a random 159-bit serial (RFC 5280 §4.1.2.2).

Everything a user can get wrong raises :class:`KeyMaterialError` with one
line; file names are added by the caller.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import KeyMaterialError

KEY_ALGORITHMS = ("RSA", "EC")
RSA_SIZES = (2048, 3072, 4096)
EC_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}
DEFAULT_SIZE = {"RSA": 3072, "EC": 256}
CLOCK_SKEW = dt.timedelta(minutes=5)     # notBefore this far back: peers' clocks differ


def new_key(keyalg: str = "RSA", keysize: int | None = None):
    """A fresh private key; ``keyalg``/``keysize`` as keytool's ``-keyalg``/``-keysize``."""
    keyalg = keyalg.upper()
    size = keysize or DEFAULT_SIZE.get(keyalg)
    if keyalg == "RSA" and size in RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if keyalg == "EC" and size in EC_CURVES:
        return ec.generate_private_key(EC_CURVES[size]())
    if keyalg not in KEY_ALGORITHMS:
        raise KeyMaterialError(f'--keyalg "{keyalg}": use RSA or EC')
    sizes = RSA_SIZES if keyalg == "RSA" else tuple(EC_CURVES)
    raise KeyMaterialError(f"--keysize {size}: {keyalg} keys are "
                           + ", ".join(str(s) for s in sizes) + " bits")


def parse_subject(text: str) -> x509.Name:
    """An RFC 4514 distinguished name such as ``CN=Example IM CA,O=Example``."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        name = None
    if not name:
        raise KeyMaterialError(f'--subject "{text}": not a distinguished name; write it '
                               'like "CN=Example IM CA,O=Example"')
    return name


def build_ca(key, subject: x509.Name, days: int, *, now: dt.datetime | None = None):
    """A self-signed root certificate for ``key``, valid ``days`` days."""
    start = (now or _now()) - CLOCK_SKEW
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _days(days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, _hash_for(key)))


def make_request(key, domain: str, extra_names=(), subject: x509.Name | None = None):
    """A PKCS#10 request for ``domain`` (and ``extra_names``), signed by ``key``."""
    names = general_names([domain, *extra_names])
    if not isinstance(names[0], x509.DNSName) or names[0].value.startswith("*."):
        raise KeyMaterialError(f'domain "{domain}": give the server\'s domain name '
                               "(extra names and addresses go in --name)")
    subject = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0].value)])
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(subject)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(key, _hash_for(key)))


@dataclass(frozen=True)
class Signed:
    certificate: x509.Certificate
    names: tuple[str, ...]
    capped: bool            # validity shortened to end with the CA's


def sign_request(csr, ca_key, ca_cert, days: int, extra_names=(), *,
                 now: dt.datetime | None = None) -> Signed:
    """Issue a server certificate for ``csr`` (checked first) from the CA."""
    now = now or _now()
    check_request(csr)
    check_ca(ca_key, ca_cert, now)
    names = _request_names(csr, extra_names)
    start = now - CLOCK_SKEW
    end = start + _days(days)
    capped = end > ca_cert.not_valid_after_utc
    end = min(end, ca_cert.not_valid_after_utc)
    public = csr.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(encipher=isinstance(public, rsa.RSAPublicKey)),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, _hash_for(ca_key)))
    return Signed(cert, tuple(_shown(n) for n in names), capped)


def check_request(csr) -> None:
    if not csr.is_signature_valid:
        raise KeyMaterialError("the request's signature does not verify: it was altered "
                               "or damaged after it was made")
    if not isinstance(csr.public_key(), (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise KeyMaterialError("the request's key is neither RSA nor EC")


def check_ca(ca_key, ca_cert, now: dt.datetime | None = None) -> None:
    """The CA key belongs to the CA certificate, which may sign and is in date."""
    now = now or _now()
    if not same_key(ca_key, ca_cert):
        raise KeyMaterialError("the CA key does not belong to the CA certificate "
                               "(their public keys differ)")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise KeyMaterialError("the CA certificate is not a CA (basicConstraints CA:TRUE "
                               "is missing)")
    if now > ca_cert.not_valid_after_utc:
        raise KeyMaterialError(f"the CA certificate expired on "
                               f"{ca_cert.not_valid_after_utc:%Y-%m-%d}")


def same_key(key, cert) -> bool:
    return key.public_key() == cert.public_key()


def general_names(names) -> list[x509.GeneralName]:
    """DNS names (IDNA A-labels, lower case, ``*.`` allowed) and IP addresses, each once."""
    out: list[x509.GeneralName] = []
    for name in names:
        entry = _general_name(name)
        if entry not in out:
            out.append(entry)
    return out


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    text = name.strip().rstrip(".").lower()
    wildcard = text.startswith("*.")
    labels = text[2:] if wildcard else text
    try:
        encoded = idna.encode(labels, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise KeyMaterialError(f'"{name}" is neither a domain name nor an IP address') from None
    if "." not in encoded and encoded != "localhost":
        raise KeyMaterialError(f'"{name}" is not a fully qualified domain name')
    return x509.DNSName(("*." if wildcard else "") + encoded)


def _request_names(csr, extra_names) -> list[x509.GeneralName]:
    """The request's DNS/IP subjectAltNames plus ``extra_names``; failing
    those, its common name (what ``keytool -certreq`` without ``-ext`` sends)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        asked = [*san.get_values_for_type(x509.DNSName),
                 *(str(a) for a in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        asked = []
    if asked or extra_names:
        return general_names([*asked, *extra_names])
    common = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not common:
        raise KeyMaterialError("the request names no domain (no subjectAltName, no common "
                               "name): give the names with --name")
    try:
        return general_names(common)
    except KeyMaterialError:
        raise KeyMaterialError(f'the request has no subjectAltName and its common name '
                               f'"{common[0]}" is not a domain name: give the names with '
                               f"--name") from None


def _shown(name: x509.GeneralName) -> str:
    return str(name.value)


def _key_usage(*, cert_sign: bool = False, encipher: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                         key_encipherment=encipher, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _hash_for(key):
    """SHA-256, or the hash that matches a larger EC curve (RFC 5480 §4)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA512()
    return hashes.SHA256()


def check_days(days: int) -> None:
    if days < 1:
        raise KeyMaterialError(f"--days {days}: give a number of days of at least 1")


def _days(days: int) -> dt.timedelta:
    check_days(days)
    return dt.timedelta(days=days)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
