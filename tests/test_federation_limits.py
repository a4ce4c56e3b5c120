"""Dialback amplification and what an unauthenticated s2s stream can make a
server do, over real sockets (issue 11, items 1, 3 and 8).

Two iim servers (tests/fedlive.py) with alice@a.example and bob@b.example
chatting throughout; an attacker opens a raw s2s stream to b.example and sends
thousands of <db:result/> keys "from" domains it chooses. b.example looks
those domains up with the DNS server of tests/dnsfake.py, which counts every
query; its log counts every connection attempt. Before issue 11, 265 KB of
keys made 2,000 outgoing sessions and ~5,800 DNS queries. Now: at most
``max_pending_verifies`` per stream and ``max_pending_verifies_total`` in all,
``s2s_connect_rate`` new attempts per second (bursts of twice that), no new
attempt for a domain that failed within ``s2s_retry_delay``, and every key
refused that way gets its XEP-0220 §2.4 dialback error. Timeouts are failure
bounds, never measurements."""

from __future__ import annotations

import asyncio
import re
import socket
import time

from dnsfake import FakeDNS
from fedlive import federated, start_all, stop_all
from live import Client, next_item

A, B = "a.example", "b.example"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
          "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
          "version='1.0' to='{to}' from='{frm}'>")
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ANSWER = re.compile(r"<db:result from='b\.example' to='([^']+)' type='error'><error "
                    r"type='(\w+)'><([a-z-]+) xmlns='" + re.escape(STANZAS) + "'/></error>"
                    r"</db:result>")
RATE = 5


class Attacker:
    """A raw, never authenticated s2s stream to b.example that reads every answer."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.text = reader, writer, ""

    @classmethod
    async def open(cls, server):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        attacker = cls(reader, writer)
        writer.write(HEADER.format(to=B, frm="evil.example").encode())
        await attacker.until(lambda: "</stream:features>" in attacker.text)
        return attacker

    def keys(self, domains) -> None:
        self.writer.write("".join(f"<db:result from='{d}' to='{B}'>0123abcd</db:result>"
                                  for d in domains).encode())

    async def until(self, done, timeout: float = 30) -> None:
        async def read():
            while not done():
                data = await self.reader.read(65536)
                assert data, "b.example closed the stream"
                self.text += data.decode()
        await asyncio.wait_for(read(), timeout)

    def answers(self) -> list[tuple[str, str, str]]:
        """(domain, error type, condition) of every dialback error received so far."""
        return ANSWER.findall(self.text)

    async def answered(self, count: int) -> list[tuple[str, str, str]]:
        await self.until(lambda: len(self.answers()) >= count)
        return self.answers()

    def close(self):
        self.writer.close()


async def online(server, user):
    client = Client(f"{user}@{server.domain}", server.users[user], server.ca_file)
    return await client.online(server.port, host=server.host)


async def chat_message(client, timeout=30):
    while True:
        message = await next_item(client.received, timeout)
        if message["type"] != "error":
            return message


async def exchange(alice, bob, text):
    alice.send_message(mto=f"bob@{B}", mbody=text, mtype="chat")
    assert (await chat_message(bob))["body"] == text
    bob.send_message(mto=f"alice@{A}", mbody=text + " (back)", mtype="chat")
    assert (await chat_message(alice))["body"] == text + " (back)"


def rss(server) -> int:
    status = open(f"/proc/{server.proc.pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def pair(tmp_path, ca, dns, b_extra=""):
    found = federated(tmp_path, ca, {A: {"host": "127.0.0.1"},
                                     B: {"host": "127.0.0.2", "extra": b_extra}})
    with found[B].conf.open("a") as conf:       # attacker domains are looked up in DNS
        conf.write(f'iim_server.s2s_nameservers = "127.0.0.1:{dns.port}"\n')
    return found


def attempted(dns) -> set[str]:
    """The attacker domains b.example looked up (one SRV query starts each attempt)."""
    return {name.split(".", 2)[2].rstrip(".") for name, kind in dns.queries
            if kind == "SRV" and name.endswith(".evil.example.")}


def conditions(answers) -> dict[str, int]:
    counted: dict[str, int] = {}
    for _, kind, condition in answers:
        counted[f"{kind}/{condition}"] = counted.get(f"{kind}/{condition}", 0) + 1
    return counted


def test_thousands_of_dialback_keys_cause_a_bounded_number_of_attempts(tmp_path, ca):
    dns = FakeDNS({})                            # every attacker domain: NXDOMAIN
    found = pair(tmp_path, ca, dns, b_extra=f'iim_server.s2s_connect_rate = "{RATE}"\n')
    figures = {}

    async def scenario():
        alice, bob = await online(found[A], "alice"), await online(found[B], "bob")
        await exchange(alice, bob, "before")
        rss_before = rss(found[B])
        attacker = await Attacker.open(found[B])

        # 1. one burst of 2,000 keys (~130 KB): 8 go on (max_pending_verifies), the rest
        #    are refused at once; the 8 domains do not exist, so their checks fail
        burst = [f"d{i}.evil.example" for i in range(2000)]
        attacker.keys(burst)
        await exchange(alice, bob, "during the burst")
        answers = await attacker.answered(2000)
        assert sorted(d for d, _, _ in answers) == sorted(burst)
        assert conditions(answers) == {"wait/resource-constraint": 1992,
                                       "cancel/remote-server-not-found": 8}
        tried = {d for d, _, c in answers if c == "remote-server-not-found"}
        assert attempted(dns) == tried

        # 2. the same attacker, as fast as the answers come: 8 fresh keys at a time
        started, paced = time.monotonic(), []
        for round_ in range(60):
            domains = [f"p{round_}-{i}.evil.example" for i in range(8)]
            paced += domains
            attacker.keys(domains)
            await attacker.answered(2000 + len(paced))
        elapsed = time.monotonic() - started
        await exchange(alice, bob, "during the paced keys")
        answers = attacker.answers()[2000:]
        assert sorted(d for d, _, _ in answers) == sorted(paced)
        counted = conditions(answers)
        assert set(counted) <= {"wait/resource-constraint", "cancel/remote-server-not-found"}
        tried_paced = {d for d, _, c in answers if c == "remote-server-not-found"}
        assert attempted(dns) == tried | tried_paced
        assert len(tried_paced) <= 2 * RATE + RATE * (elapsed + 1)   # the token bucket's bound

        # 3. the failed domains again: they rest (s2s_retry_delay), no DNS query, no attempt
        queries = len(dns.queries)
        attacker.keys(sorted(tried))
        answers = (await attacker.answered(2000 + len(paced) + 8))[-8:]
        assert conditions(answers) == {"cancel/remote-server-not-found": 8}
        assert len(dns.queries) == queries

        await exchange(alice, bob, "after")
        figures.update(rss_growth=rss(found[B]) - rss_before, attempts=len(attempted(dns)),
                       queries=len(dns.queries), elapsed=elapsed)
        attacker.close()
        await alice.offline()
        await bob.offline()

    start_all(found)
    try:
        asyncio.run(scenario())
    finally:
        stop_all(found)
        dns.close()
    print(f"\nattack figures: {figures}")
    assert figures["queries"] <= 3 * figures["attempts"]          # SRV, A, AAAA per domain
    assert figures["rss_growth"] < 24 * 1024 * 1024
    log = found[B].log()
    assert log.count(".evil.example: cannot connect") == figures["attempts"]
    for limit in ("max_pending_verifies", "s2s_connect_rate", "s2s_retry_delay"):
        assert f"limit iim_server.{limit}: refused" in log
    assert "Traceback" not in log


def silent_server():
    """Accepts connections, never answers; counts them."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_pending_verifications_in_total_are_capped_and_one_attempt_per_domain(tmp_path, ca):
    silent = silent_server()
    port = silent.getsockname()[1]
    domains = [f"s{i}.evil.example" for i in range(4)]
    records = {(f"_xmpp-server._tcp.{d}", "SRV"): [f"0 0 {port} silent.evil.example."]
               for d in domains}
    records[("silent.evil.example", "A")] = ["127.0.0.1"]
    dns = FakeDNS(records)
    limits = ('iim_server.max_pending_verifies = "4"\n'
              'iim_server.max_pending_verifies_total = "20"\n'
              'iim_server.negotiation_timeout = "60"\n'
              'iim_server.max_unauthenticated = "100"\n')
    found = pair(tmp_path, ca, dns, b_extra=limits)
    accepted = []

    async def accept(count):
        while True:
            try:
                accepted.append(silent.accept()[0])
            except BlockingIOError:
                if len(accepted) >= count:
                    return
                await asyncio.sleep(0.05)

    async def scenario():
        alice, bob = await online(found[A], "alice"), await online(found[B], "bob")
        await exchange(alice, bob, "before")
        attackers = [await Attacker.open(found[B]) for _ in range(10)]
        for attacker in attackers:
            attacker.keys(domains)
        # 20 keys wait for the silent server; 20 are beyond the total and refused at once
        async def refused():
            while sum(len(a.answers()) for a in attackers) < 20:
                await asyncio.sleep(0.05)
                for a in attackers:
                    try:
                        data = await asyncio.wait_for(a.reader.read(65536), 0.01)
                        a.text += data.decode()
                    except asyncio.TimeoutError:
                        pass
        await asyncio.wait_for(refused(), 30)
        early = [answer for a in attackers for answer in a.answers()]
        assert conditions(early) == {"wait/resource-constraint": 20}
        await exchange(alice, bob, "during")
        await asyncio.wait_for(accept(4), 30)
        for conn in accepted:                   # the authoritative "server" hangs up:
            conn.close()                        # the 20 waiting keys get their answer
        for attacker in attackers:
            await attacker.answered(4)
        late = [answer for a in attackers for answer in a.answers()]
        assert conditions(late) == {"wait/resource-constraint": 20,
                                    "cancel/remote-server-not-found": 20}
        await exchange(alice, bob, "after")
        await accept(0)                         # whatever else came meanwhile
        for attacker in attackers:
            attacker.close()
        await alice.offline()
        await bob.offline()

    start_all(found)
    try:
        asyncio.run(scenario())
    finally:
        stop_all(found)
        dns.close()
        for conn in accepted:
            conn.close()
        silent.close()
    assert len(accepted) == 4                      # one attempt per domain, shared by 5 streams
    assert "limit iim_server.max_pending_verifies_total: refused" in found[B].log()


def test_a_domain_longer_than_dns_allows_bounces_cleanly(tmp_path, ca):
    dns = FakeDNS({})
    found = pair(tmp_path, ca, dns)
    long_domain = ".".join(["x" * 60] * 5)                       # 304 octets

    async def scenario():
        bob = await online(found[B], "bob")
        bob.send_message(mto=f"someone@{long_domain}", mbody="hello?", mtype="chat")
        error = await next_item(bob.errors, 30)
        assert error["error"]["condition"] == "remote-server-not-found"
        attacker = await Attacker.open(found[B])
        attacker.keys([long_domain])
        assert conditions(await attacker.answered(1)) == {"cancel/remote-server-not-found": 1}
        attacker.close()
        await bob.offline()

    start_all(found)
    try:
        asyncio.run(scenario())
    finally:
        stop_all(found)
        dns.close()
    log = found[B].log()
    assert f"s2s out {long_domain}: cannot connect: {long_domain[:60]}... (304 characters) " \
           f"is not a DNS name: A DNS name is > 255 octets long" in log
    assert dns.queries == []
    assert "Traceback" not in log and "NameTooLong" not in log
