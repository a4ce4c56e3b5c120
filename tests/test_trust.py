"""A peer certificate is trusted for a domain, or refused with the reason to fix."""

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

import pki
from iim.keys.trust import TrustFailure, certificate_summary, verify_peer

PEER = "partner.example.org"


def test_valid_chain_through_intermediate(ca, sub_ca):
    leaf = sub_ca.issue(PEER)
    verdict = verify_peer(leaf.chain, [ca.cert], PEER)
    assert verdict.ok and str(verdict) == "trusted"


def test_wildcard_names_one_label(ca):
    leaf = ca.issue("*.example.org")
    assert verify_peer(leaf.chain, [ca.cert], PEER).ok
    deeper = verify_peer(leaf.chain, [ca.cert], "a.partner.example.org")
    assert deeper.failure is TrustFailure.NAME_MISMATCH


def test_ip_domain_matches_ip_san(ca):
    leaf = ca.issue("127.0.0.2")
    assert verify_peer(leaf.chain, [ca.cert], "127.0.0.2").ok
    assert verify_peer(leaf.chain, [ca.cert], "127.0.0.3").failure is TrustFailure.NAME_MISMATCH


def test_expired(ca):
    leaf = ca.issue(PEER, not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - 10 * pki.DAY)
    verdict = verify_peer(leaf.chain, [ca.cert], PEER)
    assert verdict.failure is TrustFailure.EXPIRED
    assert str(verdict) == (f"expired: certificate expired "
                            f"{leaf.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")


def test_not_yet_valid(ca):
    leaf = ca.issue(PEER, not_before=pki.NOW + 10 * pki.DAY, not_after=pki.NOW + 40 * pki.DAY)
    assert verify_peer(leaf.chain, [ca.cert], PEER).failure is TrustFailure.NOT_YET_VALID


def test_self_signed(ca):
    leaf = pki.self_signed(PEER)
    verdict = verify_peer(leaf.chain, [ca.cert], PEER)
    assert verdict.failure is TrustFailure.SELF_SIGNED


def test_unknown_ca(ca):
    stranger = pki.CA.root("stranger CA")
    verdict = verify_peer(stranger.issue(PEER).chain, [ca.cert], PEER)
    assert verdict.failure is TrustFailure.UNKNOWN_CA
    assert str(verdict) == "unknown CA: issuer CN=stranger CA,O=iim tests is not trusted"


def test_intermediate_missing_from_what_peer_sent(ca, sub_ca):
    leaf = sub_ca.issue(PEER)
    verdict = verify_peer((leaf.cert,), [ca.cert], PEER)
    assert verdict.failure is TrustFailure.UNKNOWN_CA


def test_name_mismatch(ca):
    verdict = verify_peer(ca.issue("other.example.net").chain, [ca.cert], PEER)
    assert str(verdict) == ("name mismatch: wanted partner.example.org, certificate names "
                            "other.example.net")


def test_client_only_eku_is_refused(ca):
    leaf = ca.issue(PEER, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    assert verify_peer(leaf.chain, [ca.cert], PEER).failure is TrustFailure.WRONG_PURPOSE


def test_no_certificate():
    assert verify_peer((), [], PEER).failure is TrustFailure.NO_CERTIFICATE


def test_order_of_reasons_expired_before_unknown_ca():
    stranger = pki.CA.root("stranger CA")
    leaf = stranger.issue(PEER, not_before=pki.NOW - 9 * pki.DAY, not_after=pki.NOW - pki.DAY)
    assert verify_peer(leaf.chain, [], PEER).failure is TrustFailure.EXPIRED


@pytest.mark.parametrize("when,failure", [
    (pki.NOW + 400 * pki.DAY, TrustFailure.EXPIRED),
    (pki.NOW - 2 * pki.DAY, TrustFailure.NOT_YET_VALID),
])
def test_time_is_passed_in(ca, when, failure):
    leaf = ca.issue(PEER)
    assert verify_peer(leaf.chain, [ca.cert], PEER, now=when).failure is failure


def test_summary_names_everything_an_operator_checks(ca):
    leaf = ca.issue(PEER, "127.0.0.5")
    summary = certificate_summary(leaf.cert)
    fingerprint = leaf.cert.fingerprint(hashes.SHA256())
    assert summary == (
        f"subject=CN={PEER},O=iim tests; issuer=CN=iim test CA,O=iim tests; "
        f"SANs={PEER},127.0.0.5; "
        f"valid {leaf.cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
        f"{leaf.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}; "
        f"sha256={fingerprint.hex(':').upper()}")


def test_unrelated_expired_certificate_in_what_peer_sent_is_ignored(ca):
    old = pki.CA.root("old cross-sign", not_before=pki.NOW - 90 * pki.DAY,
                      not_after=pki.NOW - 30 * pki.DAY)
    leaf = ca.issue(PEER)
    assert verify_peer((leaf.cert, old.cert), [ca.cert], PEER).ok


def test_intermediate_that_is_not_a_ca_is_an_invalid_chain(ca):
    from cryptography import x509
    fake = ca.issue("fake intermediate", eku=None)      # basicConstraints CA:FALSE
    sub = pki.CA(fake.key, fake.cert, (ca.cert,))
    leaf = sub.issue(PEER)
    verdict = verify_peer(leaf.chain, [ca.cert], PEER)
    assert verdict.failure is TrustFailure.INVALID_CHAIN
    assert fake.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


@pytest.mark.parametrize("domain", ["xn--bcher-kva.example", "bücher.example",
                                    "BÜCHER.example."])
def test_idn_domain_in_either_form_matches_the_a_label_san(ca, domain):
    leaf = ca.issue("xn--bcher-kva.example")
    assert verify_peer(leaf.chain, [ca.cert], domain).ok


def test_ipv6_literal_domain_matches_ip_san(ca):
    leaf = ca.issue("::1")
    assert verify_peer(leaf.chain, [ca.cert], "[::1]").ok


def test_ip_domain_does_not_match_a_dns_san_spelling_an_ip(ca):
    from cryptography import x509
    key = pki.new_key("ec")
    cert = (ca._builder(x509.Name([]), key.public_key(), pki.NOW - pki.DAY, pki.NOW + pki.DAY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("127.0.0.2")]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    assert verify_peer((cert,), [ca.cert], "127.0.0.2").failure is TrustFailure.NAME_MISMATCH


@pytest.mark.parametrize("domain", ["my_host..example.org", "-" * 70 + ".org", ""])
def test_invalid_domain_gives_a_verdict_not_an_exception(ca, domain):
    leaf = ca.issue(PEER)
    assert verify_peer(leaf.chain, [ca.cert], domain).failure is TrustFailure.NAME_MISMATCH
