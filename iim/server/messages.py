"""Messages for local users, from whichever sender (RFC 6121 §8.5.2, §8.5.3).

The recipient's server's rules, the same for a local sender (``Router``) and
for another domain (``RemoteStanzas``), once the caller has checked that the
account exists (§8.5.1). To a connected full JID: delivered. To a bare JID (or
a full JID whose resource is gone, for chat and normal messages,
§8.5.3.2.1): to the available resources with the highest non-negative
priority; headlines to every non-negative one; with none, chat and normal
messages are kept in offline storage (XEP-0160, ``iim.server.offline``). A
groupchat message nobody can take is ``<service-unavailable/>``; error
messages and headlines nobody can take are dropped.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID

from .offline import OfflineStore
from .sessions import Sessions
from .stanzas import MessageType

__all__ = ["Messages"]

Cond = StanzaErrorCondition


class Messages:
    """Delivery of messages to the accounts of one domain."""

    def __init__(self, sessions: Sessions, offline: OfflineStore) -> None:
        self.sessions, self.offline = sessions, offline

    def to_account(self, message: Element, to: JID) -> None:
        """To an existing account's bare or full JID."""
        mtype = MessageType.of(message)
        if to.resource is None:
            self._to_bare(message, mtype, to)
        else:
            self._to_full(message, mtype, to)

    def _to_full(self, message: Element, mtype: MessageType, to: JID) -> None:
        self.offline.strip_own_delays(message)
        if self.sessions.deliver_to(to, message):
            return                                              # §8.5.3.1
        if mtype in (MessageType.NORMAL, MessageType.CHAT):
            self._to_bare(message, mtype, to.bare)               # §8.5.3.2.1
        elif mtype is MessageType.GROUPCHAT:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        # headline and error: silently ignored

    def _to_bare(self, message: Element, mtype: MessageType, bare: JID) -> None:
        self.offline.strip_own_delays(message)
        if mtype is MessageType.ERROR:
            return  # §8.5.2.1.1, §8.5.2.2.1: silently ignored
        if mtype is MessageType.GROUPCHAT:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        if mtype is MessageType.HEADLINE:
            targets = self.sessions.non_negative(bare)
        else:
            targets = self.sessions.most_available(bare)
        for session in targets:
            session.deliver(message)
        if not targets and mtype is not MessageType.HEADLINE:
            self.offline.keep(message, bare)
