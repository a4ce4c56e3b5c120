"""Interop with a mainstream XMPP server: iim federating with Debian's ejabberd 23.01.

One real ejabberd (``tests/ejabberdlive.py``) runs for the whole module on
127.0.0.5 and serves four hosts, each with its own s2s policy; each test
starts its own iim server (its own domain, on 127.0.0.1) and pairs it with
one of them, so no test inherits another's s2s streams, DNS answers or
"bouncing" period. Both servers find each other through the SRV records of
the test's own nameserver, and a slixmpp user on each side writes to the
other. Every certificate comes from a CA made by the real keytool with
``-ext bc:c`` alone (basicConstraints, no keyUsage), as keytool's
documentation makes one, except where a test needs a CA the other side does
not know:

* ``ejabberd.example`` trusts that CA: TLS, then SASL EXTERNAL (XEP-0178) both
  ways;
* ``skeptic.example`` checks peers against another CA, so it cannot verify
  iim: it fails iim's EXTERNAL attempt and iim falls back to dialback over TLS
  (XEP-0220), while ejabberd, whose certificate iim verifies, uses EXTERNAL;
* ``stranger.example`` has a certificate from that other CA too: iim, with
  ``trust_all_cert``, accepts the TLS but not the identity: dialback both ways;
* ``plain.example`` does no STARTTLS (``s2s_use_starttls: false``): iim with
  ``requiressl`` abandons its stream with ``<policy-violation/>`` and one log
  line, and the message bounces to its sender; ejabberd, asked for STARTTLS
  it will not do, gives up and bounces its own user's message.

ejabberd's log is read for its own account (its info lines "Accepted inbound
s2s EXTERNAL authentication", "Accepted outbound s2s dialback
authentication"...). A failing test shows the end of both servers' logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time

import pytest
from cryptography import x509

import pki
from ejabberdlive import EjabberdServer, VirtualHost
from keytool import KeytoolCA, make_store
from live import STOREPASS, Client, LiveServer, next_item
from prosodylive import TestZone, ca_pem

EXTERNAL, SKEPTIC, STRANGER, PLAIN = ("ejabberd.example", "skeptic.example",
                                      "stranger.example", "plain.example")
IIM_DOMAINS = ("iim.example", "iim-dialback.example", "iim-trustall.example",
               "iim-requiressl.example")
BOB_PASSWORD = "bob-pw-ejabberd-3"
LEAF_EXTS = ("eku=serverAuth,clientAuth",)


@pytest.fixture(scope="module")
def keytool_ca(tmp_path_factory):
    return KeytoolCA.root(tmp_path_factory.mktemp("keytool-ca"), "iim-ejabberd keytool CA")


@pytest.fixture(scope="module")
def other_ca():
    return pki.CA.root("a CA iim does not know")


@pytest.fixture(scope="module")
def iim_keystore(tmp_path_factory, keytool_ca):
    """One keystore (keytool, signed by the keytool CA) naming every iim domain of
    the module, copied into each test's server folder."""
    store = tmp_path_factory.mktemp("iim-keystore") / "server.jks"
    make_store(store, keytool_ca, list(IIM_DOMAINS), storepass=STOREPASS, exts=LEAF_EXTS)
    return store


@pytest.fixture(scope="module")
def zone():
    zone = TestZone().start()
    yield zone
    zone.stop()


@pytest.fixture(scope="module")
def ejabberd(tmp_path_factory, keytool_ca, other_ca, zone):
    folder = tmp_path_factory.mktemp("ejabberd")
    trusts_keytool_ca = folder / "keytool-ca.pem"
    trusts_keytool_ca.write_bytes(keytool_ca.cert_pem())
    trusts_other_ca = folder / "other-ca.pem"
    trusts_other_ca.write_bytes(ca_pem(other_ca))
    users = {"bob": BOB_PASSWORD}
    vhosts = [VirtualHost(EXTERNAL, trusts_keytool_ca, users),
              VirtualHost(SKEPTIC, trusts_other_ca, users),
              VirtualHost(STRANGER, trusts_other_ca, users),
              VirtualHost(PLAIN, trusts_keytool_ca, users, {"s2s_use_starttls": False})]
    certs = [keytool_ca.issue(EXTERNAL, SKEPTIC, PLAIN),
             other_ca.issue(STRANGER)]
    server = EjabberdServer(folder / "server", vhosts, certs, zone)
    server.bob_trusts = {EXTERNAL: trusts_keytool_ca, SKEPTIC: trusts_keytool_ca,
                         PLAIN: trusts_keytool_ca, STRANGER: trusts_other_ca}
    try:
        yield server.start()
    finally:
        server.stop()


class Pair:
    """A fresh iim server for ``iim_domain`` (on 127.0.0.1) and the module's ejabberd,
    whose host ``vhost`` the test talks to. The SRV record ejabberd follows for
    ``iim_domain`` names ``localhost.`` (see tests/ejabberdlive.py)."""

    def __init__(self, tmp_path, ca, zone, keystore, ejabberd: EjabberdServer,
                 iim_domain: str, vhost: str, *, requiressl=False, extra=""):
        folder = tmp_path / iim_domain
        folder.mkdir()
        shutil.copy(keystore, folder / "server.jks")
        self.zone, self.ejabberd, self.vhost = zone, ejabberd, vhost
        self.alice_jid, self.bob_jid = f"alice@{iim_domain}", f"bob@{vhost}"
        self.iim = LiveServer(folder, ca, domain=iim_domain, requiressl=requiressl,
                              users=(("alice", "alice-pw-iim-3"),),
                              extra=f'iim_server.s2s_nameservers = "{zone.address}"\n' + extra)
        zone.add_xmpp_server(iim_domain, "localhost", "127.0.0.1", self.iim.port)
        self._log_mark = len(ejabberd.log())

    def __enter__(self) -> "Pair":
        try:
            self.iim.add_users()
            self.iim.start()
        except BaseException:
            self.iim.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.iim.stop()

    def ejabberd_log(self) -> str:
        """What ejabberd logged since this pair was made."""
        return self.ejabberd.log()[self._log_mark:]

    def ejabberd_logged(self, pattern: str, timeout: float = 10) -> bool:
        """Whether ejabberd logs a line matching ``pattern`` within ``timeout``
        seconds: its logger writes after the event, a bounce can arrive first."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.ejabberd_log()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @contextlib.contextmanager
    def explained(self):
        """Failures (assertions, timeouts) carry the end of both servers' logs."""
        try:
            yield
        except (AssertionError, asyncio.TimeoutError, TimeoutError) as exc:
            raise AssertionError(f"{exc!r}\n{self.ejabberd.tail()}\n--- iim log ---\n"
                                 f"{self.iim.log()[-4000:]}") from exc

    async def alice(self) -> Client:
        client = Client(self.alice_jid, self.iim.users["alice"], self.iim.ca_file)
        return await client.online(self.iim.port, host=self.iim.host)

    async def bob(self) -> Client:
        client = Client(self.bob_jid, BOB_PASSWORD, self.ejabberd.bob_trusts[self.vhost])
        return await client.online(self.ejabberd.c2s_port, host=self.ejabberd.host)

    def run(self, scenario) -> None:
        with self, self.explained():
            asyncio.run(scenario(self))

    def assert_clean(self) -> None:
        """Neither server logged an error."""
        with self.explained():
            assert re.findall(r"^.*\[(?:error|critical)\].*$", self.ejabberd_log(), re.M) == []
            assert " ERROR " not in self.iim.log()


async def first_from(queue: asyncio.Queue, bare: str, timeout: float = 20):
    item = await next_item(queue, timeout)
    while item["from"].bare != bare:
        item = await next_item(queue, timeout)
    return item


def drain(queue: asyncio.Queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def chat(pair: Pair) -> None:
    """alice (iim) writes to bob (ejabberd), bob answers her full JID."""
    alice, bob = await pair.alice(), await pair.bob()
    try:
        alice.send_message(mto=pair.bob_jid, mbody="hello ejabberd, from iim", mtype="chat")
        got = await first_from(bob.received, pair.alice_jid)
        assert got["body"] == "hello ejabberd, from iim"
        bob.send_message(mto=got["from"], mbody="hello iim, from ejabberd", mtype="chat")
        back = await first_from(alice.received, pair.bob_jid)
        assert (back["body"], back["to"].bare) == ("hello iim, from ejabberd", pair.alice_jid)
    finally:
        await alice.offline()
        await bob.offline()


def accepted(log: str, direction: str, mechanism: str, origin: str, target: str) -> bool:
    """ejabberd's info line for an s2s authentication it accepted."""
    return f"Accepted {direction} s2s {mechanism} authentication {origin} -> {target} " in log


# -- certificates both ways: SASL EXTERNAL ----------------------------------------------------

def test_tls_and_sasl_external_both_ways_with_a_keytool_bc_only_ca(tmp_path, keytool_ca, zone,
                                                                    iim_keystore, ejabberd):
    ca_cert = keytool_ca.cert
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert x509.KeyUsage not in [e.value.__class__ for e in ca_cert.extensions]
    iim = IIM_DOMAINS[0]
    pair = Pair(tmp_path, keytool_ca, zone, iim_keystore, ejabberd, iim, EXTERNAL)
    pair.run(chat)
    pair.assert_clean()
    iim_log, ej_log = pair.iim.log(), pair.ejabberd_log()
    with pair.explained():
        # iim -> ejabberd, found through SRV
        assert f"s2s out {EXTERNAL}: connected to xmpp.{EXTERNAL}:{ejabberd.s2s_port} (SRV)" \
            in iim_log
        assert f"s2s out {EXTERNAL}: TLS established TLSv1.3" in iim_log
        assert f"s2s out {EXTERNAL}: authenticated with SASL EXTERNAL (TLSv1.3)" in iim_log
        assert accepted(ej_log, "inbound", "EXTERNAL", iim, EXTERNAL)
        # ejabberd -> iim, found through SRV
        assert (f"_xmpp-server._tcp.{iim}.", "SRV") in zone.queries
        assert f"s2s in {EXTERNAL}: {EXTERNAL} authenticated with SASL EXTERNAL (TLSv1.3)" \
            in iim_log
        assert accepted(ej_log, "outbound", "EXTERNAL", EXTERNAL, iim)
        # nobody fell back to dialback
        assert "authenticated with dialback" not in iim_log
        assert " s2s dialback authentication" not in ej_log


# -- dialback where a certificate cannot be verified -----------------------------------------

def test_ejabberd_cannot_verify_iim_so_iim_uses_dialback_over_tls(tmp_path, keytool_ca, zone,
                                                                  iim_keystore, ejabberd):
    iim = IIM_DOMAINS[1]
    pair = Pair(tmp_path, keytool_ca, zone, iim_keystore, ejabberd, iim, SKEPTIC)
    pair.run(chat)
    pair.assert_clean()
    iim_log, ej_log = pair.iim.log(), pair.ejabberd_log()
    with pair.explained():
        # iim -> ejabberd: TLS; ejabberd refuses the certificate for EXTERNAL; dialback,
        # ejabberd asking iim (the authoritative server) about the key
        assert f"s2s out {SKEPTIC}: TLS established TLSv1.3" in iim_log
        assert re.search(rf"Failed inbound s2s EXTERNAL authentication {re.escape(iim)} -> "
                         rf"{re.escape(SKEPTIC)} .*", ej_log)
        assert f"s2s out {SKEPTIC}: authenticated with dialback (TLSv1.3)" in iim_log
        assert accepted(ej_log, "inbound", "dialback", iim, SKEPTIC)
        assert not accepted(ej_log, "inbound", "EXTERNAL", iim, SKEPTIC)
        # ejabberd -> iim: iim verifies ejabberd's certificate, so EXTERNAL
        assert f"s2s in {SKEPTIC}: {SKEPTIC} authenticated with SASL EXTERNAL (TLSv1.3)" \
            in iim_log
        assert accepted(ej_log, "outbound", "EXTERNAL", SKEPTIC, iim)


def test_neither_verifies_the_other_trust_all_cert_dialback_both_ways_over_tls(
        tmp_path, keytool_ca, zone, iim_keystore, ejabberd):
    iim = IIM_DOMAINS[2]
    pair = Pair(tmp_path, keytool_ca, zone, iim_keystore, ejabberd, iim, STRANGER,
                extra='iim_server.trust_all_cert = "true"\n')
    pair.run(chat)
    pair.assert_clean()
    iim_log, ej_log = pair.iim.log(), pair.ejabberd_log()
    with pair.explained():
        assert f"certificate for {STRANGER} accepted by iim_server.trust_all_cert " \
               f"although unknown CA" in iim_log
        assert f"s2s out {STRANGER}: authenticated with dialback (TLSv1.3)" in iim_log
        assert f"s2s in {STRANGER}: {STRANGER} authenticated with dialback (TLSv1.3)" \
            in iim_log
        assert accepted(ej_log, "inbound", "dialback", iim, STRANGER)
        assert accepted(ej_log, "outbound", "dialback", STRANGER, iim)
        assert "authenticated with SASL EXTERNAL" not in iim_log
        assert not accepted(ej_log, "inbound", "EXTERNAL", iim, STRANGER)


# -- requiressl against a peer without STARTTLS ------------------------------------------------

async def each_writes_to_the_other(pair: Pair) -> None:
    """Both messages come back to their senders as errors: ``pair.bounced``."""
    alice, bob = await pair.alice(), await pair.bob()
    try:
        alice.send_message(mto=pair.bob_jid, mbody="iim requires TLS", mtype="chat")
        to_alice = await first_from(alice.errors, pair.bob_jid)
        bob.send_message(mto=pair.alice_jid, mbody="ejabberd does no STARTTLS", mtype="chat")
        to_bob = await first_from(bob.errors, pair.alice_jid)
        pair.bounced = (to_alice, to_bob)
        await asyncio.sleep(0)
        delivered = [m for queue in (alice.received, bob.received)
                     for m in drain(queue) if m["type"] != "error"]
        assert delivered == []
    finally:
        await alice.offline()
        await bob.offline()


def test_requiressl_refuses_a_peer_without_starttls_and_the_messages_bounce(
        tmp_path, keytool_ca, zone, iim_keystore, ejabberd):
    iim = IIM_DOMAINS[3]
    pair = Pair(tmp_path, keytool_ca, zone, iim_keystore, ejabberd, iim, PLAIN, requiressl=True)
    pair.run(each_writes_to_the_other)
    to_alice, to_bob = pair.bounced
    iim_log = pair.iim.log()
    with pair.explained():
        # iim -> ejabberd: no STARTTLS offered; iim abandons the stream with
        # <policy-violation/> and says why; alice's message comes back
        assert f"s2s out {PLAIN}: abandoned: policy-violation: the peer offers no STARTTLS " \
               f"and iim_server.requiressl is true" in iim_log
        assert (to_alice["type"], to_alice["body"]) == ("error", "iim requires TLS")
        assert to_alice["error"]["condition"] == "remote-server-not-found"
        assert pair.ejabberd_logged(rf"Closing inbound s2s connection {re.escape(iim)} -> "
                                    rf"{re.escape(PLAIN)}: .*policy-violation")
        assert not re.search(r"Accepted (inbound|outbound) s2s", pair.ejabberd_log())
        # ejabberd -> iim: iim requires STARTTLS, ejabberd will not do it and gives up;
        # bob's message comes back to him
        assert (to_bob["type"], to_bob["body"]) == ("error", "ejabberd does no STARTTLS")
        assert pair.ejabberd_logged(rf"Failed to establish outbound s2s connection "
                                    rf"{re.escape(PLAIN)} -> {re.escape(iim)}: .*STARTTLS")
        assert "authenticated with" not in iim_log
    pair.assert_clean()
