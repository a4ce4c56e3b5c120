"""JIDs: XMPP addresses (RFC 7622).

A JID is ``[localpart@]domainpart[/resourcepart]``. Parsing follows RFC 7622
§3.1 exactly: everything after the first ``/`` is the resourcepart (it may
contain ``@`` and ``/``); of what remains, everything before the first ``@`` is
the localpart; the rest is the domainpart. Each part is then *prepared* (mapped
to its canonical form) and *enforced* (checked), so that two JIDs are equal
exactly when their canonical forms are equal, and every ``JID`` object that
exists is valid: the constructor prepares too.

Each part is 1 to 1023 octets of UTF-8 after preparation (RFC 7622 §3.2-3.4).

What is exact and what is an approximation
------------------------------------------
There is no PRECIS library among our dependencies, so the PRECIS profiles are
approximated with ``unicodedata``. The approximation is strict where it is
inexact: it may refuse a rare JID a full implementation accepts, and it accepts
no JID that could be confused with another one it also accepts, as far as the
rules below go.

- **localpart** (UsernameCaseMapped, RFC 8265 §3.3): fullwidth/halfwidth
  characters mapped to their narrow forms, then ``str.lower()`` (Unicode
  toLowerCase, as RFC 8265 specifies; *not* case folding, so ``fußball`` and
  ``fussball`` stay distinct, and so do ``σ`` and ``ς``), then NFC. Enforcement
  allows printable ASCII and, beyond ASCII, only letters, marks and decimal
  digits (general categories Ll Lu Lo Lm Mn Mc Nd) that have no compatibility
  decomposition; that approximates the IdentifierClass (RFC 8264 §4.2). Then
  RFC 7622 §3.3.1 forbids ``" & ' / : < > @``. Not implemented: the CONTEXTJ /
  CONTEXTO rules (ZWJ, middle dot, ...; those characters are simply refused
  because they are not letters) and the bidi rule (RFC 5893).
- **domainpart** (RFC 7622 §3.2): one trailing dot stripped; an IPv4 address or
  a bracketed IPv6 literal is accepted and normalized; otherwise every label
  must be an LDH label (ASCII) or a valid IDNA2008 U-label. A-labels
  (``xn--...``) are converted to U-labels, the canonical form RFC 7622 §3.2.1
  asks for. IDNA2008 checks come from the ``idna`` package when it is
  installed; without it, Python's built-in ``encodings.idna`` (IDNA2003 with
  nameprep) stands in, which accepts a few labels IDNA2008 refuses (symbols)
  and maps ``ß`` to ``ss``.
- **resourcepart** (OpaqueString, RFC 8265 §4.2): non-ASCII spaces (Zs)
  mapped to U+0020, then NFC. Enforcement is the FreeformClass (RFC 8264
  §4.3) by general category: letters, marks and digits (§9.1, §9.12), other
  letter-digits (Lt Nl No Me, §9.13), spaces (Zs, §9.14), symbols (§9.15) and
  punctuation (§9.16) are allowed; everything else is refused: controls,
  format characters, surrogates, private use, unassigned, and the line and
  paragraph separators U+2028 and U+2029 (Zl, Zp: in no valid category),
  which would otherwise split a log line. Default-ignorable code points
  (§9.8, e.g. U+3164 HANGUL FILLER, variation selectors) and old Hangul jamo
  (§9.9) are refused too. Case is preserved.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

try:  # IDNA2008; present in practice (a dependency of many packages), not required.
    import idna as _idna
except ImportError:  # pragma: no cover - the fallback is tested by monkeypatching
    _idna = None

MAX_PART_OCTETS = 1023


class InvalidJID(ValueError):
    """The text is not a valid JID; the message is a one-line reason.

    The message never repeats the JID itself: it may be megabytes long or come
    from a hostile peer.
    """


@dataclass(frozen=True, slots=True, repr=False)
class JID:
    """A prepared, valid JID. Build one with ``JID.parse(text)`` or the fields.

    ``local`` and ``resource`` are ``None`` when absent (never ``""``).
    """

    local: str | None
    domain: str
    resource: str | None = None

    def __post_init__(self) -> None:
        if self.local is not None:
            object.__setattr__(self, "local", prepare_localpart(self.local))
        object.__setattr__(self, "domain", prepare_domainpart(self.domain))
        if self.resource is not None:
            object.__setattr__(self, "resource", prepare_resourcepart(self.resource))

    @classmethod
    def parse(cls, text: str) -> "JID":
        """Split ``text`` per RFC 7622 §3.1 and prepare each part."""
        if not isinstance(text, str):
            raise TypeError(f"a JID is parsed from str, not {type(text).__name__}")
        rest, slash, resource = text.partition("/")
        local, at, domain = rest.partition("@")
        if not at:
            local, domain = None, rest
        return cls(local, domain, resource if slash else None)

    @property
    def bare(self) -> "JID":
        """This JID without its resourcepart (RFC 6120 §1.4)."""
        if self.resource is None:
            return self
        return _prepared(self.local, self.domain, None)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    def with_resource(self, resource: str) -> "JID":
        """The full JID ``bare/resource`` (the resource is prepared)."""
        return _prepared(self.local, self.domain, prepare_resourcepart(resource))

    def __str__(self) -> str:
        text = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return text if self.resource is None else f"{text}/{self.resource}"

    def __repr__(self) -> str:
        return f"JID({str(self)!r})"


def _prepared(local: str | None, domain: str, resource: str | None) -> JID:
    """Build a JID from parts that are already prepared (skips the work)."""
    jid = object.__new__(JID)
    object.__setattr__(jid, "local", local)
    object.__setattr__(jid, "domain", domain)
    object.__setattr__(jid, "resource", resource)
    return jid


# ---------------------------------------------------------------------------
# localpart: PRECIS UsernameCaseMapped, approximated (see the module docstring)

# RFC 7622 §3.3.1: these are forbidden in a localpart on top of PRECIS.
_LOCAL_FORBIDDEN_ASCII = frozenset("\"&'/:<>@")
_LETTER_DIGITS = frozenset({"Ll", "Lu", "Lo", "Lm", "Mn", "Mc", "Nd"})


def prepare_localpart(text: str) -> str:
    """Map and check a localpart (UsernameCaseMapped, RFC 7622 §3.3); raise InvalidJID."""
    if not text:
        raise InvalidJID("empty localpart")
    if not text.isascii():
        text = unicodedata.normalize("NFC", _map_width(text).lower())
    else:
        text = text.lower()
    for char in text:
        if not _is_localpart_char(char):
            raise InvalidJID(f"localpart contains forbidden character {_show(char)}")
    _check_length("localpart", text)
    return text


def _map_width(text: str) -> str:
    """RFC 8264 §9.3: fullwidth and halfwidth characters to their plain forms."""
    return "".join(_narrow(char) for char in text)


def _narrow(char: str) -> str:
    if char.isascii() or not unicodedata.decomposition(char).startswith(("<wide>", "<narrow>")):
        return char
    return unicodedata.normalize("NFKC", char)


def _is_localpart_char(char: str) -> bool:
    if char.isascii():
        return "\x21" <= char <= "\x7e" and char not in _LOCAL_FORBIDDEN_ASCII
    return (
        unicodedata.category(char) in _LETTER_DIGITS
        and unicodedata.normalize("NFKC", char) == char  # HasCompat is disallowed
    )


# ---------------------------------------------------------------------------
# domainpart: IP literal, or LDH / IDNA2008 labels

# Full stops that IDNA treats as label separators (RFC 3490 §3.1).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IPV4_SHAPE = re.compile(r"[0-9]+(?:\.[0-9]+){3}")


def prepare_domainpart(text: str) -> str:
    """Map and check a domainpart (RFC 7622 §3.2): IP literal or U-labels; raise InvalidJID."""
    text = text.translate(_DOTS)
    if text.endswith("."):
        text = text[:-1]  # RFC 7622 §3.2: strip one trailing label separator
    if not text:
        raise InvalidJID("empty domainpart")
    if text.startswith("["):
        domain = _ipv6_literal(text)
    elif _IPV4_SHAPE.fullmatch(text):
        domain = _ipv4_address(text)
    elif ":" in text:
        raise InvalidJID("domainpart contains ':' (an IPv6 address must be in [brackets])")
    else:
        domain = ".".join(_prepare_label(label) for label in text.split("."))
    _check_length("domainpart", domain)
    return domain


def _ipv6_literal(text: str) -> str:
    inner = text[1:-1] if text.endswith("]") else None
    if not inner or "%" in inner:  # RFC 3986 IP-literal: no zone identifier
        raise InvalidJID("domainpart is not a valid [IPv6] literal")
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        raise InvalidJID("domainpart is not a valid [IPv6] literal") from None


def _ipv4_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidJID("domainpart is not a valid IPv4 address") from None


def _prepare_label(label: str) -> str:
    if not label:
        raise InvalidJID("domainpart contains an empty label")
    if not label.isascii():
        return _u_label(unicodedata.normalize("NFC", _map_width(label).lower()))
    label = label.lower()
    if label.startswith("xn--"):
        return _u_label_from_a_label(label)
    if not _LDH_LABEL.fullmatch(label):
        raise InvalidJID(
            f"domainpart label {_clip(label)!r} is not a host name label "
            "(letters, digits and inner hyphens, at most 63)"
        )
    return label


def _u_label(label: str) -> str:
    """Check a non-ASCII label with IDNA and return its canonical U-label."""
    try:
        a_label = _to_a_label(label)
        u_label = _to_u_label(a_label)
    except UnicodeError as exc:
        raise InvalidJID(f"domainpart label {_clip(label)!r} is not valid IDNA ({exc})") from None
    if not _LDH_LABEL.fullmatch(a_label):  # IDNA2003 lets '/', ' ', '_' through
        raise InvalidJID(f"domainpart label {_clip(label)!r} is not valid IDNA (not a host name)")
    return u_label


def _u_label_from_a_label(label: str) -> str:
    if not _LDH_LABEL.fullmatch(label):
        raise InvalidJID(f"domainpart label {_clip(label)!r} is not a valid A-label")
    try:
        u_label = _to_u_label(label)
        if _to_a_label(u_label) != label:  # ToUnicode alone can be lenient
            raise UnicodeError("it does not round-trip")
    except UnicodeError as exc:
        reason = f"domainpart label {_clip(label)!r} is not a valid A-label ({exc})"
        raise InvalidJID(reason) from None
    return u_label


def _to_a_label(label: str) -> str:
    if _idna is not None:
        return _idna.encode(label, uts46=True).decode("ascii")
    return codecs.encode(label, "idna").decode("ascii").lower()


def _to_u_label(a_label: str) -> str:
    if _idna is not None:
        return _idna.decode(a_label)
    return codecs.decode(a_label.encode("ascii"), "idna")


# ---------------------------------------------------------------------------
# resourcepart: PRECIS OpaqueString, approximated (see the module docstring)

# RFC 8264 §4.3.1: the FreeformClass's valid categories (LetterDigits,
# OtherLetterDigits, Spaces, Symbols, Punctuation); any other is disallowed.
_FREEFORM_CATEGORIES = frozenset({
    "Ll", "Lu", "Lo", "Lm", "Mn", "Mc", "Nd",       # §9.1 LetterDigits
    "Lt", "Nl", "No", "Me",                         # §9.13 OtherLetterDigits
    "Zs",                                           # §9.14 Spaces
    "Sm", "Sc", "Sk", "So",                         # §9.15 Symbols
    "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",       # §9.16 Punctuation
})
# §9.8 Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) in those
# categories (the rest are Cf or Cn, refused already), and §9.9 old Hangul
# jamo (Hangul_Syllable_Type L, V, T), as inclusive ranges.
_FREEFORM_EXCLUDED = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180D),
    (0x180F, 0x180F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
    (0x1100, 0x11FF), (0xA960, 0xA97C), (0xD7B0, 0xD7C6), (0xD7CB, 0xD7FB),
)


def prepare_resourcepart(text: str) -> str:
    """Map and check a resourcepart (OpaqueString, RFC 7622 §3.4); raise InvalidJID."""
    if not text:
        raise InvalidJID("empty resourcepart")
    if text.isascii():
        if not text.isprintable():  # ASCII printable is exactly 0x20-0x7e
            raise InvalidJID(f"resourcepart contains forbidden character {_show(_first_bad(text))}")
    else:
        text = unicodedata.normalize("NFC", _map_spaces(text))
        for char in text:
            if not _is_freeform_char(char):
                raise InvalidJID(f"resourcepart contains forbidden character {_show(char)}")
    _check_length("resourcepart", text)
    return text


def _is_freeform_char(char: str) -> bool:
    return unicodedata.category(char) in _FREEFORM_CATEGORIES and not _excluded(char)


def _excluded(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _FREEFORM_EXCLUDED)


def _invisible(char: str) -> bool:
    """Not shown as itself in a message: marks, blanks and fillers."""
    return unicodedata.category(char)[0] == "M" or _excluded(char)


def _map_spaces(text: str) -> str:
    """RFC 8265 §4.2.1: non-ASCII space characters become U+0020."""
    return "".join(" " if unicodedata.category(char) == "Zs" else char for char in text)


def _first_bad(text: str) -> str:
    return next(char for char in text if not char.isprintable())


# ---------------------------------------------------------------------------


def _check_length(part: str, text: str) -> None:
    if len(text) > MAX_PART_OCTETS // 4 and len(text.encode("utf-8")) > MAX_PART_OCTETS:
        raise InvalidJID(f"{part} longer than {MAX_PART_OCTETS} octets")


def _show(char: str) -> str:
    """How an offending character is named in a message: '@' or U+265A '♚'."""
    if " " <= char <= "~":
        return repr(char)
    if char.isprintable() and not char.isspace() and not _invisible(char):
        return f"U+{ord(char):04X} '{char}'"
    return f"U+{ord(char):04X}"


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
