"""The relay extension is built against the system OpenSSL and imports."""

import ssl

import iim._fastmux as fastmux


def test_linked_openssl_is_the_one_python_uses():
    # Both come from Debian's libssl: one library, one set of security fixes.
    assert fastmux.openssl_version_number() == ssl.OPENSSL_VERSION_NUMBER
    assert fastmux.openssl_version() == ssl.OPENSSL_VERSION


def test_tls12_minimum_server_context_from_c():
    assert fastmux.tls12_server_context_ok() is True
