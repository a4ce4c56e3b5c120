"""The way out to other domains (RFC 6120 §10.4).

A stanza for another domain is handed to the federation
(``iim.server.federation``), which finds or opens the server-to-server
stream. Without federation (``iim_server.useport`` off), or when the
federation cannot take it, the local sender gets an error
(``<remote-server-not-found/>``, RFC 6120 §8.3.3.13, unless another
condition is named) through the session registry.
"""

from __future__ import annotations

from typing import Protocol
from xml.etree.ElementTree import Element

from iim.xmpp.errors import StanzaErrorCondition

from .sessions import Sessions
from .stanzas import bounce

__all__ = ["Federated", "RemoteDomains"]


class Federated(Protocol):
    """What the way out needs from the federation (``Federation`` is one)."""

    def send(self, stanza: Element) -> None:
        """Queue ``stanza`` for its domain's outgoing stream."""


class RemoteDomains:
    """Stanzas out of this domain, and errors back to their local senders."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.federation: Federated | None = None    # set when s2s listens

    def send(self, stanza: Element) -> None:
        """Send ``stanza`` to another domain, or bounce it to its sender."""
        if self.federation is not None:
            self.federation.send(stanza)
        else:
            self.bounce_to_local(stanza, StanzaErrorCondition.REMOTE_SERVER_NOT_FOUND)

    def bounce_to_local(self, stanza: Element, condition: StanzaErrorCondition) -> None:
        """An error for a stanza that could not leave, to its local sender."""
        reply = bounce(stanza, condition)
        if reply is not None:
            self.sessions.deliver_local(reply)
