"""Per-source limits (issue 11.2): one source cannot lock everyone else out.

Real processes on 127.0.0.1 (python -m iim.server, python -m iim.mux) and
raw sockets bound to other loopback addresses, each one a *source*: the
"attacker" floods from 127.0.0.x while legitimate users log in and chat from
127.0.0.1 (slixmpp), directly and through the multiplexor in both modes.
Limits are set low in each iim.conf so the floods stay small:

- server: max_unauthenticated_per_source 5 (a second server: accept rate 5/s);
- plain multiplexor: maxsessions_per_source 20, accept_rate_per_source 5/s
  (so the server's limit, applied to the client address OPEN carries, is the
  one the count test meets, and the mux's rate the one its rate test meets);
- legacy-SSL multiplexor: maxsessions_per_source 8 (idle handshakes pile up
  in the mux, which never OPENs them), rate 1000/s, and handshake_timeout 300
  s, so that no idle handshake is closed by its timer while a test looks at it
  (a test fails by its own 120 s bound first).

Before this work every one of these floods was accepted: the idle ones held
the global max_unauthenticated / maxsessions, nothing was counted per source.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl

import pytest

from iim.limits import raise_nofile
from iim.server.admission import TOO_MANY_FROM_SOURCE, Admission, Negotiating, Refusal
from iim.server.quota import LimitLog
from live import DOMAIN, Client, LiveMux, LiveServer, next_item
from nsstools import NSSDatabase

NSS_PASSWORD = "Nss-Src-Pw-7"
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
POLICY_VIOLATION = (b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                    b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>"
                    + TOO_MANY_FROM_SOURCE.encode() + b"</text></stream:error>")
PER_SOURCE = 5


@pytest.fixture(scope="module")
def system(tmp_path_factory, ca):
    raise_nofile()
    folder = tmp_path_factory.mktemp("per-source")
    server = LiveServer(folder, ca, extra=f'iim_server.max_unauthenticated_per_source = '
                                          f'"{PER_SOURCE}"\n'
                                          'iim_server.accept_rate_per_source = "1000"\n')
    server.add_users()
    server.start()
    issued = ca.issue(DOMAIN, "127.0.0.1")
    db = NSSDatabase.create(folder / "nssdb", NSS_PASSWORD)
    db.import_pkcs12(issued, "Multiplexor-Cert", roots=[ca.cert])
    password_file = folder / "nsspassword.conf"
    password_file.write_text(f"Internal (Software) Token:{NSS_PASSWORD}\n")
    os.chmod(password_file, 0o600)
    muxes = {"plain": LiveMux(folder, server, "mux-plain",
                              params={"maxsessions_per_source": 20,
                                      "accept_rate_per_source": 5}),
             "legacy": LiveMux(folder, server, "mux-legacy", usessl=True,
                               params={"maxsessions_per_source": 8,
                                       "accept_rate_per_source": 1000,
                                       "handshake_timeout": 300})}
    yield server, muxes
    for mux in muxes.values():
        assert mux.stop() == 0
    assert server.stop() == 0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


# -- raw connections from a chosen source ------------------------------------------------

class Raw:
    """One raw connection from ``source``; ``tls``: legacy SSL from the first byte."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str, tls: ssl.SSLContext | None = None,
                   header: bool = True) -> "Raw":
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls,
            server_hostname=DOMAIN if tls else None)
        raw = cls(reader, writer)
        if header:
            writer.write(HEADER)
            await writer.drain()
        return raw

    async def first_bytes(self, timeout: float = 20) -> bytes:
        """What arrives first; b"" when the connection closes without a byte."""
        try:
            return await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, ssl.SSLError):   # reset, or a write of ours (TLS) into the closed socket
            return b""

    async def until_closed(self, timeout: float = 20) -> bytes:
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            except (ConnectionError, ssl.SSLError):   # reset, or a write of ours (TLS) into the closed socket
                chunk = b""
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def negotiating(self) -> None:
        """Wait for the server's answer to our header: it holds this one as negotiating."""
        data = b""
        while b"<stream:features" not in data:
            chunk = await asyncio.wait_for(self.reader.read(65536), 20)
            assert chunk, f"closed instead of answering: {data!r}"
            data += chunk

    def close(self) -> None:
        self.writer.close()


async def hold(port, source, count, tls=None) -> list[Raw]:
    """``count`` connections from ``source`` that the server holds as negotiating."""
    held = []
    for _ in range(count):
        raw = await Raw.open(port, source, tls)
        await raw.negotiating()
        held.append(raw)
    return held


async def refused_with_policy_violation(port, source, count, tls=None) -> list[bytes]:
    answers = []
    for _ in range(count):
        raw = await Raw.open(port, source, tls)
        answers.append(await raw.until_closed())
        raw.close()
    return answers


async def chat(a: Client, a_jid: str, b: Client, b_jid: str, word: str) -> list[str]:
    a.send_message(mto=b_jid, mbody=f"{word} to b", mtype="chat")
    b.send_message(mto=a_jid, mbody=f"{word} to a", mtype="chat")
    return [(await next_item(b.received))["body"], (await next_item(a.received))["body"]]


def legacy_context(server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


class LegacyClient(Client):
    def __init__(self, *args):
        super().__init__(*args)
        self.enable_direct_tls = True
        self.enable_starttls = False


# -- the server, direct -------------------------------------------------------------------

def test_one_source_over_its_limit_is_refused_while_others_log_in_and_chat(system):
    server, _ = system

    async def scenario():
        alice = await Client(f"alice@{DOMAIN}/a", "alice-pw-1",
                             server.ca_file).online(server.port)
        held = await hold(server.port, "127.0.0.2", PER_SOURCE)
        refused = await refused_with_policy_violation(server.port, "127.0.0.2", 3)
        bob = await Client(f"bob@{DOMAIN}/b", "bob-pw-2", server.ca_file).online(server.port)
        words = await chat(alice, f"alice@{DOMAIN}/a", bob, f"bob@{DOMAIN}/b", "during")
        other = await hold(server.port, "127.0.0.3", PER_SOURCE)    # another source: its own 5
        for raw in held + other:
            raw.close()
        await alice.offline()
        await bob.offline()
        return refused, words

    refused, words = run(scenario())
    for answer in refused:
        assert POLICY_VIOLATION in answer
    assert words == ["during to b", "during to a"]
    log = server.log()
    assert "limit iim_server.max_unauthenticated_per_source: refused" in log
    assert "(latest: 127.0.0.2: 5 connections negotiating)" in log


def test_counts_return_to_zero_after_many_connections(system):
    """200 connections from one source come and go (each closed by the server
    after a bad first byte, so it has surely let go of it); then the source
    again holds exactly its 5, and the 6th is refused: nothing leaked."""
    server, _ = system

    async def scenario():
        for _ in range(200):
            raw = await Raw.open(server.port, "127.0.0.4", header=False)
            raw.writer.write(b"\x00not xml")
            await raw.until_closed()
            raw.close()
        held = await hold(server.port, "127.0.0.4", PER_SOURCE)
        refused = await refused_with_policy_violation(server.port, "127.0.0.4", 1)
        for raw in held:
            raw.close()
        return refused

    assert POLICY_VIOLATION in run(scenario())[0]


# -- through the multiplexor ----------------------------------------------------------------

def test_the_server_counts_mux_sessions_under_the_client_address(system):
    """Via one plain mux: 127.0.0.5 floods and is refused by the server (the
    stream error arrives through the mux); bob, via the same mux from
    127.0.0.1, logs in and chats: the server told the two sources apart."""
    server, muxes = system
    mux = muxes["plain"].port

    async def scenario():
        alice = await Client(f"alice@{DOMAIN}/a", "alice-pw-1",
                             server.ca_file).online(server.port)
        held = await hold(mux, "127.0.0.5", PER_SOURCE)
        refused = await refused_with_policy_violation(mux, "127.0.0.5", 3)
        bob = await Client(f"bob@{DOMAIN}/m", "bob-pw-2", server.ca_file).online(mux)
        words = await chat(alice, f"alice@{DOMAIN}/a", bob, f"bob@{DOMAIN}/m", "via mux")
        for raw in held:
            raw.close()
        await alice.offline()
        await bob.offline()
        return refused, words

    refused, words = run(scenario())
    for answer in refused:
        assert POLICY_VIOLATION in answer
    assert words == ["via mux to b", "via mux to a"]
    log = server.log()              # the session, and its refusal, under the client's address
    assert re.search(r"c2s mux:127\.0\.0\.5:\d+: closing: policy-violation", log)


def test_legacy_ssl_sessions_are_counted_by_the_server_under_the_client_address(system):
    server, muxes = system
    mux, tls = muxes["legacy"].port, legacy_context(server)

    async def scenario():
        held = await hold(mux, "127.0.0.6", PER_SOURCE, tls)
        refused = await refused_with_policy_violation(mux, "127.0.0.6", 2, tls)
        alice = await LegacyClient(f"alice@{DOMAIN}/l", "alice-pw-1",
                                   server.ca_file).online(mux)
        bob = await Client(f"bob@{DOMAIN}/b", "bob-pw-2", server.ca_file).online(server.port)
        words = await chat(alice, f"alice@{DOMAIN}/l", bob, f"bob@{DOMAIN}/b", "legacy")
        for raw in held:
            raw.close()
        await alice.offline()
        await bob.offline()
        return refused, words

    refused, words = run(scenario())
    for answer in refused:
        assert POLICY_VIOLATION in answer
    assert words == ["legacy to b", "legacy to a"]


def test_idle_legacy_ssl_handshakes_from_one_source_are_capped_at_the_mux(system):
    """11 idle TCP connections (no ClientHello) from 127.0.0.7: 8 fill that
    source's places at the legacy-SSL mux, the other 3 are closed at once, and
    counted; a legacy-SSL user from 127.0.0.1 logs in and chats meanwhile.

    Which 3 are refused is the mux's choice, not the order we connected in:
    each relay thread accepts from its own SO_REUSEPORT socket, so a later
    connection may be admitted before an earlier one. The test waits for the
    first 3 to close, whichever they are."""
    server, muxes = system
    mux = muxes["legacy"]

    async def scenario():
        flood = [await Raw.open(mux.port, "127.0.0.7", header=False) for _ in range(11)]
        reads = {asyncio.ensure_future(raw.first_bytes()): raw for raw in flood}
        closed, refused = [], []
        while len(closed) < 3:
            done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for read in done:
                closed.append(read.result())
                refused.append(reads.pop(read))
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        held = list(reads.values())
        open_when_refused = [not raw.reader.at_eof() for raw in held]
        alice = await LegacyClient(f"alice@{DOMAIN}/l2", "alice-pw-1",
                                   server.ca_file).online(mux.port)
        bob = await Client(f"bob@{DOMAIN}/b2", "bob-pw-2", server.ca_file).online(server.port)
        words = await chat(alice, f"alice@{DOMAIN}/l2", bob, f"bob@{DOMAIN}/b2", "idle")
        open_after_chat = [not raw.reader.at_eof() for raw in held]
        for raw in flood:
            raw.close()
        await alice.offline()
        await bob.offline()
        return closed, open_when_refused, open_after_chat, words

    closed, open_when_refused, open_after_chat, words = run(scenario())
    assert closed == [b""] * 3
    assert open_when_refused == [True] * 8
    assert open_after_chat == [True] * 8
    assert words == ["idle to b", "idle to a"]
    mux.proc.wait_until(lambda: "limit iim_mux.maxsessions_per_source: refused" in mux.log(),
                        "the per-source refusal logged")
    assert "(latest: 127.0.0.7)" in mux.log()


def test_accept_rate_per_source_at_the_mux(system):
    """5/s in bursts of 10 at the plain mux: of 100 connections opened at once
    from 127.0.0.8 some are closed before a byte; 127.0.0.9 is not affected."""
    server, muxes = system
    mux = muxes["plain"]

    async def scenario():
        flood = [await Raw.open(mux.port, "127.0.0.8") for _ in range(100)]
        first = await asyncio.gather(*(raw.first_bytes() for raw in flood))
        for raw in flood:
            raw.close()
        other = await Raw.open(mux.port, "127.0.0.9")
        answer = await other.first_bytes()
        other.close()
        return first, answer

    first, answer = run(scenario())
    assert first.count(b"") >= 1                   # refused at once by the mux
    assert any(a.startswith(b"<?xml") for a in first)   # the burst got through
    assert answer.startswith(b"<?xml")
    mux.proc.wait_until(lambda: "limit iim_mux.accept_rate_per_source: refused" in mux.log(),
                        "the accept-rate refusal logged")
    assert "(latest: 127.0.0.8)" in mux.log()


# -- the server's accept rate -------------------------------------------------------------

@pytest.fixture(scope="module")
def rate_server(tmp_path_factory, ca):
    raise_nofile()
    server = LiveServer(tmp_path_factory.mktemp("rate"), ca,
                        extra='iim_server.accept_rate_per_source = "5"\n'
                              'iim_server.max_unauthenticated_per_source = "1000"\n')
    server.add_users()
    server.start()
    yield server
    assert server.stop() == 0


def test_accept_rate_per_source_at_the_server(rate_server):
    server = rate_server

    async def scenario():
        alice = await Client(f"alice@{DOMAIN}/a", "alice-pw-1",
                             server.ca_file).online(server.port)
        flood = [await Raw.open(server.port, "127.0.0.10") for _ in range(100)]
        first = await asyncio.gather(*(raw.first_bytes() for raw in flood))
        bob = await Client(f"bob@{DOMAIN}/b", "bob-pw-2", server.ca_file).online(server.port)
        words = await chat(alice, f"alice@{DOMAIN}/a", bob, f"bob@{DOMAIN}/b", "rate")
        for raw in flood:
            raw.close()
        await alice.offline()
        await bob.offline()
        return first, words

    first, words = run(scenario())
    assert first.count(b"") >= 1
    assert any(a.startswith(b"<?xml") for a in first)
    assert words == ["rate to b", "rate to a"]
    log = server.log()
    assert "limit iim_server.accept_rate_per_source: refused" in log
    assert "latest: 127.0.0.10: more than 5 new connections per second" in log


# -- the gate in memory (fake clock) --------------------------------------------------------

class Carrier:
    def __init__(self, source):
        self.source = source


class Member:
    def __init__(self, source):
        self.carrier = Carrier(source)


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def test_negotiating_counts_members_by_source_and_forgets_them():
    negotiating = Negotiating(2)
    a1, a2, a3, b1 = Member("192.0.2.1"), Member("192.0.2.1"), Member("192.0.2.1"), \
        Member("2001:db8::/64")
    for member in (a1, a2, a3, b1):
        negotiating.add(member)
    assert negotiating.held("192.0.2.1") == 2          # a3 held, uncounted: being refused
    assert negotiating.held("2001:db8::/64") == 1 and len(negotiating) == 4
    negotiating.discard(a3)
    assert negotiating.held("192.0.2.1") == 2
    negotiating.discard(a1)
    negotiating.discard(a1)                             # twice: counted once
    assert negotiating.held("192.0.2.1") == 1
    for member in (a2, b1):
        negotiating.remove(member)
    assert len(negotiating) == 0 and negotiating.sources == 0


def test_admission_refuses_by_rate_then_by_count_and_logs_once_per_interval(caplog):
    clock = Clock()
    negotiating = Negotiating(3)
    log = LimitLog(__import__("logging").getLogger("iim.test.admission"), 60)
    gate = Admission(negotiating, rate=2, limit_log=log, clock=clock)
    verdicts = []
    for _ in range(5):                          # burst of 4
        refusal = gate.refusal("192.0.2.1")
        verdicts.append(refusal)
        if refusal is None:
            negotiating.add(Member("192.0.2.1"))
    assert verdicts == [None, None, None, Refusal.COUNT, Refusal.RATE]
    assert gate.refusal("192.0.2.2") is None    # another source
    clock.now += 10                              # the bucket refills; the count is still 3
    assert gate.refusal("192.0.2.1") is Refusal.COUNT
    lines = [r.getMessage() for r in caplog.records if "limit iim_server" in r.getMessage()]
    assert lines == [
        "limit iim_server.max_unauthenticated_per_source: refused 1 so far "
        "(latest: 192.0.2.1: 3 connections negotiating)",
        "limit iim_server.accept_rate_per_source: refused 1 so far "
        "(latest: 192.0.2.1: more than 2 new connections per second)"]
    assert Refusal.COUNT.stream_error().condition.value == "policy-violation"


# -- the relay core's table (iim._fastmux.SourceLimit), in process ------------------------

@pytest.fixture
def link_peer():
    from muxpeer import LinkPeer
    peer = LinkPeer()
    yield peer
    peer.close()


def test_relay_table_frees_every_entry_after_many_sessions(link_peer):
    """500 sessions from two sources come and go through a relay: every
    count returns to zero, and the sources holding clients drop to none."""
    from iim import _fastmux
    from muxpeer import RelayHarness, wait_until
    raise_nofile()
    sources = _fastmux.SourceLimit(4, 100000, 100)
    relay = RelayHarness(link_peer, sources=sources)
    for wave in range(125):
        clients = [relay.client(source=f"127.0.1.{1 + i % 2}") for i in range(4)]
        for client in clients:
            relay.opened(client)
        assert sources.held("127.0.1.1") == 2 and sources.held("127.0.1.2") == 2
        for client in clients:
            client.close()
    wait_until(lambda: sources.sources()[0] == 0, 10, what="every source let go")
    assert sources.held("127.0.1.1") == 0 and sources.held("127.0.1.2") == 0
    assert relay.stats()["refused"] == 0 and relay.stats()["opened"] == 500
    assert relay.stop() == _fastmux.EXIT_STOPPED


def test_relay_table_stays_within_its_size_with_many_sources(link_peer):
    """1,000 sources (127.0.2-5.x) against a table of 256 slots: sources that
    hold nothing are forgotten to make room, everyone is served, and a source
    over its count is still refused."""
    from iim import _fastmux
    from muxpeer import RelayHarness, closed_by_peer, wait_until
    raise_nofile()
    sources = _fastmux.SourceLimit(2, 2, 10)       # entries stay 0.5 s after their use
    relay = RelayHarness(link_peer, sources=sources)
    assert sources.slots == 256
    for n in range(1000):
        client = relay.client(source=f"127.0.{2 + n // 250}.{1 + n % 250}")
        relay.opened(client)
        client.close()
        assert sources.sources()[1] <= 192              # three quarters of the slots
    held = [relay.client(source="127.0.9.9") for _ in range(2)]
    for client in held:
        relay.opened(client)
    extra = relay.client(source="127.0.9.9")
    assert closed_by_peer(extra, 5)
    assert relay.stats()["refused_per_source"] == 1
    assert relay.stats()["last_refused"] == "127.0.9.9"
    for client in held + [extra]:
        client.close()
    wait_until(lambda: sources.held("127.0.9.9") == 0, 10)
    assert relay.stop() == _fastmux.EXIT_STOPPED


def test_relay_accept_rate_per_source(link_peer):
    from iim import _fastmux
    from muxpeer import RelayHarness, wait_until
    raise_nofile()
    sources = _fastmux.SourceLimit(1000, 5, 1000)
    relay = RelayHarness(link_peer, sources=sources)
    flood = [relay.client(source="127.0.3.1") for _ in range(60)]
    wait_until(lambda: relay.stats()["opened"] + relay.stats()["refused"] == 60, 10)
    other = relay.client(source="127.0.3.2")
    relay.opened(other)
    stats = relay.stats()
    assert stats["refused_rate"] >= 1 and stats["refused"] == stats["refused_rate"]
    assert stats["opened"] >= 10                       # the burst (2 x 5) got through
    assert stats["last_refused"] == "127.0.3.1"
    for client in flood + [other]:
        client.close()
    assert relay.stop() == _fastmux.EXIT_STOPPED


def test_an_idle_legacy_ssl_client_holds_no_tls_state(link_peer, ca):
    """The relay makes a client's SSL object when its first byte arrives: 300
    clients that connect and say nothing cost the relay well under 4 KiB each
    (malloc'd bytes, glibc mallinfo2; an SSL object that has tried to read is
    ~55 KiB), and a client that then sends its ClientHello is served."""
    import ctypes
    from iim import _fastmux
    from muxpeer import RelayHarness, wait_until

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def allocated() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    raise_nofile()
    issued = ca.issue("localhost")
    relay = RelayHarness(link_peer, tls=_fastmux.TlsContext(issued.key_pem(),
                                                            issued.chain_pem()),
                         handshake_timeout=600)
    before = allocated()
    idle = [relay.client() for _ in range(300)]
    wait_until(lambda: relay.stats()["handshaking"] == 300, 10)
    relay.link.round_trip()               # every client's first edge has been served
    per_client = (allocated() - before) / 300
    context = ssl.create_default_context(cafile=None)
    context.load_verify_locations(cadata=ca.cert_pem().decode())
    with context.wrap_socket(relay.client(), server_hostname="localhost") as tls:
        assert relay.link.session_for_port(tls.getsockname()[1]) or relay.opened(tls)
    for client in idle:
        client.close()
    assert relay.stop() == _fastmux.EXIT_STOPPED
    assert per_client < 4096, f"{per_client / 1024:.1f} KiB per idle legacy-SSL client"
