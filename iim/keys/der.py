"""Just enough DER to walk a PKCS#12 file's outer layers (RFC 7292 §4-§5).

cryptography's ``load_pkcs12`` returns only the first key of a store, and a
keytool store may hold several key entries; to pick one by alias we read the
SafeBags ourselves. Only definite-length DER is handled (keytool, OpenSSL and
cryptography all write DER); anything else raises ValueError and the caller
falls back to ``load_pkcs12``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TLV:
    tag: int
    value: bytes
    raw: bytes          # the whole encoding, tag and length included

    def children(self) -> list["TLV"]:
        return list(iter_tlv(self.value))


def read_tlv(data: bytes, pos: int = 0) -> tuple[TLV, int]:
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    head = 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos + 2:pos + 2 + count], "big")
        head += count
    end = pos + head + length
    if end > len(data):
        raise ValueError("truncated DER")
    return TLV(tag, data[pos + head:end], data[pos:end]), end


def iter_tlv(data: bytes):
    pos = 0
    while pos < len(data):
        tlv, pos = read_tlv(data, pos)
        yield tlv


def oid(dotted: str) -> bytes:
    """The DER content octets of an OBJECT IDENTIFIER."""
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        out.extend(reversed(chunk))
    return bytes(out)
