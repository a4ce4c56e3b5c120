"""Private keys encrypted with PBES2 (RFC 8018 §6.2): PBKDF2-HMAC-SHA256 + AES-256-CBC.

Every private key iim writes (key files, PKCS#12 key bags) goes through
:func:`encrypt_private_key`: an EncryptedPrivateKeyInfo (RFC 5958 §3) that
OpenSSL, cryptography, Java and NSS all read. cryptography's own
``BestAvailableEncryption`` writes the same scheme but with 2,048 PBKDF2
rounds; keys guarded by a person's password deserve more, so the rounds are
ours to choose. The clear PKCS#8 encoding exists only in memory.
"""

from __future__ import annotations

import base64
import os
import textwrap

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from . import derwrite as d

PBES2 = "1.2.840.113549.1.5.13"
PBKDF2 = "1.2.840.113549.1.5.12"
HMAC_SHA256 = "1.2.840.113549.2.9"
AES_256_CBC = "2.16.840.1.101.3.4.1.42"

# PBKDF2 rounds for keys on disk: about a tenth of a second to open a key,
# a real cost to anyone guessing passwords offline.
ITERATIONS = 200_000


def encrypt_private_key(key, password: str, *, iterations: int = ITERATIONS) -> bytes:
    """DER EncryptedPrivateKeyInfo of ``key`` under ``password`` (UTF-8)."""
    clear = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    salt, iv = os.urandom(16), os.urandom(16)
    secret = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(password.encode())
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(secret), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(clear) + padder.finalize()) + encryptor.finalize()
    scheme = d.algorithm(PBES2, d.sequence(
        d.algorithm(PBKDF2, d.sequence(d.octet_string(salt), d.integer(iterations),
                                       d.algorithm(HMAC_SHA256, d.null()))),
        d.algorithm(AES_256_CBC, d.octet_string(iv))))
    return d.sequence(scheme, d.octet_string(sealed))


def pem(der: bytes, label: str = "ENCRYPTED PRIVATE KEY") -> bytes:
    """RFC 7468 text encoding: 64-column base64 between BEGIN/END lines."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode("ascii")
