"""Typed settings (conf/iim.conf, the documented sample of every parameter): defaults, types,
validation messages, path resolution and file checks."""

import ipaddress
import socket
from pathlib import Path

import pytest

from iim.conf import (
    ComponentLog, ConfigError, CoserverSettings, HostPort, MuxSettings, ServerSettings,
    Severity, from_text, load,
)
from iim.conf.values import host_domain

BASE = Path("/etc/iim")


def config(text, **kwargs):
    kwargs.setdefault("base_dir", BASE)
    return from_text(text, **kwargs)


def errors(text, **kwargs):
    with pytest.raises(ConfigError) as caught:
        config(text, **kwargs)
    return str(caught.value).split("\n")


def warnings(text, **kwargs):
    return [str(w) for w in config(text, **kwargs).warnings]


@pytest.fixture(autouse=True)
def fqdn(monkeypatch):
    """This host is im.example.com unless a test says otherwise."""
    monkeypatch.setattr(socket, "getfqdn", lambda: "im.example.com")
    host_domain.cache_clear()
    yield
    host_domain.cache_clear()


# -- defaults -------------------------------------------------------------------------

def test_an_empty_file_gives_every_default():
    empty = config("")
    assert empty.server == ServerSettings(
        sslkeystore=None, keystorealias=None, keystorepasswordfile=BASE / "sslpassword.conf",
        keypasswordfile=None, requiressl=False, trust_all_cert=False, domainname="example.com",
        port=HostPort(None, 5269), useport=True, serverid=None, password=None,
        coserver_names=(), usemuxport=True, database=BASE / "iim.db", maxstanzasize=262144,
        negotiation_timeout=30, stanza_timeout=60, max_unauthenticated=5000,
        muxlink_allow=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")),
        muxlink_secretfile=None)
    assert empty.mux == MuxSettings(
        listenport=HostPort(None, 5222), serverport=HostPort(None, 45222), numinstances=1,
        maxthreads=5, maxsessions=2000, stat_frequency=600, usessl=False, secconfigdir=None,
        keydbprefix="", certdbprefix="", secmodfile="secmod.db",
        certnickname="Multiplexor-Cert", keystorepasswordfile=BASE / "sslpassword.conf",
        muxlink_secretfile=None)
    default_log = ComponentLog(Severity.INFO, None, 10 * 1024 * 1024, 10)
    assert (empty.log.server, empty.log.mux) == (default_log, default_log)
    assert (empty.coservers, empty.warnings, empty.path, empty.base_dir) == ((), (), None, BASE)


@pytest.mark.parametrize(("name", "domain"), [
    ("im.example.com", "example.com"),
    ("IM.Example.COM", "example.com"),
    ("a.b.example.org", "b.example.org"),
    ("localhost", "localhost"),
])
def test_the_default_domain_is_the_hosts_domain(monkeypatch, name, domain):
    monkeypatch.setattr(socket, "getfqdn", lambda: name)
    host_domain.cache_clear()
    assert config("").server.domainname == domain


def test_an_empty_value_unsets_an_optional_parameter():
    server = config('iim_server.sslkeystore = ""\niim_server.serverid =\n').server
    assert (server.sslkeystore, server.serverid) == (None, None)


# -- every parameter, typed -----------------------------------------------------------------

FULL = """\
iim_server.sslkeystore = keys/server.p12
iim_server.keystorealias = "IIM Key"
iim_server.keystorepasswordfile = /secret/pw.conf
iim_server.keypasswordfile = keypw.conf
iim_server.requiressl = true
iim_server.trust_all_cert = yes
iim_server.domainname = Example.NET
iim_server.port = "0.0.0.0:5270"
iim_server.useport = off
iim_server.serverid = us
iim_server.password = our-secret
iim_server.coservers = "coserver1, Partner"
iim_server.coserver1.serverid = them
iim_server.coserver1.password = their-secret
iim_server.coserver1.host = im.example.org
iim_server.coserver1.requiressl = on
iim_server.partner.host = "[2001:db8::1]:5999"
iim_server.partner.domain = Partner.Example
iim_server.usemuxport = no
iim_server.database = "/var/lib/iim/im.db"
iim_server.maxstanzasize = 65536
iim_server.negotiation_timeout = 10
iim_server.stanza_timeout = 20
iim_server.max_unauthenticated = 100
iim_server.muxlink_allow = "10.0.0.0/8, 192.0.2.7"
iim_server.muxlink_secretfile = "link.conf"
iim_mux.listenport = "[::1]:5223"
iim_mux.serverport = "127.0.0.1:45223"
iim_mux.numinstances = 4
iim_mux.maxthreads = 8
iim_mux.maxsessions = 10000
iim_mux.stat_frequency = 10
iim_mux.usessl = ON
iim_mux.secconfigdir = nss
iim_mux.keydbprefix = "k-"
iim_mux.certdbprefix = "c-"
iim_mux.secmodfile = "mods.db"
iim_mux.certnickname = "Mux Cert"
iim_mux.keystorepasswordfile = "nss/pw.conf"
iim_mux.muxlink_secretfile = "mux-link.conf"
iim.log.iim_server.severity = debug
iim.log.iim_server.url = "file:///var/log/iim/xmppd%20main.log"
iim.log.iim_server.maxlogfilesize = 512K
iim.log.iim_server.maxlogfiles = 3
iim.log.iim_mux.severity = FATAL
iim.log.iim_mux.url = log/mux.log
iim.log.iim_mux.maxlogfilesize = 1048576
iim.log.iim_mux.maxlogfiles = 1
"""


def test_every_server_parameter_is_typed():
    assert config(FULL).server == ServerSettings(
        sslkeystore=BASE / "keys/server.p12", keystorealias="IIM Key",
        keystorepasswordfile=Path("/secret/pw.conf"), keypasswordfile=BASE / "keypw.conf",
        requiressl=True, trust_all_cert=True,
        domainname="example.net", port=HostPort("0.0.0.0", 5270), useport=False,
        serverid="us", password="our-secret", coserver_names=("coserver1", "partner"),
        usemuxport=False, database=Path("/var/lib/iim/im.db"), maxstanzasize=65536,
        negotiation_timeout=10, stanza_timeout=20, max_unauthenticated=100,
        muxlink_allow=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7")),
        muxlink_secretfile=BASE / "link.conf")


def test_every_coserver_parameter_is_typed():
    assert config(FULL).coservers == (
        CoserverSettings(name="coserver1", serverid="them", password="their-secret",
                         host=HostPort("im.example.org", 5269), domain="im.example.org",
                         requiressl=True),
        CoserverSettings(name="partner", serverid=None, password=None,
                         host=HostPort("2001:db8::1", 5999), domain="partner.example",
                         requiressl=None),
    )


def test_every_multiplexor_parameter_is_typed():
    assert config(FULL).mux == MuxSettings(
        listenport=HostPort("::1", 5223), serverport=HostPort("127.0.0.1", 45223),
        numinstances=4, maxthreads=8, maxsessions=10000, stat_frequency=10, usessl=True,
        secconfigdir=BASE / "nss", keydbprefix="k-", certdbprefix="c-", secmodfile="mods.db",
        certnickname="Mux Cert", keystorepasswordfile=BASE / "nss/pw.conf",
        muxlink_secretfile=BASE / "mux-link.conf")


def test_every_log_parameter_is_typed():
    log = config(FULL).log
    assert log.server == ComponentLog(Severity.DEBUG, Path("/var/log/iim/xmppd main.log"),
                                      512 * 1024, 3)
    assert log.mux == ComponentLog(Severity.FATAL, BASE / "log/mux.log", 1048576, 1)


def test_a_full_file_has_no_warnings():
    assert config(FULL).warnings == ()


@pytest.mark.parametrize("word", ["true", "True", "TRUE", "on", "On", "yes", "1"])
def test_true_booleans(word):
    assert config(f"iim_server.requiressl = {word}\n").server.requiressl is True


@pytest.mark.parametrize("word", ["false", "False", "off", "OFF", "no", "0"])
def test_false_booleans(word):
    assert config(f"iim_server.useport = {word}\n").server.useport is False


@pytest.mark.parametrize(("written", "meant"), [
    ("5222", HostPort(None, 5222)),
    (":5222", HostPort(None, 5222)),
    ("siroe.com:5222", HostPort("siroe.com", 5222)),
    ("10.0.0.1:1", HostPort("10.0.0.1", 1)),
    ("[::1]:65535", HostPort("::1", 65535)),
])
def test_listen_ports_take_an_optional_host(written, meant):
    assert config(f'iim_mux.listenport = "{written}"\n').mux.listenport == meant


@pytest.mark.parametrize(("hostport", "shown"), [
    (HostPort(None, 5222), ":5222"),
    (HostPort("siroe.com", 5222), "siroe.com:5222"),
    (HostPort("::1", 5222), "[::1]:5222"),
])
def test_a_host_and_port_is_written_host_colon_port(hostport, shown):
    assert str(hostport) == shown


@pytest.mark.parametrize(("written", "meant"), [
    ("im.example.org", HostPort("im.example.org", 5269)),
    ("im.example.org:5270", HostPort("im.example.org", 5270)),
    ("[2001:db8::2]", HostPort("2001:db8::2", 5269)),
])
def test_a_coserver_host_has_port_5269_unless_given(written, meant):
    text = f"iim_server.coservers = coserver1\niim_server.coserver1.host = {written}\n"
    assert config(text).coservers[0].host == meant


# -- validation messages ---------------------------------------------------------------------

@pytest.mark.parametrize(("line", "message"), [
    ("iim_mux.maxsessions = lots", 'iim_mux.maxsessions: expected a positive integer, got "lots"'),
    ("iim_mux.maxsessions = 0", 'iim_mux.maxsessions: expected a positive integer, got "0"'),
    ("iim_mux.numinstances = -1", 'iim_mux.numinstances: expected a positive integer, got "-1"'),
    ("iim_mux.maxthreads = 2.5", 'iim_mux.maxthreads: expected a positive integer, got "2.5"'),
    ("iim_mux.maxthreads = 2147483648",
     'iim_mux.maxthreads: expected a positive integer up to 2147483647, got "2147483648"'),
    ("iim_mux.stat_frequency = 9",
     'iim_mux.stat_frequency: expected a number of seconds, at least 10, got "9"'),
    ("iim_server.requiressl = maybe",
     'iim_server.requiressl: expected a boolean (true/false, on/off, yes/no), got "maybe"'),
    ('iim_mux.usessl = ""',
     'iim_mux.usessl: expected a boolean (true/false, on/off, yes/no), got ""'),
    ("iim_server.port = 0", 'iim_server.port: expected a port (1-65535) or host:port, got "0"'),
    ("iim_server.port = 65536",
     'iim_server.port: expected a port (1-65535) or host:port, got "65536"'),
    ("iim_mux.listenport = siroe.com",
     'iim_mux.listenport: expected a port (1-65535) or host:port, got "siroe.com"'),
    ("iim_mux.listenport = ::1:5222",
     'iim_mux.listenport: expected a port (1-65535) or host:port, got "::1:5222"'),
    ("iim_mux.serverport = [::1]",
     'iim_mux.serverport: expected a port (1-65535) or host:port, got "[::1]"'),
    ("iim_mux.serverport = [nope]:1",
     'iim_mux.serverport: expected a port (1-65535) or host:port, got "[nope]:1"'),
    ('iim_mux.serverport = "bad host:1"',
     'iim_mux.serverport: expected a port (1-65535) or host:port, got "bad host:1"'),
    ("iim_server.domainname = a/b", 'iim_server.domainname: expected a domain name, got "a/b"'),
    ('iim_mux.secmodfile = ""', 'iim_mux.secmodfile: expected a non-empty value, got ""'),
    ("iim_server.coservers = a;b",
     'iim_server.coservers: expected comma-separated names, such as "coserver1,coserver2", '
     'got "a;b"'),
    ('iim_server.coservers = "co server"',
     'iim_server.coservers: expected comma-separated names, such as "coserver1,coserver2", '
     'got "co server"'),
    ("iim.log.iim_mux.severity = LOUD",
     'iim.log.iim_mux.severity: expected FATAL, ERROR, WARNING, INFO or DEBUG, got "LOUD"'),
    ("iim.log.iim_mux.maxlogfilesize = big",
     'iim.log.iim_mux.maxlogfilesize: expected a size in bytes, such as 10485760 or 10M, '
     'got "big"'),
    ("iim.log.iim_mux.maxlogfiles = 0",
     'iim.log.iim_mux.maxlogfiles: expected a positive integer, got "0"'),
    ("iim.log.iim_server.url = http://logs.example.com/",
     'iim.log.iim_server.url: expected a file path or a file:// URL, '
     'got "http://logs.example.com/"'),
    ("iim.log.iim_server.url = file://elsewhere/log",
     'iim.log.iim_server.url: expected a file path or a file:// URL, '
     'got "file://elsewhere/log"'),
])
def test_each_validation_error_reads_file_line_parameter_message(line, message):
    assert errors("! first line\n" + line + "\n") == [f"iim.conf:2: {message}"]


def test_long_values_are_shortened_in_messages():
    assert errors("iim_mux.maxsessions = " + "9x" * 30) == [
        'iim.conf:1: iim_mux.maxsessions: expected a positive integer, got "'
        + "9x" * 20 + '..."']


def test_control_characters_in_values_are_escaped_in_messages():
    assert errors('iim_mux.maxsessions = "1\\n2"') == [
        'iim.conf:1: iim_mux.maxsessions: expected a positive integer, got "1\\n2"']


def test_all_errors_are_reported_in_line_order():
    text = ("iim_mux.maxsessions = lots\n"
            'iim_server.serverid = "x\n'
            "iim_mux.numinstances = 0\n")
    assert errors(text, path="/etc/iim/iim.conf") == [
        '/etc/iim/iim.conf:1: iim_mux.maxsessions: expected a positive integer, got "lots"',
        '/etc/iim/iim.conf:2: iim_server.serverid: unterminated quoted value (no closing ")',
        '/etc/iim/iim.conf:3: iim_mux.numinstances: expected a positive integer, got "0"',
    ]


def test_legacy_ssl_needs_an_nss_directory():
    assert errors("iim_mux.usessl = on\n") == [
        "iim.conf:1: iim_mux.secconfigdir: missing; iim_mux.usessl is on and needs the NSS "
        "database directory"]


# -- coservers --------------------------------------------------------------------------------

def test_a_listed_coserver_with_no_parameters_is_an_error():
    text = ("iim_server.coservers = coserver1,coserver2\n"
            "iim_server.coserver1.host = a.example\n")
    assert errors(text) == [
        'iim.conf:1: iim_server.coservers: "coserver2" has no parameters '
        "(expected iim_server.coserver2.host at least)"]


def test_a_coserver_without_a_host_is_an_error():
    text = ("iim_server.coservers = coserver1\n"
            "iim_server.coserver1.serverid = them\n"
            "iim_server.coserver1.password = their-secret\n")
    assert errors(text) == [
        "iim.conf:2: iim_server.coserver1.host: missing; every coserver needs a host"]


def test_a_bad_coserver_host_is_an_error():
    text = "iim_server.coservers = coserver1\niim_server.coserver1.host = :5269\n"
    assert errors(text) == [
        "iim.conf:2: iim_server.coserver1.host: expected a host or host:port (port 1-65535), "
        'got ":5269"']


def test_parameters_of_an_unlisted_coserver_are_ignored_with_a_warning():
    text = ("iim_server.coservers = coserver1\n"
            "iim_server.coserver1.host = a.example\n"
            "iim_server.coserver2.host = b.example\n"
            "iim_server.coserver2.serverid = b\n")
    loaded = config(text)
    assert [c.name for c in loaded.coservers] == ["coserver1"]
    assert [str(w) for w in loaded.warnings] == [
        'iim.conf:3: iim_server.coserver2.host: "coserver2" is not listed in '
        "iim_server.coservers; its parameters are ignored"]


@pytest.mark.parametrize(("own", "global_", "effective"), [
    (None, False, False), (None, True, True), (True, False, True), (False, False, False),
    (True, True, True),
])
def test_a_coserver_inherits_requiressl_unless_it_sets_its_own(own, global_, effective):
    coserver = CoserverSettings("coserver1", None, None, HostPort("a", 5269), "a", own)
    assert coserver.effective_requiressl(global_) is effective


def test_requiressl_false_on_a_coserver_cannot_weaken_the_global_setting():
    text = ("iim_server.requiressl = true\n"
            "iim_server.coservers = coserver1\n"
            "iim_server.coserver1.host = a.example\n"
            "iim_server.coserver1.requiressl = false\n")
    loaded = config(text)
    assert loaded.coservers[0].effective_requiressl(loaded.server.requiressl) is True
    assert [str(w) for w in loaded.warnings] == [
        "iim.conf:4: iim_server.coserver1.requiressl: has no effect: iim_server.requiressl "
        "is true, so every coserver must use TLS"]


def test_config_finds_a_coserver_by_name():
    text = "iim_server.coservers = Coserver1\niim_server.coserver1.host = a.example\n"
    assert config(text).coserver("COSERVER1").host == HostPort("a.example", 5269)
    assert config(text).coserver("coserver2") is None


# -- unknown parameters --------------------------------------------------------------------------

def test_an_unknown_parameter_is_warned_about_with_a_suggestion():
    assert warnings("iim_server.requiresssl = true\niim_mux.maxsession = 5\n") == [
        'iim.conf:1: iim_server.requiresssl: unknown parameter (ignored); '
        'did you mean "iim_server.requiressl"?',
        'iim.conf:2: iim_mux.maxsession: unknown parameter (ignored); '
        'did you mean "iim_mux.maxsessions"?',
    ]


def test_an_unknown_coserver_parameter_gets_a_coserver_suggestion():
    text = ("iim_server.coservers = coserver1\n"
            "iim_server.coserver1.host = a.example\n"
            "iim_server.coserver1.hots = b.example\n")
    assert warnings(text) == [
        'iim.conf:3: iim_server.coserver1.hots: unknown parameter (ignored); '
        'did you mean "iim_server.coserver1.host"?']


def test_an_unknown_parameter_with_nothing_close_gets_no_suggestion():
    assert warnings("iim_mux.frobnicate = 1\n") == [
        "iim.conf:1: iim_mux.frobnicate: unknown parameter (ignored)"]


def test_an_unknown_log_parameter_is_warned_about():
    assert warnings("iim.log.iim_mux.severty = DEBUG\n") == [
        'iim.conf:1: iim.log.iim_mux.severty: unknown parameter (ignored); '
        'did you mean "iim.log.iim_mux.severity"?']


def test_parameters_of_other_components_are_ignored_silently():
    text = ("iim.policy.modules = iim_ldap\n"
            "iim_ldap.host = ldap.example.com:389\n"
            "iim.log.agent-calendar.severity = LOUD\n"
            "iim_agent.enable = true\n")
    assert config(text).warnings == ()


def test_a_misspelt_password_key_is_named_but_its_value_is_not():
    assert warnings("iim_server.pasword = hunter2-secret\n") == [
        'iim.conf:1: iim_server.pasword: unknown parameter (ignored); '
        'did you mean "iim_server.password"?']


def test_variants_are_read_through_their_base_key():
    loaded = config("iim_mux.maxsessions = 5\niim_mux.maxsessions;lang-fr = 6\n")
    assert loaded.mux.maxsessions == 5
    assert loaded.warnings == ()


# -- passwords never appear in messages ------------------------------------------------------------

SECRET = "Sup3r-S3cret-Value"


@pytest.mark.parametrize("text", [
    f'iim_server.password = "{SECRET}\n',
    f'iim_server.password = "{SECRET}" trailing\n',
    f'iim_server.password = "{SECRET}\\q"\n',
    f"iim_server.password = {SECRET}\niim_server.password = {SECRET}\n",
    f"iim_server.coservers = coserver1\niim_server.coserver1.password = {SECRET}\n",
    f"iim_server.coservers = coserver1\niim_server.coserver1.password = \"{SECRET}\\x\"\n",
    f"iim_server.coserver9.password = {SECRET}\n",
    f"iim_server.password {SECRET}\n",
    f"iim_server.password;lang-fr {SECRET}\n",
    f"iim_server.pasword = {SECRET}\n",
    f'iim_server.password = "{SECRET}\u201d\n',
])
def test_no_message_ever_shows_a_password(text):
    try:
        found = config(text).warnings
    except ConfigError as error:
        found = error.diagnostics + error.warnings
    assert found, "each case makes at least one diagnostic"
    assert all(SECRET not in str(d) for d in found)


def test_the_repr_of_settings_hides_passwords():
    text = (f"iim_server.password = {SECRET}\niim_server.coservers = coserver1\n"
            f"iim_server.coserver1.host = a.example\niim_server.coserver1.password = {SECRET}\n")
    assert SECRET not in repr(config(text))


# -- paths and files -------------------------------------------------------------------------------

def test_relative_paths_are_relative_to_the_directory_of_iim_conf(tmp_path):
    conf = tmp_path / "etc" / "iim.conf"
    conf.parent.mkdir()
    conf.write_text("iim_server.sslkeystore = ../keys/server.jks\n"
                    "iim_mux.secconfigdir = /abs/nss\n")
    loaded = load(conf, check_files=False)
    assert loaded.server.sslkeystore == conf.parent / "../keys/server.jks"
    assert loaded.server.keystorepasswordfile == conf.parent / "sslpassword.conf"
    assert loaded.mux.secconfigdir == Path("/abs/nss")
    assert (loaded.path, loaded.base_dir) == (conf, conf.parent)


def test_from_text_resolves_against_the_directory_of_the_path_it_is_given():
    assert from_text("", "/srv/im/iim.conf").server.keystorepasswordfile == Path(
        "/srv/im/sslpassword.conf")


def test_a_missing_keystore_is_an_error_naming_the_parameter_and_the_path(tmp_path):
    text = "iim_server.sslkeystore = server.jks\n"
    assert errors(text, base_dir=tmp_path, check_files=True) == [
        f"iim.conf:1: iim_server.sslkeystore: file not found: {tmp_path}/server.jks",
        f"iim.conf: iim_server.keystorepasswordfile: file not found: "
        f"{tmp_path}/sslpassword.conf",
    ]


def test_a_key_password_file_is_checked_when_it_is_set(tmp_path):
    (tmp_path / "server.jks").write_bytes(b"")
    (tmp_path / "sslpassword.conf").write_text("")
    text = "iim_server.sslkeystore = server.jks\niim_server.keypasswordfile = keypw.conf\n"
    assert errors(text, base_dir=tmp_path, check_files=True) == [
        f"iim.conf:2: iim_server.keypasswordfile: file not found: {tmp_path}/keypw.conf"]


def test_files_that_exist_pass_the_check(tmp_path):
    (tmp_path / "server.jks").write_bytes(b"")
    (tmp_path / "sslpassword.conf").write_text("Internal (Software) Token:x\n")
    (tmp_path / "nss").mkdir()
    text = "iim_server.sslkeystore = server.jks\niim_mux.usessl = on\niim_mux.secconfigdir = nss\n"
    assert config(text, base_dir=tmp_path, check_files=True).warnings == ()


def test_password_files_are_checked_only_when_they_will_be_used(tmp_path):
    assert config("", base_dir=tmp_path, check_files=True).server.sslkeystore is None


def test_a_directory_where_a_file_belongs_is_an_error(tmp_path):
    (tmp_path / "server.jks").mkdir()
    (tmp_path / "sslpassword.conf").write_text("")
    assert errors("iim_server.sslkeystore = server.jks\n", base_dir=tmp_path,
                  check_files=True) == [
        f"iim.conf:1: iim_server.sslkeystore: expected a file, found a directory: "
        f"{tmp_path}/server.jks"]


def test_legacy_ssl_needs_its_password_file_and_an_nss_directory(tmp_path):
    (tmp_path / "nss").write_text("not a directory")
    text = "iim_mux.usessl = on\niim_mux.secconfigdir = nss\niim_mux.keystorepasswordfile = pw\n"
    assert errors(text, base_dir=tmp_path, check_files=True) == [
        f"iim.conf:2: iim_mux.secconfigdir: expected a directory, found a file: {tmp_path}/nss",
        f"iim.conf:3: iim_mux.keystorepasswordfile: file not found: {tmp_path}/pw",
    ]


def test_a_missing_nss_directory_is_an_error(tmp_path):
    (tmp_path / "sslpassword.conf").write_text("")
    text = "iim_mux.usessl = on\niim_mux.secconfigdir = /nonexistent/nss\n"
    assert errors(text, base_dir=tmp_path, check_files=True) == [
        "iim.conf:2: iim_mux.secconfigdir: directory not found: /nonexistent/nss"]


def test_the_multiplexor_files_are_not_checked_without_legacy_ssl(tmp_path):
    text = "iim_mux.secconfigdir = /nonexistent/nss\n"
    assert config(text, base_dir=tmp_path, check_files=True).mux.usessl is False


def test_a_file_that_cannot_be_read_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "absent.conf")
    assert str(caught.value) == f"{tmp_path}/absent.conf: cannot read: No such file or directory"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_load_reports_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iim.conf").write_text("iim_mux.maxsessions = lots\n")
    with pytest.raises(ConfigError) as caught:
        load("iim.conf")
    assert str(caught.value) == 'iim.conf:1: iim_mux.maxsessions: expected a positive integer, got "lots"'
    (tmp_path / "iim.conf").write_text("")
    assert load("iim.conf").base_dir == tmp_path


# -- later messages ------------------------------------------------------------------------------

def test_line_of_points_at_the_line_that_set_a_parameter():
    loaded = config("! x\niim_mux.maxsessions = 5\n")
    assert loaded.line_of("iim_mux.maxsessions") == 2
    assert loaded.line_of("IIM_MUX.MaxSessions") == 2
    assert loaded.line_of("iim_mux.maxthreads") is None


def test_config_makes_diagnostics_for_checks_done_later():
    loaded = config("! x\niim_server.sslkeystore = a.jks\n", path="/etc/iim/iim.conf")
    finding = loaded.diagnostic("iim_server.sslkeystore", "keystore has no private key")
    assert str(finding) == (
        "/etc/iim/iim.conf:2: iim_server.sslkeystore: keystore has no private key")
    assert finding.severity is Severity.ERROR


def test_log_severities_map_to_logging_levels():
    import logging
    assert [s.logging_level for s in Severity] == [
        logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]


def test_raw_config_repr_hides_values():
    config = from_text('iim_server.password = "Hunter2-raw"\n')
    assert "Hunter2-raw" not in repr(config.raw)
    assert "iim_server.password@1" in repr(config.raw)


def test_listed_coserver_with_empty_host_is_an_error():
    with pytest.raises(ConfigError) as err:
        from_text('iim_server.coservers = "coserver1"\niim_server.coserver1.host = ""\n')
    assert str(err.value) == "iim.conf:2: iim_server.coserver1.host: empty; every coserver needs a host"


@pytest.mark.parametrize("kind", ["sql:", "dbm:"])
def test_nss_directory_keeps_its_database_type_prefix(tmp_path, kind):
    config = from_text(f'iim_mux.secconfigdir = "{kind}nssdb"\n', base_dir=tmp_path)
    assert config.mux.secconfigdir == Path(f"{kind}{tmp_path / 'nssdb'}")


def test_muxlink_allow_must_be_networks():
    with pytest.raises(ConfigError) as err:
        from_text('iim_server.muxlink_allow = "localhost"\n')
    assert str(err.value) == ('iim.conf:1: iim_server.muxlink_allow: expected comma-separated '
                              'addresses or networks, such as "127.0.0.0/8, ::1", got "localhost"')
