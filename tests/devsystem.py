"""The development system of ``python -m iim.admin dev-setup``, running for real.

``DevSystem(folder)`` holds what the real dev-setup command writes (CA,
PKCS#12 keystore, NSS database made by certutil/pk12util, users alice and
bob), then moves every port in its iim.conf to a free one so that tests run
side by side. The command runs once per process (key generation, certutil
and pk12util cost 0.4 s of CPU); every DevSystem is a copy of that folder
(same keys and passwords; what a test changes in its copy stays in it).
``variant(name, **params)`` writes another iim.conf beside it with some
parameters changed (a legacy-SSL multiplexor, a server without keystore...);
``start_server``/``start_mux`` run ``python -m iim.server``/``iim.mux`` on
one of them and wait until they serve.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from support import Process, free_port
from support.process import count_in

TOKEN = "Internal (Software) Token"


class DevSystem:
    """``web``: keep dev-setup's XMPP/HTTP gateway (iim_server.httpport, on
    ``http_port``). Without it the server starts without aiohttp, whose import
    is half the CPU of a server's start (0.25 s); the tests of the gateway and
    of ``./dev run`` itself keep it."""

    def __init__(self, folder: Path, web: bool = False) -> None:
        self.folder = Path(folder)
        copy_dev_setup(self.folder)
        self.conf = self.folder / "iim.conf"
        self.server_port, self.link_port = free_port(), free_port()
        self.mux_port = free_port()
        self.http_port = free_port() if web else None
        self._set(self.conf, {"iim_server.port": f"127.0.0.1:{self.server_port}",
                              "iim_mux.serverport": f"127.0.0.1:{self.link_port}",
                              "iim_mux.listenport": f"127.0.0.1:{self.mux_port}",
                              "iim.log.iim_server.url": "server.log",
                              "iim.log.iim_mux.url": "mux.log"})
        if web:
            self._set(self.conf, {"iim_server.httpport": f"127.0.0.1:{self.http_port}"})
        else:
            self._drop(self.conf, ("iim_server.httpport", "iim_server.http_allow_plain"))
        self.users = {}                         # localpart -> password
        for line in (self.folder / "dev-users.txt").read_text().splitlines():
            jid, password = line.split(" ", 1)
            self.users[jid.split("@")[0]] = password
        self.store_password = self.password_in(self.folder / "sslpassword.conf")
        self.procs: list[Process] = []
        self.mux: tuple[Process, Path, int] | None = None    # the last multiplexor started

    @staticmethod
    def password_in(path: Path) -> str:
        return path.read_text().strip().split(":", 1)[1]

    def variant(self, name: str, params: dict[str, str]) -> Path:
        """A copy of iim.conf named ``name`` with ``params`` changed (or added)."""
        path = self.folder / name
        path.write_text(self.conf.read_text())
        self._set(path, params)
        return path

    @staticmethod
    def _set(path: Path, params: dict[str, str]) -> None:
        text = path.read_text()
        for key, value in params.items():
            line = f'{key} = "{value}"'
            pattern = re.compile(rf"^{re.escape(key)}\s*=.*$", re.MULTILINE)
            text, count = pattern.subn(line, text)
            if not count:
                text += line + "\n"
        path.write_text(text)

    @staticmethod
    def _drop(path: Path, keys: tuple[str, ...]) -> None:
        text = path.read_text()
        for key in keys:
            text, count = re.subn(rf"^{re.escape(key)}\s*=.*\n", "", text, flags=re.MULTILINE)
            assert count == 1, f"{key} is not in {path} once"
        path.write_text(text)

    @staticmethod
    def param(path: Path, key: str) -> str:
        match = re.search(rf'^{re.escape(key)}\s*=\s*"(.*)"$', path.read_text(), re.MULTILINE)
        return match[1]

    def start_server(self, conf: Path | None = None) -> Process:
        conf = conf or self.conf
        port = int(self.param(conf, "iim_server.port").rsplit(":", 1)[1])
        return self.spawn("iim.server", conf).wait_port(port)

    def start_mux(self, conf: Path | None = None, instances: int = 1) -> Process:
        """Start the multiplexor and wait until every relay thread has its link."""
        conf = conf or self.conf
        log = self.folder / self.param(conf, "iim.log.iim_mux.url")
        before = count_in(log, UP)
        proc = self.spawn("iim.mux", conf, "--instances", str(instances))
        threads = instances * int(self.param(conf, "iim_mux.maxthreads"))
        self.mux = (proc, log, threads)
        return proc.wait_log(log, UP, before + threads)

    def restart_server(self, conf: Path | None = None) -> Process:
        """Start the server again under the running multiplexor (the last one
        started), after ``stop`` ended it: returns once every relay thread has
        its link again. Until then the multiplexor refuses clients (by design),
        so a test that went on at the listening port would race its reconnect."""
        mux, log, threads = self.mux
        before = count_in(log, UP)
        server = self.start_server(conf)
        mux.wait_log(log, UP, before + threads)
        return server

    def spawn(self, module: str, conf: Path, *args: str) -> Process:
        """``python -m module -c conf args``, its output in this folder (module.stderr...)."""
        proc = Process([sys.executable, "-m", module, "-c", str(conf), *args], self.folder,
                       module.replace(".", "-"))
        self.procs.append(proc)
        return proc

    def stop(self, proc: Process) -> tuple[int, str]:
        """SIGTERM; (exit status, what it wrote on stderr)."""
        try:
            code = proc.stop()
        finally:
            self.procs.remove(proc)
        return code, proc.stderr()

    def stop_all(self) -> list[str]:
        """Stop everything still running; the stderr of each."""
        return [self.stop(proc)[1] for proc in list(reversed(self.procs))]


_dev_setup: Path | None = None          # the folder this process's dev-setup wrote


def copy_dev_setup(folder: Path) -> None:
    """``folder`` as ``python -m iim.admin dev-setup --dir folder`` writes it: a
    copy (file modes kept) of the folder the real command wrote in this process;
    the NSS database's pkcs11.txt names its own folder."""
    global _dev_setup
    if _dev_setup is None:
        scratch = Path(tempfile.mkdtemp(prefix="iim-dev-setup-"))
        atexit.register(shutil.rmtree, scratch, True)
        run_admin("dev-setup", "--dir", str(scratch / "dev"))
        _dev_setup = scratch / "dev"
    shutil.copytree(_dev_setup, folder, symlinks=True)
    modules = folder / "nssdb" / "pkcs11.txt"
    old, new = f"configdir='sql:{_dev_setup / 'nssdb'}'", f"configdir='sql:{folder / 'nssdb'}'"
    assert old in modules.read_text(), modules.read_text()
    modules.write_text(modules.read_text().replace(old, new))


UP = " up to 127.0.0.1:"                  # the multiplexor's line for a relay thread's link


def wait_for_port(port: int, proc: Process | None = None) -> None:
    if proc is not None:
        proc.wait_port(port)
        return
    from support import wait_until, listening
    wait_until(lambda: listening("127.0.0.1", port), f"127.0.0.1:{port} to answer")


def run_admin(*args: str, env=None, stdin: str = "",
              check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "iim.admin", *args], capture_output=True,
                          text=True, timeout=120, env=env, input=stdin)
    if check and proc.returncode:
        raise AssertionError(f"iim.admin {' '.join(args)}: {proc.stderr}")
    return proc


def admin_here(*args: str, env: dict[str, str] | None = None,
               stdin: str = "") -> subprocess.CompletedProcess:
    """``run_admin`` in this process (``iim.admin``'s ``main``), its standard
    input, output and error, and with ``env`` its environment, swapped for the
    call: for a command whose logic a test checks rather than its process
    (status, refresh and stop ask the daemons on their control sockets, verify
    is a client); 0.25 s of CPU less than a process. What a process would write
    on standard error through logging's last resort (a warning or worse logged
    by this call's thread) is in its standard error too. One call at a time."""
    from iim.admin.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _stdin(io.StringIO(stdin)), _last_resort(err):
            try:
                code = main(list(args))
            except SystemExit as exc:               # argparse: a bad command line
                code = exc.code
    finally:
        if env is not None:
            os.environ.clear()
            os.environ.update(saved)
    return subprocess.CompletedProcess(["iim.admin", *args], code, out.getvalue(),
                                       err.getvalue())


@contextlib.contextmanager
def _last_resort(stream):
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@contextlib.contextmanager
def _stdin(file):
    saved, sys.stdin = sys.stdin, file
    try:
        yield
    finally:
        sys.stdin = saved
