"""What a stream tells its adapter (h11 style: small frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from .errors import StreamError
from .jid import JID


@dataclass(frozen=True)
class StartTLS:
    """Send ``data_to_send()`` in the clear, then run the TLS handshake over the
    transport and call ``tls_established()``. Bytes the peer sent after its
    ``<starttls/>`` in the same read were discarded (RFC 6120 §5.4.3.3)."""


@dataclass(frozen=True)
class Authenticated:
    """SASL succeeded for ``username`` (a prepared localpart)."""

    username: str
    mechanism: str


@dataclass(frozen=True)
class AuthenticationFailed:
    """SASL failed on the credentials of ``username`` (None when the peer never
    named one): ``not-authorized`` (a wrong password, an unknown user) or
    ``temporary-auth-failure`` (refused unchecked: too many failures lately).

    The ``<failure/>`` is in ``data_to_send()``; the adapter may hold it back
    (and what the peer sends next) for the failure delay: the core has no clock.
    """

    username: str | None
    condition: str


@dataclass(frozen=True)
class SessionEstablished:
    """A resource is bound: the session may now exchange stanzas as ``jid``."""

    jid: JID


@dataclass(frozen=True)
class StanzaReceived:
    """A message, presence or iq, with ``from`` stamped by the server role."""

    stanza: Element


@dataclass(frozen=True)
class StreamManaged:
    """XEP-0198 is enabled (``<enabled/>`` is in ``data_to_send()``);
    ``resumption_id`` is None when the stream cannot be resumed, else the id
    the adapter keeps, bound to the account, for ``max_seconds`` after the
    connection is lost."""

    resumption_id: str | None
    max_seconds: int


@dataclass(frozen=True)
class ResumeRequested:
    """Instead of binding, the client asks to resume the session ``previd``,
    having handled ``h`` of our stanzas (XEP-0198 §5). The adapter answers
    with ``ServerStream.resume`` or ``ServerStream.refuse_resumption``."""

    previd: str
    h: int


@dataclass(frozen=True)
class StreamEnded:
    """The stream is over: ``error`` is what ended it (sent or received), None
    for a clean close. Send ``data_to_send()``, then close the transport."""

    error: StreamError | None = None
    sent_by_peer: bool = False


Event = (StartTLS | Authenticated | AuthenticationFailed | SessionEstablished | StanzaReceived
         | StreamManaged | ResumeRequested | StreamEnded)
