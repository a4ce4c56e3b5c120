"""Logging: ``iim.log.iim_server.*`` / ``iim.log.iim_mux.*`` (iim/log.py).

- Rotation at ``maxlogfilesize`` keeping ``maxlogfiles`` files, written by a
  real server process, and by a real multiplexor with two worker processes
  whose lines all reach one file set through the supervisor, none lost and
  none cut or mixed mid-line.
- ``severity`` filters, in process and in the worker processes.
- The redaction filter, line by line, and then the real thing: a server and
  two multiplexors at DEBUG, logins right and wrong with PLAIN and SCRAM,
  keystore, NSS and link secrets from their files, and every log the run
  wrote searched for every one of those secrets.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from devsystem import DevSystem, admin_here
from iim import conf
from iim import log as iim_log
from live import free_port

#: A whole log line: UTC time, level, logger[pid]: message.
LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                  r"iim(\.[a-z]+)*\[(\d+)\]: \S.*")
STREAM_HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


# ---------------------------------------------------------------------------
# Helpers


def log_files(folder: Path, name: str) -> list[Path]:
    """FILE.N ... FILE.1, FILE: oldest first."""
    rotated = sorted(folder.glob(f"{name}.*"), key=lambda p: -int(p.suffix[1:]))
    return rotated + [folder / name]


def all_lines(files: list[Path]) -> list[str]:
    lines = []
    for path in files:
        text = path.read_text()
        assert text.endswith("\n"), f"{path} ends mid-line"
        lines += text.splitlines()
    return lines


def wait_until(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def iim_logger():
    """Put the ``iim`` logger back as it was after an in-process test."""
    logger = logging.getLogger("iim")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def component_log(tmp_path: Path, text: str):
    return conf.from_text(text, str(tmp_path / "iim.conf")).log.server


# ---------------------------------------------------------------------------
# In process: severity, format, redaction on the handler


def test_severity_filters_and_line_format(tmp_path, iim_logger):
    settings = component_log(tmp_path, 'iim.log.iim_server.url = "s.log"\n'
                                       'iim.log.iim_server.severity = "WARNING"\n')
    log = iim_log.setup("server", settings)
    log.info("an info line")
    log.warning("a warning with %s", "an argument")
    log.error("an error")
    lines = (tmp_path / "s.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["a warning with an argument",
                                                        "an error"]
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert f"iim.server[{os.getpid()}]:" in lines[0]


def test_fatal_writes_only_critical_and_debug_writes_all(tmp_path, iim_logger):
    for severity, expected in (("FATAL", ["critical"]),
                               ("DEBUG", ["debug", "info", "warning", "critical"])):
        settings = component_log(tmp_path, f'iim.log.iim_server.url = "{severity}.log"\n'
                                           f'iim.log.iim_server.severity = "{severity}"\n')
        log = iim_log.setup("server", settings)
        for level in ("debug", "info", "warning", "critical"):
            getattr(log, level)(level)
        written = (tmp_path / f"{severity}.log").read_text().splitlines()
        assert [line.rsplit(": ", 1)[1] for line in written] == expected


def test_the_handler_masks_secrets_in_messages_arguments_and_tracebacks(tmp_path, iim_logger):
    settings = component_log(tmp_path, 'iim.log.iim_server.url = "r.log"\n')
    log = iim_log.setup("server", settings)
    log.info("connecting with password=%s", "Hunter2-xyz")
    try:
        raise ValueError("keystore secret: Sw0rdfish-abc")
    except ValueError:
        log.exception("failed")
    text = (tmp_path / "r.log").read_text()
    assert "Hunter2-xyz" not in text and "Sw0rdfish-abc" not in text
    assert "password=[redacted]" in text and "secret: [redacted]" in text
    assert "Traceback" in text and "ValueError" in text


#: What the server logs for links from beyond this host without a secret (issue 12 saw
#: it as "...without a shared secret: [redacted] iim_server.muxlink_secretfile").
OPEN_LINK_WARNING = ("multiplexor links are accepted from beyond this host without a shared "
                     "secret: set iim_server.muxlink_secretfile")


def test_the_handler_keeps_a_message_about_a_secret_whole_and_masks_the_secret(tmp_path,
                                                                                iim_logger):
    settings = component_log(tmp_path, 'iim.log.iim_server.url = "about.log"\n')
    log = iim_log.setup("server", settings)
    log.warning("%s", OPEN_LINK_WARNING)
    log.warning("link refused: shared secret: %s", "Tr0ub4dor-3")
    lines = [line.split(": ", 1)[1] for line in
             (tmp_path / "about.log").read_text().splitlines()]
    assert lines == [OPEN_LINK_WARNING, "link refused: shared secret: [redacted]"]


def test_rotation_in_process_keeps_the_configured_number(tmp_path, iim_logger):
    settings = component_log(tmp_path, 'iim.log.iim_server.url = "rot.log"\n'
                                       'iim.log.iim_server.maxlogfilesize = "1K"\n'
                                       'iim.log.iim_server.maxlogfiles = "2"\n')
    log = iim_log.setup("server", settings)
    for n in range(200):
        log.info("line %03d", n)
    files = sorted(p.name for p in tmp_path.glob("rot.log*"))
    assert files == ["rot.log", "rot.log.1", "rot.log.2"]
    assert all((tmp_path / name).stat().st_size <= 1024 for name in files)
    kept = [int(line[-3:]) for line in all_lines(log_files(tmp_path, "rot.log"))]
    assert kept == list(range(200 - len(kept), 200))        # the newest, in order


# ---------------------------------------------------------------------------
# The redaction rules, one shape at a time


PLAIN_BLOB = base64.b64encode(b"\0alice\0s3cret-Pw").decode()
SCRAM_FINAL = "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
SCRAM_BLOB = base64.b64encode(SCRAM_FINAL.encode()).decode()


@pytest.mark.parametrize("line, secret", [
    (f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{PLAIN_BLOB}</auth>",
     PLAIN_BLOB),
    (f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{SCRAM_BLOB}</response>", SCRAM_BLOB),
    (f"payload {PLAIN_BLOB} from the client", PLAIN_BLOB),
    (f"client-final {SCRAM_FINAL}", "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="),
    ("password=Tr0ub4dor&3 next", "Tr0ub4dor"),
    ("login password=password", "=password"),
    ('{"password": "correct horse battery"}', "correct horse battery"),
    ("iim_server.password = secret4i-zed", "secret4i-zed"),
    ("line: Internal (Software) Token:pa ss:word", "pa ss:word"),
    ("NSS Certificate DB:n55-pw", "n55-pw"),
    ("Authorization: Basic YWxpY2U6cGFzc3dvcmQ=", "YWxpY2U6cGFzc3dvcmQ="),
    ("key -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----",
     "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49"),
    ("ticket " + base64.b64encode(bytes(range(7, 87))).decode(),
     base64.b64encode(bytes(range(7, 87))).decode()),
    # a field, not a phrase: the value goes even when it reads like a word
    ("secret: set", "set"),
    ("login failed; password: correct", "correct"),
    ("iim_server.password: horse", "horse"),
    ("config {'secret': 'staple'}", "staple"),
    ("token=battery", "battery"),
    # a phrase about a secret, then a value that is a token, not a word
    ("a shared secret: Hunter2-xyz", "Hunter2-xyz"),
    ("the password: s3cret", "s3cret"),
])
def test_redact_masks_what_looks_like_a_secret(line, secret):
    masked = iim_log.redact(line)
    assert secret not in masked
    assert "[redacted" in masked


@pytest.mark.parametrize("line", [
    "c2s 127.0.0.1:51234: TLS established TLSv1.3 TLS_AES_256_GCM_SHA384",
    "certificate subject=CN=iim dev server,O=iim development; sha256=C3:4E:7E:F4:CB:52:5E:6E",
    "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "iim_server.keystorepasswordfile: /etc/iim/sslpassword.conf: wrong keystore password",
    "/var/opt/iim/default/log/xmppd.log rotated; alice@example.com/Laptop-1 logged in",
    "mux link from 127.0.0.1:51968 (instance 0, thread 0) up (shared secret proved)",
    "c2s mux:127.0.0.1:40000: login alice (SCRAM-SHA-256)",
    'sslpassword.conf: no such file; create it with one line "Internal (Software) '
    'Token:PASSWORD" (chmod 600)',
    # messages about secrets, and parameter names where a value could stand (issue 12)
    OPEN_LINK_WARNING,
    "link refused: no proof, and a shared secret is required: set iim_mux.muxlink_secretfile",
    "mux link from 127.0.0.1:4000 refused: wrong shared secret: the proofs differ",
    "the link secret: iim_server.muxlink_secretfile",
    "secret=iim_server.dialback_secretfile",
])
def test_redact_leaves_ordinary_lines_alone(line):
    assert iim_log.redact(line) == line


def test_worker_frames_round_trip_whole(iim_logger):
    record = logging.LogRecord("iim.mux", logging.WARNING, __file__, 1,
                               "100%% of %s, naïve line\nsecond line", ("links",), None)
    handler = iim_log.PipeHandler(os.open(os.devnull, os.O_WRONLY))
    prepared = handler.prepare(record)
    handler.close()
    buffer = bytearray(iim_log.encode_record(prepared) * 2)
    buffer += iim_log.encode_record(prepared)[:7]                   # half a frame waits
    first, second = iim_log.decode_frames(buffer)
    assert first.getMessage() == "100% of links, naïve line\nsecond line"
    assert (second.levelno, second.name, second.process) == (logging.WARNING, "iim.mux",
                                                              os.getpid())
    assert len(buffer) == 7


def test_a_worker_whose_supervisor_is_gone_writes_to_stderr(capsys, iim_logger):
    read_end, write_end = os.pipe()
    os.close(read_end)
    handler = iim_log.PipeHandler(write_end)
    logger = logging.getLogger("iim.test-orphan")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.warning("still said")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert "still said" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Real processes


@pytest.fixture
def dev(tmp_path):
    system = DevSystem(tmp_path / "dev")
    yield system
    system.stop_all()


def test_server_rotates_at_the_configured_size_keeping_the_configured_files(dev):
    conf_path = dev.variant("rotate.conf", {"iim.log.iim_server.severity": "DEBUG",
                                            "iim.log.iim_server.maxlogfilesize": "1K",
                                            "iim.log.iim_server.maxlogfiles": "3",
                                            # 80 connections from 127.0.0.1 in a row
                                            "iim_server.accept_rate_per_source": "1000"})
    dev.start_server(conf_path)
    ports = []
    for _ in range(80):                  # one "connection closed" line each, waited for
        with socket.create_connection(("127.0.0.1", dev.server_port)) as client:
            client.sendall(STREAM_HEADER)
            client.recv(4096)
            port = client.getsockname()[1]
        ports.append(port)
        wait_until(lambda: f"c2s 127.0.0.1:{port}: connection closed"
                   in (dev.folder / "server.log").read_text(), f"the line for port {port}")
    assert dev.stop(dev.procs[-1])[0] == 0
    files = log_files(dev.folder, "server.log")
    assert [p.name for p in files] == ["server.log.3", "server.log.2", "server.log.1",
                                       "server.log"]
    assert all(p.stat().st_size <= 1024 for p in files)
    assert sum(p.stat().st_size for p in files[:-1]) > 3 * 1024 - 3 * 120   # full files
    lines = all_lines(files)
    assert all(LINE.fullmatch(line) for line in lines), lines
    logged = [int(m[1]) for line in lines
              if (m := re.search(r"c2s 127\.0\.0\.1:(\d+): connection closed", line))]
    assert len(logged) > 20 and logged == ports[-len(logged):]      # newest, none lost


def test_multiplexor_workers_log_through_the_supervisor(dev):
    """Two worker processes; SIGHUPs make each of them log one line at a time,
    both at once. All lines land in one rotated file set, each whole."""
    conf_path = dev.variant("mux2.conf", {"iim.log.iim_mux.severity": "DEBUG",
                                          "iim.log.iim_mux.maxlogfilesize": "4K",
                                          "iim.log.iim_mux.maxlogfiles": "50"})
    dev.start_server(conf_path)
    supervisor = dev.start_mux(conf_path, instances=2)
    started = wait_until(lambda: re.findall(r"worker (\d) started \(pid (\d+)\)",
                                            _mux_text(dev)), "two workers")
    workers = {int(pid) for _, pid in started}
    assert len(workers) == 2
    rounds = 40
    for n in range(1, rounds + 1):
        for pid in workers:
            os.kill(pid, signal.SIGHUP)
        wait_until(lambda: all(_reloads(dev, pid) >= n for pid in workers),
                   f"round {n} of reload lines")
    assert dev.stop(supervisor)[0] == 0
    files = log_files(dev.folder, "mux.log")
    assert len(files) >= 3, "the log never rotated"
    assert all(p.stat().st_size <= 4096 for p in files)
    lines = all_lines(files)
    assert all(LINE.fullmatch(line) for line in lines), [l for l in lines if not LINE.fullmatch(l)]
    for pid in workers:
        assert _reloads(dev, pid) == rounds
        assert any(f"[{pid}]: worker" in line and "stopped; final stats" in line
                   for line in lines)
    assert lines[-1].endswith(f"[{supervisor.pid}]: multiplexor stopped")


def _mux_text(dev: DevSystem) -> str:
    return "".join(p.read_text() for p in log_files(dev.folder, "mux.log") if p.exists())


def _reloads(dev: DevSystem, pid: int) -> int:
    return _mux_text(dev).count(f"[{pid}]: SIGHUP: iim_mux.usessl is off")


def test_worker_severity_is_applied_in_the_worker(dev):
    """WARNING: the workers' start lines (INFO) are not written, their failed
    links (WARNING, no server here) are."""
    conf_path = dev.variant("quiet.conf", {"iim.log.iim_mux.severity": "WARNING"})
    proc = dev.spawn("iim.mux", conf_path, "--instances", "2")
    wait_until(lambda: len(set(re.findall(r"WARNING iim\.mux\[(\d+)\]: link \d\.\d: ",
                                          _mux_text(dev)))) == 2, "both workers' warnings")
    assert dev.stop(proc)[0] == 0
    text = _mux_text(dev)
    assert " INFO " not in text and " DEBUG " not in text
    assert all(LINE.fullmatch(line) for line in text.splitlines())


# ---------------------------------------------------------------------------
# No secret in any log


def test_no_password_or_key_secret_reaches_any_log(dev, tmp_path):
    secrets_used = _secret_system(dev, tmp_path)
    server_conf, plain_conf, legacy_conf = (dev.folder / name for name in
                                            ("secrets.conf", "secrets.conf", "legacy.conf"))
    dev.start_server(server_conf)
    dev.start_mux(plain_conf, instances=2)
    dev.start_mux(legacy_conf)
    outputs = []
    targets = {"mux": (plain_conf, []), "legacy": (legacy_conf, ["--legacy-ssl"]),
               "server": (server_conf, ["--port", str(dev.server_port)])}
    for target, (conf_path, extra) in targets.items():
        for mechanism in ("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"):
            runs = [("alice", True), ("alice", False)] + \
                [("bob", True)] * (mechanism == "PLAIN")
            for user, right in runs:
                password = dev.users[user] if right else f"Wrong-{secrets.token_urlsafe(9)}"
                secrets_used.append(password)
                result = _verify(conf_path, user, password, mechanism, *extra)
                assert result.returncode == (0 if right else 1), result.stdout + result.stderr
                outputs.append(result.stdout + result.stderr)
    unknown = f"Nobody-{secrets.token_urlsafe(9)}"
    secrets_used.append(unknown)
    outputs.append(_verify(plain_conf, "nobody", unknown, "PLAIN").stdout)
    outputs += _failed_starts(dev)
    outputs += dev.stop_all()
    logs = {p.name: p.read_text() for p in dev.folder.iterdir() if ".log" in p.name}
    # The run was logged, at DEBUG, by every process.
    assert logs["server.log"].count(": login alice (") >= 9
    assert logs["server.log"].count(": login bob (") >= 3
    assert " DEBUG iim.server[" in logs["server.log"]
    assert logs["mux.log"].count(" up to 127.0.0.1:") >= 4
    assert "legacy SSL" in logs["mux-legacy.log"]
    assert "wrong keystore password" in logs["server-bad.log"]
    assert "iim_mux.keystorepasswordfile" in logs["mux-bad.log"]
    texts = list(logs.values()) + outputs
    for secret in secrets_used + _encoded(secrets_used, dev):
        for text in texts:
            assert secret not in text


def _secret_system(dev: DevSystem, scratch: Path) -> list[str]:
    """Distinct secrets everywhere: the NSS database gets its own password
    (certutil -W), the link a shared secret; returns every secret in play."""
    nss_password = f"Nss-{secrets.token_urlsafe(12)}"
    old, new = scratch / "old.pw", scratch / "new.pw"
    old.write_text(dev.store_password + "\n")
    new.write_text(nss_password + "\n")
    subprocess.run(["certutil", "-W", "-d", f"sql:{dev.folder / 'nssdb'}", "-f", str(old),
                    "-@", str(new)], check=True, capture_output=True, timeout=60)
    link_secret = f"Link-{secrets.token_urlsafe(12)}"
    _private(dev.folder / "nsspassword.conf", f"NSS Certificate DB:{nss_password}\n")
    _private(dev.folder / "muxlink-secret.conf", f"Internal (Software) Token:{link_secret}\n")
    common = {"iim.log.iim_server.severity": "DEBUG", "iim.log.iim_mux.severity": "DEBUG",
              # eight wrong logins, each answered at once (the delay is not logged)
              "iim_server.auth_failure_delay": "0",
              "iim_mux.keystorepasswordfile": "nsspassword.conf",
              "iim_server.muxlink_secretfile": "muxlink-secret.conf",
              "iim_mux.muxlink_secretfile": "muxlink-secret.conf"}
    dev.variant("secrets.conf", common)
    dev.variant("legacy.conf", {**common, "iim_mux.usessl": "on",
                                "iim_mux.listenport": f"127.0.0.1:{free_port()}",
                                "iim.log.iim_mux.url": "mux-legacy.log"})
    bad_store = f"BadStore-{secrets.token_urlsafe(9)}"
    bad_nss = f"BadNss-{secrets.token_urlsafe(9)}"
    _private(dev.folder / "bad-sslpassword.conf", f"Internal (Software) Token:{bad_store}\n")
    _private(dev.folder / "bad-nsspassword.conf", f"NSS Certificate DB:{bad_nss}\n")
    dev.variant("bad-server.conf", {**common,
                                    "iim_server.keystorepasswordfile": "bad-sslpassword.conf",
                                    "iim_server.port": f"127.0.0.1:{free_port()}",
                                    "iim_mux.serverport": f"127.0.0.1:{free_port()}",
                                    "iim.log.iim_server.url": "server-bad.log"})
    dev.variant("bad-mux.conf", {**common, "iim_mux.usessl": "on",
                                 "iim_mux.keystorepasswordfile": "bad-nsspassword.conf",
                                 "iim_mux.listenport": f"127.0.0.1:{free_port()}",
                                 "iim.log.iim_mux.url": "mux-bad.log"})
    return [dev.store_password, nss_password, link_secret, bad_store, bad_nss]


def _private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _verify(conf_path: Path, user: str, password: str, mechanism: str, *extra: str):
    """``iim.admin verify``, run in this process (devsystem.admin_here): what it
    writes on its standard output and error is searched like the logs."""
    env = {k: v for k, v in os.environ.items() if k != "IIM_CONF"}
    env["IIM_PASSWORD"] = password
    return admin_here("verify", "-c", str(conf_path), "--user", f"{user}@localhost",
                      "--mechanism", mechanism, *extra, env=env)


def _failed_starts(dev: DevSystem) -> list[str]:
    """The server and the multiplexor refusing wrong keystore/NSS passwords."""
    outputs = []
    for module, name in (("iim.server", "bad-server.conf"), ("iim.mux", "bad-mux.conf")):
        proc = dev.spawn(module, dev.folder / name)
        dev.procs.remove(proc)
        assert proc.wait() != 0, proc.report()
        outputs.append(proc.stdout() + proc.stderr())
    return outputs


def _encoded(passwords: list[str], dev: DevSystem) -> list[str]:
    """How a password would look in a SASL PLAIN payload."""
    forms = []
    for password in passwords:
        for user in list(dev.users) + ["nobody"]:
            forms.append(base64.b64encode(f"\0{user}\0{password}".encode()).decode())
    return forms
