"""``python -m iim.admin start|stop [server|multiplexor]``: the components as daemons.

Theory of operation
-------------------
*Which components.* The server always; the multiplexor when the server
takes multiplexor links (``iim_server.usemuxport``, true by default): with
it off, clients reach the server directly and a multiplexor of this
instance would have nothing to link to. Naming a component on the command
line overrides this (a multiplexor may serve a server on another host).

*Starting.* ``iim.admin`` loads iim.conf first (a broken file is reported
with its own errors and nothing starts), then runs ``python -m iim.server
-c FILE --managed`` as a daemon: a new session (setsid), working folder
``/``, standard input and output on /dev/null, standard error into
``<stem>.stderr`` in the runtime folder (``iim.instancevardir``). The
component itself claims ``<stem>.pid`` (locked while it runs, see
iim/runtime.py) and serves ``<stem>.sock`` (iim/control.py). Start returns
only when the component is *ready*: the server answers on its control
socket (it opens it after its listeners), the multiplexor reports every
relay thread's link to the server up. If the process ends first, start
fails with the one line it wrote on standard error; if it is not ready in
``--timeout`` seconds it is stopped again and start fails with the reason
(for the multiplexor, its last link error). So a successful start means a
working component, and a failed one leaves nothing behind.

*Stopping.* ``stop`` asks on the control socket (SIGTERM when nobody
answers) and waits, up to ``--timeout``, until the pid file's lock is
gone. The server goes first, then the multiplexor: stopping the server
sends every session ``<system-shutdown/>`` and closes its stream, those
carried by the multiplexor included (the bytes travel over the links while
they still exist). The other way round, the multiplexor would cut its
clients' TCP connections under them with no stream close, because only the
server speaks XMPP. Between the two steps the multiplexor, its links down,
refuses newcomers at once, which is what it does whenever the server is
away.

Exit status, for every command: 0 done, 1 failed (the reason on standard
error), 2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import iim
from iim import control, runtime
from iim.runtime import RuntimePaths

from . import status as status_commands
from .instance import (
    CHOICES, COMPONENTS, MUX, SERVER, AdminError, Component, Instance, err, out, selected,
    untrusted_pid,
)

__all__ = ["Component", "Instance", "MUX", "SERVER", "start", "stop"]

#: Seconds start and stop wait by default.
DEFAULT_TIMEOUT = 30.0
POLL = 0.1

#: A log line as iim.log writes it: "2026-11-26T20:00:00.123Z INFO iim.server[42]: ..."
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z (?P<level>\w+) "
                       r"[\w.]+(?:\[\d+\])?: (?P<message>.*)$")


# -- start ----------------------------------------------------------------------------------

def start(instance: Instance, component: Component, timeout: float) -> bool:
    """Start ``component`` unless it runs; True when it runs afterwards."""
    paths = instance.paths(component)
    try:
        runtime.make_folder(paths.folder)
        paths.check_socket_path()
        paths.check_files()
    except runtime.RuntimeFolderError as exc:
        err(f"{component}: not started: {exc}")
        return False
    found = runtime.probe(paths.pidfile)
    if found.state == "running":
        out(f"{component}: already running (pid {found.pid})")
        return True
    if found.state == "stale" and runtime.remove_stale(paths.pidfile) is not None:
        out(f"{component}: removed a stale pid file ({paths.pidfile}: pid {found.pid} "
            f"is not running)")
    try:
        proc = _spawn(instance, component, paths)
    except OSError as exc:
        err(f"{component}: not started: {exc.filename or paths.stderr}: {exc.strerror or exc}")
        return False
    problem = _wait_ready(proc, component, paths, timeout)
    if problem:
        err(f"{component}: not started: {problem}")
        return False
    out(f"{component} started (pid {proc.pid})")
    return True


def _spawn(instance: Instance, component: Component, paths: RuntimePaths) -> subprocess.Popen:
    """``python -m MODULE -c FILE --managed`` in its own session, detached from us."""
    fd = _fresh_file(paths.stderr)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", component.module, "-c", str(instance.conf_path),
             "--managed"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fd, cwd="/",
            start_new_session=True, env=_child_environment())
    finally:
        os.close(fd)


def _fresh_file(path: Path) -> int:
    """A new, empty ``path`` (mode 600) in the runtime folder: the old one is
    removed (``check_files`` made sure it is no symbolic link), and the new
    one made with O_EXCL and O_NOFOLLOW, so nothing planted is ever written."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   0o600)


def _child_environment() -> dict:
    """Our environment, with the iim package we run from first on the path: the
    daemon (started in /) runs the same code as this command."""
    env = dict(os.environ)
    source = str(Path(iim.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return env


def _wait_ready(proc: subprocess.Popen, component: Component, paths: RuntimePaths,
                timeout: float) -> str | None:
    """None once ``component`` is ready; else why not (and it is not left running)."""
    deadline = time.monotonic() + timeout
    reason = "no answer on its control socket"
    while True:
        code = proc.poll()
        if code is not None:
            return error_line(paths.stderr) or f"exited with status {code}"
        status = _status_or_none(paths)
        if status is not None and status.get("pid") == proc.pid:
            reason = not_ready_reason(component, status)
            if reason is None:
                return None
        if time.monotonic() >= deadline:
            _abandon(proc, paths)
            return f"not ready within {timeout:g} s ({reason}); stopped it again"
        time.sleep(POLL)


def not_ready_reason(component: Component, status: dict) -> str | None:
    """Why a component that answers is not ready yet (None: ready)."""
    if not status.get("ok"):
        return status.get("error", "not answering")
    if component is SERVER or status.get("ready"):
        return None
    errors = [w.get("link_error") for w in status.get("workers", []) if w.get("link_error")]
    up, total = status.get("links_up", 0), status.get("links", 0)
    return f"{up} of {total} links to the server up" + (f"; {errors[-1]}" if errors else "")


def _status_or_none(paths: RuntimePaths) -> dict | None:
    try:
        return control.ask(paths.socket, "status", timeout=5)
    except (control.ControlUnavailable, control.ControlFailed):
        return None


def _abandon(proc: subprocess.Popen, paths: RuntimePaths) -> None:
    """Stop a component that did not become ready."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    runtime.remove_stale(paths.pidfile)


def error_line(stderr_file: Path) -> str | None:
    """The one line a component that failed to start wrote on standard error.

    Components print their startup error as a bare line (no log prefix); the
    log may be on standard error too, so bare lines are preferred, then the
    message of the last CRITICAL/ERROR log line."""
    try:
        with open(stderr_file, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 65536))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    bare = [line for line in lines if not _LOG_LINE.match(line)]
    if bare:
        return bare[-1]
    severe = [m["message"] for m in map(_LOG_LINE.match, lines)
              if m and m["level"] in ("CRITICAL", "FATAL", "ERROR")]
    return severe[-1] if severe else None


# -- stop -------------------------------------------------------------------------------------

def stop(instance: Instance, component: Component, timeout: float) -> bool:
    """Stop ``component`` if it runs; True when it does not run afterwards."""
    paths = instance.paths(component)
    found = runtime.probe(paths.pidfile)
    if found.state == "untrusted":
        err(f"{component}: stop refused: {paths.pidfile} is not a regular file (a symbolic "
            "link?); nothing signalled")
        return False
    if found.state != "running":
        stale = runtime.remove_stale(paths.pidfile) if found.state == "stale" else None
        note = f" (removed a stale pid file: pid {stale} is not running)" if stale else ""
        out(f"{component}: not running{note}")
        return True
    problem = untrusted_pid(instance, component, found.pid)
    if problem:
        err(f"{component}: stop refused: {problem}; nothing signalled")
        return False
    how = _ask_to_stop(paths, found.pid)
    if not _wait_gone(paths, found.pid, timeout):
        err(f"{component}: pid {found.pid} did not stop within {timeout:g} s")
        return False
    runtime.remove_stale(paths.pidfile)     # when it could not remove it itself
    out(f"{component} stopped (pid {found.pid}{how})")
    return True


def _ask_to_stop(paths: RuntimePaths, pid: int | None) -> str:
    """Ask on the control socket; SIGTERM when nobody answers. Notes how."""
    try:
        answer = control.ask(paths.socket, "stop", timeout=10)
        if answer.get("ok"):
            return ""
    except (control.ControlUnavailable, control.ControlFailed):
        pass
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return "; its control socket did not answer, SIGTERM sent"


def _wait_gone(paths: RuntimePaths, pid: int | None, timeout: float) -> bool:
    """Until the process has ended (it drops its pid file's lock a moment before)."""
    deadline = time.monotonic() + timeout
    while process_alive(pid) or runtime.probe(paths.pidfile).state == "running":
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def process_alive(pid: int | None) -> bool:
    """A process ``pid`` exists and is not a zombie (our children are not
    reaped by us, and a reaper may be slow)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


# -- the commands -------------------------------------------------------------------------------

def cmd_start(args) -> int:
    try:
        instance = Instance.load(args.config, strict=True)
    except AdminError as exc:
        err(str(exc))
        return 1
    for component in selected(instance, args.component):
        if not start(instance, component, args.timeout):
            return 1
    return 0


def cmd_stop(args) -> int:
    try:
        instance = Instance.load(args.config, strict=False)
    except AdminError as exc:
        err(str(exc))
        return 1
    components = [CHOICES[args.component]] if args.component else list(COMPONENTS)
    ok = True
    for component in components:            # server first: see the module docstring
        ok = stop(instance, component, args.timeout) and ok
    return 0 if ok else 1


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


COMMON_FILES = """\
files:
  iim.conf                 -c FILE, else $IIM_CONF, else ./iim.conf
  INSTANCEVARDIR/          iim.instancevardir (default: the folder holding iim.conf):
    server.pid, mux.pid        process ids, locked while the component runs
    server.sock, mux.sock      control sockets (mode 600)
    server.stderr, mux.stderr  standard error of the daemons (and their log,
                               unless iim.log.<component>.url is set)
"""

EXIT_STATUS = """\
exit status:
  0  {ok}
  1  {failed}
  2  bad command line
"""

HELP = {
    "start": dict(
        summary="start the server and the multiplexor as daemons",
        description="""\
Start COMPONENT, or every component this instance uses: the server, then the
multiplexor when the server accepts multiplexor links (iim_server.usemuxport,
true by default). Each runs in the background, detached from the terminal,
and the command returns once it is ready: the server listening, the
multiplexor with every link to the server up. A component that fails prints
its one-line error and nothing is left running; a component that already
runs is left alone (a stale pid file from a crash is removed first).

iim.conf is checked first: with errors, they are printed and nothing starts.""",
        examples="""\
examples:
  python -m iim.admin start -c /etc/iim/iim.conf
      server started (pid 4242)
      multiplexor started (pid 4250)
  python -m iim.admin start server          # the server only
""",
        ok="every component asked for runs (started now or already running)",
        failed="iim.conf has errors, or a component did not start (the reason is printed)"),
    "stop": dict(
        summary="stop the server and the multiplexor cleanly",
        description="""\
Stop COMPONENT, or both: the server first (every client gets
<system-shutdown/> and a closed stream, those connected through the
multiplexor too), then the multiplexor. Each is asked on its control socket
(SIGTERM when it does not answer), and the command waits up to --timeout
seconds for it to end. A component that is not running is not an error.
Works even while iim.conf has errors, as long as iim.instancevardir is
readable.""",
        examples="""\
examples:
  python -m iim.admin stop -c /etc/iim/iim.conf
      server stopped (pid 4242)
      multiplexor stopped (pid 4250)
  python -m iim.admin stop multiplexor --timeout 60
""",
        ok="no component asked for is running any more",
        failed="a component did not stop within --timeout seconds"),
    "refresh": dict(
        summary="apply a changed iim.conf and renewed certificates, keeping sessions",
        description="""\
Have the running COMPONENT, or every running component, re-read iim.conf and
its certificates and apply them without dropping an established session.
New connections get the new settings; connected clients keep theirs.

The server applies: its keystore (a renewed certificate at the same path, or
new iim_server.sslkeystore / keystorealias / password files),
iim_server.requiressl, iim_server.trust_all_cert, iim_server.maxstanzasize,
iim_server.negotiation_timeout, iim_server.stanza_timeout and
iim.log.iim_server.severity. The multiplexor applies its NSS certificate
(iim_mux.secconfigdir, certnickname, prefixes, password file) and
iim.log.iim_mux.severity. Every other changed parameter (ports, database,
domain name, coservers, instances, threads ...) is printed, one line each,
as needing a restart, and keeps its running value until then.

An iim.conf with errors, or a keystore that cannot be read, is refused with
its one-line error, and the running components keep their settings.""",
        examples="""\
examples:
  python -m iim.admin refresh -c /etc/iim/iim.conf
      server: refreshed; certificate CN=im.example.com; serial 5f1e07; expires
              2027-03-01 12:00 UTC (in 94 days)
      server: iim_server.requiressl: applied
      server: iim_server.port: changed in iim.conf; needs a restart of the server
      multiplexor: refreshed
""",
        ok="every component asked for applied the new configuration",
        failed="iim.conf has errors, a component refused (the reason is printed),\n"
               "     or a component that should run is not running"),
    "status": dict(
        summary="show what runs, its sessions, links, peers and certificates",
        description="""\
For the server and the multiplexor (or COMPONENT): running or not, pid,
uptime; the server's sessions by transport security (none; legacy SSL ended
at the multiplexor; TLS end to end with STARTTLS; STARTTLS inside legacy
SSL), sessions still negotiating, multiplexor links, server-to-server peers
with their TLS state, and the certificate's expiry; the multiplexor's
workers, sessions (plain, legacy SSL, handshaking), links to the server and
NSS certificate. --json prints the same as one JSON object.""",
        examples="""\
examples:
  python -m iim.admin status -c /etc/iim/iim.conf
  python -m iim.admin status server --json | jq .server.status.sessions
""",
        ok="every component asked for (or used by this instance) is running",
        failed="a component that should run is not running, or does not answer"),
}


def _command(subparsers, name: str, run,
             default: str = "every component this instance uses") -> argparse.ArgumentParser:
    text = HELP[name]
    epilog = text["examples"] + "\n" + EXIT_STATUS.format(**text) + "\n" + COMMON_FILES
    parser = subparsers.add_parser(name, help=text["summary"], description=text["description"],
                                   epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("component", nargs="?", choices=("server", "multiplexor", "mux"),
                        metavar="COMPONENT",
                        help=f"server or multiplexor (mux); default: {default}")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="iim.conf (default: $IIM_CONF, else ./iim.conf)")
    parser.set_defaults(run=run)
    return parser


def add_daemon_parsers(subparsers) -> None:
    """Register start, stop, refresh, status and version on iim.admin's subparsers."""
    for name, run, default in (("start", cmd_start, "every component this instance uses"),
                               ("stop", cmd_stop, "both")):
        parser = _command(subparsers, name, run, default)
        parser.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT,
                            metavar="SECONDS",
                            help=f"how long to wait for each component "
                                 f"(default: {DEFAULT_TIMEOUT:g})")
    _command(subparsers, "refresh", status_commands.cmd_refresh, "every running component")
    status = _command(subparsers, "status", status_commands.cmd_status, "both")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    version = subparsers.add_parser(
        "version", help="print the versions of iim, Python, OpenSSL and NSS",
        description="Print the version of the iim package, of Python, of the OpenSSL "
                    "Python's ssl module and the multiplexor's relay core are linked "
                    "with, and of the NSS library that reads the multiplexor's "
                    "certificate database: what a bug report needs.",
        epilog="example:\n  python -m iim.admin version\n\n"
               "exit status:\n  0  always (a part that cannot be loaded says so)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    version.set_defaults(run=status_commands.cmd_version)
