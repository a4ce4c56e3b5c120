"""XML namespaces of the protocols iim speaks, named once."""

from .errors import STANZA_ERRORS_NS, STREAM_ERRORS_NS, STREAMS_NS  # noqa: F401
from .sasl import SASL_NS  # noqa: F401
from .sm import SM_NS  # noqa: F401 - XEP-0198
from .stream import TLS_NS  # noqa: F401 - RFC 6120 §5
from .xml import CLIENT_NS, SERVER_NS  # noqa: F401

BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"               # RFC 6120 §7
SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"         # RFC 3921 §3 (legacy, optional)
LIMITS_NS = "urn:xmpp:stream-limits:0"                     # XEP-0478
ROSTER_NS = "jabber:iq:roster"                             # RFC 6121 §2
PING_NS = "urn:xmpp:ping"                                  # XEP-0199
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"    # XEP-0030
DELAY_NS = "urn:xmpp:delay"                                # XEP-0203
VERSION_NS = "jabber:iq:version"                           # XEP-0092


def q(ns: str, tag: str) -> str:
    """ElementTree's ``{ns}tag`` form."""
    return f"{{{ns}}}{tag}"
