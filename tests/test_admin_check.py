"""``python -m iim.admin check``: one line per finding, exit 0 only when usable.

The command runs in the test's process (devsystem.admin_here), its output
captured as a process's would be; the development configuration is checked
by a real ``python -m iim.admin check`` process too.
"""

import os
import subprocess
import sys

import pytest

import pki
from devsystem import admin_here
from iim.admin.devsetup import dev_setup
from keytool import make_store

SECRET = "Check-Pw-4711"


def run_check(conf, process: bool = False):
    if process:
        proc = subprocess.run([sys.executable, "-m", "iim.admin", "check", "-c", str(conf)],
                              capture_output=True, text=True, timeout=60)
    else:
        proc = admin_here("check", "-c", str(conf))
    assert proc.stderr == ""
    assert SECRET not in proc.stdout
    return proc.returncode, proc.stdout.splitlines()


@pytest.fixture(scope="module")
def devconf(tmp_path_factory):
    return dev_setup(tmp_path_factory.mktemp("dev") / "dev")


def test_dev_configuration_is_usable(devconf):
    code, lines = run_check(devconf, process=True)
    assert code == 0
    assert lines[-1] == f"{devconf}: usable"
    store = devconf.parent / "server-keystore.p12"
    assert (f"OK: iim_server.sslkeystore: PKCS12 {store}: certificate names "
            "iim_server.domainname localhost") in lines
    nss = [line for line in lines if line.startswith("OK: iim_mux.certnickname: NSS database")]
    assert any(line.endswith("key matches certificate CN=iim dev multiplexor,"
                             "O=iim development") for line in nss)
    assert any(line.endswith(": serves an ECDSA P-256 key") for line in nss)
    assert not [line for line in lines if line.startswith(("ERROR", "WARNING"))]


def jks_conf(tmp_path, ca, names=("chat.example.com",), mode=0o600, extra="", **signing):
    store = tmp_path / "server.jks"
    make_store(store, ca, list(names), storepass=SECRET, **signing)
    os.chmod(store, 0o600)                  # a keystore holds the key: owner only
    pw = tmp_path / "sslpassword.conf"
    pw.write_text(f"Internal (Software) Token:{SECRET}\n")
    os.chmod(pw, mode)
    link_secret = tmp_path / "muxlink-secret.conf"         # links authenticated: no finding
    link_secret.write_text("Internal (Software) Token:link-secret-for-check-1\n")
    os.chmod(link_secret, 0o600)
    conf = tmp_path / "iim.conf"
    conf.write_text('iim_server.domainname = "chat.example.com"\n'
                    'iim_server.sslkeystore = "server.jks"\n'
                    'iim_server.muxlink_secretfile = "muxlink-secret.conf"\n' + extra)
    os.chmod(conf, 0o600)                   # some tests add passwords to it
    return conf, store


def test_jks_from_keytool_is_usable(tmp_path, ca):
    conf, store = jks_conf(tmp_path, ca)
    code, lines = run_check(conf)
    assert code == 0, lines
    assert f"OK: iim_server.sslkeystore: JKS {store}: chain complete (2 certificates)" in lines


def test_certificate_expiring_soon_is_warned(tmp_path, ca):
    conf, store = jks_conf(tmp_path, ca, not_after=pki.NOW + 10 * pki.DAY)
    code, lines = run_check(conf)
    assert code == 0
    expiry = (pki.NOW + 10 * pki.DAY).strftime("%Y-%m-%d")
    assert any(line.startswith(f"WARNING: iim_server.sslkeystore: JKS {store}: "
                               "CN=chat.example.com,O=iim tests expires in ")
               and line.endswith(f" days ({expiry})") for line in lines), lines


def test_certificate_for_another_name_is_an_error(tmp_path, ca):
    conf, store = jks_conf(tmp_path, ca, names=("other.example.net",))
    code, lines = run_check(conf)
    assert code == 1
    assert (f"ERROR: iim_server.sslkeystore: JKS {store}: certificate does not name "
            "iim_server.domainname chat.example.com (it names other.example.net)") in lines
    assert lines[-1] == f"{conf}: NOT usable"


def test_wrong_password_is_an_error_without_the_password(tmp_path, ca):
    conf, store = jks_conf(tmp_path, ca)
    (tmp_path / "sslpassword.conf").write_text("Internal (Software) Token:not-the-one\n")
    code, lines = run_check(conf)
    assert code == 1
    assert (f"ERROR: iim_server.sslkeystore: {store}: wrong keystore password "
            "(iim_server.keystorepasswordfile)") in lines
    assert not any("not-the-one" in line for line in lines)


def test_world_readable_password_file_is_warned(tmp_path, ca):
    conf, _ = jks_conf(tmp_path, ca, mode=0o644)
    code, lines = run_check(conf)
    pw = tmp_path / "sslpassword.conf"
    assert code == 0
    assert (f"WARNING: iim_server.keystorepasswordfile: {pw}: readable by group or others "
            f"(mode 0644); run chmod 600 {pw}") in lines


def test_config_error_names_file_and_line(tmp_path):
    conf = tmp_path / "iim.conf"
    conf.write_text('! mux\niim_mux.maxsessions = "lots"\n')
    code, lines = run_check(conf)
    assert code == 1
    assert lines[0] == (f'ERROR: {conf}:2: iim_mux.maxsessions: expected a positive integer, '
                        'got "lots"')


def test_wrong_nss_nickname_with_legacy_ssl_is_an_error(tmp_path, devconf):
    conf = tmp_path / "iim.conf"
    conf.write_text(devconf.read_text().replace('usessl = "off"', 'usessl = "on"')
                    .replace('"Multiplexor-Cert"', '"multiplexor-cert"'))
    for name in ("sslpassword.conf", "server-keystore.p12", "nssdb"):
        (tmp_path / name).symlink_to(devconf.parent / name)
    code, lines = run_check(conf)
    assert code == 1
    errors = [line for line in lines if line.startswith("ERROR: iim_mux.certnickname")]
    assert len(errors) == 1 and '"multiplexor-cert"' in errors[0], lines


def test_trust_all_cert_is_warned(tmp_path, ca):
    conf, _ = jks_conf(tmp_path, ca, extra='iim_server.trust_all_cert = "on"\n')
    code, lines = run_check(conf)
    assert code == 0
    assert ("WARNING: iim_server.trust_all_cert is true: every peer certificate is accepted "
            "and logged; use this for testing only") in lines


COSERVER = ('iim_server.coservers = "coserver1"\n'
            'iim_server.coserver1.host = "im.example.org"\n'
            'iim_server.coserver1.domain = "example.org"\n')


@pytest.mark.parametrize("extra, warning", [
    ('iim_server.coserver1.serverid = "org-im"\niim_server.coserver1.password = "Pair-Pw-12"\n',
     "WARNING: iim_server.coserver1: example.org must prove its serverid/password, but "
     "iim_server.serverid/password are not set: it will refuse this server's streams"),
    ('iim_server.coserver1.serverid = "org-im"\n',
     "WARNING: iim_server.coserver1.serverid and iim_server.coserver1.password go together: "
     "with one alone example.org is not asked for a coserver proof"),
    ('iim_server.serverid = "com-im"\n',
     "WARNING: iim_server.serverid and iim_server.password go together: with one alone this "
     "server proves nothing to its coservers"),
])
def test_coserver_pairs_that_cannot_work_are_warned(tmp_path, ca, extra, warning):
    conf, _ = jks_conf(tmp_path, ca, extra=COSERVER + extra)
    code, lines = run_check(conf)
    assert code == 0
    assert warning in lines
    assert "Pair-Pw-12" not in "\n".join(lines)


def test_mirrored_coserver_pairs_are_not_warned(tmp_path, ca):
    pairs = ('iim_server.serverid = "com-im"\niim_server.password = "Own-Pw-1234"\n'
             'iim_server.coserver1.serverid = "org-im"\n'
             'iim_server.coserver1.password = "Pair-Pw-12"\n')
    conf, _ = jks_conf(tmp_path, ca, extra=COSERVER + pairs)
    code, lines = run_check(conf)
    assert code == 0
    assert not [line for line in lines if line.startswith(("WARNING", "ERROR"))]


@pytest.mark.parametrize("host, level", [("127.0.0.1", "OK"), ("[::1]", "OK"),
                                         ("localhost", "OK"), ("0.0.0.0", "WARNING"),
                                         ("192.0.2.7", "WARNING")])
def test_plain_http_under_requiressl_is_a_warning_unless_the_gateway_is_on_loopback(
        tmp_path, ca, host, level):
    conf, _ = jks_conf(tmp_path, ca, extra=f'iim_server.httpport = "{host}:5280"\n'
                                           'iim_server.requiressl = "true"\n'
                                           'iim_server.http_allow_plain = "true"\n')
    code, lines = run_check(conf)
    assert code == 0
    found = [line for line in lines if "http_allow_plain is true" in line]
    assert len(found) == 1 and found[0].startswith(f"{level}: "), lines
    assert ("loopback only" in found[0]) == (level == "OK")
