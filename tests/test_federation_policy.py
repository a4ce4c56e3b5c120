"""Federation policy end to end (docs/architecture.md, "TLS policy"): requiressl globally and
per coserver against a peer without TLS, trust_all_cert false against bad
certificates (each refused with its own reason in the log) and true (accepted,
certificate summary logged, dialback authenticates), coserver serverid/password
right and wrong. Two real servers on loopback; keystores by the real keytool."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

import pki
from fedlive import federated, start_all, stop_all
from keytool import add_trusted, keytool, make_store
from live import STOREPASS, Client, next_item

A, B = "a.example", "b.example"
HOSTS = {A: "127.0.0.1", B: "127.0.0.2"}


def servers(tmp_path, ca, a=None, b=None):
    found = federated(tmp_path, ca, {A: {"host": HOSTS[A], **(a or {})},
                                     B: {"host": HOSTS[B], **(b or {})}})
    return found


async def online(server, user):
    client = Client(f"{user}@{server.domain}", server.users[user], server.ca_file)
    if "sslkeystore" not in server.conf.read_text():
        client.enable_plaintext = True          # a server without TLS (the peer under test)
        client.plugin["feature_mechanisms"].unencrypted_scram = True
    return await client.online(server.port, host=server.host)


async def refused(sender_server, user, to):
    """``user`` sends a message to ``to``; return the error condition it gets back."""
    client = await online(sender_server, user)
    try:
        client.send_message(mto=to, mbody="are you there?", mtype="chat")
        error = await next_item(client.errors, 30)
        return error["error"]["condition"]
    finally:
        await client.offline()


async def chat(servers_, sender=(A, "alice"), receiver=(B, "bob")):
    one = await online(servers_[sender[0]], sender[1])
    two = await online(servers_[receiver[0]], receiver[1])
    try:
        one.send_message(mto=f"{receiver[1]}@{receiver[0]}", mbody="ping", mtype="chat")
        got = await next_item(two.received, 30)
        assert got["body"] == "ping"
        two.send_message(mto=got["from"], mbody="pong", mtype="chat")
        back = await next_item(one.received, 30)
        assert back["body"] == "pong"
    finally:
        await one.offline()
        await two.offline()


def run(found, scenario):
    start_all(found)
    try:
        return asyncio.run(scenario)
    finally:
        stop_all(found)


# -- requiressl against a peer without TLS -------------------------------------------------------

def test_global_requiressl_refuses_a_peer_without_tls_both_ways(tmp_path, ca):
    found = servers(tmp_path, ca, a={"tls": False}, b={"requiressl": True})

    async def scenario():
        return await refused(found[B], "bob", f"alice@{A}"), \
            await refused(found[A], "alice", f"bob@{B}")

    out_condition, in_condition = run(found, scenario())
    assert out_condition == in_condition == "remote-server-not-found"
    log_b, log_a = found[B].log(), found[A].log()
    assert (f"s2s out {A}: abandoned: policy-violation: the peer offers no STARTTLS and "
            f"iim_server.requiressl is true") in log_b
    assert (f"s2s out {B}: abandoned: unsupported-feature: the peer requires STARTTLS and this "
            f"server has no certificate") in log_a
    assert "authenticated with" not in log_b


def test_a_coserver_requiressl_refuses_that_peer_without_tls(tmp_path, ca):
    coserver = (f'iim_server.coservers = "coserver1"\n'
                f'iim_server.coserver1.domain = "{A}"\n'
                f'iim_server.coserver1.host = "{HOSTS[A]}:{{port}}"\n'
                f'iim_server.coserver1.requiressl = "true"\n')
    found = servers(tmp_path, ca, a={"tls": False})
    with found[B].conf.open("a") as conf:
        conf.write(coserver.format(port=found[A].port))

    async def scenario():
        return await refused(found[B], "bob", f"alice@{A}"), \
            await refused(found[A], "alice", f"bob@{B}")

    assert run(found, scenario()) == ("remote-server-not-found", "remote-server-not-found")
    log_b, log_a = found[B].log(), found[A].log()
    assert (f"s2s out {A}: abandoned: policy-violation: the peer offers no STARTTLS and "
            f"iim_server.coserver1.requiressl is true") in log_b
    assert (f"s2s out {B}: abandoned: unsupported-feature: the peer requires STARTTLS and this "
            f"server has no certificate") in log_a
    assert "authenticated with" not in log_a + log_b


def test_without_requiressl_two_servers_without_certificates_use_dialback(tmp_path, ca):
    found = servers(tmp_path, ca, a={"tls": False}, b={"tls": False})
    run(found, chat(found))
    assert f"s2s in {A}: {A} authenticated with dialback (no TLS)" in found[B].log()
    assert f"s2s out {B}: authenticated with dialback (no TLS)" in found[A].log()


# -- trust_all_cert = false: one reason per failure ------------------------------------------------

def bad_keystore(folder, ca, kind):
    """A keystore for a.example whose certificate fails in one way, made with keytool."""
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "server.jks"
    if kind == "self-signed":
        add_trusted(store, ca.root_cert, "iim-test-ca", storepass=STOREPASS)
        keytool("-genkeypair", "-keystore", str(store), "-storepass", STOREPASS,
                "-keypass", STOREPASS, "-alias", "server", "-keyalg", "RSA", "-keysize", "2048",
                "-dname", f"CN={A}, O=iim tests", "-ext", f"SAN=dns:{A}", "-validity", "30")
    elif kind == "expired":
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
        make_store(store, ca, [A], storepass=STOREPASS, not_after=past)
    elif kind == "name mismatch":
        make_store(store, ca, ["other.example"], storepass=STOREPASS)
    elif kind == "unknown CA":
        make_store(store, pki.CA.root("somebody else's CA"), [A], storepass=STOREPASS)
        add_trusted(store, ca.root_cert, "iim-test-ca-too", storepass=STOREPASS)


@pytest.mark.parametrize("kind", ["self-signed", "expired", "name mismatch", "unknown CA"])
def test_trust_all_cert_false_refuses_a_bad_peer_certificate_with_its_reason(tmp_path, ca, kind):
    bad_keystore(tmp_path / A, ca, kind)
    found = servers(tmp_path, ca)

    condition = run(found, refused(found[B], "bob", f"alice@{A}"))
    assert condition == "remote-server-not-found"
    log_b = found[B].log()
    assert f"s2s out {A}: certificate refused for {A}: {kind}" in log_b
    assert f"s2s out {A}: authenticated" not in log_b
    assert "BEGIN CERTIFICATE" not in log_b
    # B's first bytes under TLS are a whole stream (RFC 6120 §4.9.1.2): A reads the reason
    assert "stream error (peer sent): not-authorized: certificate not trusted" in found[A].log()


def test_trust_all_cert_true_accepts_a_self_signed_peer_logs_it_and_uses_dialback(tmp_path, ca):
    bad_keystore(tmp_path / A, ca, "self-signed")
    found = servers(tmp_path, ca, b={"extra": 'iim_server.trust_all_cert = "true"\n'})
    # alice's own client trusts her server's self-signed certificate, as its users would
    found[A].ca_file.write_text(keytool("-exportcert", "-rfc", "-alias", "server", "-keystore",
                                        str(tmp_path / A / "server.jks"),
                                        "-storepass", STOREPASS))
    run(found, chat(found, sender=(B, "bob"), receiver=(A, "alice")))
    log_b = found[B].log()
    assert "iim_server.trust_all_cert is true: every peer certificate is accepted" in log_b
    assert (f"s2s out {A}: certificate for {A} accepted by iim_server.trust_all_cert although "
            f"self-signed") in log_b
    summary = next(line for line in log_b.splitlines() if f"s2s out {A}: peer certificate:" in line)
    for part in (f"subject=CN={A},O=iim tests", f"issuer=CN={A},O=iim tests", f"SANs={A}",
                 "valid ", "sha256="):
        assert part in summary
    assert f"s2s in {A}: {A} authenticated with dialback (TLSv1.3)" in log_b


# -- coservers ------------------------------------------------------------------------------------

def coserver_conf(own_id, own_pw, peer_domain, peer_host, peer_port, peer_id, peer_pw):
    return (f'iim_server.serverid = "{own_id}"\niim_server.password = "{own_pw}"\n'
            f'iim_server.coservers = "coserver1"\n'
            f'iim_server.coserver1.domain = "{peer_domain}"\n'
            f'iim_server.coserver1.host = "{peer_host}:{peer_port}"\n'
            f'iim_server.coserver1.serverid = "{peer_id}"\n'
            f'iim_server.coserver1.password = "{peer_pw}"\n')


def coservers(tmp_path, ca, b_expects_password):
    found = servers(tmp_path, ca)
    with found[A].conf.open("a") as conf:
        conf.write(coserver_conf("a-id", "A-Secret-1", B, HOSTS[B], found[B].port,
                                 "b-id", "B-Secret-2"))
    with found[B].conf.open("a") as conf:
        conf.write(coserver_conf("b-id", "B-Secret-2", A, HOSTS[A], found[A].port,
                                 "a-id", b_expects_password))
    return found


def test_coservers_prove_their_mirrored_serverid_and_password(tmp_path, ca):
    found = coservers(tmp_path, ca, b_expects_password="A-Secret-1")
    run(found, chat(found))
    log_a, log_b = found[A].log(), found[B].log()
    assert f"s2s in {A}: coserver a-id proved its serverid" in log_b
    assert f"s2s out {B}: coserver b-id proved its serverid" in log_a
    for secret in ("A-Secret-1", "B-Secret-2"):
        assert secret not in log_a + log_b


def test_a_wrong_coserver_password_is_refused_and_logged(tmp_path, ca):
    found = coservers(tmp_path, ca, b_expects_password="Not-What-A-Has")
    condition = run(found, refused(found[A], "alice", f"bob@{B}"))
    assert condition == "remote-server-not-found"
    log_b = found[B].log()
    assert "stream error (sent): not-authorized: wrong coserver serverid/password" in log_b
    assert "Not-What-A-Has" not in log_b and "A-Secret-1" not in log_b
