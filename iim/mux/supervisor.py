"""The supervisor: ``iim_mux.numinstances`` worker processes, kept alive.

Theory of operation. The supervisor relays nothing and holds no listening
socket; before the first worker starts, ``python -m iim.mux`` claims the
port for the multiplexor's whole life (iim/mux/port.py): a second
multiplexor, or any other program listening there, stops it with one line
instead of silently sharing the port with it. It starts each worker as
``python -m iim.mux -c CONF --worker K`` (a fresh interpreter: no state
inherited from a forked parent) and watches them. A worker that dies for
any reason is started again at once (and, while it keeps dying young, after
a growing delay: 1 s doubling to 30 s), without a new claim. The
other workers and their clients are untouched, and new clients keep being
served meanwhile, because every worker listens on the same port with
SO_REUSEPORT. A worker that fails
on its very first start (a port in use, unreadable key material) stops the
whole multiplexor: that does not mend itself by retrying.

Signals: SIGTERM/SIGINT are passed to the workers, which stop relaying and
exit; the supervisor then exits 0. SIGHUP is passed on (the workers reload
the certificate).

Control (iim/mux/control.py): each worker gets one end of a socketpair
(``--control-fd``) on which the supervisor asks for its status and has it
refresh; a managed supervisor (``--managed``) serves ``mux.sock`` in the
runtime folder for ``iim.admin status|refresh|stop``.

The workers share TLS session ticket keys, made here and passed through a
pipe, so a client resumes its TLS session whichever worker the kernel hands
its next connection to, and across worker restarts; supervisor and workers
step the keys hourly along one ratchet (iim/mux/ticketkeys.py).

Logging (iim/log.py): a worker never opens the log file; its records come
here through a pipe of its own (``--log-fd``), so this process alone writes
and rotates the file.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from iim import conf
from iim import log as iim_log
from iim.mux.ticketkeys import TicketKeys

__all__ = ["EXIT_STARTUP", "Supervisor"]

#: A worker's exit status when it could not start (worker.serve returns it).
EXIT_STARTUP = 2
#: Restart delays for a worker that keeps dying young.
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
#: A worker that lived this long is restarted at once when it dies.
YOUNG = 10.0
#: How long stopping workers get before SIGKILL.
STOP_TIMEOUT = 15.0


@dataclass
class _Slot:
    """Worker K: its current process and restart bookkeeping."""

    instance: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    delay: float = 0.0
    restart_at: float | None = None
    ever_ran: bool = False
    channel: socket.socket | None = None        # our end of its control socketpair
    lock: threading.Lock = field(default_factory=threading.Lock)


class Supervisor:
    def __init__(self, config_path: Path, instances: int, log: logging.Logger, *,
                 config=None, runtime=None) -> None:
        self.config_path = Path(config_path).resolve()
        self.slots = [_Slot(k) for k in range(instances)]
        self.log = log
        self.config = config if config is not None else conf.load(self.config_path)
        self.runtime = runtime          # iim.runtime.Runtime when managed
        self.control = None
        self._ticket_keys = TicketKeys(time.time())
        self._wake = threading.Event()
        self._signals: set[int] = set()

    def run(self) -> int:
        """Start the workers, keep them alive until SIGTERM/SIGINT; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._start_control()
        for slot in self.slots:
            self._spawn(slot)
        self.log.info("multiplexor supervisor (pid %d): %d worker(s) started", os.getpid(),
                      len(self.slots))
        status = self._watch()
        if self.control is not None:
            self.control.close()
        self._stop_all()
        return status

    # -- administration: iim.admin status / refresh / stop (iim/mux/control.py) ----------

    def _start_control(self) -> None:
        if self.runtime is None:
            return
        from iim.runtime import RuntimeFolderError
        from .control import SupervisorControl
        socket_path = self.runtime.paths.socket
        try:
            self.control = SupervisorControl(self, socket_path, self.runtime.pidfile.started)
        except OSError as exc:
            raise RuntimeFolderError(f"iim.instancevardir: cannot listen on {socket_path}: "
                                     f"{exc.strerror or exc}") from None
        self.control.start()

    def ask(self, slot: _Slot, op: str) -> dict:
        """Worker ``slot``'s answer to ``op`` over its channel (any thread)."""
        from .control import ask_worker
        with slot.lock:
            proc, channel = slot.proc, slot.channel
            if proc is None or channel is None or proc.poll() is not None:
                return {"ok": False, "instance": slot.instance, "error": "restarting"}
            answer = ask_worker(channel, op)
        return {**answer, "instance": slot.instance, "pid": proc.pid}

    def status(self) -> dict:
        """Workers, links, sessions and certificate (JSON-ready)."""
        from .control import supervisor_status
        return supervisor_status(self)

    def refresh(self) -> dict:
        """Re-read iim.conf; the workers reload the certificate; what needs a restart."""
        from .control import supervisor_refresh
        return supervisor_refresh(self)

    def request_stop(self) -> None:
        """Stop as on SIGTERM (any thread)."""
        self._signals.add(signal.SIGTERM)
        self._wake.set()

    def _on_signal(self, signum, _frame) -> None:
        self._signals.add(signum)
        self._wake.set()

    def _watch(self) -> int:
        while True:
            self._wake.wait(0.1)
            self._wake.clear()
            if self._signals & {signal.SIGTERM, signal.SIGINT}:
                return 0
            if signal.SIGHUP in self._signals:
                self._signals.discard(signal.SIGHUP)
                self._forward(signal.SIGHUP)
            for slot in self.slots:
                if self._check(slot) == "fatal":
                    return 1

    def _check(self, slot: _Slot) -> str | None:
        now = time.monotonic()
        if slot.proc is None:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
            return None
        status = slot.proc.poll()
        if status is None:
            return None
        slot.proc = None
        lived = now - slot.started
        if status == EXIT_STARTUP and not slot.ever_ran:
            self.log.critical("worker %d could not start (see above); stopping the multiplexor",
                              slot.instance)
            return "fatal"
        slot.ever_ran = True
        if lived >= YOUNG:
            slot.delay = 0.0
        wait = slot.delay
        if lived < YOUNG:
            slot.delay = min(max(slot.delay * 2, RESTART_FIRST), RESTART_MAX)
        self.log.error("worker %d %s after %.1f s; restarting%s", slot.instance, _how(status),
                       lived, f" in {wait:.0f} s" if wait else "")
        slot.restart_at = now + wait
        if not wait:
            self._spawn(slot)
        return None

    def _spawn(self, slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, self._ticket_keys.serialize(time.time()))
        finally:
            os.close(write_end)
        ours, theirs = socket.socketpair()
        log_fd = iim_log.forward_worker_log(f"worker {slot.instance}")   # one file writer
        argv = [sys.executable, "-m", "iim.mux", "-c", str(self.config_path),
                "--worker", str(slot.instance), "--ticket-key-fd", str(read_end),
                "--control-fd", str(theirs.fileno()), "--log-fd", str(log_fd)]
        try:
            proc = subprocess.Popen(argv, pass_fds=(read_end, theirs.fileno(), log_fd))
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(read_end)
            os.close(log_fd)
            theirs.close()
        with slot.lock:
            if slot.channel is not None:
                slot.channel.close()
            slot.proc, slot.channel = proc, ours
        slot.started = time.monotonic()
        slot.restart_at = None
        self.log.info("worker %d started (pid %d)", slot.instance, slot.proc.pid)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    def _stop_all(self) -> None:
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.error("worker %d did not stop within %.0f s; killing it",
                               slot.instance, STOP_TIMEOUT)
                slot.proc.kill()
                slot.proc.wait()
        iim_log.drain_worker_logs()          # the workers' last lines come first
        self.log.info("multiplexor stopped")

def _how(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"
