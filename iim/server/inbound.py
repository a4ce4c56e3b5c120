"""Stanzas from other domains, for local entities (RFC 6121 §8.5, §3, §4.3).

The s2s stream has already checked that the sender's domain is authenticated
and that ``to`` is ours; here each stanza goes where RFC 6121 says the
recipient's server sends it, with the same local delivery rules a local
sender gets: messages to the user's resources or offline storage
(``iim.server.messages``), presence to the available resources, subscriptions
through the roster state machine (``Presence.inbound_subscription``), probes
answered when the prober is subscribed, IQs to a resource or answered on the
user's or server's behalf (``iim.server.services``). A ``StanzaError``
becomes an error stanza back to the remote sender, through the federation
(never for a stanza of type error).

Its dispatch is a table from the stanza's element to a handler, as the
router's is; it stands on the session registry, presence, messages, services
and the way out, never on the router.
"""

from __future__ import annotations

import logging
from xml.etree.ElementTree import Element

from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID, InvalidJID

from .messages import Messages
from .presence import Presence, PresenceType
from .remote import RemoteDomains
from .services import Services
from .sessions import Sessions
from .stanzas import IQ, MESSAGE, PRESENCE, bounce, iq_payload, iq_type

__all__ = ["RemoteStanzas"]

Cond = StanzaErrorCondition


class RemoteStanzas:
    """What a local entity receives from another domain."""

    def __init__(self, sessions: Sessions, remote: RemoteDomains, messages: Messages,
                 presence: Presence, services: Services, *,
                 log: logging.Logger | None = None) -> None:
        self.sessions, self.remote, self.messages = sessions, remote, messages
        self.presence, self.services = presence, services
        self.log = log or logging.getLogger("iim.server.inbound")
        self._handlers = {MESSAGE: self._message, PRESENCE: self._presence, IQ: self._iq}

    def handle(self, stanza: Element) -> None:
        handler = self._handlers.get(stanza.tag)
        if handler is None:
            return
        try:
            sender, to = JID.parse(stanza.get("from")), JID.parse(stanza.get("to"))
        except (InvalidJID, TypeError):
            return                      # the stream checked both; nothing to answer to
        try:
            handler(stanza, sender, to)
        except StanzaError as exc:
            self._refuse(stanza, exc)
        except Exception:  # noqa: BLE001 - one bad stanza must not take the stream down
            self.log.exception("stanza from %s: error while routing", sender)
            self._refuse(stanza, StanzaError(Cond.INTERNAL_SERVER_ERROR))

    def _refuse(self, stanza: Element, error: StanzaError) -> None:
        reply = bounce(stanza, error)
        if reply is not None:
            self.remote.send(reply)

    # -- messages -----------------------------------------------------------------------

    def _message(self, message: Element, sender: JID, to: JID) -> None:
        if to.local is None or not self.sessions.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)          # RFC 6121 §8.5.1
        self.messages.to_account(message, to)

    # -- presence -----------------------------------------------------------------------

    def _presence(self, stanza: Element, sender: JID, to: JID) -> None:
        ptype = PresenceType.of(stanza)
        if ptype.is_subscription:
            stanza.set("from", str(sender.bare))                 # RFC 6121 §3.1.3
            stanza.set("to", str(to.bare))
            self.presence.inbound_subscription(to.bare, sender.bare, ptype, stanza)
        elif ptype is PresenceType.PROBE:
            if to.local is not None and self.sessions.user_exists(to):
                self.presence.answer_remote_probe(to.bare, sender)
        elif to.local is not None:
            self.presence.deliver(to, stanza)

    # -- iq -----------------------------------------------------------------------------

    def _iq(self, iq: Element, sender: JID, to: JID) -> None:
        kind = iq_type(iq)
        if to.local is not None and to.resource is not None:
            if not self.sessions.deliver_to(to, iq) and kind.is_request:
                raise StanzaError(Cond.SERVICE_UNAVAILABLE)     # RFC 6121 §8.5.3.2.1
            return
        if not kind.is_request:
            return                                              # nobody waits for it
        payload = iq_payload(iq)
        if to.local is None:
            answer = self.services.server(kind, payload)
        elif not self.sessions.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        else:
            visible = self.presence.state(to.bare, sender.bare).has_from
            answer = self.services.account(kind, payload, visible=visible)
        result = Element(IQ, {"type": "result", "id": iq.get("id"),
                              "to": str(sender), "from": str(to)})
        if answer is not None:
            result.append(answer)
        self.remote.send(result)
