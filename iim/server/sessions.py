"""The session registry: who is connected, and delivery to them (RFC 6120 §7.7, RFC 6121 §8.5).

Theory of operation
-------------------
Sessions are ``SessionHandle``s (``iim.server.c2s`` implements one): the
registry only ever calls ``deliver(stanza)`` on them and reads the three
attributes the router and presence keep up to date (``available``,
``priority``, ``interested``).

Bare JID -> resource -> session, for one domain. ``add`` registers a bound
session and ``remove`` takes it out; who is replaced, and what follows a
departure (unavailable presence, the roster freed), is the router's business
(``iim.server.router``): the registry holds no opinion, only the table. An
account has at most ``iim_server.max_resources`` sessions: the stream asks
``bind_refusal`` before it binds, and a new resource beyond the limit is
``<resource-constraint/>`` (RFC 6120 §7.6.2.1); taking over a resource in use
replaces a session, so the count stays as it was and overriding cannot be used
to exceed the limit.

XEP-0198 resumption ids (``resumable``, ``resumption``): each names one
session and answers only to that session's own account, so an id of another
user is as unknown as one never issued. A detached session (its connection
lost, waiting to be resumed) stays in the table, so it counts within
``max_resources``; ``replace`` puts the session that resumed it in its place.

Local delivery, the part of RFC 6121 §8.5 every sender shares: to a full JID
the one session; to a bare JID the available resources of non-negative
priority, or only those with the highest priority (§8.5.2.1.1). What happens
when nobody can take a stanza depends on its kind and is decided by the
caller (``iim.server.messages``, ``iim.server.presence``).
"""

from __future__ import annotations

import time
from typing import Callable, Protocol
from xml.etree.ElementTree import Element

from iim.conf.limits import ServerLimits
from iim.xmpp.errors import StanzaErrorCondition, StreamError
from iim.xmpp.jid import JID, prepare_domainpart

from .stanzas import recipient

__all__ = ["SessionHandle", "Sessions", "priority"]


class SessionHandle(Protocol):
    """What the router needs from a client session (implemented by ``c2s``)."""

    jid: JID
    """The bound full JID."""
    priority: int | None
    """Set by presence from the session's presence; None before initial presence."""
    available: bool
    """Set by presence: initial presence sent, no unavailable since."""
    interested: bool
    """Set by the roster: the session asked for the roster, so it gets pushes (RFC 6121 §2.1.6)."""

    def deliver(self, stanza: Element) -> None:
        """Queue a stanza to this client; never raises, even when closed."""

    def close(self, error: StreamError | None = None) -> None:
        """End the session (resource conflict, shutdown)."""


class Sessions:
    """The bound sessions of one domain, and local delivery to them."""

    def __init__(self, domain: str, accounts: Callable[[str], bool], *,
                 limits: ServerLimits = ServerLimits(), limit_log=None) -> None:
        self.domain = prepare_domainpart(domain)
        self._accounts = accounts       # localpart -> whether the account exists
        self.limits = limits
        self.limit_log = limit_log      # iim.server.quota.LimitLog, or None
        self._by_user: dict[JID, dict[str, SessionHandle]] = {}
        self._resumable: dict[str, SessionHandle] = {}     # XEP-0198 id -> session

    # -- the table -----------------------------------------------------------------

    def bind_refusal(self, jid: JID) -> StanzaErrorCondition | None:
        """Why ``jid`` may not be bound now, or None (asked by the stream
        before it answers a bind, RFC 6120 §7.6.2.1)."""
        resources = self._by_user.get(jid.bare, {})
        if jid.resource in resources or len(resources) < self.limits.max_resources:
            return None             # a new resource within the limit, or an override
        if self.limit_log is not None:
            self.limit_log.hit("iim_server.max_resources", time.monotonic(),
                               f"{jid.bare}: {len(resources)} sessions")
        return StanzaErrorCondition.RESOURCE_CONSTRAINT

    def add(self, session: SessionHandle) -> None:
        """Register a session in its resource's place, neither available nor interested."""
        session.available, session.priority, session.interested = False, None, False
        self._by_user.setdefault(session.jid.bare, {})[session.jid.resource] = session

    def remove(self, session: SessionHandle) -> bool:
        """Take the session out; True when it was its user's last."""
        resources = self._by_user[session.jid.bare]
        del resources[session.jid.resource]
        if resources:
            return False
        del self._by_user[session.jid.bare]
        return True

    def replace(self, old: SessionHandle, new: SessionHandle) -> None:
        """``new`` resumed ``old`` (XEP-0198 §5): same place, same state."""
        new.available, new.priority, new.interested = old.available, old.priority, old.interested
        self._by_user[old.jid.bare][old.jid.resource] = new

    # -- XEP-0198 resumption ids ----------------------------------------------------------

    def resumable(self, session: SessionHandle, resumption_id: str) -> None:
        self._resumable[resumption_id] = session

    def resumption(self, resumption_id: str, username: str | None) -> SessionHandle | None:
        """The session of ``username``'s account with this id, if it is still held."""
        session = self._resumable.get(resumption_id)
        if session is None or username is None or session.jid.local != username \
                or not self.is_current(session):
            return None
        return session

    def forget_resumption(self, session: SessionHandle) -> None:
        resumption_id = getattr(session, "resumption_id", None)
        if resumption_id is not None and self._resumable.get(resumption_id) is session:
            del self._resumable[resumption_id]

    def clear(self) -> list[SessionHandle]:
        """Empty the table; the sessions that were in it."""
        sessions = [s for resources in self._by_user.values() for s in resources.values()]
        self._by_user.clear()
        self._resumable.clear()
        return sessions

    # -- looking up --------------------------------------------------------------------

    def session_for(self, full: JID) -> SessionHandle | None:
        return self._by_user.get(full.bare, {}).get(full.resource)

    def is_current(self, session: SessionHandle) -> bool:
        """The session holds its resource (not replaced, not ended)."""
        return self.session_for(session.jid) is session

    def sessions_of(self, bare: JID) -> list[SessionHandle]:
        return list(self._by_user.get(bare.bare, {}).values())

    def is_online(self, bare: JID) -> bool:
        return bare in self._by_user

    def available(self, bare: JID) -> list[SessionHandle]:
        return [session for session in self.sessions_of(bare) if session.available]

    def interested(self, bare: JID) -> list[SessionHandle]:
        return [session for session in self.sessions_of(bare) if session.interested]

    def non_negative(self, bare: JID) -> list[SessionHandle]:
        """The available resources of non-negative priority (RFC 6121 §8.5.2.1.1)."""
        return [s for s in self.available(bare) if priority(s) >= 0]

    def most_available(self, bare: JID) -> list[SessionHandle]:
        """The available resources with the highest priority, if it is not negative."""
        candidates = self.non_negative(bare)
        if not candidates:
            return []
        top = max(priority(s) for s in candidates)
        return [s for s in candidates if priority(s) == top]

    # -- addresses ---------------------------------------------------------------------

    def is_local(self, jid: JID) -> bool:
        return jid.domain == self.domain

    def user_exists(self, jid: JID) -> bool:
        if jid.local is None or not self.is_local(jid):
            return False
        return jid.bare in self._by_user or self._accounts(jid.local)

    # -- delivery ----------------------------------------------------------------------

    def deliver_to(self, full: JID, stanza: Element) -> bool:
        """To the session of a full JID; False when there is none."""
        session = self.session_for(full)
        if session is None:
            return False
        session.deliver(stanza)
        return True

    def deliver_local(self, stanza: Element) -> None:
        """An error the server generated, to the local entity that caused it:
        its session, or its available resources for a bare JID."""
        to = recipient(stanza)
        if to is None or not self.is_local(to) or to.local is None:
            return
        if to.resource is not None:
            self.deliver_to(to, stanza)
            return
        for session in self.available(to):
            session.deliver(stanza)


def priority(session: SessionHandle) -> int:
    """The session's presence priority; 0 before initial presence."""
    return session.priority if session.priority is not None else 0

