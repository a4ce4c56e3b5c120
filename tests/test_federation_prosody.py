"""Interop with a mainstream XMPP server: iim federating with Debian's Prosody 0.12.

Each test runs a real Prosody (``tests/prosodylive.py``) for ``prosody.example``
on 127.0.0.3 and a real iim server for ``iim.example`` on 127.0.0.4 (keystore
made by the real keytool from the test CA), each finding the other through the
DNS SRV records of the test's own nameserver, with slixmpp users on both sides.
Every scenario has them subscribe to each other's presence and chat both ways;
what changes is how the servers authenticate:

* both trust each other's certificate: TLS both ways, SASL EXTERNAL both ways
  (XEP-0178), even with Prosody's ``s2s_secure_auth = true``; the same with
  both certificates from a CA made by the real keytool with ``-ext bc:c``
  alone (no keyUsage);
* Prosody cannot verify iim's certificate (another CA in its ``cafile``,
  ``s2s_secure_auth = false``): iim authenticates with dialback over TLS
  (XEP-0220), Prosody, whose certificate iim trusts, with EXTERNAL;
* neither can verify the other (iim with ``trust_all_cert``): dialback both
  ways over TLS, each side the authoritative server for the other's question;
* iim without a certificate (Prosody's ``s2s_require_encryption = false``):
  dialback both ways without TLS.

Then two iim processes serving iim.example, the SRV record naming the second:
without a shared ``iim_server.dialback_secretfile`` the second one calls the
first one's key invalid, Prosody says so, and the waiting message comes back
with ``<internal-server-error/>`` as XEP-0220 §2.1.1 requires; with the file
shared the message goes through.

Prosody's log is read for its own account of each step (its debug lines:
"Accepting SASL EXTERNAL identity", "asking ... if key ... belongs to them",
"verified dialback key... it is valid", "denied the key").
"""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from cryptography import x509

import pki
from keytool import KeytoolCA, make_store
from live import STOREPASS, Client, LiveServer, next_item
from prosodylive import ProsodyServer, TestZone, ca_pem

IIM, PROSODY_DOMAIN = "iim.example", "prosody.example"
IIM_HOST, SECOND_IIM_HOST = "127.0.0.4", "127.0.0.6"
ALICE, BOB = f"alice@{IIM}", f"bob@{PROSODY_DOMAIN}"


@pytest.fixture(scope="module")
def ca():
    return pki.CA.root("iim-prosody interop CA")


@pytest.fixture(scope="module")
def other_ca():
    return pki.CA.root("a CA that did not sign iim's certificate")


@pytest.fixture(scope="module")
def iim_keystore(tmp_path_factory, ca):
    """One keystore for iim.example, made with keytool, copied into each test."""
    store = tmp_path_factory.mktemp("keystore") / "server.jks"
    make_store(store, ca, [IIM], storepass=STOREPASS)
    return store


@pytest.fixture(scope="module")
def keytool_ca(tmp_path_factory):
    """A CA made by the real keytool with ``-ext bc:c`` alone: basicConstraints, no keyUsage."""
    return KeytoolCA.root(tmp_path_factory.mktemp("keytool-ca"), "iim-prosody keytool CA")


@pytest.fixture
def zone():
    zone = TestZone().start()
    yield zone
    zone.stop()


class Federation:
    """iim.example (iim) and prosody.example (Prosody), found through ``zone``.

    ``prosody_ca`` signs Prosody's certificate (``prosody_cert``, unless given),
    ``prosody_trusts`` is the CA in Prosody's ``cafile``; both are the test CA
    unless a test says otherwise."""

    def __init__(self, tmp_path, ca, zone, keystore, *, iim_tls=True, iim_extra="",
                 prosody_ca=None, prosody_trusts=None, prosody_options=None,
                 prosody_cert=None):
        folder = tmp_path / IIM
        folder.mkdir()
        if iim_tls:
            shutil.copy(keystore, folder / "server.jks")
        self.zone, self.iim_tls = zone, iim_tls
        self.iim = LiveServer(folder, ca, domain=IIM, host=IIM_HOST, tls=iim_tls,
                              users=(("alice", "alice-pw-iim-1"),),
                              extra=self._iim_extra(iim_extra))
        zone.add_xmpp_server(IIM, f"xmpp.{IIM}", IIM_HOST, self.iim.port)
        self.others: list[LiveServer] = []
        prosody_ca = prosody_ca or ca
        cafile = tmp_path / "prosody-cafile.pem"
        cafile.write_bytes(ca_pem(prosody_trusts or ca))
        self.bob_trusts = tmp_path / "bob-trusts.pem"
        self.bob_trusts.write_bytes(ca_pem(prosody_ca))
        self.prosody = ProsodyServer(tmp_path / PROSODY_DOMAIN,
                                     prosody_cert or prosody_ca.issue(PROSODY_DOMAIN),
                                     cafile, zone, domain=PROSODY_DOMAIN,
                                     options=prosody_options)

    def _iim_extra(self, extra: str) -> str:
        return f'iim_server.s2s_nameservers = "{self.zone.address}"\n' + extra

    def second_iim(self, folder, extra: str = "") -> LiveServer:
        """Another iim process for iim.example (no TLS), named by the SRV record from now on."""
        other = LiveServer(folder, self.iim.ca, domain=IIM, host=SECOND_IIM_HOST, tls=False,
                           users=(), extra=self._iim_extra(extra))
        self.zone.add_xmpp_server(IIM, f"xmpp.{IIM}", SECOND_IIM_HOST, other.port)
        self.others.append(other)
        return other

    def __enter__(self) -> "Federation":
        try:
            self.prosody.add_users()
            self.iim.add_users()
            for server in (self.prosody, self.iim, *self.others):
                server.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        """Stop every server (those never started too: that frees Prosody's key memfd)."""
        try:
            for server in (self.iim, *self.others):
                server.stop()
        finally:
            self.prosody.stop()

    async def alice(self) -> Client:
        client = Client(ALICE, self.iim.users["alice"], self.iim.ca_file)
        if not self.iim_tls:
            client.enable_plaintext = True           # iim without a certificate
            client.plugin["feature_mechanisms"].unencrypted_scram = True
        return await client.online(self.iim.port, host=self.iim.host)

    async def bob(self) -> Client:
        client = Client(BOB, self.prosody.users["bob"], self.bob_trusts)
        return await client.online(self.prosody.c2s_port, host=self.prosody.host)


async def first_from(queue: asyncio.Queue, bare: str, kind: str | None = None,
                     timeout: float = 20):
    """The first item from ``bare`` (of type ``kind``); others are passed over, such as
    the unavailable presence Prosody sends to acknowledge a subscription request."""
    item = await next_item(queue, timeout)
    while item["from"].bare != bare or (kind is not None and item["type"] != kind):
        item = await next_item(queue, timeout)
    return item


async def subscribe_and_chat(fed: Federation) -> None:
    """alice subscribes to bob, bob approves and subscribes back, each sees the
    other come online, and a message goes each way (RFC 6121 §3, §5)."""
    alice, bob = await fed.alice(), await fed.bob()
    try:
        alice.send_presence(pto=BOB, ptype="subscribe")
        await first_from(bob.subscribe_requests, ALICE, "subscribe")
        bob.send_presence(pto=ALICE, ptype="subscribed")
        seen = await first_from(alice.presences, BOB, "available")
        assert seen["from"].resource
        bob.send_presence(pto=ALICE, ptype="subscribe")
        await first_from(alice.subscribe_requests, BOB, "subscribe")
        alice.send_presence(pto=BOB, ptype="subscribed")
        seen = await first_from(bob.presences, ALICE, "available")
        assert seen["from"].resource

        alice.send_message(mto=BOB, mbody="hello Prosody, from iim", mtype="chat")
        got = await first_from(bob.received, ALICE)
        assert got["body"] == "hello Prosody, from iim"
        bob.send_message(mto=got["from"], mbody="hello iim, from Prosody", mtype="chat")
        back = await first_from(alice.received, BOB)
        assert (back["body"], back["to"].bare) == ("hello iim, from Prosody", ALICE)
    finally:
        await alice.offline()
        await bob.offline()


def run(fed: Federation) -> tuple[str, str]:
    """Run the scenario; return (iim's log, Prosody's log), in which neither
    server logged an error."""
    with fed:
        asyncio.run(subscribe_and_chat(fed))
    iim_log, prosody_log = fed.iim.log(), fed.prosody.log()
    assert re.findall(r"^.*\terror\t.*$", prosody_log, re.M) == []
    assert " ERROR " not in iim_log
    return iim_log, prosody_log


def prosody_received(log: str, element: str, **attributes) -> bool:
    """Prosody logged receiving ``<element>`` with these attributes (any order)."""
    for line in re.findall(rf"Received\[s2s\w*\]: <{element} [^\n]*", log):
        if all(f"{name}='{value}'" in line for name, value in attributes.items()):
            return True
    return False


# -- certificates both ways: SASL EXTERNAL ----------------------------------------------------

def test_both_certificates_trusted_tls_and_sasl_external_both_ways(tmp_path, ca, zone,
                                                                    iim_keystore):
    fed = Federation(tmp_path, ca, zone, iim_keystore,
                     prosody_options={"s2s_secure_auth": True})
    iim_log, prosody_log = run(fed)
    # iim -> Prosody, found through SRV
    assert f"s2s out {PROSODY_DOMAIN}: connected to xmpp.{PROSODY_DOMAIN}:" \
           f"{fed.prosody.s2s_port} (SRV)" in iim_log
    assert f"s2s out {PROSODY_DOMAIN}: TLS established TLSv1.3" in iim_log
    assert f"s2s out {PROSODY_DOMAIN}: authenticated with SASL EXTERNAL (TLSv1.3)" in iim_log
    assert f"Accepting SASL EXTERNAL identity from {IIM}" in prosody_log
    # Prosody -> iim, found through SRV
    assert (f"_xmpp-server._tcp.{IIM}.", "SRV") in zone.queries
    assert re.search(rf"s2s in {PROSODY_DOMAIN} \([0-9.:]+\): TLS established TLSv1\.3",
                     iim_log)
    assert f"s2s in {PROSODY_DOMAIN}: {PROSODY_DOMAIN} authenticated with SASL EXTERNAL " \
           f"(TLSv1.3)" in iim_log
    assert f"SASL EXTERNAL with {IIM} succeeded" in prosody_log
    # s2s_secure_auth found nothing to forbid; nobody fell back to dialback
    assert "Forbidding insecure connection" not in prosody_log
    assert "authenticated with dialback" not in iim_log
    assert "sent dialback key" not in prosody_log


def test_a_keytool_bc_only_ca_for_both_servers_tls_and_sasl_external_both_ways(
        tmp_path, keytool_ca, zone):
    """Both certificates from a CA made as keytool's documentation makes one
    (``-ext bc:c``, no keyUsage), which OpenSSL (Prosody) and iim both accept."""
    assert x509.KeyUsage not in [type(e.value) for e in keytool_ca.cert.extensions]
    store = tmp_path / "keytool-keystore" / "server.jks"
    store.parent.mkdir()
    make_store(store, keytool_ca, [IIM], storepass=STOREPASS,
               exts=("eku=serverAuth,clientAuth",))
    fed = Federation(tmp_path, keytool_ca, zone, store, prosody_ca=keytool_ca,
                     prosody_cert=keytool_ca.issue(PROSODY_DOMAIN),
                     prosody_options={"s2s_secure_auth": True})
    iim_log, prosody_log = run(fed)
    assert f"s2s out {PROSODY_DOMAIN}: authenticated with SASL EXTERNAL (TLSv1.3)" in iim_log
    assert f"Accepting SASL EXTERNAL identity from {IIM}" in prosody_log
    assert f"s2s in {PROSODY_DOMAIN}: {PROSODY_DOMAIN} authenticated with SASL EXTERNAL " \
           f"(TLSv1.3)" in iim_log
    assert f"SASL EXTERNAL with {IIM} succeeded" in prosody_log
    assert "authenticated with dialback" not in iim_log
    assert "Forbidding insecure connection" not in prosody_log


# -- dialback where a certificate cannot be verified -----------------------------------------

def test_prosody_cannot_verify_iim_so_iim_uses_dialback_over_tls(tmp_path, ca, other_ca,
                                                                 zone, iim_keystore):
    fed = Federation(tmp_path, ca, zone, iim_keystore, prosody_trusts=other_ca,
                     prosody_options={"s2s_secure_auth": False})
    iim_log, prosody_log = run(fed)
    # iim -> Prosody: TLS, EXTERNAL not offered for an unverifiable certificate: dialback
    assert f"s2s out {PROSODY_DOMAIN}: TLS established TLSv1.3" in iim_log
    assert f"s2s out {PROSODY_DOMAIN}: authenticated with dialback (TLSv1.3)" in iim_log
    assert "Accepting SASL EXTERNAL" not in prosody_log
    assert f"asking {IIM} if key" in prosody_log
    assert prosody_received(prosody_log, "verify", **{"from": IIM, "type": "valid"})
    # Prosody -> iim: iim trusts Prosody's certificate, so EXTERNAL
    assert f"s2s in {PROSODY_DOMAIN}: {PROSODY_DOMAIN} authenticated with SASL EXTERNAL " \
           f"(TLSv1.3)" in iim_log


def test_neither_verifies_the_other_dialback_both_ways_over_tls(tmp_path, ca, other_ca, zone,
                                                                iim_keystore):
    fed = Federation(tmp_path, ca, zone, iim_keystore, prosody_ca=other_ca,
                     prosody_trusts=other_ca, iim_extra='iim_server.trust_all_cert = "true"\n',
                     prosody_options={"s2s_secure_auth": False})
    iim_log, prosody_log = run(fed)
    assert f"s2s out {PROSODY_DOMAIN}: authenticated with dialback (TLSv1.3)" in iim_log
    assert f"s2s in {PROSODY_DOMAIN}: {PROSODY_DOMAIN} authenticated with dialback " \
           f"(TLSv1.3)" in iim_log
    assert f"certificate for {PROSODY_DOMAIN} accepted by iim_server.trust_all_cert " \
           f"although unknown CA" in iim_log
    # each was the authoritative server for the other's question
    assert f"asking {IIM} if key" in prosody_log
    assert "verified dialback key... it is valid" in prosody_log
    assert "SASL EXTERNAL" not in iim_log
    assert "Accepting SASL EXTERNAL" not in prosody_log


def test_iim_without_certificate_dialback_both_ways_without_tls(tmp_path, ca, zone,
                                                                iim_keystore):
    fed = Federation(tmp_path, ca, zone, iim_keystore, iim_tls=False,
                     prosody_options={"s2s_secure_auth": False,
                                      "s2s_require_encryption": False})
    iim_log, prosody_log = run(fed)
    assert f"s2s out {PROSODY_DOMAIN}: authenticated with dialback (no TLS)" in iim_log
    assert f"s2s in {PROSODY_DOMAIN}: {PROSODY_DOMAIN} authenticated with dialback " \
           f"(no TLS)" in iim_log
    assert "sent dialback key on outgoing s2s stream" in prosody_log
    assert f"asking {IIM} if key" in prosody_log
    assert "verified dialback key... it is valid" in prosody_log
    assert "TLS established" not in iim_log


# -- dialback answered 'invalid': two iim processes for one domain ----------------------------

def two_iims(tmp_path, ca, zone, keystore, extra: str = "") -> Federation:
    """iim.example served by two iim processes without TLS; its SRV record names the
    second one, which is where Prosody checks the first one's dialback key."""
    fed = Federation(tmp_path, ca, zone, keystore, iim_tls=False, iim_extra=extra,
                     prosody_options={"s2s_secure_auth": False,
                                      "s2s_require_encryption": False})
    fed.second_iim(tmp_path / f"{IIM}-2", extra)
    return fed


async def alice_writes_to_bob(fed: Federation, *, bob_online: bool):
    """alice sends bob a message: return what bob got, or the error alice got."""
    alice = await fed.alice()
    bob = await fed.bob() if bob_online else None
    try:
        alice.send_message(mto=BOB, mbody="one domain, two servers", mtype="chat")
        if bob is not None:
            return await first_from(bob.received, ALICE)
        return await next_item(alice.errors, 20)
    finally:
        await alice.offline()
        if bob is not None:
            await bob.offline()


def test_a_key_the_authoritative_server_calls_invalid_bounces_internal_server_error(
        tmp_path, ca, zone, iim_keystore):
    """Without a shared iim_server.dialback_secretfile the second iim cannot
    vouch for the first one's key: Prosody hears 'invalid' from it, answers
    <db:result type='invalid'/>, and alice's waiting message comes back with
    <internal-server-error/> (XEP-0220 §2.1.1)."""
    fed = two_iims(tmp_path, ca, zone, iim_keystore)
    with fed:
        error = asyncio.run(alice_writes_to_bob(fed, bob_online=False))
    assert (error["type"], error["from"].bare) == ("error", BOB)
    assert error["error"]["condition"] == "internal-server-error"
    prosody_log, iim_log = fed.prosody.log(), fed.iim.log()
    assert f"authoritative server for {IIM} denied the key" in prosody_log
    assert f"s2s out {PROSODY_DOMAIN}: abandoned: not-authorized: the peer refused our " \
           f"dialback key" in iim_log
    assert "1 waiting stanzas bounce with internal-server-error" in iim_log
    assert f"s2s in {PROSODY_DOMAIN}: {PROSODY_DOMAIN} authenticated with dialback" in \
        fed.others[0].log()                     # the stream Prosody asked its question on


def test_two_iim_servers_sharing_the_dialback_secret_file_vouch_for_each_other(
        tmp_path, ca, zone, iim_keystore):
    secret = tmp_path / "dialback-secret.conf"
    secret.write_text("Internal (Software) Token:shared-dialback-secret-7\n")
    secret.chmod(0o600)
    fed = two_iims(tmp_path, ca, zone, iim_keystore,
                   extra=f'iim_server.dialback_secretfile = "{secret}"\n')
    with fed:
        got = asyncio.run(alice_writes_to_bob(fed, bob_online=True))
    assert got["body"] == "one domain, two servers"
    assert f"s2s out {PROSODY_DOMAIN}: authenticated with dialback (no TLS)" in fed.iim.log()
    assert prosody_received(fed.prosody.log(), "verify", **{"from": IIM, "type": "valid"})
    assert "denied the key" not in fed.prosody.log()
