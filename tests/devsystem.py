"""The development system of ``python -m iim.admin dev-setup``, running for real.

``DevSystem(folder)`` runs the real dev-setup command (CA, PKCS#12 keystore,
NSS database made by certutil/pk12util, users alice and bob), then moves
every port in its iim.conf to a free one so that tests run side by side.
``variant(name, **params)`` writes another iim.conf beside it with some
parameters changed (a legacy-SSL multiplexor, a server without keystore...);
``start_server``/``start_mux`` run ``python -m iim.server``/``iim.mux`` on
one of them and wait until they serve.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from live import free_port

TOKEN = "Internal (Software) Token"


class DevSystem:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        run_admin("dev-setup", "--dir", str(self.folder))
        self.conf = self.folder / "iim.conf"
        self.server_port, self.link_port = free_port(), free_port()
        self.mux_port = free_port()
        self._set(self.conf, {"iim_server.port": f"127.0.0.1:{self.server_port}",
                              "iim_mux.serverport": f"127.0.0.1:{self.link_port}",
                              "iim_mux.listenport": f"127.0.0.1:{self.mux_port}",
                              "iim.log.iim_server.url": "server.log",
                              "iim.log.iim_mux.url": "mux.log"})
        self.users = {}                         # localpart -> password
        for line in (self.folder / "dev-users.txt").read_text().splitlines():
            jid, password = line.split(" ", 1)
            self.users[jid.split("@")[0]] = password
        self.store_password = self.password_in(self.folder / "sslpassword.conf")
        self.procs: list[subprocess.Popen] = []

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
    def param(path: Path, key: str) -> str:
        match = re.search(rf'^{re.escape(key)}\s*=\s*"(.*)"$', path.read_text(), re.MULTILINE)
        return match[1]

    def start_server(self, conf: Path | None = None) -> subprocess.Popen:
        conf = conf or self.conf
        port = int(self.param(conf, "iim_server.port").rsplit(":", 1)[1])
        proc = self._spawn("iim.server", conf)
        wait_for_port(port, proc)
        return proc

    def start_mux(self, conf: Path | None = None, instances: int = 1) -> subprocess.Popen:
        """Start the multiplexor and wait until every relay thread has its link."""
        conf = conf or self.conf
        log = self.folder / self.param(conf, "iim.log.iim_mux.url")
        before = _count_up(log)
        proc = self._spawn("iim.mux", conf, "--instances", str(instances))
        wanted = before + instances * int(self.param(conf, "iim_mux.maxthreads"))
        deadline = time.monotonic() + 30
        while _count_up(log) < wanted:
            assert proc.poll() is None, f"the multiplexor exited: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the multiplexor's links never came up"
            time.sleep(0.05)
        return proc

    def _spawn(self, module: str, conf: Path, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", module, "-c", str(conf), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> tuple[int, str]:
        """SIGTERM; (exit status, what it wrote on stderr)."""
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("a process did not stop on SIGTERM")
        self.procs.remove(proc)
        return proc.returncode, err

    def stop_all(self) -> list[str]:
        """Stop everything still running; the stderr of each."""
        return [self.stop(proc)[1] for proc in list(reversed(self.procs))]


def _count_up(log: Path) -> int:
    return log.read_text().count(" up to 127.0.0.1:") if log.exists() else 0


def wait_for_port(port: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with status {proc.returncode}: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def run_admin(*args: str, env=None, stdin: str = "",
              check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "iim.admin", *args], capture_output=True,
                          text=True, timeout=120, env=env, input=stdin)
    if check and proc.returncode:
        raise AssertionError(f"iim.admin {' '.join(args)}: {proc.stderr}")
    return proc
