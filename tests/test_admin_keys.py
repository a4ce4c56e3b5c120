"""``python -m iim.admin keys``: a deployment's keys without keytool or certutil.

The walk an operator follows (docs/keys.md) is run once, for real, through
the command line: password files, a CA, a server key and request, the
signature, a PKCS#12 and a JKS keystore, an NSS database. Then the real
tools judge the results (keytool -list -v, certutil -L, certutil -V),
iim's own readers load them, a real TLS handshake on 127.0.0.1 uses them,
and ``iim.admin check`` calls the configuration usable. Every bad input a
user can give is one line on stderr, exit status 1, no traceback, no
password.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

import pki
from devsystem import admin_here
from iim.keys.context import server_context
from iim.keys.keystore import load_keystore
from iim.keys.nss import load_nss
from iim.keys.passwords import read_password_file
from keytool import keytool
from tlsutil import handshake

DOMAIN = "chat.example.com"
ROOT = Path(__file__).resolve().parent.parent
CLEAR_KEY_MARKERS = (b"BEGIN PRIVATE KEY", b"BEGIN RSA PRIVATE KEY", b"BEGIN EC PRIVATE KEY")
STDIN_PASSWORD = "server-pw-from-stdin"


def keys(*args, cwd, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``iim.admin keys ARGS`` run from ``cwd``, in this process (its main, with
    standard input, output and error swapped for the call: devsystem.admin_here),
    which is ~0.25 s of CPU less than a process each; ``keys_process`` is the
    same as an operator runs it, for what only a process shows."""
    with contextlib.chdir(cwd):
        return admin_here("keys", *map(str, args), stdin=stdin if stdin is not None else "")


def keys_process(*args, cwd, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m iim.admin keys ARGS`` as an operator runs it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "iim.admin", "keys", *map(str, args)],
                          cwd=cwd, input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120, env=env)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str, secrets=()) -> str:
    """Exit 1, exactly one line on stderr holding every fragment, no traceback/secret."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    for secret in secrets:
        assert secret not in proc.stderr + proc.stdout
    return lines[0]


def password_of(path: Path) -> str:
    return read_password_file(path).password


def plain_password_file(path: Path, password: str) -> Path:
    """keytool's/certutil's -f format: the password alone."""
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------
# The walk, once for the module: real processes, as an operator runs them. The
# tests after it run their further commands in this process (``keys``).


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = SimpleNamespace(dir=d, stdout={})
    steps = {
        "ca-password": (["password-file", "ca-password.conf", "--generate"], None),
        "password": (["password-file", "sslpassword.conf"], STDIN_PASSWORD + "\n"),
        "build-ca": (["build-ca", "--key", "ca-key.pem", "--cert", "ca.pem",
                      "--password-file", "ca-password.conf",
                      "--subject", "CN=Example IM CA,O=Example"], None),
        "gen-req": (["gen-req", DOMAIN, "--key", "server-key.pem", "--out", "server.csr",
                     "--password-file", "sslpassword.conf", "--name", "im.example.com",
                     "--name", "127.0.0.1"], None),
        "sign-req": (["sign-req", "server.csr", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem",
                      "--ca-password-file", "ca-password.conf", "--out", "server.pem",
                      "--days", "90"], None),
        "pkcs12": (["make-keystore", "--key", "server-key.pem", "--password-file",
                    "sslpassword.conf", "--cert", "server.pem", "--ca-cert", "ca.pem",
                    "--out", "server-keystore.p12"], None),
        "jks": (["make-keystore", "--storetype", "JKS", "--key", "server-key.pem",
                 "--password-file", "sslpassword.conf", "--cert", "server.pem",
                 "--ca-cert", "ca.pem", "--out", "server-keystore.jks", "--alias", "im"], None),
        "nss": (["make-nssdb", "mux-nss", "-P", "mux-", "--key", "server-key.pem",
                 "--password-file", "sslpassword.conf", "--cert", "server.pem",
                 "--ca-cert", "ca.pem"], None),
    }
    for name, (args, stdin) in steps.items():       # the walk is run as an operator runs it
        out.stdout[name] = ok(keys_process(*args, cwd=d, stdin=stdin))
    out.ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    out.leaf = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    out.password = password_of(d / "sslpassword.conf")
    out.ca_password = password_of(d / "ca-password.conf")
    return out


# ---------------------------------------------------------------------------
# Password files


def test_password_file_is_mode_600_in_iim_format(walk):
    for name in ("sslpassword.conf", "ca-password.conf"):
        path = walk.dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().startswith("Internal (Software) Token:")
        assert read_password_file(path).warnings == ()
    assert walk.password == STDIN_PASSWORD


def test_generated_password_is_long_random_and_never_printed(walk, tmp_path):
    assert len(walk.ca_password) == 32
    assert walk.ca_password not in walk.stdout["ca-password"]
    ok(keys("password-file", "again.conf", "--generate", cwd=tmp_path))
    assert password_of(tmp_path / "again.conf") != walk.ca_password


def test_password_file_refuses_to_overwrite_unless_forced(tmp_path):
    ok(keys("password-file", "pw.conf", cwd=tmp_path, stdin="first-password\n"))
    refused = keys("password-file", "pw.conf", cwd=tmp_path, stdin="second-password\n")
    one_line_error(refused, "pw.conf", "already exists", "--force",
                   secrets=["first-password", "second-password"])
    assert password_of(tmp_path / "pw.conf") == "first-password"
    ok(keys("password-file", "pw.conf", "--force", cwd=tmp_path, stdin="second-password\n"))
    assert password_of(tmp_path / "pw.conf") == "second-password"
    assert stat.S_IMODE((tmp_path / "pw.conf").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["pw.conf"]      # no temporary left


def test_password_file_refuses_a_short_or_missing_password(tmp_path):
    one_line_error(keys("password-file", "pw.conf", cwd=tmp_path, stdin="abc\n"),
                   "shorter than 6", secrets=["abc\n"])
    one_line_error(keys("password-file", "pw.conf", cwd=tmp_path, stdin=""), "no password")
    assert not (tmp_path / "pw.conf").exists()


def run_on_terminal(args, cwd, answers) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its controlling terminal,
    typing ``answers`` at each password prompt; return (status, screen)."""
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "iim.admin", "keys", *args], cwd=cwd,
                            stdin=slave, stdout=slave, stderr=slave, env=env,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    screen, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 1024)
            except OSError:            # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
            while pending and screen.count(b"assword") > len(answers) - len(pending):
                os.write(master, pending.pop(0).encode() + b"\n")
        elif proc.poll() is not None:
            break
    status = proc.wait(timeout=30)
    os.close(master)
    return status, screen.decode("utf-8", "replace")


def test_password_is_asked_twice_at_a_terminal_without_echo(tmp_path):
    status, screen = run_on_terminal(["password-file", "pw.conf"], tmp_path,
                                     ["typed-secret-1", "typed-secret-1"])
    assert status == 0, screen
    assert "Password:" in screen and "Same password again:" in screen
    assert "typed-secret-1" not in screen                     # not echoed, not printed
    assert password_of(tmp_path / "pw.conf") == "typed-secret-1"


def test_two_different_passwords_at_a_terminal_write_nothing(tmp_path):
    status, screen = run_on_terminal(["password-file", "pw.conf"], tmp_path,
                                     ["typed-secret-1", "typed-secret-2"])
    assert status == 1
    assert "the two passwords differ" in screen
    assert "typed-secret" not in screen
    assert not (tmp_path / "pw.conf").exists()


# ---------------------------------------------------------------------------
# The CA, the request, the signature


def extension(cert, kind):
    return cert.extensions.get_extension_for_class(kind)


def test_ca_is_a_self_signed_root_that_may_sign_certificates(walk):
    ca = walk.ca
    assert ca.subject.rfc4514_string() == "CN=Example IM CA,O=Example"
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = extension(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign


def test_ca_key_is_encrypted_and_private(walk):
    path = walk.dir / "ca-key.pem"
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(TypeError):                    # no password: cannot be read
        load_pem_private_key(data, None)
    key = load_pem_private_key(data, walk.ca_password.encode())
    assert key.public_key() == walk.ca.public_key()


def test_request_asks_for_the_domain_and_the_extra_names(walk):
    csr = x509.load_pem_x509_csr((walk.dir / "server.csr").read_bytes())
    assert csr.is_signature_valid
    san = extension(csr, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [DOMAIN, "im.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = load_pem_private_key((walk.dir / "server-key.pem").read_bytes(),
                               walk.password.encode())
    assert key.public_key() == csr.public_key()


def test_signed_certificate_follows_the_tls_policy(walk):
    leaf = walk.leaf
    leaf.verify_directly_issued_by(walk.ca)
    assert extension(leaf, x509.BasicConstraints).value.ca is False
    eku = extension(leaf, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = extension(leaf, x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {DOMAIN, "im.example.com"}
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == pki.DAY * 90
    assert f"serial {leaf.serial_number:x}" in walk.stdout["sign-req"]


def test_serials_are_random(walk, tmp_path):
    serials = set()
    for number in range(3):
        ok(keys("sign-req", walk.dir / "server.csr", "--ca-cert", walk.dir / "ca.pem",
                "--ca-key", walk.dir / "ca-key.pem", "--ca-password-file",
                walk.dir / "ca-password.conf", "--out", f"s{number}.pem", cwd=tmp_path))
        cert = x509.load_pem_x509_certificate((tmp_path / f"s{number}.pem").read_bytes())
        serials.add(cert.serial_number)
    assert len(serials) == 3 and all(s.bit_length() > 64 for s in serials)


def test_validity_never_outlasts_the_ca(tmp_path):
    ok(keys("password-file", "pw.conf", "--generate", cwd=tmp_path))
    ok(keys("build-ca", "--key", "ca-key.pem", "--cert", "ca.pem", "--password-file", "pw.conf",
            "--days", "10", "--keyalg", "EC", cwd=tmp_path))
    ok(keys("gen-req", DOMAIN, "--key", "k.pem", "--out", "r.csr", "--password-file",
            "pw.conf", "--keyalg", "EC", cwd=tmp_path))
    out = ok(keys("sign-req", "r.csr", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem",
                  "--ca-password-file", "pw.conf", "--out", "s.pem", cwd=tmp_path))
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((tmp_path / "s.pem").read_bytes())
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc
    assert "shortened to end with the CA's" in out


def test_a_keytool_request_is_signed_and_its_reply_imported_by_keytool(walk, tmp_path):
    """Interoperability: keytool -certreq (no subjectAltName) -> sign-req -> keytool -importcert."""
    store, storepass = tmp_path / "java.jks", "java-store-pw"
    common = ["-keystore", str(store), "-storetype", "JKS", "-storepass", storepass]
    keytool("-importcert", *common, "-alias", "root", "-file", str(walk.dir / "ca.pem"),
            "-noprompt")
    keytool("-genkeypair", *common, "-alias", "im", "-keyalg", "RSA", "-keysize", "2048",
            "-dname", f"CN={DOMAIN}")
    keytool("-certreq", *common, "-alias", "im", "-file", str(tmp_path / "java.csr"))
    out = ok(keys("sign-req", "java.csr", "--ca-cert", walk.dir / "ca.pem",
                  "--ca-key", walk.dir / "ca-key.pem", "--ca-password-file",
                  walk.dir / "ca-password.conf", "--out", "java.pem", cwd=tmp_path))
    assert f"names {DOMAIN}" in out                      # taken from the common name
    keytool("-importcert", *common, "-alias", "im", "-file", str(tmp_path / "java.pem"))
    listing = keytool("-list", "-v", *common, "-alias", "im")
    assert "Certificate chain length: 2" in listing


# ---------------------------------------------------------------------------
# Keystores: keytool's view, iim's view, TLS


def keytool_entries(store: Path, password: str, tmp_path: Path) -> dict:
    """``{alias: (entry type, chain length)}`` from ``keytool -list -v``."""
    pwfile = plain_password_file(tmp_path / f"{store.name}.storepass", password)
    listing = keytool("-list", "-v", "-keystore", str(store), "-storepass:file", str(pwfile))
    entries = {}
    for block in listing.split("Alias name: ")[1:]:
        alias = block.splitlines()[0].strip()
        kind = re.search(r"Entry type: (\w+)", block).group(1)
        length = re.search(r"Certificate chain length: (\d+)", block)
        entries[alias] = (kind, int(length.group(1)) if length else None)
    return entries


@pytest.mark.parametrize("name, kind, alias", [("server-keystore.p12", "PKCS12", "server"),
                                               ("server-keystore.jks", "JKS", "im")])
def test_keytool_lists_the_key_entry_and_the_trusted_ca(walk, tmp_path, name, kind, alias):
    store = walk.dir / name
    assert keytool_entries(store, walk.password, tmp_path) == {
        alias: ("PrivateKeyEntry", 2), "ca": ("trustedCertEntry", None)}
    assert f"{kind} keystore {name}" in walk.stdout["pkcs12" if kind == "PKCS12" else "jks"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["server-keystore.p12", "server-keystore.jks"])
def test_java_can_use_the_key(walk, tmp_path, name):
    """keytool signs a request with the entry's key: Java decrypts what we wrote."""
    store, csr = walk.dir / name, tmp_path / "java.csr"
    alias = "server" if name.endswith(".p12") else "im"
    keytool("-certreq", "-keystore", str(store), "-storepass", walk.password,
            "-alias", alias, "-file", str(csr))
    request = x509.load_pem_x509_csr(csr.read_bytes().replace(b"NEW CERTIFICATE REQUEST",
                                                              b"CERTIFICATE REQUEST"))
    assert request.is_signature_valid
    assert request.public_key() == walk.leaf.public_key()


@pytest.mark.parametrize("name", ["server-keystore.p12", "server-keystore.jks"])
def test_iim_reads_the_keystore_and_serves_tls_with_it(walk, name):
    material = load_keystore(walk.dir / name, walk.password)
    assert material.chain == (walk.leaf, walk.ca)
    assert material.trust_anchors == (walk.ca,)
    assert material.key.public_key() == walk.leaf.public_key()
    seen, version = handshake(server_context(material), (walk.dir / "ca.pem").read_bytes(),
                              DOMAIN)
    assert seen == walk.leaf
    assert version in ("TLSv1.2", "TLSv1.3")


def test_jks_key_entry_may_have_its_own_password(walk, tmp_path):
    ok(keys("password-file", "entry.conf", cwd=tmp_path, stdin="entry-password\n"))
    ok(keys("make-keystore", "--storetype", "JKS", "--key", walk.dir / "server-key.pem",
            "--password-file", walk.dir / "sslpassword.conf", "--cert", walk.dir / "server.pem",
            "--ca-cert", walk.dir / "ca.pem", "--out", "s.jks",
            "--entry-password-file", "entry.conf", cwd=tmp_path))
    material = load_keystore(tmp_path / "s.jks", walk.password, key_password="entry-password")
    assert material.key.public_key() == walk.leaf.public_key()
    keytool("-certreq", "-keystore", str(tmp_path / "s.jks"), "-storepass", walk.password,
            "-keypass", "entry-password", "-alias", "server", "-file", str(tmp_path / "r.csr"))


def test_a_chain_reply_from_an_intermediate_ca(walk, tmp_path, ca, sub_ca):
    """A reply that carries the intermediate: the keystore holds the full chain,
    the NSS database the intermediate without trust and the root as "C,,"."""
    csr = x509.load_pem_x509_csr((walk.dir / "server.csr").read_bytes())
    leaf = sub_ca.sign_csr(csr, DOMAIN)
    (tmp_path / "reply.pem").write_bytes(b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (sub_ca.cert, leaf)))
    (tmp_path / "root.pem").write_bytes(ca.cert_pem())
    inputs = ["--key", walk.dir / "server-key.pem", "--password-file",
              walk.dir / "sslpassword.conf", "--cert", "reply.pem", "--ca-cert", "root.pem"]
    ok(keys("make-keystore", *inputs, "--out", "s.p12", cwd=tmp_path))
    assert keytool_entries(tmp_path / "s.p12", walk.password, tmp_path) == {
        "server": ("PrivateKeyEntry", 3), "ca": ("trustedCertEntry", None)}
    assert load_keystore(tmp_path / "s.p12", walk.password).chain == (leaf, sub_ca.cert,
                                                                      ca.cert)
    ok(keys("make-nssdb", "db", *inputs, cwd=tmp_path))
    listing = certutil_trust(tmp_path / "db", "")
    assert listing == {"Multiplexor-Cert": "u,u,u", "iim test intermediate CA": ",,",
                       "iim test CA": "C,,"}
    material = load_nss(tmp_path / "db", password=walk.password)
    assert material.chain == (leaf, sub_ca.cert)
    assert material.trust_anchors == (ca.cert,)


# ---------------------------------------------------------------------------
# The NSS database: certutil's view, iim's view, TLS


def certutil_trust(directory: Path, prefix: str, dbtype: str = "sql") -> dict:
    """``{nickname: trust}`` from ``certutil -L``."""
    listing = subprocess.run(["certutil", "-L", "-d", f"{dbtype}:{directory}", "-P", prefix],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    rows = {}
    for line in listing.splitlines()[3:]:
        match = re.match(r"(.+?)\s+([CTcPpu]*,[CTcPpu]*,[CTcPpu]*)\s*$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_certutil_lists_the_certificate_with_its_key_and_the_trusted_ca(walk):
    assert certutil_trust(walk.dir / "mux-nss", "mux-") == {"Multiplexor-Cert": "u,u,u",
                                                            "Example IM CA": "C,,"}
    names = sorted(p.name for p in (walk.dir / "mux-nss").iterdir())
    assert names == ["mux-cert9.db", "mux-key4.db", "pkcs11.txt"]
    assert stat.S_IMODE((walk.dir / "mux-nss").stat().st_mode) == 0o700


def test_certutil_validates_the_server_certificate(walk):
    proc = subprocess.run(["certutil", "-V", "-u", "V", "-n", "Multiplexor-Cert",
                           "-d", f"sql:{walk.dir / 'mux-nss'}", "-P", "mux-"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "certificate is valid" in proc.stdout


def test_certutil_opens_the_key_with_the_database_password(walk, tmp_path):
    pwfile = plain_password_file(tmp_path / "db.pw", walk.password)
    listing = subprocess.run(["certutil", "-K", "-d", f"sql:{walk.dir / 'mux-nss'}",
                              "-P", "mux-", "-f", str(pwfile)],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "Multiplexor-Cert" in listing.stdout
    wrong = plain_password_file(tmp_path / "wrong.pw", "not-the-password")
    refused = subprocess.run(["certutil", "-K", "-d", f"sql:{walk.dir / 'mux-nss'}",
                              "-P", "mux-", "-f", str(wrong)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0


def test_iim_reads_the_nss_database_and_serves_tls_with_it(walk):
    material = load_nss(walk.dir / "mux-nss", certdbprefix="mux-", keydbprefix="mux-",
                        nickname="Multiplexor-Cert", password=walk.password)
    assert material.chain == (walk.leaf,)
    assert material.trust_anchors == (walk.ca,)
    seen, version = handshake(server_context(material), (walk.dir / "ca.pem").read_bytes(),
                              DOMAIN)
    assert seen == walk.leaf
    assert version in ("TLSv1.2", "TLSv1.3")


def test_legacy_dbm_database_with_its_own_prefixes_and_nickname(walk, tmp_path):
    out = ok(keys("make-nssdb", "db", "--dbtype", "dbm", "--certdbprefix", "c-",
                  "--keydbprefix", "k-", "--nickname", "Mux Cert", "--ca-nickname", "Our CA",
                  "--key", walk.dir / "server-key.pem", "--password-file",
                  walk.dir / "sslpassword.conf", "--cert", walk.dir / "server.pem",
                  "--ca-cert", walk.dir / "ca.pem", cwd=tmp_path))
    assert '"Mux Cert" (u,u,u)' in out
    assert {"c-cert8.db", "k-key3.db", "secmod.db"} <= {p.name for p in
                                                       (tmp_path / "db").iterdir()}
    material = load_nss(tmp_path / "db", certdbprefix="c-", keydbprefix="k-",
                        nickname="Mux Cert", password=walk.password)
    assert material.chain == (walk.leaf,) and material.trust_anchors == (walk.ca,)


def test_ec_keys_go_into_an_nss_database_too(tmp_path):
    ok(keys("password-file", "pw.conf", "--generate", cwd=tmp_path))
    ok(keys("build-ca", "--key", "ca-key.pem", "--cert", "ca.pem", "--password-file", "pw.conf",
            "--keyalg", "EC", "--keysize", "384", cwd=tmp_path))
    ok(keys("gen-req", DOMAIN, "--key", "k.pem", "--out", "r.csr", "--password-file", "pw.conf",
            "--keyalg", "EC", cwd=tmp_path))
    ok(keys("sign-req", "r.csr", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem",
            "--ca-password-file", "pw.conf", "--out", "s.pem", cwd=tmp_path))
    ok(keys("make-nssdb", "db", "--key", "k.pem", "--password-file", "pw.conf",
            "--cert", "s.pem", "--ca-cert", "ca.pem", cwd=tmp_path))
    assert certutil_trust(tmp_path / "db", "")["Multiplexor-Cert"] == "u,u,u"
    material = load_nss(tmp_path / "db", password=password_of(tmp_path / "pw.conf"))
    seen, _ = handshake(server_context(material), (tmp_path / "ca.pem").read_bytes(), DOMAIN)
    assert seen == x509.load_pem_x509_certificate((tmp_path / "s.pem").read_bytes())


# ---------------------------------------------------------------------------
# No clear key anywhere; the configuration is usable


def test_no_file_written_holds_a_clear_key(walk):
    key = load_pem_private_key((walk.dir / "server-key.pem").read_bytes(),
                               walk.password.encode())
    clear = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    secret_exponent = key.private_numbers().d.to_bytes(384, "big").lstrip(b"\0")
    files = [p for p in walk.dir.rglob("*") if p.is_file()]
    assert len(files) >= 12
    for path in files:
        data = path.read_bytes()
        assert not any(marker in data for marker in CLEAR_KEY_MARKERS), path
        assert clear not in data and secret_exponent not in data, path


def check(conf: Path) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "iim.admin", "check", "-c", str(conf)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize("store", ["server-keystore.p12", "server-keystore.jks"])
def test_check_calls_the_produced_configuration_usable(walk, store):
    secret = walk.dir / "muxlink-secret.conf"
    if not secret.exists():
        printed = ok(keys("link-secret", secret.name, cwd=walk.dir))
        assert 'iim_server.muxlink_secretfile = "muxlink-secret.conf"' in printed
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
    conf = walk.dir / f"iim-{store}.conf"
    conf.write_text(f'iim_server.domainname = "{DOMAIN}"\n'
                    f'iim_server.sslkeystore = "{store}"\n'
                    'iim_server.keystorepasswordfile = "sslpassword.conf"\n'
                    'iim_server.muxlink_secretfile = "muxlink-secret.conf"\n'
                    'iim_mux.muxlink_secretfile = "muxlink-secret.conf"\n'
                    'iim_mux.usessl = "on"\n'
                    'iim_mux.secconfigdir = "mux-nss"\n'
                    'iim_mux.certdbprefix = "mux-"\n'
                    'iim_mux.keydbprefix = "mux-"\n'
                    'iim_mux.keystorepasswordfile = "sslpassword.conf"\n')
    lines = check(conf)
    assert lines[-1] == f"{conf}: usable"
    assert not [line for line in lines if line.startswith(("ERROR", "WARNING"))], lines
    assert any(line.startswith("OK: iim_server.sslkeystore:") and "chain complete" in line
               for line in lines)
    assert any(line.startswith("OK: iim_mux.certnickname: NSS database")
               and line.endswith("key matches certificate CN=chat.example.com")
               for line in lines)
    assert any(line.startswith("OK: iim_mux.certnickname: NSS database")
               and line.endswith(": serves an RSA 3072-bit key") for line in lines)


# ---------------------------------------------------------------------------
# Bad input: one line, exit 1, no traceback, no password


def store_args(walk, **overrides):
    values = {"--key": walk.dir / "server-key.pem",
              "--password-file": walk.dir / "sslpassword.conf",
              "--cert": walk.dir / "server.pem", "--ca-cert": walk.dir / "ca.pem"}
    values.update(overrides)
    return [str(x) for pair in values.items() for x in pair]


def sign_args(walk, csr=None, **overrides):
    values = {"--ca-cert": walk.dir / "ca.pem", "--ca-key": walk.dir / "ca-key.pem",
              "--ca-password-file": walk.dir / "ca-password.conf", "--out": "out.pem"}
    values.update(overrides)
    return [str(csr or walk.dir / "server.csr")] + [str(x) for pair in values.items()
                                                    for x in pair]


@pytest.fixture
def wrong_password(tmp_path):
    path = tmp_path / "wrong.conf"
    path.write_text("Internal (Software) Token:not-the-right-one\n")
    path.chmod(0o600)
    return path


def test_wrong_password_for_the_ca_key(walk, tmp_path, wrong_password):
    proc = keys("sign-req", *sign_args(walk, **{"--ca-password-file": wrong_password}),
                cwd=tmp_path)
    one_line_error(proc, "ca-key.pem", "wrong password", str(wrong_password),
                   secrets=["not-the-right-one", walk.ca_password])
    assert not (tmp_path / "out.pem").exists()


def test_wrong_password_for_the_server_key(walk, tmp_path, wrong_password):
    proc = keys("make-keystore", *store_args(walk, **{"--password-file": wrong_password}),
                "--out", "s.p12", cwd=tmp_path)
    one_line_error(proc, "server-key.pem", "wrong password", secrets=["not-the-right-one"])
    assert not (tmp_path / "s.p12").exists()


def test_missing_files_are_named(walk, tmp_path):
    one_line_error(keys("sign-req", *sign_args(walk, csr=tmp_path / "nope.csr"), cwd=tmp_path),
                   "nope.csr", "no such file")
    one_line_error(keys("make-nssdb", "db", *store_args(walk, **{"--cert": "absent.pem"}),
                        cwd=tmp_path), "--cert", "absent.pem", "no such file")
    one_line_error(keys("build-ca", "--key", "k.pem", "--cert", "c.pem", "--password-file",
                        "missing.conf", cwd=tmp_path),
                   "--password-file", "missing.conf", "no such file")
    assert not (tmp_path / "db").exists() and not (tmp_path / "k.pem").exists()


def test_a_reply_not_signed_by_this_ca_is_refused(walk, tmp_path):
    other = pki.CA.root("Some Other CA")
    csr = x509.load_pem_x509_csr((walk.dir / "server.csr").read_bytes())
    (tmp_path / "foreign.pem").write_bytes(other.sign_csr(csr, DOMAIN).public_bytes(
        serialization.Encoding.PEM))
    for command in (["make-keystore", "--out", "s.p12"], ["make-nssdb", "db"]):
        proc = keys(*command, *store_args(walk, **{"--cert": "foreign.pem"}), cwd=tmp_path)
        one_line_error(proc, "foreign.pem", "was not signed by the CA", "ca.pem",
                       "Some Other CA")
    assert not (tmp_path / "s.p12").exists() and not (tmp_path / "db").exists()


def test_an_altered_request_is_refused(walk, tmp_path):
    der = bytearray(x509.load_pem_x509_csr((walk.dir / "server.csr").read_bytes())
                    .public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01                                   # one bit of the signature
    (tmp_path / "altered.csr").write_bytes(bytes(der))
    proc = keys("sign-req", *sign_args(walk, csr=tmp_path / "altered.csr"), cwd=tmp_path)
    one_line_error(proc, "altered.csr", "signature does not verify")


def test_a_key_that_does_not_match_the_certificate(walk, tmp_path):
    ok(keys("gen-req", DOMAIN, "--key", "other-key.pem", "--out", "other.csr",
            "--password-file", walk.dir / "sslpassword.conf", "--keyalg", "EC", cwd=tmp_path))
    proc = keys("make-keystore", *store_args(walk, **{"--key": "other-key.pem"}),
                "--out", "s.p12", cwd=tmp_path)
    one_line_error(proc, "server.pem", "other-key.pem", "the public keys differ",
                   secrets=[walk.password])


def test_a_ca_key_that_does_not_match_the_ca_certificate(walk, tmp_path):
    ok(keys("build-ca", "--key", "ca2-key.pem", "--cert", "ca2.pem", "--password-file",
            walk.dir / "ca-password.conf", "--keyalg", "EC", cwd=tmp_path))
    proc = keys("sign-req", *sign_args(walk, **{"--ca-key": tmp_path / "ca2-key.pem"}),
                cwd=tmp_path)
    one_line_error(proc, "ca2-key.pem", "does not belong to", "ca.pem")


def test_existing_outputs_are_never_replaced_without_force(walk, tmp_path):
    (tmp_path / "ca.pem").write_text("precious\n")
    proc = keys("build-ca", "--key", "ca-key.pem", "--cert", "ca.pem", "--password-file",
                walk.dir / "ca-password.conf", cwd=tmp_path)
    one_line_error(proc, "ca.pem", "already exists", "--force")
    assert (tmp_path / "ca.pem").read_text() == "precious\n"
    assert not (tmp_path / "ca-key.pem").exists()          # nothing half-done either
    (tmp_path / "s.p12").write_text("precious\n")
    proc = keys("make-keystore", *store_args(walk), "--out", "s.p12", cwd=tmp_path)
    one_line_error(proc, "s.p12", "already exists")
    ok(keys("make-keystore", *store_args(walk), "--out", "s.p12", "--force", cwd=tmp_path))
    assert load_keystore(tmp_path / "s.p12", walk.password).certificate == walk.leaf


def test_an_existing_nss_database_is_never_touched(walk, tmp_path):
    ok(keys("make-nssdb", "db", *store_args(walk), cwd=tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "db").iterdir()}
    proc = keys("make-nssdb", "db", *store_args(walk), "--nickname", "Another", cwd=tmp_path)
    one_line_error(proc, "an NSS database is already there", "cert9.db")
    assert {p.name: p.read_bytes() for p in (tmp_path / "db").iterdir()} == before


def test_a_clear_key_file_is_refused_as_input(walk, tmp_path):
    key = load_pem_private_key((walk.dir / "server-key.pem").read_bytes(),
                               walk.password.encode())
    (tmp_path / "clear.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    proc = keys("make-keystore", *store_args(walk, **{"--key": "clear.pem"}), "--out", "s.p12",
                cwd=tmp_path)
    one_line_error(proc, "clear.pem", "not encrypted")


def test_pkcs12_has_one_password(walk, tmp_path):
    proc = keys("make-keystore", *store_args(walk), "--out", "s.p12", "--entry-password-file",
                walk.dir / "ca-password.conf", cwd=tmp_path)
    one_line_error(proc, "--entry-password-file", "PKCS#12", "JKS")


def test_bad_names_and_subjects(walk, tmp_path):
    common = ["--key", "k.pem", "--out", "r.csr", "--password-file",
              walk.dir / "sslpassword.conf"]
    one_line_error(keys("gen-req", "not a domain!", *common, cwd=tmp_path),
                   '"not a domain!"', "neither a domain name nor an IP address")
    one_line_error(keys("gen-req", DOMAIN, *common, "--subject", "no equals sign",
                        cwd=tmp_path), "--subject", "not a distinguished name")
    one_line_error(keys("make-keystore", *store_args(walk), "--out", "s.p12", "--ca-alias",
                        "SERVER", cwd=tmp_path), "SERVER", "already in the store")
    assert not (tmp_path / "k.pem").exists()


def test_a_group_readable_password_file_is_warned_about(walk, tmp_path):
    loose = tmp_path / "loose.conf"
    loose.write_text(f"Internal (Software) Token:{walk.password}\n")
    loose.chmod(0o644)
    proc = keys("make-keystore", *store_args(walk, **{"--password-file": loose}),
                "--out", "s.p12", cwd=tmp_path)
    assert proc.returncode == 0
    assert "readable by group or others" in proc.stderr and walk.password not in proc.stderr


# ---------------------------------------------------------------------------
# Help: every action explains itself


def keys_actions():
    from iim.admin.__main__ import parser
    top = parser()
    commands = next(a for a in top._actions if a.dest == "command")
    keys_parser = commands.choices["keys"]
    actions = next(a for a in keys_parser._actions if a.dest == "action")
    return actions.choices


def test_every_action_has_a_description_every_option_help_and_an_example():
    actions = keys_actions()
    assert set(actions) == {"password-file", "link-secret", "build-ca", "gen-req", "sign-req",
                            "make-keystore", "make-nssdb"}
    for name, action in actions.items():
        assert len(action.description) > 200, name
        assert action.epilog.startswith("example:\n") and "iim.admin keys " + name in \
            action.epilog, name
        for option in action._actions:
            assert option.help, (name, option.dest)
        text = action.format_help()
        assert all(o in text for a in action._actions for o in a.option_strings), name


def test_a_failed_nss_import_leaves_nothing_behind(tmp_path, ca):
    """Below the command line (which checks key and certificate first): when
    NSS refuses a step, the files and the folder it made are removed."""
    from iim.keys import nsswrite
    from iim.keys.errors import KeyMaterialError
    issued, stranger = ca.issue(DOMAIN), pki.new_key()
    target = nsswrite.Target(tmp_path / "db")
    with pytest.raises(KeyMaterialError, match="no private key for the certificate"):
        nsswrite.create(target, key=stranger, chain=[issued.cert], anchors=[(ca.cert, "CA")],
                        password="db-password")
    assert not target.directory.exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine\n")
    with pytest.raises(KeyMaterialError):
        nsswrite.create(nsswrite.Target(tmp_path / "kept"), key=stranger,
                        chain=[issued.cert], anchors=[(ca.cert, "CA")], password="db-password")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]
