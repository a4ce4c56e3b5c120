"""A one-shot XMPP client on nbxmpp (Gajim's library): TLS by GLib/Gio, i.e. GnuTLS.

Run with Debian's /usr/bin/python3 (python3-nbxmpp, glib-networking), not
iim's virtual environment. It logs in to --host:--port over STARTTLS or
direct TLS, trusting only the CA in --cafile: that file becomes GLib's
default TLS database, so GnuTLS itself judges the chain and the name
(--domain), and nbxmpp refuses the stream on any certificate error, as
Gajim does before it asks its user.

Then it sends one message (--send-to, body read from --body-file, UTF-8)
and/or waits for one (--receive-from, body written to --out), and closes
the stream. What happens is reported on stdout, one JSON object a line:

    {"event": "online", "jid": ..., "tls_version": ..., "ciphersuite": ...}
    {"event": "sent", "bytes": N}
    {"event": "received", "bytes": N}
    {"event": "failed", "error": "BAD_CERTIFICATE", "certificate_errors": ["UNKNOWN_CA"]}

Exit status 0 when everything asked for was done, 1 otherwise.
"""

import argparse
import json
import os
import sys

from gi.repository import Gio, GLib

from nbxmpp.client import Client
from nbxmpp.const import ConnectionProtocol, ConnectionType
from nbxmpp.protocol import JID, Message, Presence
from nbxmpp.structs import StanzaHandler


def report(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


class OneShot:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.ok = False
        self.sent_id = None
        self.waiting = {"send"} if args.send_to else set()
        if args.receive_from:
            self.waiting.add("receive")
        self.client = self._client()

    def _client(self):
        a = self.args
        jid = JID.from_string(a.jid)
        client = Client(log_context="nbxmpp-test")
        client.set_domain(jid.domain)
        client.set_username(jid.localpart)
        client.set_resource(a.resource)
        client.set_password(a.password)
        kind = ConnectionType.DIRECT_TLS if a.direct_tls else ConnectionType.START_TLS
        client.set_custom_host(f"{a.host}:{a.port}", ConnectionProtocol.TCP, kind)
        client.subscribe("connected", self._online)
        client.subscribe("connection-failed", self._failed)
        client.subscribe("disconnected", self._disconnected)
        client.subscribe("stanza-sent", self._stanza_sent)
        client.register_handler(StanzaHandler(name="message", callback=self._message))
        return client

    def run(self):
        GLib.timeout_add_seconds(self.args.timeout, self._timeout)
        self.client.connect()
        self.loop.run()
        return 0 if self.ok else 1

    def _online(self, client, _signal):
        report("online", jid=str(client.get_bound_jid()),
               tls_version=_tls_version(client.tls_version), ciphersuite=client.ciphersuite,
               certificate_errors=_flags(client.peer_certificate[1]))
        client.send_stanza(Presence())
        if self.args.send_to:
            with open(self.args.body_file, encoding="utf-8", newline="") as f:
                body = f.read()
            self.sent_id = client.send_stanza(Message(to=self.args.send_to, body=body,
                                                      typ="chat"))
        self._done_if_finished()

    def _stanza_sent(self, _client, _signal, stanza):
        if self.sent_id is not None and getattr(stanza, "getID", lambda: None)() == self.sent_id:
            report("sent", bytes=len(stanza.getBody().encode("utf-8")))
            self.waiting.discard("send")
            self._done_if_finished()

    def _message(self, _client, stanza, _properties):
        sender = stanza.getFrom()
        body = stanza.getBody()
        if body is None or sender is None or sender.bare != self.args.receive_from:
            return
        data = body.encode("utf-8")
        with open(self.args.out, "wb") as f:
            f.write(data)
        report("received", bytes=len(data))
        self.waiting.discard("receive")
        self._done_if_finished()

    def _done_if_finished(self):
        if not self.waiting and not self.ok:
            self.ok = True
            self.client.disconnect()          # graceful: </stream:stream> after what is queued

    def _failed(self, client, _signal):
        self._report_failure(client)
        self.loop.quit()

    def _disconnected(self, client, _signal):
        if not self.ok:
            self._report_failure(client)
        self.loop.quit()

    def _report_failure(self, client):
        domain, error, text = client.get_error()
        _certificate, errors = client.peer_certificate
        report("failed", error=domain.name if domain else None, detail=str(error),
               text=str(text), certificate_errors=_flags(errors))

    def _timeout(self):
        report("failed", error="TIMEOUT", detail=f"still waiting for {sorted(self.waiting)}")
        self.ok = False
        self.loop.quit()
        return False


def _flags(errors):
    return sorted(flag.first_value_nick.upper().replace("-", "_") for flag in errors or ())


def _tls_version(version):
    return None if version is None else version.value_nick


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--direct-tls", action="store_true",
                        help="TLS from the first byte (else STARTTLS)")
    parser.add_argument("--cafile", required=True, help="the only CA trusted")
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--resource", default="nbxmpp")
    parser.add_argument("--send-to")
    parser.add_argument("--body-file")
    parser.add_argument("--receive-from", help="a bare JID")
    parser.add_argument("--out", help="where the received body goes")
    parser.add_argument("--timeout", type=int, default=30)
    args = parser.parse_args()
    database = Gio.TlsFileDatabase.new(os.path.abspath(args.cafile))
    Gio.TlsBackend.get_default().set_default_database(database)
    return OneShot(args).run()


if __name__ == "__main__":
    sys.exit(main())
