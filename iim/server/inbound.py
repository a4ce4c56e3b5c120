"""Stanzas from other domains, for local entities (RFC 6121 §8.5, §3, §4.3).

The s2s stream has already checked that the sender's domain is authenticated
and that ``to`` is ours; here each stanza goes where RFC 6121 says the
recipient's server sends it, with the same local delivery rules a local
sender gets (``Router``): messages to the user's resources or offline
storage, presence to the available resources, subscriptions through the
roster state machine (``Presence.inbound_subscription``), probes answered
when the prober is subscribed, IQs to a resource or answered on the user's
or server's behalf. A ``StanzaError`` becomes an error stanza back to the
remote sender, through the federation (never for a stanza of type error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from iim.xmpp.errors import StanzaError, StanzaErrorCondition
from iim.xmpp.jid import JID, InvalidJID
from iim.xmpp.ns import CLIENT_NS, q

from .presence import PresenceType

if TYPE_CHECKING:
    from .router import Router

Cond = StanzaErrorCondition


class RemoteStanzas:
    def __init__(self, router: "Router") -> None:
        self.router = router
        self._handlers = {q(CLIENT_NS, "message"): self._message,
                          q(CLIENT_NS, "presence"): self._presence,
                          q(CLIENT_NS, "iq"): self._iq}

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
            self.router.log.exception("stanza from %s: error while routing", sender)
            self._refuse(stanza, StanzaError(Cond.INTERNAL_SERVER_ERROR))

    def _refuse(self, stanza: Element, error: StanzaError) -> None:
        from .router import bounce
        reply = bounce(stanza, error)
        if reply is not None:
            self.router.route_remote(reply)

    # -- messages -----------------------------------------------------------------------

    def _message(self, message: Element, sender: JID, to: JID) -> None:
        from .router import MessageType
        if to.local is None or not self.router.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)          # RFC 6121 §8.5.1
        mtype = MessageType.of(message)
        if to.resource is None:
            self.router._message_to_bare(message, mtype, to)
        else:
            self.router._message_to_full(message, mtype, to)

    # -- presence -----------------------------------------------------------------------

    def _presence(self, stanza: Element, sender: JID, to: JID) -> None:
        ptype = PresenceType.of(stanza)
        presence = self.router.presence
        if ptype.is_subscription:
            stanza.set("from", str(sender.bare))                 # RFC 6121 §3.1.3
            stanza.set("to", str(to.bare))
            presence.inbound_subscription(to.bare, sender.bare, ptype, stanza)
        elif ptype is PresenceType.PROBE:
            if to.local is not None and self.router.user_exists(to):
                presence.answer_remote_probe(to.bare, sender)
        elif to.local is not None:
            self.router.deliver_presence(to, stanza)

    # -- iq -----------------------------------------------------------------------------

    def _iq(self, iq: Element, sender: JID, to: JID) -> None:
        from .router import _iq_type, _payload
        iq_type = _iq_type(iq)
        if to.local is not None and to.resource is not None:
            self.router._iq_to_resource(iq, iq_type, to)
            return
        if not iq_type.is_request:
            return                                              # nobody waits for it
        payload = _payload(iq)
        if to.local is None:
            answer = self.router.services.server(iq_type, payload)
        elif not self.router.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        else:
            visible = self.router.presence.state(to.bare, sender.bare).has_from
            answer = self.router.services.account(iq_type, payload, visible=visible)
        result = Element(q(CLIENT_NS, "iq"), {"type": "result", "id": iq.get("id"),
                                              "to": str(sender), "from": str(to)})
        if answer is not None:
            result.append(answer)
        self.router.route_remote(result)
