"""The pieces under iim.admin start/stop/refresh/status, each on its own.

The pid file (iim/runtime.py) with real processes and real flock; the
control channel (iim/control.py) over a real Unix socket; the iim.conf
comparison behind refresh (iim/conf/changes.py); how iim.admin reads a
daemon's standard error and shows certificates.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iim import conf, control, runtime
from iim.admin.daemon import error_line
from iim.admin.status import describe_certificate, uptime
from iim.conf.changes import changed, merge


# -- the pid file -----------------------------------------------------------------------------------

def test_a_claimed_pid_file_holds_our_pid_and_reads_as_running(tmp_path):
    path = tmp_path / "server.pid"
    claim = runtime.PidFile.claim(path, "server")
    try:
        found = runtime.probe(path)
        assert path.read_text() == f"{os.getpid()}\n"
        assert (found.state, found.pid) == ("running", os.getpid())
        with pytest.raises(runtime.AlreadyRunning) as second:
            runtime.PidFile.claim(path, "server")
        assert str(second.value) == f"server already running (pid {found.pid}, {path})"
        assert runtime.remove_stale(path) is None and path.exists()      # not stale
    finally:
        claim.release()
    assert runtime.probe(path).state == "absent"


def test_a_pid_file_nobody_holds_is_stale_and_can_be_taken_over(tmp_path):
    path = tmp_path / "mux.pid"
    path.write_text("4194000\n")

    assert runtime.probe(path) == runtime.Probe("stale", 4194000, path.stat().st_mtime)
    claim = runtime.PidFile.claim(path, "mux")
    claim.release()
    path.write_text("4194001\n")
    assert runtime.remove_stale(path) == 4194001
    assert not path.exists()
    assert claim.stale_pid == 4194000


def test_the_lock_goes_with_the_process_even_when_it_is_killed(tmp_path):
    path = tmp_path / "server.pid"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from iim.runtime import PidFile; PidFile.claim(Path(sys.argv[1]), 'server'); "
         "print('claimed', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "claimed\n"
        assert runtime.probe(path).state == "running"
        assert runtime.probe(path).pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert runtime.probe(path) == runtime.Probe("stale", holder.pid,
                                                    path.stat().st_mtime)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_runtime_folder_too_deep_for_a_unix_socket_is_one_clear_line(tmp_path):
    deep = tmp_path / ("x" * 100)
    with pytest.raises(runtime.RuntimeFolderError) as error:
        runtime.RuntimePaths(deep, "server").check_socket_path()
    assert str(error.value).startswith(f"iim.instancevardir: {deep}: path too long for a "
                                       "control socket")


def test_instancevardir_defaults_to_the_folder_holding_iim_conf(tmp_path):
    path = tmp_path / "etc" / "iim.conf"
    path.parent.mkdir()
    path.write_text("")
    assert runtime.runtime_folder(conf.load(path)) == path.parent
    path.write_text('iim.instancevardir = "../var/run"\n')
    assert runtime.runtime_folder(conf.load(path)) == tmp_path / "etc" / ".." / "var" / "run"


# -- the control channel ------------------------------------------------------------------------------

class Answering:
    """A ControlThread answering like a component: status, refresh, stop."""

    def __init__(self, path: Path) -> None:
        self.stopped = threading.Event()
        self.thread = control.ControlThread(path, self.handle, _NullLog())
        self.thread.start()

    def handle(self, request):
        if request["op"] == "stop":
            return {"ok": True}, self.stopped.set
        if request["op"] == "refresh":
            return {"ok": False, "error": "iim.conf:3: iim_server.port: expected a port"}, None
        return {"ok": True, "component": "test", "sessions": {"tls": 2}}, None


class _NullLog:
    def warning(self, *args):
        pass

    def exception(self, *args):
        pass


@pytest.fixture
def answering(tmp_path):
    server = Answering(tmp_path / "test.sock")
    yield server
    server.thread.close()


def test_one_request_one_answer_on_an_owner_only_socket(answering):
    path = answering.thread.path

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert control.ask(path, "status") == {"ok": True, "component": "test",
                                           "sessions": {"tls": 2}}
    assert control.ask(path, "refresh") == {"ok": False,
                                            "error": "iim.conf:3: iim_server.port: expected "
                                                     "a port"}
    assert control.ask(path, "stop") == {"ok": True}
    assert answering.stopped.wait(5)


def test_unknown_and_unreadable_requests_get_one_line_errors(answering):
    path = str(answering.thread.path)
    for request, error in ((b'{"op": "reboot"}\n', "unknown request 'reboot' (expected one "
                                                   "of status, refresh, stop)"),
                           (b"not json\n", "unreadable request"),
                           (b"[1, 2]\n", "unreadable request")):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(request)
            assert control.decode(control.read_line(sock)) == {"ok": False, "error": error}


def test_nobody_listening_is_control_unavailable(tmp_path):
    with pytest.raises(control.ControlUnavailable):
        control.ask(tmp_path / "absent.sock", "status")
    dead = control.bind(tmp_path / "dead.sock")
    dead.close()                                 # the file stays, nobody accepts
    with pytest.raises(control.ControlUnavailable):
        control.ask(tmp_path / "dead.sock", "status")


def test_closing_removes_the_socket_file(tmp_path):
    server = Answering(tmp_path / "gone.sock")
    server.thread.close()
    assert not (tmp_path / "gone.sock").exists()


# -- what refresh compares ------------------------------------------------------------------------------

BASE = """\
iim_server.port = "127.0.0.1:5269"
iim_server.requiressl = "false"
iim_server.coservers = "coserver1"
iim_server.coserver1.host = "peer.example"
iim_mux.maxsessions = "2000"
iim.log.iim_server.severity = "INFO"
"""


def test_changed_names_every_parameter_whose_value_differs():
    old = conf.from_text(BASE)
    new = conf.from_text(BASE.replace("5269", "5270").replace('"false"', '"true"')
                         .replace("peer.example", "other.example")
                         .replace('"INFO"', '"DEBUG"')
                         + 'iim.instancevardir = "/run/iim"\n')

    assert changed(old, new) == ["iim_server.requiressl", "iim_server.port",
                                 "iim.log.iim_server.severity", "iim_server.coserver1.host",
                                 "iim_server.coserver1.domain", "iim.instancevardir"]
    assert changed(old, conf.from_text(BASE + "\n! a comment\n")) == []


def test_merge_takes_live_parameters_and_keeps_the_rest_until_a_restart():
    old = conf.from_text(BASE)
    new = conf.from_text(BASE.replace("5269", "5270").replace('"false"', '"true"')
                         .replace('"2000"', '"10"').replace('"INFO"', '"DEBUG"'))

    running = merge(old, new, {"iim_server.requiressl", "iim.log.iim_server.severity"})

    assert running.server.requiressl is True
    assert running.log.server.severity.name == "DEBUG"
    assert running.server.port == old.server.port
    assert running.mux.maxsessions == 2000
    assert running.coservers == old.coservers
    assert changed(old, running) == ["iim_server.requiressl", "iim.log.iim_server.severity"]


# -- what iim.admin shows -----------------------------------------------------------------------------

def test_the_error_line_of_a_daemon_is_its_bare_line_not_its_log(tmp_path):
    stderr = tmp_path / "server.stderr"
    stderr.write_text(
        "2026-11-26T22:04:35.182Z INFO iim.server[12]: certificate CN=x\n"
        "2026-11-26T22:04:35.311Z CRITICAL iim.server[12]: iim_server.port: cannot listen\n"
        "iim_server.port: cannot listen on 127.0.0.1:5269: Address already in use\n")
    assert error_line(stderr) == ("iim_server.port: cannot listen on 127.0.0.1:5269: "
                                  "Address already in use")
    stderr.write_text(
        "2026-11-26T22:04:35.311Z CRITICAL iim.mux[12]: worker 0: iim_mux.listenport: busy\n"
        "2026-11-26T22:04:35.383Z INFO iim.mux[10]: multiplexor stopped\n")
    assert error_line(stderr) == "worker 0: iim_mux.listenport: busy"
    stderr.write_text("")
    assert error_line(stderr) is None


def test_certificates_show_serial_and_expiry_and_say_when_expired():
    cert = {"subject": "CN=im.example.com", "serial": "5f1e",
            "not_after": "2027-03-01T12:00:00+00:00"}
    before = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
    after = dt.datetime(2027, 3, 11, 12, 0, tzinfo=dt.timezone.utc)

    assert describe_certificate(cert, before) == ("CN=im.example.com; serial 5f1e; expires "
                                                  "2027-03-01 12:00 UTC (in 90 days)")
    assert describe_certificate(cert, after).endswith("(EXPIRED 10 days ago)")


@pytest.mark.parametrize("seconds, shown", [(12, "12 s"), (303, "5 min 3 s"),
                                            (3 * 3600 + 720, "3 h 12 min"),
                                            (2 * 86400 + 3 * 3600, "2 d 3 h")])
def test_uptime_reads_like_a_person_would_say_it(seconds, shown):
    assert uptime(seconds) == shown

