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
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

DEFAULT_PORT = 5269
LOOKUP_TIMEOUT = 10.0


class NoService(Exception):
    """The domain says it offers no XMPP server service (SRV target ".")."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    source: str          # "coserver1.host", "iim_server.s2s_hosts", "SRV", "A/AAAA"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Resolver:
    def __init__(self, overrides: dict[str, Target], nameservers=()) -> None:
        self.overrides = overrides
        self.custom_dns = bool(nameservers)
        self._dns = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._dns.nameservers = [ns.host for ns in nameservers]
            self._dns.nameserver_ports = {ns.host: ns.port for ns in nameservers}
        self._dns.lifetime = LOOKUP_TIMEOUT

    async def targets(self, domain: str) -> list[Target]:
        if domain in self.overrides:
            return [self.overrides[domain]]
        records = await self._srv(domain)
        if records is None:
            return [Target(domain, DEFAULT_PORT, "A/AAAA")]
        if len(records) == 1 and records[0][2] == ".":
            raise NoService(f"{domain} publishes no XMPP server service (SRV target '.')")
        return [Target(host.rstrip("."), port, "SRV") for _, port, host in _srv_order(records)]

    async def addresses(self, target: Target) -> list[str]:
        """The addresses to try for ``target``: looked up with
        ``iim_server.s2s_nameservers`` when they are set (A, then AAAA), so that
        one DNS view serves SRV and addresses; else left to the system's
        resolver (getaddrinfo, /etc/hosts included) by returning the name."""
        if not self.custom_dns or _is_ip(target.host):
            return [target.host]
        found = []
        for kind in ("A", "AAAA"):
            try:
                answer = await self._dns.resolve(target.host, kind)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
                    dns.exception.Timeout):
                continue
            found += [record.to_text() for record in answer]
        return found

    async def _srv(self, domain: str):
        try:
            answer = await self._dns.resolve(f"_xmpp-server._tcp.{domain}", "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
                dns.exception.Timeout, dns.resolver.NoResolverConfiguration):
            return None
        return [((r.priority, r.weight), r.port, r.target.to_text()) for r in answer] or None


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
