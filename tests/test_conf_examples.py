"""The product documentation's own iim.conf examples, and our sample conf/iim.conf.

tests/data/example-12-1.conf and example-12-2.conf are Examples 12-1 and 12-2
of the reference chapter, byte for byte (typographic quote and blank-only line
included).
"""

from pathlib import Path

import pytest

import iim.conf
from iim.conf import ConfigError, HostPort, Severity, load

DATA = Path(__file__).parent / "data"
EXAMPLE_12_1 = DATA / "example-12-1.conf"
EXAMPLE_12_2 = DATA / "example-12-2.conf"
SAMPLE = Path(__file__).parent.parent / "conf" / "iim.conf"


# -- Example 12-1: TLS configuration of the server -------------------------------------------

def test_example_12_1_is_the_server_tls_setup_it_shows():
    server = load(EXAMPLE_12_1, check_files=False).server
    assert server.port == HostPort(None, 5269)
    assert server.useport is True
    assert server.coserver_names == ("coserver1",)
    assert (server.serverid, server.password) == ("Iami-zed", "secret4i-zed")
    assert server.trust_all_cert is True
    assert server.sslkeystore == Path("/var/im/server_keystore.jks")
    assert server.keystorepasswordfile == Path("/var/im/sslpassword.conf")
    assert server.requiressl is False


def test_example_12_1_federates_with_coserver1():
    config = load(EXAMPLE_12_1, check_files=False)
    (coserver,) = config.coservers
    assert coserver.name == "coserver1"
    assert (coserver.serverid, coserver.password) == ("Iamcompany22", "secretforcompany22")
    assert coserver.host == HostPort("iim.i-zed.com", 5269)
    assert str(coserver.host) == "iim.i-zed.com:5269"
    assert coserver.domain == "iim.i-zed.com"
    assert coserver.effective_requiressl(config.server.requiressl) is False


def test_example_12_1_warns_only_about_its_typographic_quote():
    config = load(EXAMPLE_12_1, check_files=False)
    assert [str(w) for w in config.warnings] == [
        f'{EXAMPLE_12_1}:5: iim_server.useport: value closes with a typographic quote (\u201d) '
        'instead of "']
    assert config.warnings[0].severity is Severity.WARNING
    assert EXAMPLE_12_1.read_text(encoding="utf-8").split("\n")[4] == (
        'iim_server.useport = "True\u201d')


def test_example_12_1_with_file_checks_names_the_missing_keystore():
    with pytest.raises(ConfigError) as caught:
        load(EXAMPLE_12_1)
    assert str(caught.value).split("\n") == [
        f"{EXAMPLE_12_1}:13: iim_server.sslkeystore: file not found: /var/im/server_keystore.jks",
        f"{EXAMPLE_12_1}:14: iim_server.keystorepasswordfile: file not found: "
        "/var/im/sslpassword.conf",
    ]


# -- Example 12-2: legacy SSL at the multiplexor -----------------------------------------------

def test_example_12_2_is_the_multiplexor_setup_it_shows():
    mux = load(EXAMPLE_12_2, check_files=False).mux
    assert mux.listenport == HostPort("siroe.com", 5222)
    assert str(mux.listenport) == "siroe.com:5222"
    assert mux.serverport == HostPort("siroe.com", 45222)
    assert (mux.numinstances, mux.maxthreads, mux.maxsessions) == (1, 10, 1000)
    assert mux.stat_frequency == 600
    assert mux.usessl is True
    assert mux.secconfigdir == Path("/etc/opt/SUNWiim/default/config")
    assert (mux.keydbprefix, mux.certdbprefix) == ("This-Database", "Secret-stuff")
    assert mux.secmodfile == "secmod.db"
    assert mux.certnickname == "Multiplexor_Cert"
    assert mux.keystorepasswordfile == DATA / "sslpassword.conf"


def test_example_12_2_has_a_blank_only_line_and_no_warnings():
    lines = EXAMPLE_12_2.read_text(encoding="utf-8").split("\n")
    assert " " * 25 in lines
    assert load(EXAMPLE_12_2, check_files=False).warnings == ()


def test_example_12_2_with_file_checks_names_the_missing_nss_directory():
    with pytest.raises(ConfigError) as caught:
        load(EXAMPLE_12_2)
    assert str(caught.value).split("\n") == [
        f"{EXAMPLE_12_2}:26: iim_mux.secconfigdir: directory not found: "
        "/etc/opt/SUNWiim/default/config",
        f"{EXAMPLE_12_2}:31: iim_mux.keystorepasswordfile: file not found: "
        f"{DATA}/sslpassword.conf",
    ]


def test_both_examples_together_make_one_configuration(tmp_path):
    both = tmp_path / "iim.conf"
    both.write_bytes(EXAMPLE_12_1.read_bytes() + EXAMPLE_12_2.read_bytes())
    config = load(both, check_files=False)
    assert config.server.useport is True
    assert config.mux.maxsessions == 1000
    assert [w.line for w in config.warnings] == [5]


# -- our sample, conf/iim.conf ----------------------------------------------------------------

def test_the_sample_loads_without_errors_or_warnings():
    assert load(SAMPLE, check_files=False).warnings == ()


def test_the_sample_sets_every_default_it_documents():
    sample = load(SAMPLE, check_files=False)
    defaults = iim.conf.from_text("", str(SAMPLE))
    assert (sample.server, sample.mux, sample.log, sample.coservers) == (
        defaults.server, defaults.mux, defaults.log, defaults.coservers)


@pytest.mark.parametrize("param", iim.conf.KNOWN_PARAMETERS)
def test_the_sample_documents_every_parameter(param):
    text = SAMPLE.read_text(encoding="utf-8")
    assert param.replace("coserverN", "coserver1") + " = " in text


def test_the_commented_out_sample_lines_are_valid_when_uncommented():
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")
    uncommented = [line[2:] if line.startswith("! iim") and " = " in line else line
                   for line in lines]
    config = iim.conf.from_text("\n".join(uncommented), "iim.conf")
    assert config.warnings == ()
    assert config.coserver("coserver1").host == HostPort("im.example.org", 5269)
    assert config.server.sslkeystore is not None
