"""The attacks of bench/attacks.py, one function each, run in a child process.

    python bench/attackers.py NAME CONFIG_JSON

bench/attacks.py starts one of these per attack phase, in its own process so
that the attacker's CPU work never runs in the event loop that times the
legitimate pair. The attack runs until SIGTERM; then it stops attacking, does
its "after" step if it has one (the victim of the offline flood logs in), and
prints its counters as one JSON line on stdout. Every socket is bounded:
``max_sockets`` for the idle-connection attack, a handful for the others.

Attackers come from 127.0.0.2 (the legitimate pair and probe use 127.0.0.1,
Tsung's population 127.0.1.x), so per-source limits see them as one source.
They speak raw XMPP over asyncio streams (regular expressions on what comes
back: this is an attacker, not a client), except where a logged-in user is
needed: there bench/benchclient.py's BenchUser logs in and is then driven.

What each counts:

* ``refusals``: stream errors, SASL failures and stanza errors by condition
  (``stream:policy-violation``, ``sasl:not-authorized``, ``iq:resource-constraint``...);
* ``closed_by_server``: connections the server closed while we still attacked;
* attack-specific counters (bytes and elements sent, bounces, dialback answers).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import ssl
import sys
import time
from pathlib import Path
from xml.etree.ElementTree import Element, SubElement

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchclient import BenchUser                   # noqa: E402
from cryptography import x509                        # noqa: E402
from iim.keys.context import client_context         # noqa: E402
from iim.xmpp.jid import JID                        # noqa: E402
from iim.xmpp.ns import CLIENT_NS, ROSTER_NS, q      # noqa: E402

ATTACKER = "127.0.0.2"
STREAM_NS = "http://etherx.jabber.org/streams"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
C2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              f"xmlns:stream='{STREAM_NS}' to='{{domain}}' version='1.0'>")
S2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
              f"xmlns:stream='{STREAM_NS}' xmlns:db='jabber:server:dialback' "
              "to='{to}' from='{frm}' version='1.0'>")
STREAM_ERROR = re.compile(rb"<stream:error[^>]*>\s*<([a-z-]+)[\s/>]")
SASL_FAILURE = re.compile(rb"<failure[^>]*>\s*<([a-z-]+)[\s/>]")
STANZA_ERROR = re.compile(rb"<(message|presence|iq|db:result|db:verify)[^>]*type=['\"]error['\"]"
                          rb"[^>]*>(?:(?!</(?:message|presence|iq|db:result|db:verify)>).)*?"
                          rb"<error[^>]*>\s*<([a-z-]+)[\s/>]", re.S)


def password_of(account: str) -> str:
    """The password bench/attacks.py gives each of its own accounts."""
    return f"attack-bench-{account}-pw"


class Counters(collections.Counter):
    def refusal(self, kind: str, condition: bytes | str) -> None:
        if isinstance(condition, bytes):
            condition = condition.decode(errors="replace")
        self[f"refused {kind}:{condition}"] += 1


C = Counters()
STOP = asyncio.Event


# ---------------------------------------------------------------------------
# A raw XMPP connection


class Raw:
    """One attacker connection: bytes out, regular expressions on bytes in."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.scan = b""
        self.closed = False

    @classmethod
    async def open(cls, port: int, source: str = ATTACKER, host: str = "127.0.0.1") -> "Raw":
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0),
                                                       limit=1 << 20)
        C["connections opened"] += 1
        return cls(reader, writer)

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            data = data.encode()
        if not self.writer.is_closing():
            self.writer.write(data)
            C["bytes sent"] += len(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_some(self, timeout: float) -> bool:
        """Read what is there (up to ``timeout``); False once the server closed."""
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
        except asyncio.TimeoutError:
            return True
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        self._errors(data)
        return True

    def _errors(self, data: bytes) -> None:
        """Count the refusals in ``data`` (with what was left unmatched before)."""
        self.scan += data
        end = 0
        for pattern, kind in ((STREAM_ERROR, "stream"), (SASL_FAILURE, "sasl")):
            for match in pattern.finditer(self.scan):
                C.refusal(kind, match.group(1))
                end = max(end, match.end())
        for match in STANZA_ERROR.finditer(self.scan):
            C.refusal(match.group(1).decode(), match.group(2))
            end = max(end, match.end())
        self.scan = self.scan[end:][-1024:]

    async def expect(self, pattern: bytes, timeout: float = 10.0) -> re.Match | None:
        """The first match of ``pattern`` in what the server sent and nobody has
        consumed yet; consumes up to the match's end. None on timeout or close."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.buffer, re.S)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            self.buffer = self.buffer[-(1 << 18):]
            left = deadline - time.monotonic()
            if left <= 0 or not await self.read_some(left) or self.closed:
                return None

    async def starttls(self, domain: str) -> bool:
        self.send(f"<starttls xmlns='{TLS_NS}'/>")
        if not await self.expect(rb"<proceed"):
            return False
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        await self.writer.start_tls(context, server_hostname=domain)
        self.buffer = b""
        return True

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


async def drain_replies(raw: Raw, stop: asyncio.Event) -> None:
    """Read and count whatever the server says until it closes or we stop."""
    while not stop.is_set() and not raw.closed:
        await raw.read_some(0.5)
        raw.buffer = b""
    if raw.closed and not stop.is_set():
        C["closed by server"] += 1


async def open_c2s(cfg: dict, tls: bool) -> Raw | None:
    try:
        raw = await Raw.open(cfg["port"])
    except OSError as exc:
        C[f"connect failed: {exc.__class__.__name__}"] += 1
        return None
    raw.send(C2S_HEADER.format(domain=cfg["domain"]))
    if not await raw.expect(rb"features>"):
        C["no features (refused or closed)"] += 1
        raw.close()
        return None
    if tls and not await raw.starttls(cfg["domain"]):
        C["STARTTLS refused"] += 1
        raw.close()
        return None
    if tls:
        raw.send(C2S_HEADER.format(domain=cfg["domain"]))
        if not await raw.expect(rb"features>"):
            raw.close()
            return None
    return raw


# ---------------------------------------------------------------------------
# (1) Namespace-declaration flood and SASL abort loops, before authentication


def _declarations(count: int) -> str:
    tag = secrets.token_hex(3)
    return " ".join(f"xmlns:p{tag}{n}='urn:flood:{tag}:{n}'" for n in range(count))


async def preauth_flood(cfg: dict, stop: asyncio.Event) -> None:
    """``connections`` streams (half of them after STARTTLS), each looping
    ``<auth/>`` + ``<abort/>`` with ``xmlns_per_element`` fresh prefix declarations
    on each element; reconnect when the server closes."""

    async def one(tls: bool) -> None:
        while not stop.is_set():
            raw = await open_c2s(cfg, tls)
            if raw is None:
                await asyncio.sleep(0.2)
                continue
            C["streams after STARTTLS" if tls else "streams plain"] += 1
            reader = asyncio.ensure_future(drain_replies(raw, stop))
            try:
                while not stop.is_set() and not raw.closed:
                    for _ in range(10):
                        decl = _declarations(cfg["xmlns_per_element"])
                        raw.send(f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256' {decl}>"
                                 + base64.b64encode(b"n,,n=tsung1,r=" + secrets.token_hex(8).encode()
                                                    ).decode() + "</auth>"
                                 f"<abort xmlns='{SASL_NS}' {_declarations(cfg['xmlns_per_element'])}/>")
                        C["auth+abort pairs sent"] += 1
                        C["namespace declarations sent"] += 2 * cfg["xmlns_per_element"]
                    await asyncio.wait_for(raw.drain(), 5)
                    await asyncio.sleep(0)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
            raw.close()
            await reader

    half = cfg["connections"] // 2
    await asyncio.gather(*(one(tls=i < half) for i in range(cfg["connections"])))


# ---------------------------------------------------------------------------
# (2) Idle connections before authentication, all from one source


async def idle_preauth(cfg: dict, stop: asyncio.Event) -> None:
    """Open up to ``max_sockets`` connections from 127.0.0.2 as fast as they are
    accepted, each sending a stream header and then nothing; reopen any the
    server closes (after 1 s), so the pressure stays for the whole phase."""
    open_now = 0

    async def one() -> None:
        nonlocal open_now
        while not stop.is_set():
            try:
                raw = await Raw.open(cfg["port"])
            except OSError as exc:
                C[f"connect failed: {exc.__class__.__name__}"] += 1
                await asyncio.sleep(1.0)
                continue
            raw.send(C2S_HEADER.format(domain=cfg["domain"]))
            open_now += 1
            C["peak open"] = max(C["peak open"], open_now)
            await drain_replies(raw, stop)
            open_now -= 1
            raw.close()
            if not stop.is_set():
                await asyncio.sleep(1.0)

    tasks = []
    for n in range(cfg["max_sockets"]):
        if stop.is_set():
            break
        tasks.append(asyncio.ensure_future(one()))
        if n % 50 == 49:
            await asyncio.sleep(0.01)
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------
# (3) Dialback flood on the s2s port


async def dialback_flood(cfg: dict, stop: asyncio.Event) -> None:
    """``connections`` s2s streams from 127.0.0.2 claiming to be ``attacker.attack``;
    each sends ``<db:result/>`` for ever new attacker-chosen domains
    (``d<N>.attack``, which the fake DNS sends to a sink that counts connection
    attempts) and ``<db:verify/>`` for others, in batches, as fast as written."""
    serial = 0

    async def one(number: int) -> None:
        nonlocal serial
        while not stop.is_set():
            try:
                raw = await Raw.open(cfg["port"])
            except OSError:
                await asyncio.sleep(0.2)
                continue
            raw.send(S2S_HEADER.format(to=cfg["domain"], frm=f"attacker{number}.attack"))
            if not await raw.expect(rb"features>"):
                C["s2s stream refused"] += 1
                raw.close()
                await asyncio.sleep(0.2)
                continue
            reader = asyncio.ensure_future(count_dialback(raw, stop))
            try:
                while not stop.is_set() and not raw.closed:
                    batch = []
                    for _ in range(cfg["batch"]):
                        serial += 1
                        key = secrets.token_hex(20)
                        batch.append(f"<db:result from='d{serial}.attack' to='{cfg['domain']}'>"
                                     f"{key}</db:result>")
                        batch.append(f"<db:verify from='v{serial}.attack' to='{cfg['domain']}' "
                                     f"id='s{serial}'>{key}</db:verify>")
                    raw.send("".join(batch))
                    C["db:result sent"] += cfg["batch"]
                    C["db:verify sent"] += cfg["batch"]
                    await asyncio.wait_for(raw.drain(), 5)
                    await asyncio.sleep(cfg["pause"])
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
            raw.close()
            await reader

    await asyncio.gather(*(one(n) for n in range(cfg["connections"])))


async def count_dialback(raw: Raw, stop: asyncio.Event) -> None:
    tail = b""
    while not stop.is_set() and not raw.closed:
        await raw.read_some(0.5)
        text, raw.buffer = tail + raw.buffer, b""
        end = 0
        for match in re.finditer(rb"<db:(result|verify)[^>]*type=['\"](\w+)['\"]", text):
            C[f"db:{match.group(1).decode()} answered {match.group(2).decode()}"] += 1
            end = match.end()
        tail = text[end:][-1024:]
    if raw.closed and not stop.is_set():
        C["closed by server"] += 1


# ---------------------------------------------------------------------------
# Logged-in attackers: bench/benchclient.py's user, counting what comes back


class Mallory(BenchUser):
    """A logged-in attacker account; counts every bounce by condition."""

    failure = RuntimeError

    def __init__(self, name: str, cfg: dict, resource: str = "attack") -> None:
        super().__init__(JID.parse(f"{name}@{cfg['domain']}/{resource}"), password_of(name),
                         tls_context=tls_context(cfg["cafile"]))
        self.cfg = cfg
        self.received = 0
        self.iq_results = 0
        self.iq_errors = collections.Counter()

    def _message(self, stanza: Element) -> None:
        if stanza.get("type") == "error":
            C.refusal("message", _condition(stanza))
            C["messages bounced"] += 1
        else:
            self.received += 1

    def _stanza(self, stanza: Element) -> None:
        if stanza.tag == q(CLIENT_NS, "iq") and stanza.get("id", "").startswith("rs"):
            if stanza.get("type") == "result":
                C["roster sets accepted"] += 1
            else:
                C.refusal("iq", _condition(stanza))
            return
        super()._stanza(stanza)

    def _ended_after_login(self, why: str) -> None:
        C[f"{self.jid.local} stream ended"] += 1


_CONTEXTS: dict = {}


def tls_context(cafile: str):
    """A client context trusting the server's dev-setup CA (logged-in attackers use
    STARTTLS like everyone: the server offers it, and the client core takes it)."""
    if cafile not in _CONTEXTS:
        ca = x509.load_pem_x509_certificate(Path(cafile).read_bytes())
        _CONTEXTS[cafile] = client_context(None, anchors=[ca])
    return _CONTEXTS[cafile]


def _condition(stanza: Element) -> str:
    for child in stanza:
        if child.tag.endswith("}error"):
            for cond in child:
                return cond.tag.rpartition("}")[2]
    return "?"


async def log_in(name: str, cfg: dict, cls=Mallory, source: str = ATTACKER):
    loop = asyncio.get_running_loop()
    _, user = await loop.create_connection(lambda: cls(name, cfg), "127.0.0.1", cfg["port"],
                                           local_addr=(source, 0))
    await asyncio.wait_for(user.ready, 20)
    return user


# ---------------------------------------------------------------------------
# (4a) Offline-store flood


async def offline_flood(cfg: dict, stop: asyncio.Event) -> None:
    """``mallory`` sends ``size``-byte messages to ``victim`` (offline) at ``rate``
    per second. After the phase the victim logs in: how long until the login
    and until the offline messages stopped arriving."""
    mallory = await log_in("mallory", cfg)
    body = "x" * cfg["size"]
    to = f"victim@{cfg['domain']}"
    interval = 1.0 / cfg["rate"]
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        mallory.send_chat(to, f"o{n}", body)
        n += 1
        C["messages sent"] += 1
        C["bytes sent"] += cfg["size"]
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif n % 20 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(1.0)                    # the last bounces
    mallory.logout()
    await victim_logs_in(cfg)


class Victim(Mallory):
    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__(name, cfg)
        self.last = 0.0
        self.presences = 0

    def _message(self, stanza: Element) -> None:
        self.received += 1
        self.last = time.perf_counter()

    def _stanza(self, stanza: Element) -> None:
        if stanza.tag == q(CLIENT_NS, "presence") and stanza.get("type") == "subscribe":
            self.presences += 1
            self.last = time.perf_counter()
        super()._stanza(stanza)


async def victim_logs_in(cfg: dict) -> None:
    start = time.perf_counter()
    try:
        victim = await log_in("victim", cfg, Victim,
                              source="127.0.0.1")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        C[f"victim login failed: {exc}"[:80]] += 1
        return
    C["victim login ms"] = round((time.perf_counter() - start) * 1000)
    quiet_since = time.perf_counter()
    seen = -1
    while time.perf_counter() - quiet_since < 1.5 and time.perf_counter() - start < 20:
        await asyncio.sleep(0.1)
        if victim.received + victim.presences != seen:
            seen, quiet_since = victim.received + victim.presences, time.perf_counter()
    C["victim got offline messages"] = victim.received
    C["victim got subscription requests"] = victim.presences
    if victim.last:
        C["victim delivery s"] = round(victim.last - start, 2)
    victim.logout()


# ---------------------------------------------------------------------------
# (4b) Subscription-request flood from a remote domain


async def subscription_flood(cfg: dict, stop: asyncio.Event) -> None:
    """The attacker owns ``remote.attack``: the fake DNS sends iim's dialback
    check for it to the authoritative server below (ours, which says every key
    is valid), so its inbound s2s stream authenticates. It then sends
    ``<presence type='subscribe'/>`` from ever new ``s<N>@remote.attack`` to the
    offline ``victim``, at ``rate`` per second; then the victim logs in."""
    server = await asyncio.start_server(authoritative, ATTACKER, cfg["peer_port"])
    try:
        raw = await Raw.open(cfg["port"])
        raw.send(S2S_HEADER.format(to=cfg["domain"], frm="remote.attack"))
        header = await raw.expect(rb"<stream:stream[^>]*\bid=['\"]([^'\"]+)")
        if header is None or not await raw.expect(rb"features>"):
            C["s2s stream refused"] += 1
            return
        raw.send(f"<db:result from='remote.attack' to='{cfg['domain']}'>"
                 f"{secrets.token_hex(20)}</db:result>")
        answer = await raw.expect(rb"<db:result[^>]*type=['\"](\w+)", timeout=15)
        verdict = answer.group(1).decode() if answer else "no answer"
        C[f"dialback for remote.attack: {verdict}"] += 1
        if verdict != "valid":
            return
        reader = asyncio.ensure_future(drain_replies(raw, stop))
        interval = 1.0 / cfg["rate"]
        n, next_at = 0, time.monotonic()
        while not stop.is_set() and not raw.closed:
            raw.send(f"<presence type='subscribe' from='s{n}@remote.attack' "
                     f"to='victim@{cfg['domain']}' id='sub{n}'/>")
            n += 1
            C["subscription requests sent"] += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await reader
        raw.close()
    finally:
        server.close()
    await victim_logs_in(cfg)


async def authoritative(reader, writer) -> None:
    """remote.attack's authoritative server: answers every db:verify 'valid' and
    every db:result 'valid'; counts the presence bounces iim sends back."""
    C["authoritative: connections from iim"] += 1
    buffer = b""
    writer.write(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' "
                 b"xmlns:db='jabber:server:dialback' from='remote.attack' id='auth1' "
                 b"version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                 b"</stream:features>")
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            buffer += data
            for frm, to, ident in re.findall(
                    rb"<db:verify[^>]*?from=['\"]([^'\"]+)['\"][^>]*?to=['\"]([^'\"]+)['\"]"
                    rb"[^>]*?id=['\"]([^'\"]+)['\"][^>]*>[^<]*</db:verify>", buffer):
                writer.write(b"<db:verify from='%s' to='%s' id='%s' type='valid'/>" % (to, frm, ident))
                C["authoritative: verifies answered"] += 1
            for frm, to in re.findall(rb"<db:result[^>]*?from=['\"]([^'\"]+)['\"][^>]*?"
                                      rb"to=['\"]([^'\"]+)['\"][^>]*>[^<]+</db:result>", buffer):
                writer.write(b"<db:result from='%s' to='%s' type='valid'/>" % (to, frm))
            C["refused presence:bounced to remote.attack"] += len(
                re.findall(rb"<presence[^>]*type=['\"]error", buffer))
            buffer = buffer[buffer.rfind(b">") + 1:]
    except (ConnectionError, OSError):
        pass
    writer.close()


# ---------------------------------------------------------------------------
# (5) A client that never reads, and one account with too many resources


async def never_reads(cfg: dict, stop: asyncio.Event) -> None:
    """``sloth`` logs in and stops reading (its socket buffers fill); ``pest``
    sends it ``size``-byte messages at ``rate`` per second. Meanwhile ``hydra``
    tries to bind ``resources`` sessions at once."""
    sloth = await log_in("sloth", cfg)
    sloth.transport.pause_reading()
    pest = await log_in("pest", cfg)
    hydra = asyncio.ensure_future(many_resources(cfg))
    body = "z" * cfg["size"]
    to = f"sloth@{cfg['domain']}/attack"
    interval = 1.0 / cfg["rate"]
    n, next_at = 0, time.monotonic()
    while not stop.is_set():
        pest.send_chat(to, f"s{n}", body)
        n += 1
        C["messages sent"] += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    # sloth reads nothing, so it cannot tell whether the server closed its
    # stream: bench/attacks.py counts that from the server's log
    await hydra
    sloth.hang_up()
    pest.logout()


async def many_resources(cfg: dict) -> None:
    loop = asyncio.get_running_loop()
    users = []
    for n in range(cfg["resources"]):
        try:
            _, user = await loop.create_connection(
                lambda: Mallory("hydra", cfg, resource=f"r{n}"), "127.0.0.1", cfg["port"],
                local_addr=(ATTACKER, 0))
            users.append(user)
            await asyncio.wait_for(user.ready, 10)
            C["hydra resources bound"] += 1
        except Exception as exc:  # noqa: BLE001 - a refusal is what we count
            C.refusal("bind", str(exc).rpartition(":")[2].strip()[:60] or type(exc).__name__)
    C["hydra resources still bound"] = sum(not u.gone.done() for u in users)
    for user in users:
        user.hang_up()


# ---------------------------------------------------------------------------
# (6) Roster growth


async def roster_growth(cfg: dict, stop: asyncio.Event) -> None:
    """``hoarder`` adds roster items (``item_size``-byte names, 10 groups) as fast
    as they are answered (``window`` in flight), and re-sends its presence
    every 0.5 s (presence work grows with the roster)."""
    hoarder = await log_in("hoarder", cfg)
    n, last_presence = 0, 0.0
    while not stop.is_set() and not hoarder.gone.done():
        answered = C["roster sets accepted"] + sum(v for k, v in C.items()
                                                   if k.startswith("refused iq:"))
        while n - answered < cfg["window"]:
            iq = Element(q(CLIENT_NS, "iq"), {"type": "set", "id": f"rs{n}"})
            query = SubElement(iq, q(ROSTER_NS, "query"))
            item = SubElement(query, q(ROSTER_NS, "item"),
                              {"jid": f"contact{n}@{cfg['domain']}",
                               "name": ("n" * cfg["item_size"])})
            for g in range(10):
                SubElement(item, q(ROSTER_NS, "group")).text = f"group-{g}-{n % 7}"
            hoarder.stream.send_stanza(iq)
            n += 1
            C["roster sets sent"] += 1
        hoarder._flush()
        if time.monotonic() - last_presence > 0.5:
            hoarder.stream.send_stanza(Element(q(CLIENT_NS, "presence")))
            hoarder._flush()
            C["presences sent"] += 1
            last_presence = time.monotonic()
        await asyncio.sleep(0.01)
    hoarder.logout()


# ---------------------------------------------------------------------------
# (7) Wrong-password brute force


async def brute_force(cfg: dict, stop: asyncio.Event) -> None:
    """``connections`` streams from 127.0.0.2 try SCRAM-SHA-256 with wrong
    passwords for ``target``, again and again on each stream until the server
    ends it, then reconnect. Counts attempts, answers by condition and the
    time each failure took to come back."""
    delays: list[float] = []

    async def one() -> None:
        while not stop.is_set():
            raw = await open_c2s(cfg, tls=False)
            if raw is None:
                await asyncio.sleep(0.2)
                continue
            while not stop.is_set() and not raw.closed:
                start = time.perf_counter()
                answer = await scram_attempt(raw, cfg["target"], secrets.token_hex(6))
                C["attempts"] += 1
                if answer is None:
                    break
                delays.append(time.perf_counter() - start)
                C[f"answer {answer}"] += 1
                if answer == "stream-error":
                    break
            if not stop.is_set():
                C["closed by server"] += int(raw.closed)
            raw.close()

    await asyncio.gather(*(one() for _ in range(cfg["connections"])))
    if delays:
        delays.sort()
        C["median answer ms"] = round(delays[len(delays) // 2] * 1000)
        C["p99 answer ms"] = round(delays[int(len(delays) * 0.99)] * 1000)


async def scram_attempt(raw: Raw, user: str, password: str) -> str | None:
    nonce = secrets.token_urlsafe(18)
    bare = f"n={user},r={nonce}"
    raw.send(f"<auth xmlns='{SASL_NS}' mechanism='SCRAM-SHA-256'>"
             f"{base64.b64encode(('n,,' + bare).encode()).decode()}</auth>")
    match = await raw.expect(rb"<challenge[^>]*>([^<]*)</challenge>|<failure[^>]*>\s*<([a-z-]+)"
                             rb"|<(?:stream:)?error", timeout=15)
    if match is None:
        return None
    if match.group(1) is None:
        return (match.group(2) or b"stream-error").decode()
    first = base64.b64decode(match.group(1)).decode()
    fields = dict(part.split("=", 1) for part in first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]),
                                 int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c=biws,r={fields['r']}"
    message = f"{bare},{first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    raw.send(f"<response xmlns='{SASL_NS}'>" + base64.b64encode(
        f"{without_proof},p={base64.b64encode(proof).decode()}".encode()).decode() + "</response>")
    match = await raw.expect(rb"<failure[^>]*>\s*<([a-z-]+)|<success|<(?:stream:)?error",
                             timeout=30)
    if match is None:
        return None
    return match.group(1).decode() if match.group(1) else "success?!"


# ---------------------------------------------------------------------------
# Main


ATTACKS = {
    "preauth_flood": preauth_flood,
    "idle_preauth": idle_preauth,
    "dialback_flood": dialback_flood,
    "offline_flood": offline_flood,
    "subscription_flood": subscription_flood,
    "never_reads": never_reads,
    "roster_growth": roster_growth,
    "brute_force": brute_force,
}


async def main(name: str, cfg: dict) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    task = asyncio.ensure_future(ATTACKS[name](cfg, stop))
    await asyncio.wait([task, asyncio.ensure_future(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    try:
        await asyncio.wait_for(task, cfg.get("after_seconds", 25))
    except asyncio.TimeoutError:
        C["after step cut short"] += 1
    except Exception as exc:  # noqa: BLE001 - reported in the counters
        C[f"attack failed: {type(exc).__name__}: {exc}"[:120]] += 1


if __name__ == "__main__":
    from iim.limits import raise_nofile
    raise_nofile()
    attack, config = sys.argv[1], json.loads(sys.argv[2])
    try:
        asyncio.run(main(attack, config))
    finally:
        print(json.dumps(dict(C)), flush=True)
        os._exit(0)         # no lingering sockets' close handshakes
