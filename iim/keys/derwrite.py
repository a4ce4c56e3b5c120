"""Just enough DER *encoding* to write PKCS#8 and PKCS#12 structures (X.690 §8, §10).

The reading side is ``iim.keys.der``. Every function returns the complete
encoding (tag, definite length, contents) of one value, so structures are
written the way their ASN.1 reads: ``sequence(oid(...), explicit(0, ...))``.
SET OF contents are sorted by their encodings, as DER requires (X.690 §11.6).
"""

from __future__ import annotations

from .der import oid as _oid_contents

BOOLEAN, INTEGER, OCTET_STRING, NULL, OID = 0x01, 0x02, 0x04, 0x05, 0x06
BMP_STRING, SEQUENCE, SET = 0x1E, 0x30, 0x31


def tlv(tag: int, contents: bytes) -> bytes:
    """One value: ``tag``, its definite length (short or long form), ``contents``."""
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    count = (size.bit_length() + 7) // 8
    return bytes([tag, 0x80 | count]) + size.to_bytes(count, "big") + contents


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    return tlv(SET, b"".join(sorted(parts)))


def integer(value: int) -> bytes:
    """A non-negative INTEGER in the fewest octets (a leading 0 keeps it positive)."""
    if value < 0:
        raise ValueError("negative INTEGER not needed here")
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def octet_string(data: bytes) -> bytes:
    return tlv(OCTET_STRING, data)


def null() -> bytes:
    return tlv(NULL, b"")


def oid(dotted: str) -> bytes:
    return tlv(OID, _oid_contents(dotted))


def bmp_string(text: str) -> bytes:
    """BMPString: UTF-16BE code units (PKCS#12 friendly names, RFC 7292 §4.2)."""
    return tlv(BMP_STRING, text.encode("utf-16-be"))


def explicit(number: int, inner: bytes) -> bytes:
    """``[number] EXPLICIT`` context-specific, constructed."""
    return tlv(0xA0 | number, inner)


def algorithm(dotted: str, parameters: bytes | None = None) -> bytes:
    """AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }."""
    return sequence(oid(dotted), parameters if parameters is not None else b"")
