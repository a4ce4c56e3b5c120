"""The runtime folder is ours alone (issue 12): planted files are refused.

Whoever can put a file in ``iim.instancevardir`` could make ``iim.admin
start`` write through a symbolic link, or ``iim.admin stop`` signal a
process of their choosing. Each test plants what an attacker would (a
symbolic link to a file we care about, a locked pid file naming some other
process, a folder others may write), runs ``iim.admin`` and checks the
one-line refusal *and* that nothing happened: the target is untouched, the
process is alive. A refusal is decided before anything is started or
signalled, so those commands run in the test's process (its ``main``, output
captured); this instance's own server is started, refreshed and stopped by
real ``python -m iim.admin`` processes, and a component run by hand is one
too. The last test runs the real ``./dev run`` and reads both logs: a clean
start logs no WARNING.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devsystem import DevSystem, admin_here
from live import free_port

from iim import runtime

TOP = Path(__file__).resolve().parent.parent
PRECIOUS = "precious: not to be overwritten\n"


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iim.admin", *args], capture_output=True,
                          text=True, timeout=120)


class Light:
    """A server-only iim.conf (no keystore, no multiplexor links) and its runtime folder."""

    def __init__(self, folder: Path, rundir: Path | None = None) -> None:
        folder.mkdir(mode=0o700, exist_ok=True)
        self.folder = folder
        self.rundir = rundir or folder
        self.conf = folder / "iim.conf"
        self.conf.write_text(f'iim_server.domainname = "localhost"\n'
                             f'iim_server.port = "127.0.0.1:{free_port()}"\n'
                             f'iim_mux.serverport = "127.0.0.1:{free_port()}"\n'
                             f'iim_mux.listenport = "127.0.0.1:{free_port()}"\n'
                             f'iim.instancevardir = "{self.rundir}"\n'
                             f'iim.log.iim_server.url = "server.log"\n'
                             f'iim.log.iim_mux.url = "mux.log"\n')

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        """``python -m iim.admin ARGS -c iim.conf``: a process."""
        return admin(*args, "-c", str(self.conf))

    def ask(self, *args: str) -> subprocess.CompletedProcess:
        """The same command in this process (devsystem.admin_here): for a refusal,
        which is decided before any process is started or signalled."""
        return admin_here(*args, "-c", str(self.conf))

    def cleanup(self) -> None:
        """Whatever a failing test (or today's code) left running."""
        for stem in ("server", "mux"):
            found = runtime.probe(self.rundir / f"{stem}.pid")
            if found.state == "running" and found.pid and \
                    runtime.foreign(found.pid, self.rundir / f"{stem}.pid", stem,
                                    self.conf) is None:
                os.kill(found.pid, signal.SIGKILL)


@pytest.fixture
def light(tmp_path):
    system = Light(tmp_path / "inst")
    yield system
    system.cleanup()


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# -- planted symbolic links ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["server.stderr", "server.pid", "server.sock",
                                  "mux.stderr", "mux.pid", "mux.sock"])
def test_start_refuses_a_symbolic_link_planted_for_a_runtime_file(light, tmp_path, name):
    target = tmp_path / "victim.txt"
    target.write_text(PRECIOUS)
    os.chmod(target, 0o644)
    link = light.rundir / name
    link.symlink_to(target)
    component = "server" if name.startswith("server") else "multiplexor"

    proc = light.ask("start", component, "--timeout", "5")

    assert proc.returncode == 1
    assert one_line(proc) == (f"{component}: not started: {link}: a symbolic link; iim makes "
                              "its runtime files itself and never follows one: remove it")
    assert target.read_text() == PRECIOUS and os.stat(target).st_mode & 0o777 == 0o644
    assert link.is_symlink()
    assert runtime.probe(light.rundir / f"{name.split('.')[0]}.pid").state != "running"


def test_a_component_run_by_hand_refuses_a_symbolic_link_for_its_pid_file(light, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text(PRECIOUS)
    (light.rundir / "server.pid").symlink_to(target)

    proc = subprocess.run([sys.executable, "-m", "iim.server", "-c", str(light.conf),
                           "--managed"], capture_output=True, text=True, timeout=60)

    assert proc.returncode == 1
    assert one_line(proc).startswith(f"{light.rundir / 'server.pid'}: a symbolic link")
    assert target.read_text() == PRECIOUS


# -- a planted pid file --------------------------------------------------------------------------

def locked_pid_file(path: Path, argv: list[str]) -> subprocess.Popen:
    """A process we start holding an exclusive flock on ``path``, which names its pid
    (what an attacker's process, or a pid file left for an unrelated process, looks like)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = subprocess.Popen(argv, pass_fds=[fd])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder.pid}\n".encode(), 0)
    finally:
        os.close(fd)                    # the holder keeps the lock through its copy
    return holder


IMPOSTORS = {
    "another program": ["sleep", "60"],
    "a Python process that is not iim": [sys.executable, "-c", "import time; time.sleep(60)"],
    "iim.server of another iim.conf": [sys.executable, "-c", "import time; time.sleep(60)",
                                       "-m", "iim.server", "-c", "/elsewhere/iim.conf"],
}


@pytest.mark.parametrize("impostor", IMPOSTORS)
@pytest.mark.parametrize("command", ["stop", "refresh"])
def test_a_locked_pid_file_naming_a_process_not_ours_is_refused_and_nothing_signalled(
        light, impostor, command):
    pidfile = light.rundir / "server.pid"
    holder = locked_pid_file(pidfile, IMPOSTORS[impostor])
    try:
        assert runtime.probe(pidfile) == runtime.Probe("running", holder.pid,
                                                       pidfile.stat().st_mtime)
        proc = light.ask(command, "server", "--timeout", "3") if command == "stop" else \
            light.ask(command, "server")
        time.sleep(0.5)                     # a signal, had one been sent, has arrived
        still_running = holder.poll() is None
    finally:
        holder.kill()
        holder.wait()

    assert proc.returncode == 1
    line = one_line(proc)
    assert line.startswith(f"server: {command} refused: {pidfile} names pid {holder.pid}, "
                           f"which is not this instance's server: ")
    assert line.endswith("; nothing signalled")
    assert still_running


def test_stop_refuses_a_pid_file_that_is_a_symbolic_link(light, tmp_path):
    target = tmp_path / "elsewhere.pid"
    holder = locked_pid_file(target, ["sleep", "60"])
    (light.rundir / "server.pid").symlink_to(target)
    try:
        proc = light.ask("stop", "server", "--timeout", "3")
        time.sleep(0.5)
        still_running = holder.poll() is None
    finally:
        holder.kill()
        holder.wait()

    assert proc.returncode == 1
    assert one_line(proc) == (f"server: stop refused: {light.rundir / 'server.pid'} is not a "
                              "regular file (a symbolic link?); nothing signalled")
    assert still_running


def test_the_real_server_is_still_stopped_and_refreshed(light):
    """The check lets this instance's own server through (it is what start ran)."""
    assert light.admin("start", "server").returncode == 0
    pid = int((light.rundir / "server.pid").read_text())
    assert runtime.foreign(pid, light.rundir / "server.pid", "server", light.conf) is None
    assert "it does not hold" in runtime.foreign(pid, light.folder / "iim.conf", "server",
                                                 light.conf)
    refreshed = light.admin("refresh", "server")
    stopped = light.admin("stop", "server")

    assert refreshed.returncode == 0, refreshed.stderr
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"server stopped (pid {pid})"


# -- the folder's owner and mode -----------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_start_refuses_a_runtime_folder_others_may_write(tmp_path, mode):
    rundir = tmp_path / "run"
    rundir.mkdir()
    os.chmod(rundir, mode)
    system = Light(tmp_path / "inst", rundir)
    try:
        proc = system.ask("start", "server", "--timeout", "5")
        by_hand = subprocess.run([sys.executable, "-m", "iim.server", "-c", str(system.conf),
                                  "--managed"], capture_output=True, text=True, timeout=60)
    finally:
        system.cleanup()

    reason = (f"iim.instancevardir: {rundir}: writable by group or others (mode {mode:04o}); "
              "use a folder only its owner can write (chmod 700)")
    assert proc.returncode == 1
    assert one_line(proc) == f"server: not started: {reason}"
    assert by_hand.returncode == 1 and one_line(by_hand) == reason
    assert list(rundir.iterdir()) == []


def test_start_refuses_a_runtime_folder_another_user_owns(tmp_path):
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o700)
    other = 65534 if os.geteuid() != 65534 else 65533
    os.chown(rundir, other, -1)
    system = Light(tmp_path / "inst", rundir)
    try:
        proc = system.ask("start", "server", "--timeout", "5")
    finally:
        system.cleanup()

    assert proc.returncode == 1
    assert one_line(proc) == (f"server: not started: iim.instancevardir: {rundir}: owned by "
                              f"uid {other}, not by this user (uid {os.geteuid()}); use a "
                              "folder of your own")
    assert list(rundir.iterdir()) == []


# -- a clean ./dev run logs no warning -------------------------------------------------------------

def test_a_clean_dev_run_logs_no_warning(tmp_path):
    """The real ./dev run (set-up skipped: the tree is built) on a dev-setup folder
    with free ports: once the multiplexor's links are up, neither log holds a WARNING
    (before: the readiness probe's own connection to the link port was logged as a
    lost multiplexor link)."""
    dev = DevSystem(tmp_path / "dev", web=True)     # all that ./dev run serves
    links = int(dev.param(dev.conf, "iim_mux.maxthreads"))
    out = (tmp_path / "dev-run.out").open("w")
    proc = subprocess.Popen([str(TOP / "dev"), "run", "--dir", str(dev.folder), "--no-setup"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while _links_up(dev.folder / "mux.log") < links:
            assert proc.poll() is None, (tmp_path / "dev-run.out").read_text()
            assert time.monotonic() < deadline, "the multiplexor's links never came up"
            time.sleep(0.1)
        time.sleep(1)                   # anything the start logs late, e.g. a lost link
        logs = {name: (dev.folder / name).read_text() for name in ("server.log", "mux.log")}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        out.close()

    assert "serving localhost" in logs["server.log"]
    for name, text in logs.items():
        assert [line for line in text.splitlines() if " WARNING " in line] == [], name


def _links_up(log: Path) -> int:
    return log.read_text().count(" up to ") if log.exists() else 0
