"""Where a remote XMPP domain listens for servers (RFC 6120 §3.2).

Order: an explicit place first (``iim_server.coserverN.host`` for a
coserver's domain, then ``iim_server.s2s_hosts``), else DNS: the
``_xmpp-server._tcp.<domain>`` SRV records, ordered by priority and, within
one priority, by RFC 2782's weighted random choice; a lone ``.`` target means
the domain offers no XMPP service (RFC 2782). Without SRV records, the domain
itself on port 5269 (the "fallback process" of RFC 6120 §3.2.2). The A/AAAA
lookup of each host is left to the connect call, which tries every address.

dnspython does the DNS: it is maintained, asynchronous and knows SRV; the
standard library does not.

Bounds (issue 11: the domains come from peers, so from attackers too):

- a domain that cannot be a DNS name (over 255 octets, a label over 63, an
  empty label, what IDNA refuses) raises ``NotADNSName`` before any query,
  with the reason; every dnspython failure of a query (``DNSException``: no
  such name, no answer, SERVFAIL, timeout, no configuration, a name that
  grew too long with the ``_xmpp-server._tcp`` prefix) means "no record",
  never an exception for the caller;
- at most ``MAX_TARGETS`` SRV targets and ``MAX_ADDRESSES`` addresses per
  target are used, so one domain costs at most 1 + 2 x MAX_TARGETS queries;
- failed lookups are remembered (``NegativeCache``, bounded, oldest dropped)
  for ``negative_ttl`` seconds whatever TTL the answer claimed: an attacker's
  zone cannot make us ask again by answering with TTL 0.

The federation adds the rest (iim.server.federation: one attempt per domain
at a time, ``s2s_connect_rate``, ``s2s_retry_delay``).
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.name

DEFAULT_PORT = 5269
LOOKUP_TIMEOUT = 10.0
MAX_TARGETS = 6
MAX_ADDRESSES = 8
NEGATIVE_TTL = 30.0
SRV_PREFIX = (b"_xmpp-server", b"_tcp")                 # labels before the domain


def _dnspython():
    """dnspython, imported on the first lookup or name check rather than at start:
    most servers never resolve a peer, and the import is ~25 ms of every start."""
    import dns.asyncresolver
    import dns.exception
    import dns.name
    import dns.resolver
    return dns


class Unresolvable(Exception):
    """No place to connect to for this domain; the message says why."""


class NoService(Unresolvable):
    """The domain says it offers no XMPP server service (SRV target ".")."""


class NotADNSName(Unresolvable):
    """The domain cannot be looked up in DNS at all."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    source: str          # "coserver1.host", "iim_server.s2s_hosts", "SRV", "A/AAAA"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class NegativeCache:
    """(name, record type) pairs whose lookup failed, each for ``ttl`` seconds;
    at most ``size`` of them, the oldest dropped first (time passed in)."""

    def __init__(self, ttl: float, size: int = 4096) -> None:
        self.ttl, self.size = ttl, size
        self._failed: dict[tuple[str, str], float] = {}      # oldest first

    def __contains__(self, key: tuple[str, str]) -> bool:
        return self._live(key, time.monotonic())

    def _live(self, key, now: float) -> bool:
        when = self._failed.get(key)
        if when is None:
            return False
        if now - when < self.ttl:
            return True
        del self._failed[key]
        return False

    def add(self, key: tuple[str, str], now: float | None = None) -> None:
        self._failed.pop(key, None)
        self._failed[key] = time.monotonic() if now is None else now
        while len(self._failed) > self.size:
            del self._failed[next(iter(self._failed))]

    def __len__(self) -> int:
        return len(self._failed)


class Resolver:
    def __init__(self, overrides: dict[str, Target], nameservers=(),
                 negative_ttl: float = NEGATIVE_TTL) -> None:
        self.overrides = overrides
        self.negative = NegativeCache(negative_ttl)
        self.custom_dns = bool(nameservers)
        self._nameservers = tuple(nameservers)
        self._resolver = None                   # made on the first lookup (_dnspython)

    @property
    def _dns(self):
        if self._resolver is None:
            resolver = _dnspython().asyncresolver.Resolver(configure=not self._nameservers)
            if self._nameservers:
                resolver.nameservers = [ns.host for ns in self._nameservers]
                resolver.nameserver_ports = {ns.host: ns.port for ns in self._nameservers}
            resolver.lifetime = LOOKUP_TIMEOUT
            self._resolver = resolver
        return self._resolver

    async def targets(self, domain: str) -> list[Target]:
        """Where to connect for ``domain``, best first (at most MAX_TARGETS).
        Raises ``Unresolvable`` (``NoService``, ``NotADNSName``), nothing else."""
        if domain in self.overrides:
            return [self.overrides[domain]]
        name = dns_name(domain)
        records = await self._srv(name)
        if records is None:
            return [Target(domain, DEFAULT_PORT, "A/AAAA")]
        if len(records) == 1 and records[0][2] == ".":
            raise NoService(f"{domain} publishes no XMPP server service (SRV target '.')")
        return [Target(host.rstrip("."), port, "SRV")
                for _, port, host in _srv_order(records)][:MAX_TARGETS]

    async def addresses(self, target: Target) -> list[str]:
        """The addresses to try for ``target``: looked up with
        ``iim_server.s2s_nameservers`` when they are set (A, then AAAA), so that
        one DNS view serves SRV and addresses; else left to the system's
        resolver (getaddrinfo, /etc/hosts included) by returning the name."""
        if not self.custom_dns or _is_ip(target.host):
            return [target.host]
        try:
            name = dns_name(target.host)
        except NotADNSName:
            return []
        found = []
        for kind in ("A", "AAAA"):
            answer = await self._lookup(name, kind)
            found += [record.to_text() for record in answer or ()]
        return found[:MAX_ADDRESSES]

    async def _srv(self, domain: dns.name.Name):
        dns = _dnspython()
        try:
            name = dns.name.Name(SRV_PREFIX).concatenate(domain)
        except dns.exception.DNSException:        # too long with the prefix: no such record
            return None
        answer = await self._lookup(name, "SRV")
        if not answer:
            return None
        return [((r.priority, r.weight), r.port, r.target.to_text()) for r in answer]

    async def _lookup(self, name: dns.name.Name, kind: str):
        """The records, or None for any failure (remembered for a while)."""
        key = (name.to_text().lower(), kind)
        if key in self.negative:
            return None
        try:
            return await self._dns.resolve(name, kind)
        except (_dnspython().exception.DNSException, OSError):
            # NXDOMAIN, NoAnswer, NoNameservers (SERVFAIL), Timeout (LifetimeTimeout),
            # NoResolverConfiguration, YXDOMAIN, NameTooLong, ...: no records
            self.negative.add(key)
            return None


def dns_name(domain: str) -> dns.name.Name:
    """``domain`` as an absolute DNS name, or ``NotADNSName`` saying why not
    (RFC 1035 §2.3.4: 255 octets, labels of 63; IDNA for the rest)."""
    dns = _dnspython()
    try:
        return dns.name.from_text(domain)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        shown = domain if len(domain) <= 80 else f"{domain[:60]}... ({len(domain)} characters)"
        raise NotADNSName(f"{shown} is not a DNS name: {exc}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _srv_order(records):
    """RFC 2782: lowest priority first; within a priority, weighted random."""
    ordered = []
    for priority in sorted({key[0] for key, _, _ in records}):
        group = [r for r in records if r[0][0] == priority]
        while group:
            total = sum(r[0][1] for r in group)
            pick = random.uniform(0, total) if total else 0
            for record in group:
                pick -= record[0][1]
                if pick <= 0:
                    break
            ordered.append(record)
            group.remove(record)
    return ordered
