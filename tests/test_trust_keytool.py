"""Chains from CAs made by the real keytool, judged by iim and by ``openssl verify``.

RFC 5280 §6.1.4 (k) asks that every issuer be a CA by basicConstraints, (l)/(m)
that pathLenConstraint hold, and (n) that keyCertSign be set *if keyUsage is
present*. The JDK's keytool makes a CA with ``-ext bc:c`` alone; OpenSSL (the
TLS stack under Prosody, ejabberd and slixmpp) accepts chains from it, so
iim must too, while still refusing an issuer that is not a CA, a CA whose
keyUsage lacks keyCertSign and a chain longer than pathLen allows. Each case
below is put to ``openssl verify -purpose sslserver -verify_hostname`` (what a
TLS client checks) and to ``iim.keys.trust.verify_peer`` (what the server's s2s
trust and ``iim.admin verify`` apply): the verdicts must agree, and a refusal
must name the certificate at fault.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import pki
from devsystem import run_admin
from fedlive import start_all, stop_all
from iim.keys.trust import TrustFailure, verify_peer
from keytool import KeytoolCA
from live import Client, LiveServer, next_item

PEER = "peer.example"


@dataclass
class Case:
    """A root made with ``root_exts``, intermediates with ``inter_exts`` each
    (signed by the one above), and a leaf for PEER signed by the last CA."""
    root_exts: tuple = ("bc:c",)
    inter_exts: tuple = ()
    refused_because: str = ""          # "" when the chain must be accepted


CASES = {
    "root with basicConstraints only (keytool's documented CA)": Case(),
    "root with keyUsage keyCertSign": Case(root_exts=("bc:c", "ku:c=keyCertSign,cRLSign")),
    "intermediate with basicConstraints only": Case(inter_exts=(("bc:c",),)),
    "intermediate with keyUsage keyCertSign": Case(
        inter_exts=(("bc:c", "ku:c=keyCertSign,cRLSign"),)),
    "two intermediates under pathLen 1": Case(root_exts=("bc:c=ca:true,pathlen:1",),
                                              inter_exts=(("bc:c",), ("bc:c",)),
                                              refused_because="pathLen 1 allows 1 CA(s) below "
                                                              "it, the chain has 2"),
    "intermediate under pathLen 0": Case(root_exts=("bc:c=ca:true,pathlen:0",),
                                         inter_exts=(("bc:c",),),
                                         refused_because="pathLen 0 allows 0 CA(s) below it, "
                                                         "the chain has 1"),
    "intermediate whose keyUsage lacks keyCertSign": Case(
        inter_exts=(("bc:c", "ku:c=digitalSignature"),),
        refused_because="may not sign certificates (keyUsage present without keyCertSign)"),
    "root whose keyUsage lacks keyCertSign": Case(
        root_exts=("bc:c", "ku:c=digitalSignature,keyEncipherment"),
        refused_because="may not sign certificates (keyUsage present without keyCertSign)"),
    "intermediate without basicConstraints": Case(
        inter_exts=((),), refused_because="not a CA (no basicConstraints; reissue it with "
                                          "CA:TRUE)"),
    "intermediate with basicConstraints CA:FALSE": Case(
        inter_exts=(("bc:c=ca:false",),), refused_because="not a CA (basicConstraints "
                                                          "CA:FALSE)"),
    "root with basicConstraints CA:FALSE": Case(
        root_exts=("bc:c=ca:false",), refused_because="not a CA (basicConstraints CA:FALSE)"),
}


@dataclass
class Chain:
    root: KeytoolCA
    cas: list                    # root first, the leaf's issuer last
    leaf: object

    def sent(self):
        """What a peer sends: the leaf, then its intermediates nearest first."""
        return [self.leaf] + [ca.cert for ca in reversed(self.cas[1:])]


def build(folder: Path, case: Case) -> Chain:
    root = KeytoolCA.root(folder, "keytool root CA", case.root_exts)
    cas = [root]
    for n, exts in enumerate(case.inter_exts):
        cas.append(cas[-1].intermediate(folder, f"keytool intermediate {n + 1}", exts))
    csr_key = pki.new_key("ec")
    csr = (pki.x509.CertificateSigningRequestBuilder().subject_name(pki._name(PEER))
           .sign(csr_key, pki.hashes.SHA256()))
    return Chain(root, cas, cas[-1].sign_csr(csr, PEER))


def openssl_verify(folder: Path, chain: Chain) -> tuple[bool, str]:
    def pem(name, certs):
        path = folder / name
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
        return str(path)
    args = ["openssl", "verify", "-purpose", "sslserver", "-verify_hostname", PEER,
            "-CAfile", pem("root.pem", [chain.root.cert])]
    if len(chain.sent()) > 1:
        args += ["-untrusted", pem("untrusted.pem", chain.sent()[1:])]
    proc = subprocess.run(args + [pem("leaf.pem", [chain.leaf])], capture_output=True,
                          text=True, timeout=60)
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_iim_and_openssl_give_the_same_verdict(tmp_path, name):
    case = CASES[name]
    chain = build(tmp_path, case)
    openssl_ok, openssl_said = openssl_verify(tmp_path, chain)
    verdict = verify_peer(chain.sent(), [chain.root.cert], PEER)
    assert verdict.ok == openssl_ok, f"iim: {verdict}; openssl: {openssl_said}"
    assert openssl_ok == (not case.refused_because), openssl_said
    if case.refused_because:
        assert verdict.failure is TrustFailure.INVALID_CHAIN
        assert case.refused_because in verdict.detail
        assert verdict.detail.startswith("CA certificate CN=keytool "), verdict.detail


def test_a_refusal_names_the_certificate_at_fault(tmp_path):
    """With a good intermediate above a bad one, the bad one is named."""
    case = Case(inter_exts=(("bc:c",), ("bc:c", "ku:c=digitalSignature")),
                refused_because="keyCertSign")
    chain = build(tmp_path, case)
    detail = verify_peer(chain.sent(), [chain.root.cert], PEER).detail
    assert detail.startswith("CA certificate CN=keytool intermediate 2,O=iim tests: "), detail


# ---------------------------------------------------------------------------
# The same verdicts where they are applied: s2s trust and ``iim.admin verify``,
# on real servers whose keystores the real keytool filled from such CAs.

A, B = "a.example", "b.example"


def _pair(tmp_path: Path, root: KeytoolCA, ca_for_b: KeytoolCA) -> dict:
    """a.example under ``root``; b.example under ``ca_for_b`` (the same root or
    a CA below it); each trusts ``root``, told where the other listens."""
    servers = {A: LiveServer(tmp_path / A, root, domain=A, host="127.0.0.1"),
               B: LiveServer(tmp_path / B, ca_for_b, domain=B, host="127.0.0.2")}
    for domain, other in ((A, B), (B, A)):
        peer = servers[other]
        with servers[domain].conf.open("a") as conf:
            conf.write(f'\niim_server.s2s_hosts = "{other}={peer.host}:{peer.port}"\n')
    start_all(servers)
    return servers


async def _send_from_alice(servers, to: str):
    """alice@a sends to ``to``; the first message alice then receives (an
    echo, a reply or a bounce), or None."""
    alice = await Client(f"alice@{A}", servers[A].users["alice"],
                         servers[A].ca_file).online(servers[A].port, host=servers[A].host)
    try:
        alice.send_message(mto=to, mbody="under a keytool CA", mtype="chat")
        return await next_item(alice.received, 20)
    finally:
        await alice.offline()


@pytest.fixture(scope="module")
def keytool_root(tmp_path_factory):
    return KeytoolCA.root(tmp_path_factory.mktemp("keytool-root"), "keytool root CA")


def test_servers_under_a_keytool_bc_only_ca_federate_with_sasl_external(tmp_path,
                                                                          keytool_root):
    """bob@b.example answers alice through an echo: a round trip over s2s both ways."""
    servers = _pair(tmp_path, keytool_root, keytool_root)
    try:
        async def both():
            bob = await Client(f"bob@{B}", servers[B].users["bob"],
                               servers[B].ca_file).online(servers[B].port, host=servers[B].host)
            bob.add_event_handler("message", lambda m: bob.send_message(
                mto=m["from"], mbody="echo: " + m["body"], mtype="chat"))
            try:
                return await _send_from_alice(servers, f"bob@{B}")
            finally:
                await bob.offline()
        reply = asyncio.run(both())
    finally:
        stop_all(servers)
    assert (reply["from"].bare, reply["body"]) == (f"bob@{B}", "echo: under a keytool CA")
    assert f"s2s out {B}: authenticated with SASL EXTERNAL" in servers[A].log()
    assert f"s2s out {A}: authenticated with SASL EXTERNAL" in servers[B].log()
    assert "certificate refused" not in servers[A].log() + servers[B].log()


def test_a_peer_under_a_ca_that_may_not_sign_is_refused_naming_it(tmp_path, keytool_root):
    """b.example's issuer has keyUsage without keyCertSign: openssl refuses such a
    chain (checked above), so does a.example's s2s trust, saying which CA, and
    alice's message comes back as an error instead of vanishing."""
    bad = keytool_root.intermediate(tmp_path / "bad-ca", "keytool signing-forbidden CA",
                                    ("bc:c", "ku:c=digitalSignature"))
    servers = _pair(tmp_path, keytool_root, bad)
    try:
        bounce = asyncio.run(_send_from_alice(servers, f"bob@{B}"))
    finally:
        stop_all(servers)
    assert bounce["type"] == "error", bounce
    log = servers[A].log()
    assert (f"certificate refused for {B}: invalid chain: CA certificate "
            f"CN=keytool signing-forbidden CA,O=iim tests: may not sign certificates "
            f"(keyUsage present without keyCertSign)") in log, log[-3000:]


def test_admin_verify_calls_a_keytool_bc_only_chain_secure(tmp_path, keytool_root):
    server = LiveServer(tmp_path / "server", keytool_root, domain="localhost")
    server.add_users()
    server.start()
    try:
        result = run_admin("verify", "-c", str(server.conf), "--port", str(server.port),
                           "--starttls", "--user", "alice@localhost",
                           env={**os.environ, "IIM_PASSWORD": server.users["alice"]},
                           check=False)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lock         secure: TLSv1.3 to the server, certificate verified for localhost" \
        in result.stdout


def test_admin_verify_names_an_issuer_that_may_not_sign(tmp_path, keytool_root):
    bad = keytool_root.intermediate(tmp_path / "bad-ca", "keytool signing-forbidden CA",
                                    ("bc:c", "ku:c=digitalSignature"))
    server = LiveServer(tmp_path / "server", bad, domain="localhost")
    server.add_users()
    server.start()
    try:
        result = run_admin("verify", "-c", str(server.conf), "--port", str(server.port),
                           "--starttls", "--user", "alice@localhost", "--cafile",
                           str(_pem_file(tmp_path / "root.pem", keytool_root.cert)),
                           env={**os.environ, "IIM_PASSWORD": server.users["alice"]},
                           check=False)
    finally:
        server.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("the certificate is not trusted: invalid chain: CA certificate "
            "CN=keytool signing-forbidden CA,O=iim tests: may not sign certificates") \
        in result.stdout, result.stdout


def _pem_file(path: Path, cert) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
