"""Offline messages handed out at login, in bounded batches (XEP-0160 §2, issue 11).

Theory of operation
-------------------
A user may come back to thousands of stored messages (up to
``iim_server.offline_quota`` bytes). Reading, parsing and handing them all
over in one go held the event loop, and so every other user, for seconds.
Instead a ``Delivery`` hands them out in *batches*: at most
``iim_server.offline_batch`` messages and ``BATCH_BYTES`` bytes (the first
message always goes, whatever its size), oldest first. The first batch goes
at once, inside the initial presence that asked for it; each next one only
when the session's carrier has written the previous one out (``_writing``),
so a slow client paces its own delivery and never fills its backlog with
stored messages, and other users' stanzas are handled in between. Each batch
is one short read, no transaction stays open across batches, and the SQLite
connection is free for everyone else meanwhile.

Handing over and deleting. A batch is handed to the session (``deliver``),
then its rows are deleted, with nothing in between that yields to the event
loop. While a batch is being handed out its stanzas are *in flight*: if the
session gives one back (``keep_for_later``: the session ended or could not
send), its row is simply left in place, neither deleted nor stored twice, and
the delivery stops. So a message leaves storage only once the session has
taken it; whatever was not handed over stays stored, in order, for the next
login. Should the process die between handing over and the delete, the
messages are delivered again next time: delivery is *at least once*, never
at most once.

One delivery per user at a time: a second resource sending initial presence
while one runs does not start another (the same rows would go out twice);
messages to the user go live to the available resources meanwhile, so live
messages can overtake stored ones still waiting for their batch. A delivery
ends when nothing is left, or when its session is gone, unavailable, or at a
negative priority; what is left waits for the next initial presence.

Without a running event loop (the in-memory tests) the batches follow one
another at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable
from xml.etree.ElementTree import Element

from iim.xmpp.jid import JID

if TYPE_CHECKING:
    from iim.server.router import SessionHandle
    from iim.server.storage import Storage

__all__ = ["BATCH_BYTES", "Deliveries"]

BATCH_BYTES = 256 * 1024
"""Bytes of stored stanzas in one batch (past its first message)."""
DRAIN_POLL = 0.01
"""Seconds between two looks at whether the session wrote its last batch out."""


class Deliveries:
    """The offline deliveries running now, one per user."""

    def __init__(self, storage: "Storage", parse: Callable[[bytes], Element | None],
                 batch: int, log: logging.Logger) -> None:
        self.storage, self.parse, self.batch, self.log = storage, parse, batch, log
        self._running: dict[JID, Delivery] = {}

    def start(self, session: "SessionHandle", wanted: Callable[[], bool]) -> None:
        """Deliver the user's stored messages to ``session`` while ``wanted()``."""
        user = session.jid.bare
        if user in self._running:
            return
        delivery = self._running[user] = Delivery(self, session, wanted)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if delivery.step() and loop is not None:
            loop.create_task(self._continue(delivery))
            return
        while loop is None and delivery.step():
            pass
        del self._running[user]

    def keep_in_place(self, session: "SessionHandle", stanza: Element) -> bool:
        """True when ``stanza`` is in flight from storage to ``session``: its
        row stays where it is (see the theory of operation)."""
        delivery = self._running.get(session.jid.bare) if session.jid is not None else None
        return delivery is not None and delivery.session is session and delivery.keep(stanza)

    async def _continue(self, delivery: "Delivery") -> None:
        try:
            while True:
                await asyncio.sleep(0)                  # other users' turn
                while _writing(delivery.session) and delivery.wanted():
                    await asyncio.sleep(DRAIN_POLL)
                if not delivery.step():
                    return
        except Exception:  # noqa: BLE001 - the rows stay stored; log and stop
            self.log.exception("%s: offline delivery failed", delivery.session.jid)
        finally:
            del self._running[delivery.session.jid.bare]


class Delivery:
    """Stored messages on their way to one session."""

    def __init__(self, deliveries: Deliveries, session: "SessionHandle",
                 wanted: Callable[[], bool]) -> None:
        self.deliveries, self.session, self.wanted = deliveries, session, wanted
        self.after = 0                                  # the last row handed out
        self._in_flight: dict[int, tuple[Element, int]] = {}
        self._kept = False

    def step(self) -> bool:
        """Hand out one batch; True when there may be more to hand out."""
        if not self.wanted():
            return False
        d = self.deliveries
        user = self.session.jid.bare
        rows = d.storage.offline_batch(user.local, after=self.after, limit=d.batch,
                                       max_bytes=BATCH_BYTES)
        if not rows:
            return False
        self.after = rows[-1][0]
        done = self._hand_over(rows)
        if done:
            d.storage.delete_offline(user.local, done)
        return not self._kept and len(rows) > 0

    def keep(self, stanza: Element) -> bool:
        found = self._in_flight.pop(id(stanza), None)
        if found is None:
            return False
        self._kept = True
        return True

    def _hand_over(self, rows: list[tuple[int, bytes]]) -> list[int]:
        """Deliver the batch; the ids of the rows the session took (or that
        cannot be read: those are dropped with a warning)."""
        staged, unreadable = [], []
        for row_id, data in rows:
            stanza = self.deliveries.parse(data)
            if stanza is None:
                self.deliveries.log.warning("%s: unreadable offline message %d dropped",
                                            self.session.jid.bare, row_id)
                unreadable.append(row_id)
            else:
                staged.append((stanza, row_id))
        self._in_flight = {id(stanza): (stanza, row_id) for stanza, row_id in staged}
        for stanza, _ in staged:
            self.session.deliver(stanza)
        taken = [row_id for stanza, row_id in staged if id(stanza) in self._in_flight]
        self._in_flight = {}
        return unreadable + taken


def _writing(session: "SessionHandle") -> bool:
    """Whether bytes still wait in the session's carrier (``c2s.Carrier.pending``):
    the previous batch is not written out yet. A session without a carrier
    (in-memory tests) is never waiting."""
    carrier = getattr(session, "carrier", None)
    return carrier is not None and carrier.pending() > 0
