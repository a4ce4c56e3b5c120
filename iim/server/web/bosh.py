"""BOSH (XEP-0124) carrying XMPP (XEP-0206) at ``/http-bind``: a sans-I/O session core and its adapter.

Theory of operation. A BOSH client sends HTTP POSTs, each a ``<body/>``
wrapper with a request id (``rid``, one more each time) and the session id
(``sid``) once it has one. The connection manager holds up to ``hold``
requests open and answers one when it has something for the client, when a
request waited ``wait`` seconds, or when a newer request arrives and more
than ``hold`` are held (XEP-0124 §7-§11). So at any moment the client has a
request waiting for the server to speak, without polling.

The rules that make that reliable, all in ``BoshCore`` (no clock, no I/O: the
adapter passes ``now`` and reads ``deadline()``):

- Requests are *processed* in rid order (§9.1): a request that arrives
  before an earlier one (two HTTP connections race) waits until the gap is
  filled; its payload reaches the XMPP session only then. A rid outside the
  window (older than the last ``requests`` answered, or more than
  ``requests`` ahead) ends the session with ``item-not-found`` (§14.2). A rid
  answered already is answered again with the same body (§14.3: a response
  lost on the network).
- Data for the client goes into the response of the *oldest* held request,
  all of it, so the client, which reads responses in rid order, reads the
  stanzas in the order the server sent them (in-order delivery across
  overlapping requests).
- A session with no request held for ``inactivity`` seconds is over (§8): it
  is a lost connection for the XMPP session (detached if resumable,
  XEP-0198).
- ``type='terminate'`` from the client ends the stream (``</stream:stream>``
  to the core) after the stanzas it carries; the server's end of the stream
  answers the held requests with ``type='terminate'``, with
  ``condition='remote-stream-error'`` and the ``<stream:error/>`` inside when
  it ended with one (XEP-0206 §5). An ended session answers later requests
  the same way until it is forgotten (``ENDED_GRACE`` seconds after the last
  request, or ``inactivity`` if that is shorter).

The XMPP side (XEP-0206): the session creation request opens the stream
(``to``, ``xml:lang``, ``xmpp:version``) and its response carries the
session's attributes and the stream features; ``xmpp:restart='true'`` after
SASL opens a new one. Both become a stream header for the core, as
``<open/>`` does for WebSocket (iim/server/web/framing.py); what the core
writes is split into elements by the same ``CoreOutput`` and each element
written standalone inside the bodies.

Errors without a usable session (unknown ``sid``, bad ``rid``, a body that
is not XML) are answered with HTTP 200 and ``type='terminate'`` plus the
condition (§17.2, for clients of version 1.6 and later), an oversized request
with 413 and ``policy-violation``, a plain or cross-origin request by the
gateway's policy (app.py) with 403.
"""

from __future__ import annotations

import asyncio
import enum
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from aiohttp import web

from iim.xmpp.errors import STREAMS_NS, StreamError
from iim.xmpp.xml import STREAM_CLOSE, to_bytes

from ..quota import source_of
from .carrier import RateRefused, admit, https_tls, open_session
from .framing import Closed, CoreOutput, FramedInput, Item, Opened, open_stream, standalone

__all__ = ["BOSH_NS", "BoshCore", "BoshSessions", "Condition", "Resend", "body"]

BOSH_NS = "http://jabber.org/protocol/httpbind"
XBOSH_NS = "urn:xmpp:xbosh"
BODY = "{%s}body" % BOSH_NS
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
VERSION = "1.11"                # XEP-0124 version spoken
MAX_WAIT = 60                   # seconds a request may be held, at most
MAX_HOLD = 1                    # requests held at once, at most (one more may be in flight)
INACTIVITY = 60                 # seconds without a held request before the session ends
POLLING = 2                     # shortest polling interval we ask of hold=0 clients
ENDED_GRACE = 10                # seconds an ended session still answers "terminate"
_DECLARATION = re.compile(rb"\A\s*<\?xml[^>]{0,100}\?>")


class Condition(enum.Enum):
    """XEP-0124 §17.2 terminal binding conditions."""

    BAD_REQUEST = "bad-request"
    HOST_UNKNOWN = "host-unknown"
    ITEM_NOT_FOUND = "item-not-found"
    POLICY_VIOLATION = "policy-violation"
    REMOTE_STREAM_ERROR = "remote-stream-error"
    SYSTEM_SHUTDOWN = "system-shutdown"
    UNDEFINED_CONDITION = "undefined-condition"


class BoshError(Exception):
    """The request (or the session) ends with ``condition``."""

    def __init__(self, condition: Condition, text: str = "") -> None:
        super().__init__(text or condition.value)
        self.condition = condition


def body(content: str = "", *, attrs: dict | None = None, terminate: Condition | None = None,
         ended: bool = False) -> str:
    """A ``<body/>`` wrapper (XEP-0124 §4) around ``content`` (elements, written standalone)."""
    out = [f"<body xmlns='{BOSH_NS}'"]
    if ended or terminate is not None:
        out.append(" type='terminate'")
    if terminate is not None:
        out.append(f" condition='{terminate.value}'")
    for name, value in (attrs or {}).items():
        out.append(f" {name}='{value}'")
    if not content:
        return "".join(out) + "/>"
    return "".join(out) + ">" + content + "</body>"


# -- the session core (sans-I/O) -------------------------------------------------------------


@dataclass(frozen=True)
class Resend:
    """A request for a rid answered already: the same answer again (§14.3)."""

    body: str



@dataclass
class BoshCore:
    """One BOSH session's request bookkeeping; see the module docstring."""

    rid: int                            # the creation request's rid
    wait: int
    hold: int
    now: float
    inactivity: float = INACTIVITY
    next_rid: int = field(init=False)
    waiting: dict = field(default_factory=dict)     # rid -> payload, arrived early
    held: dict = field(default_factory=dict)        # rid -> deadline, in rid order
    queue: list = field(default_factory=list)       # elements written standalone, for the client
    queued: int = 0                                 # the core's bytes they came from
    answered: OrderedDict = field(default_factory=OrderedDict)  # rid -> body (for resends)
    ended: bool = False                             # the stream is over
    error: bool = False                             # ... with a stream error in the queue
    first: dict | None = None                       # the creation response's attributes
    last_seen: float = 0.0

    def __post_init__(self) -> None:
        self.next_rid = self.rid
        self.last_seen = self.now

    @property
    def requests(self) -> int:
        """How many requests the client may have open at once (§7.1)."""
        return self.hold + 1

    def receive(self, rid: int, payload, now: float) -> list:
        """A request: the payloads now ready to be processed, in rid order.
        A resent rid gets ``[Resend(body)]`` instead; BoshError
        for a rid outside the window."""
        self.last_seen = now
        if rid in self.answered:
            return [Resend(self.answered[rid])]
        if rid < self.next_rid or rid in self.waiting or rid >= self.next_rid + self.requests:
            raise BoshError(Condition.ITEM_NOT_FOUND, f"rid {rid} outside the window "
                                                      f"{self.next_rid}..{self.next_rid + self.requests - 1}")
        self.waiting[rid] = payload
        ready = []
        while self.next_rid in self.waiting:
            ready.append(self.waiting.pop(self.next_rid))
            self.held[self.next_rid] = now + self.wait
            self.next_rid += 1
        return ready

    def push(self, text: str, cost: int | None = None) -> None:
        """``text`` for the client; ``cost``: the session's bytes it stands for
        (its length when not given)."""
        self.queue.append(text)
        self.queued += len(text) if cost is None else cost

    def end(self, with_error: bool = False) -> None:
        self.ended = True
        self.error = self.error or with_error

    def ready(self, now: float) -> list[tuple[int, str]]:
        """(rid, body) for every held request to answer now."""
        out = []
        if self.held:
            self.last_seen = now                # inactivity counts from the last answer (§8)
        if self.ended:
            while self.held:
                out.append(self._answer(min(self.held), self._final()))
            return out
        if self.queue and self.held:
            out.append(self._answer(min(self.held), self._take()))
        while len(self.held) > self.hold:
            out.append(self._answer(min(self.held), self._wrap("")))
        for rid in [rid for rid, deadline in self.held.items() if deadline <= now]:
            out.append(self._answer(rid, self._wrap("")))
        return out

    def deadline(self) -> float:
        """When ``ready`` or ``expired`` must be asked again."""
        if self.held:
            return min(self.held.values())
        return self.last_seen + self._idle_limit

    def expired(self, now: float) -> bool:
        return not self.held and not self.waiting and now >= self.last_seen + self._idle_limit

    @property
    def _idle_limit(self) -> float:
        """An ended session is kept only to tell a late request so, briefly."""
        return min(self.inactivity, ENDED_GRACE) if self.ended else self.inactivity

    def _take(self) -> str:
        content = "".join(self.queue)
        self.queue, self.queued = [], 0
        return self._wrap(content)

    def _wrap(self, content: str) -> str:
        attrs, self.first = self.first, None
        return body(content, attrs=attrs)

    def _final(self) -> str:
        content = "".join(self.queue)
        self.queue, self.queued = [], 0
        attrs, self.first = self.first, None
        if self.error:
            return body(content, attrs=attrs, terminate=Condition.REMOTE_STREAM_ERROR)
        return body(content, attrs=attrs, ended=True)

    def _answer(self, rid: int, text: str) -> tuple[int, str]:
        del self.held[rid]
        self.answered[rid] = text
        while len(self.answered) > self.requests:
            self.answered.popitem(last=False)
        return rid, text


# -- the adapter ---------------------------------------------------------------------------------


class BoshCarrier:
    """A ClientSession's carrier over a BOSH session."""

    __slots__ = ("bosh", "peer", "source", "output", "transport_tls")

    def __init__(self, bosh: "BoshSession", peer: str, source: str) -> None:
        self.bosh = bosh
        self.peer = peer
        self.source = source
        self.output = CoreOutput()
        self.transport_tls = None     # the last request's HTTPS connection (security_info.py)

    def write(self, data: bytes) -> None:
        core = self.bosh.core
        if core.ended:
            return
        events = self.output.feed(data)
        items = [e for e in events if isinstance(e, Item)]
        for event in events:
            if isinstance(event, Opened):
                if core.first is not None and event.id:
                    core.first["authid"] = event.id     # XEP-0206 §3: the stream id
            elif isinstance(event, Item):               # the chunk's bytes go with its last
                core.push(standalone(event.element), len(data) if event is items[-1] else 0)
                if event.element.tag == "{%s}error" % STREAMS_NS:
                    core.error = True
            elif isinstance(event, Closed):
                core.end()
        self.bosh.pump()

    def close(self) -> None:
        self.bosh.core.end()
        self.bosh.pump()

    def pending(self) -> int:
        """Bytes the session wrote that wait for a request, as the session counts them."""
        return self.bosh.core.queued


class BoshSession:
    """One BOSH session: its core, its XMPP session, the HTTP requests waiting."""

    def __init__(self, sessions: "BoshSessions", sid: str, core: BoshCore, peer: str,
                 source: str, secure: bool) -> None:
        self.sessions = sessions
        self.sid = sid
        self.core = core
        self.secure = secure
        self.carrier = BoshCarrier(self, peer, source)
        self.session = None
        self.futures: dict[int, asyncio.Future] = {}
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.gone = False

    def feed(self, payload: tuple[list[Element], dict]) -> None:
        """One request's content, in rid order: restart, stanzas, terminate."""
        children, flags = payload
        session = self.session
        if session is None or session.closed:
            return
        if flags.get("restart"):
            session.data_received(open_stream(to=flags.get("to"), version="1.0",
                                              lang=flags.get("lang")))
        for child in children:
            if session.closed:
                return
            session.data_received(to_bytes(child))
        if flags.get("terminate") and not session.closed:
            session.data_received(STREAM_CLOSE)

    async def request(self, rid: int, payload) -> str:
        now = self.loop.time()
        try:
            ready = self.core.receive(rid, payload, now)
        except BoshError as exc:
            self.fail()
            raise exc
        if ready and isinstance(ready[0], Resend):
            return ready[0].body
        future = self.loop.create_future()
        self.futures[rid] = future
        for item in ready:
            self.feed(item)
        self.pump()
        try:
            return await future
        finally:
            self.futures.pop(rid, None)

    def pump(self) -> None:
        """Answer what can be answered; the timer for what comes next."""
        for rid, text in self.core.ready(self.loop.time()):
            future = self.futures.get(rid)
            if future is not None and not future.done():
                future.set_result(text)
        if self.session is not None and not self.session.closed and not self.core.queue:
            self.session.resume_writing()
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.gone:
            self._timer = self.loop.call_at(self.core.deadline(), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.core.expired(self.loop.time()):
            self.forget()
            return
        self.pump()

    def fail(self) -> None:
        """A request broke the protocol: the session is over (a lost connection)."""
        self.core.end()
        self.pump()
        self.forget()

    def forget(self) -> None:
        if self.gone:
            return
        self.gone = True
        if self._timer is not None:
            self._timer.cancel()
        self.sessions.by_sid.pop(self.sid, None)
        if self.session is not None:
            self.session.connection_lost()
        for future in self.futures.values():
            if not future.done():
                future.set_result(body(terminate=Condition.ITEM_NOT_FOUND))
        self.carrier.output.close()


class BoshSessions:
    """The gateway's BOSH sessions by sid, and the ``/http-bind`` handler."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.by_sid: dict[str, BoshSession] = {}
        self.inactivity: float = INACTIVITY     # tests shorten it

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/http-bind", self.handle)
        app.router.add_route("OPTIONS", "/http-bind", self.preflight)

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight (XEP-0124 §7, Fetch): only for allowed origins."""
        self.gateway.check_session_request(request)
        return web.Response(status=204, headers=self._cors(request, preflight=True))

    def _cors(self, request: web.Request, preflight: bool = False) -> dict:
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if preflight:
            headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS",
                            "Access-Control-Allow-Headers": "Content-Type",
                            "Access-Control-Max-Age": "86400"})
        return headers

    async def handle(self, request: web.Request) -> web.Response:
        self.gateway.check_session_request(request)
        headers = self._cors(request)
        limit = self.gateway.max_stanza_bytes + 16384
        if request.content_length is not None and request.content_length > limit:
            return _reply(body(terminate=Condition.POLICY_VIOLATION), headers, status=413)
        try:
            data = await asyncio.wait_for(request.read(),          # within client_max_size
                                          self.gateway.ctx.stanza_timeout)
        except web.HTTPRequestEntityTooLarge:
            return _reply(body(terminate=Condition.POLICY_VIOLATION), headers, status=413)
        except asyncio.TimeoutError:                # a body dripped slowly (app.py HeadWatch)
            request.transport.abort()
            return _reply("", headers, status=408)
        try:
            text = await self._answer(request, data)
        except BoshError as exc:
            text = body(terminate=exc.condition)
        except RateRefused as exc:
            return _reply(body(terminate=Condition.POLICY_VIOLATION), headers, status=429,
                          reason=str(exc))
        return _reply(text, headers)

    async def _answer(self, request: web.Request, data: bytes) -> str:
        element = self._parse(data)
        rid = _rid(element)
        sid = element.get("sid")
        if sid is None:
            return await self._create(request, element, rid)
        bosh = self.by_sid.get(sid)
        if bosh is None:
            raise BoshError(Condition.ITEM_NOT_FOUND, "no such session")
        if request.secure != bosh.secure:
            raise BoshError(Condition.POLICY_VIOLATION, "a session stays on HTTPS or on HTTP")
        bosh.carrier.transport_tls = https_tls(request.transport, self.gateway.certificate)
        flags = {"restart": element.get("{%s}restart" % XBOSH_NS) == "true",
                 "terminate": element.get("type") == "terminate",
                 "to": element.get("to"), "lang": element.get(XML_LANG)}
        return await bosh.request(rid, (list(element), flags))

    def _parse(self, data: bytes) -> Element:
        framed = FramedInput(max_stanza_bytes=self.gateway.max_stanza_bytes + 16384,
                             max_xmlns=self.gateway.max_xmlns)
        try:
            elements = framed.body(_DECLARATION.sub(b"", data, count=1))
        except StreamError as exc:
            raise BoshError(Condition.BAD_REQUEST, str(exc)) from None
        finally:
            framed.close()
        if len(elements) != 1 or elements[0].tag != BODY:
            raise BoshError(Condition.BAD_REQUEST, "expected one <body/>")
        return elements[0]

    async def _create(self, request: web.Request, element: Element, rid: int) -> str:
        """Session creation (XEP-0124 §7.1, XEP-0206 §3)."""
        gateway = self.gateway
        host = request.remote or "unknown"
        source = source_of(host)
        refusal = admit(gateway.admission, source)
        loop = asyncio.get_running_loop()
        wait = min(_number(element, "wait", MAX_WAIT), MAX_WAIT)
        hold = min(_number(element, "hold", MAX_HOLD), MAX_HOLD)
        core = BoshCore(rid=rid, wait=wait, hold=hold, now=loop.time(),
                        inactivity=self.inactivity)
        sid = secrets.token_urlsafe(18)
        bosh = BoshSession(self, sid, core, f"bosh {host} {sid[:6]}", source, request.secure)
        bosh.carrier.transport_tls = https_tls(request.transport, gateway.certificate)
        self.by_sid[sid] = bosh
        core.first = {"sid": sid, "wait": str(wait), "hold": str(hold),
                      "requests": str(core.requests), "inactivity": str(round(core.inactivity)),
                      "polling": str(POLLING), "ver": VERSION,
                      "xmlns:xmpp": XBOSH_NS, "xmpp:version": "1.0",
                      "xmlns:stream": STREAMS_NS,
                      "secure": "true" if request.secure else "false"}
        domain = gateway.ctx.policy.domain
        core.first["from"] = domain
        bosh.session = open_session(gateway.ctx, bosh.carrier, secure=request.secure,
                                    refusal=refusal,
                                    max_unauthenticated=gateway.max_unauthenticated)
        flags = {"restart": not bosh.session.closed, "to": element.get("to"),
                 "lang": element.get(XML_LANG)}
        return await bosh.request(rid, (list(element), flags))

    def close(self) -> None:
        for bosh in list(self.by_sid.values()):
            bosh.forget()


def _rid(element: Element) -> int:
    text = element.get("rid", "")
    if not text.isdigit() or len(text) > 16:
        raise BoshError(Condition.BAD_REQUEST, "rid must be a positive integer (XEP-0124 §7.1)")
    return int(text)


def _number(element: Element, name: str, default: int) -> int:
    text = element.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 9:
        raise BoshError(Condition.BAD_REQUEST, f"{name} must be a non-negative integer")
    return int(text)


def _reply(text: str, headers: dict, status: int = 200, reason: str | None = None) -> web.Response:
    return web.Response(text=text, status=status, reason=reason, headers=headers,
                        content_type="text/xml", charset="utf-8")
