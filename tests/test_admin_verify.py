"""``python -m iim.admin verify``: the "is my connection secure?" procedure as a command.

Everything runs for real on 127.0.0.1: the configuration written by
``iim.admin dev-setup``, ``python -m iim.server``, ``python -m iim.mux`` (plain
and legacy SSL), and the verify command. The command runs in the test's
process (its ``main``, with its own environment, standard input and output:
devsystem.admin_here), where what it reports is checked, and as a
subprocess, exactly as an operator runs it, where the process is what is
checked: a whole check, the password from a terminal or standard input, an
interrupted prompt, a configuration it cannot read, its help. What the
command prints is checked against facts taken elsewhere: the certificates in
the keystore and the NSS database (read with cryptography and the real
certutil), and the server's own log.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from devsystem import DevSystem, admin_here, run_admin
from support import Process, free_port, wait_until

ALICE = "alice@localhost"


# ---------------------------------------------------------------------------
# Helpers


def verify(conf: Path, *args: str, password: str | None = None, stdin: str = "",
           process: bool = False) -> subprocess.CompletedProcess:
    """Run the command with the password in $IIM_PASSWORD (or none at all), in
    this process unless ``process``."""
    if not process:
        return admin_here("verify", "-c", str(conf), *args, env=_env(password), stdin=stdin)
    return run_admin("verify", "-c", str(conf), *args, env=_env(password), stdin=stdin,
                     check=False)


def _env(password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("IIM_PASSWORD", "IIM_CONF")}
    if password is not None:
        env["IIM_PASSWORD"] = password
    return env


def rows(output: str) -> dict[str, list[str]]:
    """The report as {label: [text, ...]}; indented lines continue the label above."""
    found: dict[str, list[str]] = {}
    label = None
    for line in output.splitlines():
        if not line.startswith(" "):
            label, text = line[:12].strip(), line[13:]
        else:
            text = line.strip()
        found.setdefault(label, []).append(text)
    return found


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def keystore_leaf(dev: DevSystem) -> x509.Certificate:
    data = (dev.folder / "server-keystore.p12").read_bytes()
    return pkcs12.load_key_and_certificates(data, dev.store_password.encode())[1]


def nss_leaf(dev: DevSystem) -> x509.Certificate:
    """The multiplexor's certificate, as NSS's own certutil exports it."""
    pem = subprocess.run(["certutil", "-L", "-d", f"sql:{dev.folder / 'nssdb'}", "-n",
                          "Multiplexor-Cert", "-a"], capture_output=True, check=True,
                         timeout=60).stdout
    return x509.load_pem_x509_certificate(pem)


def _logins(system: DevSystem, user: str) -> int:
    """How many times the server logged ``user`` in, by its own log."""
    return (system.folder / "server.log").read_text().count(f": login {user} (")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------
# The development system: a server, a plain multiplexor, a legacy-SSL one


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    system = DevSystem(tmp_path_factory.mktemp("verify") / "dev")
    system.legacy = system.variant("legacy.conf", {
        "iim_mux.usessl": "on", "iim_mux.listenport": f"127.0.0.1:{free_port()}",
        "iim.log.iim_mux.url": "mux-legacy.log"})
    system.start_server()
    system.start_mux()
    system.start_mux(system.legacy)
    yield system
    system.stop_all()


@pytest.fixture
def spare(tmp_path):
    """A second development system whose server each test configures itself."""
    system = DevSystem(tmp_path / "spare")
    yield system
    system.stop_all()


def test_starttls_through_the_multiplexor_is_secure_and_ends_at_the_server(dev):
    logins_before = _logins(dev, "alice")
    result = verify(dev.conf, "--user", ALICE, password=dev.users["alice"], process=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _logins(dev, "alice") == logins_before + 1
    report = rows(result.stdout)
    assert report["lock"][0].startswith("secure: TLSv1.")
    assert "end to end to the server" in report["lock"][0]
    assert report["connection"] == [f"127.0.0.1:{dev.mux_port}, the multiplexor "
                                    f"(iim_mux.listenport), STARTTLS"]
    assert re.fullmatch(r"STARTTLS: TLSv1\.[23], cipher \S+ \(\d+ bits\)", report["TLS"][0])
    leaf = keystore_leaf(dev)
    assert f"sha256={fingerprint(leaf)}" in report["certificate"][0]
    assert f"subject={leaf.subject.rfc4514_string()}" in report["certificate"][0]
    assert report["trust"][0].startswith("verified for localhost against the system store")
    assert "1 trusted entry of iim_server.sslkeystore" in report["trust"][0]
    assert report["TLS ends"][0].startswith("STARTTLS: ends at the server")
    assert "the server's (iim_server.sslkeystore)" in report["TLS ends"][0]
    assert report["login"][0].startswith(f"{ALICE} with SCRAM-SHA-256: ok, bound {ALICE}/")
    # The server's side of the same story: it terminated TLS for a multiplexed session.
    server_log = (dev.folder / "server.log").read_text()
    assert re.search(r"c2s mux:127\.0\.0\.1:\d+\S*: TLS established TLSv1\.[23]", server_log)
    assert dev.users["alice"] not in result.stdout + result.stderr


def test_legacy_ssl_ends_at_the_multiplexor(dev):
    """iim_mux.usessl on: TLS from the first byte, terminated by the multiplexor with
    its NSS certificate. The dev server requires TLS (requiressl), so the client
    also STARTTLSes inside, to the server, as RFC 6120 says it must."""
    for extra in ((), ("--legacy-ssl",)):               # chosen from iim.conf, or asked
        result = verify(dev.legacy, "--user", ALICE, *extra, password=dev.users["alice"])
        assert result.returncode == 0, result.stdout + result.stderr
        report = rows(result.stdout)
        assert report["lock"][0].startswith("secure: TLSv1.")
        assert "to the multiplexor (legacy SSL)" in report["lock"][0]
        assert report["connection"][0].endswith("legacy SSL (TLS from the first byte)")
        outer, inner = report["TLS ends"]
        assert outer.startswith("legacy SSL: ends at the multiplexor")
        assert "the multiplexor's ('Multiplexor-Cert' in iim_mux.secconfigdir)" in outer
        assert inner.startswith("STARTTLS inside legacy SSL: ends at the server")
        assert "the server's (iim_server.sslkeystore)" in inner
        first_chain = report["certificate"][0]
        assert f"sha256={fingerprint(nss_leaf(dev))}" in first_chain
        assert "requires STARTTLS inside legacy SSL" in report["inside"][0]


def test_legacy_ssl_alone_and_starttls_inside_on_request(spare):
    """A server that does not require TLS: a legacy-SSL client is secure up to the
    multiplexor and told that the link beyond is plaintext; --inner-starttls adds
    TLS to the server inside it."""
    server_conf = spare.variant("relaxed.conf", {"iim_server.requiressl": "false"})
    legacy = spare.variant("legacy.conf", {"iim_server.requiressl": "false",
                                           "iim_mux.usessl": "on"})
    spare.start_server(server_conf)
    spare.start_mux(legacy)
    alone = verify(legacy, "--user", ALICE, password=spare.users["alice"])
    assert alone.returncode == 0, alone.stdout
    report = rows(alone.stdout)
    assert [line.split(":")[0] for line in report["TLS ends"]] == ["legacy SSL"]
    assert "offers STARTTLS inside legacy SSL" in report["inside"][0]
    assert any("not encrypted" in note for note in report["note"])
    inner = verify(legacy, "--user", ALICE, "--inner-starttls", password=spare.users["alice"])
    assert inner.returncode == 0, inner.stdout
    report = rows(inner.stdout)
    assert [line.split(":")[0] for line in report["TLS ends"]] == \
        ["legacy SSL", "STARTTLS inside legacy SSL"]
    assert "also ran STARTTLS inside legacy SSL" in report["inside"][0]


def test_a_server_without_keystore_is_not_secure(spare):
    insecure = spare.variant("insecure.conf", {"iim_server.sslkeystore": "",
                                               "iim_server.requiressl": "false"})
    spare.start_server(insecure)
    spare.start_mux(insecure)
    result = verify(insecure, "--user", ALICE, password=spare.users["alice"])
    assert result.returncode == 1
    report = rows(result.stdout)
    assert report["lock"] == ["NOT secure: no TLS offered: the server's features have no "
                              "STARTTLS (iim_server.sslkeystore not set?)"]
    assert "TLS" not in report and report["login"] == [f"{ALICE}: not attempted"]
    assert _logins(spare, "alice") == 0


def test_legacy_ssl_before_a_server_without_tls_is_secure_only_to_the_multiplexor(spare):
    insecure = {"iim_server.sslkeystore": "", "iim_server.requiressl": "false"}
    spare.start_server(spare.variant("insecure.conf", insecure))
    legacy = spare.variant("legacy.conf", {**insecure, "iim_mux.usessl": "on"})
    spare.start_mux(legacy)
    # No keystore, so no trusted entries from it: the system store alone does not
    # know the development CA, and the check stops there ...
    default = verify(legacy, "--user", ALICE, password=spare.users["alice"])
    assert default.returncode == 1 and "unknown CA" in rows(default.stdout)["lock"][0]
    # ... while with the CA given, the multiplexor's certificate verifies.
    cafile = ("--cafile", str(spare.folder / "ca.pem"))
    result = verify(legacy, "--user", ALICE, *cafile, password=spare.users["alice"])
    assert result.returncode == 0, result.stdout
    report = rows(result.stdout)
    assert report["inside"] == ["the server offers no STARTTLS inside legacy SSL"]
    asked = verify(legacy, "--user", ALICE, "--inner-starttls", *cafile,
                   password=spare.users["alice"])
    assert asked.returncode == 1
    assert rows(asked.stdout)["lock"] == ["NOT secure: STARTTLS inside legacy SSL: not offered "
                                          "by the server (--inner-starttls)"]


def test_wrong_password_fails_without_showing_it(dev):
    wrong = "Wr0ng-" + dev.users["alice"][::-1]
    result = verify(dev.conf, "--user", ALICE, password=wrong)
    assert result.returncode == 1
    report = rows(result.stdout)
    assert report["lock"] == [f"NOT secure: login failed: wrong password for {ALICE}"]
    assert report["login"] == [f"{ALICE}: failed (not-authorized)"]
    assert wrong not in result.stdout + result.stderr
    assert dev.users["alice"] not in result.stdout + result.stderr


def test_unknown_user_is_told_apart_from_a_wrong_password(dev):
    result = verify(dev.conf, "--user", "zed@localhost", password="anything-at-all")
    assert result.returncode == 1
    assert rows(result.stdout)["lock"] == [
        "NOT secure: login failed: unknown user 'zed' (not in iim_server.database; "
        "python -m iim.admin user add zed)"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_mechanism_can_be_chosen(dev, mechanism):
    result = verify(dev.conf, "--user", "bob@localhost", "--mechanism", mechanism,
                    password=dev.users["bob"])
    assert result.returncode == 0, result.stdout
    assert rows(result.stdout)["login"][0].startswith(f"bob@localhost with {mechanism}: ok")


def test_without_user_everything_up_to_the_login_is_checked(dev):
    result = verify(dev.conf)
    assert result.returncode == 0, result.stdout + result.stderr
    report = rows(result.stdout)
    assert report["lock"][0].endswith("(login not checked: give --user)")
    assert report["login"] == ["not attempted (no --user)"]


def test_a_ca_not_trusted_ends_the_check_before_any_credential(dev, ca, tmp_path):
    cafile = tmp_path / "other-ca.pem"
    cafile.write_bytes(ca.cert_pem())
    logins_before = _logins(dev, "alice")
    result = verify(dev.conf, "--user", ALICE, "--cafile", str(cafile),
                    password=dev.users["alice"])
    assert _logins(dev, "alice") == logins_before       # the right password, never sent
    assert result.returncode == 1
    report = rows(result.stdout)
    assert report["lock"][0].startswith("NOT secure: STARTTLS: the certificate is not trusted: "
                                        "unknown CA")
    assert report["lock"][0].endswith("(no credential was sent)")
    assert report["trust"][0].startswith(f"NOT verified for localhost against {cafile}")
    assert report["login"] == [f"{ALICE}: not attempted"]


def test_name_mismatch_is_not_secure(spare):
    """The dev certificate names localhost; a server for chat.example presents it."""
    other = spare.variant("other-domain.conf", {"iim_server.domainname": "chat.example"})
    spare.start_server(other)
    result = verify(other, "--port", str(spare.server_port), "--user", "alice@chat.example",
                    password=spare.users["alice"])
    assert result.returncode == 1
    report = rows(result.stdout)
    assert report["lock"][0].startswith(
        "NOT secure: STARTTLS: the certificate is not trusted: name mismatch: wanted "
        "chat.example, certificate names localhost, 127.0.0.1, ::1")
    assert report["connection"][0].endswith("the server (iim_server.port), STARTTLS")


def test_tls_older_than_1_2_is_not_secure(dev, ca, tmp_path):
    """openssl s_server limited to TLS 1.1, spoken from the first byte."""
    issued = ca.issue("localhost")
    (tmp_path / "cert.pem").write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(issued.key_pem())
    port = free_port()
    server = Process(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
                      str(tmp_path / "cert.pem"), "-key", str(tmp_path / "key.pem"),
                      "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-quiet"],
                     tmp_path, "s_server", stdin=subprocess.PIPE)   # open: s_server ends on EOF
    try:
        server.wait_port(port)
        result = verify(dev.conf, "--port", str(port), "--legacy-ssl")
    finally:
        server.kill()
    assert result.returncode == 1
    assert rows(result.stdout)["lock"][0].startswith(
        "NOT secure: legacy SSL: the peer offers only TLS older than 1.2")


def test_starttls_to_a_legacy_ssl_multiplexor_points_to_legacy_ssl(dev):
    result = verify(dev.legacy, "--starttls", "--user", ALICE, password=dev.users["alice"])
    assert result.returncode == 1
    lock = rows(result.stdout)["lock"][0]
    assert lock.startswith("NOT secure:") and lock.endswith("try --legacy-ssl)")


def test_legacy_ssl_to_a_plain_multiplexor_points_to_starttls(dev):
    result = verify(dev.conf, "--legacy-ssl", "--user", ALICE, password=dev.users["alice"])
    assert result.returncode == 1
    lock = rows(result.stdout)["lock"][0]
    assert lock.startswith(f"NOT secure: legacy SSL: 127.0.0.1:{dev.mux_port} did not answer "
                           "with TLS")
    assert lock.endswith("then verify without --legacy-ssl")


# ---------------------------------------------------------------------------
# Errors: one line on stderr, exit status 2 when the check could not be made


def test_connection_refused_names_host_and_port(dev):
    port = free_port()
    result = verify(dev.conf, "--port", str(port))
    assert result.returncode == 2 and result.stdout == ""
    assert one_line(result.stderr) == (f"verify: cannot connect to 127.0.0.1:{port} (the given "
                                       "address): connection refused (is the server running?)")


def test_a_multiplexor_that_is_down_is_named(spare):
    result = verify(spare.conf)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"verify: cannot connect to 127.0.0.1:{spare.mux_port} (the multiplexor "
        "(iim_mux.listenport)): connection refused (is the multiplexor running?)")


def test_a_silent_peer_times_out(dev):
    with socket.socket() as silent:                 # accepted by the kernel, never answered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = verify(dev.conf, "--port", str(port), "--timeout", "0.5")
    assert result.returncode == 1
    assert rows(result.stdout)["lock"] == [
        f"NOT secure: no answer from 127.0.0.1:{port} within 0.5 s (waiting for the peer's "
        "stream header)"]


def test_unreadable_configuration(tmp_path):
    missing = tmp_path / "nowhere.conf"
    result = verify(missing, process=True)
    assert result.returncode == 2
    assert one_line(result.stderr) == f"verify: {missing}: cannot read: No such file or directory"


def test_bad_user_is_a_usage_error(dev):
    result = verify(dev.conf, "--user", "localhost")
    assert result.returncode == 2
    assert "--user: expected user@domain" in result.stderr


def test_help_reads_like_a_manual_page():
    result = run_admin("verify", "--help")
    text = " ".join(result.stdout.split())
    for option in ("--user", "--password-file", "--legacy-ssl", "--starttls",
                   "--inner-starttls", "--host", "--port", "--cafile", "--mechanism",
                   "--timeout", "-c"):
        assert option in text
    assert "example:" in result.stdout and "exit status:" in result.stdout
    assert "0 secure" in text and "1 NOT secure" in text and "2 could not check" in text
    assert "never taken from the command line" in text


# ---------------------------------------------------------------------------
# Where the password comes from


def test_password_file_in_iim_format(dev, tmp_path):
    path = tmp_path / "alice.pw"
    path.write_text(f"Internal (Software) Token:{dev.users['alice']}\n")
    path.chmod(0o600)
    result = verify(dev.conf, "--user", ALICE, "--password-file", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""


def test_password_file_with_the_password_alone_warns_when_shared(dev, tmp_path):
    path = tmp_path / "alice.txt"
    path.write_text(dev.users["alice"] + "\n")
    path.chmod(0o644)
    result = verify(dev.conf, "--user", ALICE, "--password-file", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert one_line(result.stderr) == (f"verify: warning: --password-file: {path}: readable by "
                                       f"group or others (mode 0644); run chmod 600 {path}")


def test_password_file_errors_are_one_line_without_the_password(dev, tmp_path):
    missing = verify(dev.conf, "--user", ALICE, "--password-file", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert one_line(missing.stderr).startswith(f"verify: --password-file: {tmp_path / 'none'}:"
                                               " cannot read")
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    result = verify(dev.conf, "--user", ALICE, "--password-file", str(empty))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"verify: --password-file: {empty}: the file is empty"
    emptied = tmp_path / "token-only.pw"
    emptied.write_text("NSS Certificate DB:\n")
    emptied.chmod(0o600)
    result = verify(dev.conf, "--user", ALICE, "--password-file", str(emptied))
    assert result.returncode == 2
    assert one_line(result.stderr) == (f"verify: --password-file: {emptied}:1: the password "
                                       "after the colon is empty")


def test_password_from_stdin_when_it_is_not_a_terminal(dev):
    result = verify(dev.conf, "--user", ALICE, stdin=dev.users["alice"] + "\n", process=True)
    assert result.returncode == 0, result.stdout + result.stderr
    nothing = verify(dev.conf, "--user", ALICE, stdin="", process=True)
    assert nothing.returncode == 2
    assert one_line(nothing.stderr) == ("verify: no password: give --password-file FILE, set "
                                        "$IIM_PASSWORD, or type it at the prompt")


def test_password_prompt_on_a_terminal_is_not_echoed(dev):
    password = dev.users["alice"]
    pid, fd = pty.fork()
    if pid == 0:                                         # the child: verify on a terminal
        os.execve(sys.executable, [sys.executable, "-m", "iim.admin", "verify", "-c",
                                   str(dev.conf), "--user", ALICE], _env(None))
    seen = _read_until(fd, b"Password for alice@localhost: ")
    os.write(fd, password.encode() + b"\n")
    seen += _read_until(fd, None)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "lock         secure:" in text
    assert password not in text


def _read_until(fd: int, marker: bytes | None, timeout: float = 30) -> bytes:
    """Read the terminal until ``marker`` (None: until the child closes it)."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker is None or marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"terminal said {out!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:                                  # EIO: the child is gone
            chunk = b""
        if not chunk:
            if marker is None:
                return out
            raise AssertionError(f"terminal closed after {out!r}")
        out += chunk
    return out


def _syscall(pid: int) -> str:
    """The number of the system call ``pid`` is blocked in ("0": read), from /proc."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split(" ", 1)[0]
    except OSError:
        return ""


def test_interrupting_a_prompt_is_one_line(dev):
    pid, fd = pty.fork()
    if pid == 0:
        # Ctrl-C as in a terminal: a suite started in the background of a shell
        # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(sys.executable, [sys.executable, "-m", "iim.admin", "verify", "-c",
                                   str(dev.conf), "--user", ALICE], _env(None))
    _read_until(fd, b"Password for alice@localhost: ")
    # once the prompt waits in read(): a signal that lands between the prompt's
    # write and the read() is noted by Python but acted on only when read() returns
    wait_until(lambda: _syscall(pid) == "0", "the prompt blocked in read()")
    os.kill(pid, signal.SIGINT)
    text = _read_until(fd, None).decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 2
    assert "verify: interrupted" in text and "Traceback" not in text
