"""A small authoritative DNS server on loopback UDP for tests (dnspython
builds and parses the messages). ``records`` maps (name, type) to a list of
rdata texts, e.g. {("_xmpp-server._tcp.b.example.", "SRV"): ["0 5 5269 xmpp.b.example."]}.
Unknown names get NXDOMAIN; known names without that type, an empty answer."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class FakeDNS:
    def __init__(self, records: dict) -> None:
        self.records = {(name.lower().rstrip(".") + ".", kind): v for (name, kind), v in records.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.sock.sendto(self._answer(data), peer)

    def _answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name, kind = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        found = self.records.get((name, kind))
        if found:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", kind, found))
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def close(self) -> None:
        self.sock.close()
