"""The router: where each stanza goes (RFC 6120 §10, RFC 6121 §8).

Theory of operation
-------------------
The router is a dispatch table over the parts that do the work. None of those
parts knows the router; it alone knows them all, builds them, and wires them:

- ``sessions`` (``iim.server.sessions``): who is bound, who is available, and
  local delivery to full and bare JIDs;
- ``remote`` (``iim.server.remote``): the way out to other domains;
- ``offline`` (``iim.server.offline``): messages kept for later, pending
  subscription requests, and what a session could not send;
- ``roster``, ``presence``, ``services``: RFC 6121 §2, §3 and §4, and the IQs
  the server answers itself;
- ``messages`` (``iim.server.messages``): RFC 6121 §8.5 for local recipients;
- ``inbound`` (``iim.server.inbound``): stanzas from other domains.

So the modules import one way: router -> inbound -> presence -> roster ->
sessions, with offline, messages, remote and stanzas beside them
(docs/architecture.md draws it).

The session layer (``iim.server.c2s``) calls ``bind_refusal`` before it binds,
``session_bound`` when a resource is bound, ``stanza_from`` for every stanza the
client sends (``from`` already stamped with its full JID), ``session_ended``
when the stream is gone, ``keep_for_later`` for what it could not send, and
``shutdown``; for XEP-0198, ``resumable`` when a session may be resumed,
``resumption`` to find it again, and ``session_resumed`` when a new session
takes an old one's place (in the registry, in presence, in an offline
delivery under way: nothing else holds a session). The federation calls ``stanza_from_remote`` and
``bounce_to_local``.

Sessions. A second login with the same full JID wins (RFC 6120 §7.7.2.2, the
"override" policy): the older session is unregistered first (its unavailable
presence goes out), then closed with ``<conflict/>``. Its own
``session_ended`` call, which may come during ``close`` or later, then finds
another session in its place and is ignored; so is any stanza a replaced or
unknown session still sends. When the last resource goes, the roster held in
memory for the user is freed (``Roster.forget``).

Dispatch. Presence goes to ``iim.server.presence`` whatever its address (its
type decides, RFC 6121 §4). A message or an IQ is looked up in ``_table`` by
its kind and by where it is addressed (``Addressing``): no ``to``, the
sender's own account, the server, another account, a full JID, another
domain. An IQ is checked first (RFC 6120 §8.2.3: an id, a known type, one
payload for get and set). Messages to local accounts follow
``iim.server.messages``; one to the server, or to an account that does not
exist (§8.5.1), is ``<service-unavailable/>``. IQs with no ``to``, or to the
own bare JID: the roster or the server's services; the domain:
``iim.server.services``; the security query (``iim.server.security_info``,
with no ``to`` or to the domain) describes the asking session's own TLS; another user's bare JID: answered on the user's
behalf (RFC 6121 §8.5.2.1.3); a full JID: forwarded to that session, else
``<service-unavailable/>``. Results and errors nobody waits for are dropped.

Errors go back through ``bounce``, which never answers a stanza of type
``error`` (RFC 6120 §8.3.1: no error loops). A ``StanzaError`` raised by any
handler becomes such a bounce to the sending session; any other exception is
logged and becomes ``<internal-server-error/>``.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime
from typing import Callable
from xml.etree.ElementTree import Element

from iim.conf.limits import ServerLimits
from iim.xmpp.errors import StanzaError, StanzaErrorCondition, StreamError, StreamErrorCondition
from iim.xmpp.jid import JID
from iim.xmpp.ns import ROSTER_NS, q
from iim.xmpp.xml import DEFAULT_MAX_STANZA_BYTES

from .inbound import RemoteStanzas
from .messages import Messages
from .offline import OfflineStore
from .presence import Presence
from .remote import Federated, RemoteDomains
from .roster import Roster
from .security_info import SecurityInfo
from .services import Services
from .sessions import SessionHandle, Sessions
from .stanzas import IQ, MESSAGE, PRESENCE, IqType, bounce, iq_payload, iq_type, recipient
from .storage import Storage

__all__ = ["Addressing", "Router"]

Cond = StanzaErrorCondition
ROSTER_QUERY = q(ROSTER_NS, "query")
Handler = Callable[[SessionHandle, Element, "JID | None"], None]


class Addressing(enum.Enum):
    """Where a client's message or IQ is addressed: the second key of the table."""

    NONE = "no 'to'"
    OWN = "the sender's own bare JID"
    SERVER = "the domain"
    ACCOUNT = "another local bare JID"
    RESOURCE = "a local full JID"
    REMOTE = "another domain"


ROSTER_RESULT_ENVELOPE = 1024
"""Bytes of a roster result that are not its items (the iq, the query, the
addresses): the roster's own bound is the stanza limit less this."""


class Router:
    """Stanza dispatch for one domain, over its sessions, presence and storage."""

    def __init__(
        self,
        domain: str,
        storage: Storage,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], datetime] | None = None,
        limits: ServerLimits = ServerLimits(),
        limit_log=None,
        max_stanza_bytes: int = DEFAULT_MAX_STANZA_BYTES,
        server_certificate: Callable[[], object | None] = lambda: None,
    ) -> None:
        self.log = log or logging.getLogger("iim.server.router")
        self.storage = storage
        self.sessions = Sessions(domain, storage.user_exists, limits=limits, limit_log=limit_log)
        self.domain = self.sessions.domain
        self.remote = RemoteDomains(self.sessions)
        self.offline = OfflineStore(storage, self.sessions, self.remote, clock=clock,
                                    limits=limits, limit_log=limit_log, log=self.log)
        self.roster = Roster(storage, self.sessions, limits=limits,
                             max_bytes=max_stanza_bytes - ROSTER_RESULT_ENVELOPE)
        self.presence = Presence(self.sessions, self.roster, self.offline, self.remote,
                                 log=self.log)
        self.roster.on_remove = self.presence.roster_item_removed
        self.messages = Messages(self.sessions, self.offline)
        self.services = Services(self.domain)
        self.security = SecurityInfo(server_certificate)    # the asking session's own TLS
        self.inbound = RemoteStanzas(self.sessions, self.remote, self.messages, self.presence,
                                     self.services, log=self.log)
        self._table = self._dispatch_table()

    def _dispatch_table(self) -> dict[tuple[str, Addressing], Handler]:
        a = Addressing
        return {
            (MESSAGE, a.NONE): self._message_to_account,
            (MESSAGE, a.OWN): self._message_to_account,
            (MESSAGE, a.ACCOUNT): self._message_to_account,
            (MESSAGE, a.RESOURCE): self._message_to_account,
            (MESSAGE, a.SERVER): _no_messages,
            (MESSAGE, a.REMOTE): self._to_remote,
            (IQ, a.NONE): self._iq_to_self,
            (IQ, a.OWN): self._iq_to_self,
            (IQ, a.SERVER): self._iq_to_server,
            (IQ, a.ACCOUNT): self._iq_to_account,
            (IQ, a.RESOURCE): self._iq_to_resource,
            (IQ, a.REMOTE): self._to_remote,
        }

    @property
    def federation(self) -> Federated | None:
        """The federation (``iim.server.federation``), when s2s listens."""
        return self.remote.federation

    @federation.setter
    def federation(self, federation: Federated | None) -> None:
        self.remote.federation = federation

    # -- sessions ------------------------------------------------------------------

    def bind_refusal(self, jid: JID) -> StanzaErrorCondition | None:
        """Why ``jid`` may not be bound now (``Sessions.bind_refusal``), or None."""
        return self.sessions.bind_refusal(jid)

    def session_bound(self, session: SessionHandle) -> None:
        """Register a session; an older one with the same full JID is closed."""
        old = self.sessions.session_for(session.jid)
        if old is session:
            return
        if old is not None:
            self.log.info("%s: logged in again, closing the older session", session.jid)
            self._unregister(old)
            old.close(StreamError(StreamErrorCondition.CONFLICT, "replaced by a new login"))
        self.sessions.add(session)

    def session_ended(self, session: SessionHandle) -> None:
        """Unregister; its unavailable presence goes out (RFC 6121 §4.6)."""
        self.sessions.forget_resumption(session)
        if self.sessions.is_current(session):
            self._unregister(session)

    def _unregister(self, session: SessionHandle) -> None:
        self.sessions.remove(session)
        self.presence.session_gone(session)
        if not self.sessions.is_online(session.jid.bare):
            self.roster.forget(session.jid.bare)

    # -- XEP-0198 resumption --------------------------------------------------------

    def resumable(self, session: SessionHandle, resumption_id: str) -> None:
        """The session may be resumed with ``resumption_id`` (its account only)."""
        self.sessions.resumable(session, resumption_id)

    def resumption(self, resumption_id: str, username: str | None) -> SessionHandle | None:
        """The registered session ``username`` may resume with this id, or None."""
        return self.sessions.resumption(resumption_id, username)

    def session_resumed(self, old: SessionHandle, new: SessionHandle) -> None:
        """``new`` resumed ``old``: it takes its place everywhere; nobody sees a change."""
        self.sessions.replace(old, new)
        self.presence.session_moved(old, new)
        self.offline.session_moved(old, new)
        self.sessions.forget_resumption(old)
        if getattr(new, "resumption_id", None) is not None:
            self.sessions.resumable(new, new.resumption_id)

    def sessions_of(self, bare: JID) -> list[SessionHandle]:
        return self.sessions.sessions_of(bare)

    def session_for(self, full: JID) -> SessionHandle | None:
        return self.sessions.session_for(full)

    def shutdown(self) -> None:
        """Close what is left. Nothing is lost: stored messages are in storage."""
        sessions = self.sessions.clear()
        self.presence.forget_all()
        self.roster.forget_all()
        for session in sessions:
            session.close(StreamError(StreamErrorCondition.SYSTEM_SHUTDOWN))

    # -- entry points ----------------------------------------------------------------

    def stanza_from(self, session: SessionHandle, stanza: Element) -> None:
        """Handle one stanza from a bound session."""
        if not self.sessions.is_current(session):
            self.log.debug("%s: stanza from a session that is not registered, dropped",
                           session.jid)
            return
        stanza.set("from", str(session.jid))
        if stanza.tag not in (MESSAGE, PRESENCE, IQ):
            self.log.debug("%s: not a stanza: %s, dropped", session.jid, stanza.tag)
            return
        try:
            self._dispatch(session, stanza)
        except StanzaError as exc:
            self._fail(session, stanza, exc)
        except Exception:  # noqa: BLE001 - one bad stanza must not take the session down
            self.log.exception("%s: error while routing a %s", session.jid, stanza.tag)
            self._fail(session, stanza, StanzaError(Cond.INTERNAL_SERVER_ERROR))

    def _dispatch(self, session: SessionHandle, stanza: Element) -> None:
        if stanza.tag == PRESENCE:
            self.presence.from_client(session, stanza)     # its type decides (RFC 6121 §4)
            return
        if stanza.tag == IQ:
            iq_type(stanza)                                 # RFC 6120 §8.2.3 first
        to = recipient(stanza)
        self._table[stanza.tag, self._addressing(session, to)](session, stanza, to)

    def _addressing(self, session: SessionHandle, to: JID | None) -> Addressing:
        if to is None:
            return Addressing.NONE
        if not self.sessions.is_local(to):
            return Addressing.REMOTE
        if to.local is None:
            return Addressing.SERVER
        if to.resource is not None:
            return Addressing.RESOURCE
        return Addressing.OWN if to == session.jid.bare else Addressing.ACCOUNT

    def stanza_from_remote(self, stanza: Element) -> None:
        """A stanza another server sent us (``iim.server.inbound``)."""
        self.inbound.handle(stanza)

    def _fail(self, session: SessionHandle, stanza: Element, error: StanzaError) -> None:
        reply = bounce(stanza, error)
        if reply is None:
            return
        if error.condition is Cond.JID_MALFORMED:
            reply.attrib.pop("from", None)  # never echo an address we could not parse
        session.deliver(reply)

    # -- the table's handlers --------------------------------------------------------

    def _to_remote(self, session: SessionHandle, stanza: Element, to: JID | None) -> None:
        self.remote.send(stanza)

    def _message_to_account(self, session: SessionHandle, message: Element,
                            to: JID | None) -> None:
        to = to or session.jid.bare          # RFC 6120 §10.3.1: no 'to', own account
        if not self.sessions.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)  # RFC 6121 §8.5.1
        self.messages.to_account(message, to)

    def _iq_to_resource(self, session: SessionHandle, iq: Element, to: JID | None) -> None:
        if not self.sessions.deliver_to(to, iq) and iq_type(iq).is_request:
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)  # RFC 6121 §8.5.3.2.1 (and §8.5.1)

    def _iq_to_self(self, session: SessionHandle, iq: Element, to: JID | None) -> None:
        """No 'to', or the own bare JID: the roster, else the server's or the
        account's services."""
        kind = iq_type(iq)
        if kind.is_request:
            payload = iq_payload(iq)
            if payload.tag == ROSTER_QUERY:
                answer = self._roster_request(session, kind, payload)
            elif to is None and self.security.handles(payload):
                answer = self.security.answer(session, kind, payload)
            elif to is None:
                answer = self.services.server(kind, payload)
            else:
                answer = self.services.account(kind, payload, visible=True)
            self._reply(session, iq, answer)

    def _iq_to_server(self, session: SessionHandle, iq: Element, to: JID | None) -> None:
        kind = iq_type(iq)
        if kind.is_request:
            payload = iq_payload(iq)
            if self.security.handles(payload):
                self._reply(session, iq, self.security.answer(session, kind, payload))
            else:
                self._reply(session, iq, self.services.server(kind, payload))

    def _iq_to_account(self, session: SessionHandle, iq: Element, to: JID | None) -> None:
        """Answered on the user's behalf (RFC 6121 §8.5.2.1.3)."""
        kind = iq_type(iq)
        if not kind.is_request:
            return
        payload = iq_payload(iq)
        if not self.sessions.user_exists(to):
            raise StanzaError(Cond.SERVICE_UNAVAILABLE)
        visible = self.presence.state(to, session.jid.bare).has_from
        self._reply(session, iq, self.services.account(kind, payload, visible=visible))

    def _roster_request(self, session: SessionHandle, kind: IqType,
                        query: Element) -> Element | None:
        if kind is IqType.GET:
            return self.roster.get(session, query)
        self.roster.set(session, query)
        return None

    def _reply(self, session: SessionHandle, iq: Element, payload: Element | None) -> None:
        result = Element(IQ, {"type": "result", "id": iq.get("id"), "to": str(session.jid)})
        if iq.get("to") is not None:
            result.set("from", iq.get("to"))
        if payload is not None:
            result.append(payload)
        session.deliver(result)

    # -- for the session layer and the federation ---------------------------------------

    def bounce_to_local(self, stanza: Element, condition: StanzaErrorCondition) -> None:
        """An error for a stanza that could not leave, to its local sender."""
        self.remote.bounce_to_local(stanza, condition)

    def deliver_offline(self, session: SessionHandle) -> None:
        """Hand the stored stanzas to a session (``OfflineStore.deliver``)."""
        self.offline.deliver(session)

    def keep_for_later(self, session: SessionHandle, stanza: Element) -> bool:
        """A stanza the session could not send (``OfflineStore.keep_for_later``)."""
        return self.offline.keep_for_later(session, stanza)

    def keep_all_for_later(self, session: SessionHandle, stanzas: list[Element]) -> int:
        """A whole backlog the session could not send, in one transaction."""
        return self.offline.keep_all_for_later(session, stanzas)


def _no_messages(session: SessionHandle, message: Element, to: JID | None) -> None:
    raise StanzaError(Cond.SERVICE_UNAVAILABLE)  # the server takes no messages
