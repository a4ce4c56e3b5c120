"""XMPP error conditions and the exceptions that carry them (RFC 6120 §4.9, §8.3).

Conditions are enums, never bare strings: a typo is an AttributeError at import
time, not a stream error nobody understands. Each enum value is the element name
that goes on the wire.

The exception family follows h11:

- ``LocalProtocolError``: *you* misused the API (fed a dead parser, asked to
  serialize a comment). A bug in our code; nothing goes on the wire.
- ``StreamError``: the stream must end with ``<stream:error/>``. Raised by our
  own code when it decides to close a stream (``system-shutdown``, ``conflict``).
- ``RemoteProtocolError(StreamError)``: the *peer* misbehaved (sent a DTD, a
  stanza too large, bytes that are not XML). Send ``exc.to_xml()``, then the
  closing ``</stream:stream>``, then close the connection (RFC 6120 §4.9.1.1).
- ``StanzaError``: one stanza failed; the stream lives on and the sender gets an
  error stanza (RFC 6120 §8.3).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, SubElement

STREAMS_NS = "http://etherx.jabber.org/streams"
STREAM_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
XML_NS = "http://www.w3.org/XML/1998/namespace"
_XML_LANG = "{%s}lang" % XML_NS


class StreamErrorCondition(enum.Enum):
    """The defined stream error conditions (RFC 6120 §4.9.3)."""

    BAD_FORMAT = "bad-format"
    BAD_NAMESPACE_PREFIX = "bad-namespace-prefix"
    CONFLICT = "conflict"
    CONNECTION_TIMEOUT = "connection-timeout"
    HOST_GONE = "host-gone"
    HOST_UNKNOWN = "host-unknown"
    IMPROPER_ADDRESSING = "improper-addressing"
    INTERNAL_SERVER_ERROR = "internal-server-error"
    INVALID_FROM = "invalid-from"
    INVALID_NAMESPACE = "invalid-namespace"
    INVALID_XML = "invalid-xml"
    NOT_AUTHORIZED = "not-authorized"
    NOT_WELL_FORMED = "not-well-formed"
    POLICY_VIOLATION = "policy-violation"
    REMOTE_CONNECTION_FAILED = "remote-connection-failed"
    RESET = "reset"
    RESOURCE_CONSTRAINT = "resource-constraint"
    RESTRICTED_XML = "restricted-xml"
    SEE_OTHER_HOST = "see-other-host"
    SYSTEM_SHUTDOWN = "system-shutdown"
    UNDEFINED_CONDITION = "undefined-condition"
    UNSUPPORTED_ENCODING = "unsupported-encoding"
    UNSUPPORTED_FEATURE = "unsupported-feature"
    UNSUPPORTED_STANZA_TYPE = "unsupported-stanza-type"
    UNSUPPORTED_VERSION = "unsupported-version"


class StanzaErrorType(enum.Enum):
    """The 'type' attribute of a stanza ``<error/>`` (RFC 6120 §8.3.2)."""

    AUTH = "auth"  # retry after providing credentials
    CANCEL = "cancel"  # do not retry (the error cannot be remedied)
    CONTINUE = "continue"  # proceed (the condition was only a warning)
    MODIFY = "modify"  # retry after changing the data sent
    WAIT = "wait"  # retry after waiting (the error is temporary)


class StanzaErrorCondition(enum.Enum):
    """The defined stanza error conditions (RFC 6120 §8.3.3).

    Each member also knows the error type the RFC says it "SHOULD" carry. Where
    the RFC allows two (feature-not-implemented: cancel or modify;
    policy-violation: modify or wait; unexpected-request: wait or modify) the
    first is the default, as in the RFC's own examples. undefined-condition
    allows any type; we default to cancel, the one that never invites a retry.
    """

    BAD_REQUEST = ("bad-request", StanzaErrorType.MODIFY)
    CONFLICT = ("conflict", StanzaErrorType.CANCEL)
    FEATURE_NOT_IMPLEMENTED = ("feature-not-implemented", StanzaErrorType.CANCEL)
    FORBIDDEN = ("forbidden", StanzaErrorType.AUTH)
    GONE = ("gone", StanzaErrorType.CANCEL)
    INTERNAL_SERVER_ERROR = ("internal-server-error", StanzaErrorType.CANCEL)
    ITEM_NOT_FOUND = ("item-not-found", StanzaErrorType.CANCEL)
    JID_MALFORMED = ("jid-malformed", StanzaErrorType.MODIFY)
    NOT_ACCEPTABLE = ("not-acceptable", StanzaErrorType.MODIFY)
    NOT_ALLOWED = ("not-allowed", StanzaErrorType.CANCEL)
    NOT_AUTHORIZED = ("not-authorized", StanzaErrorType.AUTH)
    POLICY_VIOLATION = ("policy-violation", StanzaErrorType.MODIFY)
    RECIPIENT_UNAVAILABLE = ("recipient-unavailable", StanzaErrorType.WAIT)
    REDIRECT = ("redirect", StanzaErrorType.MODIFY)
    REGISTRATION_REQUIRED = ("registration-required", StanzaErrorType.AUTH)
    REMOTE_SERVER_NOT_FOUND = ("remote-server-not-found", StanzaErrorType.CANCEL)
    REMOTE_SERVER_TIMEOUT = ("remote-server-timeout", StanzaErrorType.WAIT)
    RESOURCE_CONSTRAINT = ("resource-constraint", StanzaErrorType.WAIT)
    SERVICE_UNAVAILABLE = ("service-unavailable", StanzaErrorType.CANCEL)
    SUBSCRIPTION_REQUIRED = ("subscription-required", StanzaErrorType.AUTH)
    UNDEFINED_CONDITION = ("undefined-condition", StanzaErrorType.CANCEL)
    UNEXPECTED_REQUEST = ("unexpected-request", StanzaErrorType.WAIT)

    def __new__(cls, name: str, default_type: StanzaErrorType) -> "StanzaErrorCondition":
        member = object.__new__(cls)
        member._value_ = name  # the wire name, so StanzaErrorCondition("gone") works
        member._default_type = default_type
        return member

    @property
    def default_type(self) -> StanzaErrorType:
        """The error type RFC 6120 §8.3.3 associates with this condition."""
        return self._default_type


@dataclass(frozen=True)
class AppCondition:
    """An application-specific condition, the optional third child of a
    ``<stream:error/>`` (RFC 6120 §4.9.4), e.g. XEP-0198's
    ``<handled-count-too-high/>``: an empty element with attributes."""

    ns: str
    name: str
    attrs: dict = field(default_factory=dict)

    def to_xml(self) -> str:
        attrs = "".join(f" {k}='{_escape(v)}'" for k, v in self.attrs.items())
        return f"<{self.name} xmlns='{_escape(self.ns)}'{attrs}/>"


class XMPPError(Exception):
    """Base class of every exception the XMPP core raises."""


class LocalProtocolError(XMPPError):
    """The caller misused the API; nothing is sent to the peer for this."""


class StreamError(XMPPError):
    """The stream must be closed with ``<stream:error/>`` (RFC 6120 §4.9).

    ``text`` is a human-readable explanation for the peer's logs (it goes on the
    wire: never put secrets in it). ``other_host`` is the new address carried by
    ``see-other-host`` (RFC 6120 §4.9.3.19) and is ignored otherwise;
    ``application`` an application-specific condition (§4.9.4).
    """

    def __init__(
        self,
        condition: StreamErrorCondition,
        text: str | None = None,
        *,
        other_host: str | None = None,
        application: AppCondition | None = None,
    ) -> None:
        if not isinstance(condition, StreamErrorCondition):
            raise TypeError(f"condition must be a StreamErrorCondition, not {condition!r}")
        self.condition = condition
        self.text = text
        self.other_host = other_host
        self.application = application
        super().__init__(_describe(condition.value, text))

    def to_xml(self) -> bytes:
        """The ``<stream:error/>`` element to send before closing the stream."""
        return stream_error_xml(self.condition, self.text, other_host=self.other_host,
                                application=self.application)

    @classmethod
    def from_element(cls, element: Element) -> "StreamError":
        """Read a received ``{http://etherx.jabber.org/streams}error`` element."""
        name, text, data = _read_error_children(element, STREAM_ERRORS_NS)
        condition = _lookup(StreamErrorCondition, name, StreamErrorCondition.UNDEFINED_CONDITION)
        other_host = data if condition is StreamErrorCondition.SEE_OTHER_HOST else None
        return cls(condition, text, other_host=other_host)


class RemoteProtocolError(StreamError):
    """The peer broke the protocol; the stream is over (send ``to_xml()``)."""


class StanzaError(XMPPError):
    """One stanza failed; its sender gets an error stanza (RFC 6120 §8.3).

    ``type`` defaults to the condition's RFC default. ``text`` goes on the wire.
    """

    def __init__(
        self,
        condition: StanzaErrorCondition,
        text: str | None = None,
        *,
        type: StanzaErrorType | None = None,  # noqa: A002 - the RFC's name
    ) -> None:
        if not isinstance(condition, StanzaErrorCondition):
            raise TypeError(f"condition must be a StanzaErrorCondition, not {condition!r}")
        self.condition = condition
        self.type = type if type is not None else condition.default_type
        self.text = text
        super().__init__(_describe(f"{self.type.value}/{condition.value}", text))

    def to_element(self, ns: str = "jabber:client") -> Element:
        """The ``<error/>`` child to put in the error stanza (content namespace ``ns``)."""
        error = Element(f"{{{ns}}}error", {"type": self.type.value})
        SubElement(error, f"{{{STANZA_ERRORS_NS}}}{self.condition.value}")
        if self.text is not None:
            SubElement(error, f"{{{STANZA_ERRORS_NS}}}text").text = self.text
        return error

    @classmethod
    def from_element(cls, element: Element) -> "StanzaError":
        """Read a received stanza ``<error/>`` child (any content namespace)."""
        name, text, _ = _read_error_children(element, STANZA_ERRORS_NS)
        condition = _lookup(StanzaErrorCondition, name, StanzaErrorCondition.UNDEFINED_CONDITION)
        error_type = _lookup(StanzaErrorType, element.get("type"), None)
        return cls(condition, text, type=error_type)


def stream_error_xml(
    condition: StreamErrorCondition,
    text: str | None = None,
    *,
    lang: str | None = None,
    other_host: str | None = None,
    application: AppCondition | None = None,
) -> bytes:
    """Serialize ``<stream:error>`` for a stream we opened with ``stream_header``.

    The ``stream:`` prefix is the one ``iim.xmpp.xml.stream_header`` declares.

    >>> stream_error_xml(StreamErrorCondition.POLICY_VIOLATION)
    b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    """
    parts = ["<stream:error>", _condition_xml(condition, other_host)]
    if application is not None:
        parts.append(application.to_xml())
    if text is not None:
        lang_attr = f" xml:lang='{_escape(lang)}'" if lang else ""
        parts.append(f"<text xmlns='{STREAM_ERRORS_NS}'{lang_attr}>{_escape(text)}</text>")
    parts.append("</stream:error>")
    return "".join(parts).encode("utf-8")


def _condition_xml(condition: StreamErrorCondition, other_host: str | None) -> str:
    name = condition.value
    if condition is StreamErrorCondition.SEE_OTHER_HOST and other_host:
        return f"<{name} xmlns='{STREAM_ERRORS_NS}'>{_escape(other_host)}</{name}>"
    return f"<{name} xmlns='{STREAM_ERRORS_NS}'/>"


def _read_error_children(element: Element, ns: str) -> tuple[str | None, str | None, str | None]:
    """(condition name, <text/> content, condition element's character data)."""
    name = text = data = None
    prefix = "{%s}" % ns
    for child in element:
        if not child.tag.startswith(prefix):
            continue  # an application-specific condition: not ours to read
        local = child.tag[len(prefix):]
        if local == "text":
            text = child.text or ""
        elif name is None:
            name, data = local, (child.text or "").strip() or None
    return name, text, data


def _lookup(enum_class, value, default):
    try:
        return enum_class(value)
    except ValueError:
        return default


def _describe(name: str, text: str | None) -> str:
    return f"{name}: {text}" if text else name


# Characters XML 1.0 cannot carry at all, even escaped (§2.2 of XML 1.0).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", "\r": "&#13;"}
)


def _escape(text: str) -> str:
    """Escape our own diagnostic text; characters XML cannot carry become U+FFFD."""
    return _NOT_XML_CHAR.sub("\ufffd", text).translate(_TEXT_ESCAPES)
