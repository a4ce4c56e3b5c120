"""The multiplexor's control: the supervisor's socket and its workers' channels.

Theory of operation. The numbers live in the workers (each relay core counts
its sessions), the control socket in the supervisor (it alone claims the
runtime folder; see iim/control.py for the wire format). So the supervisor
talks to each worker over a private channel: a ``socketpair`` made when it
starts the worker, whose other end the worker inherits (``--control-fd``).
Nothing else can reach a worker; a restarted worker gets a fresh pair.

On a channel the supervisor writes one JSON line ``{"id": n, "op": ...}``
and reads lines until the one that carries the same ``id`` (an answer that
arrives after its request timed out is skipped, never taken for the next).

* ``status``: the worker's counters (sessions plain / legacy SSL /
  handshaking, opened, closed, refused), its links (up / total, the last
  link error) and the certificate it presents, if any.
* ``refresh``: the worker re-reads iim.conf and, with legacy SSL on, builds
  a new TLS context from the NSS database the new file names. New clients
  get it; connected ones keep theirs. If anything fails the worker keeps
  what it had and answers with the one line why.

``refresh`` on the supervisor first loads iim.conf itself (a broken file is
refused before any worker is asked), then asks every worker, then reports
the changed parameters that need a restart (ports, instances, threads ...):
a worker keeps the settings it started with until the multiplexor restarts.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from pathlib import Path

from iim import conf, control
from iim.control import certificate_info, one_line
from iim.conf import Config, ConfigError
from iim.conf.changes import changed, merge
from iim.keys.errors import KeyMaterialError

__all__ = ["LIVE", "CertificateLoader", "WorkerControl", "ask_worker", "concerns_mux",
           "supervisor_status", "supervisor_refresh"]

#: The multiplexor's parameters a refresh applies at once (to new clients).
LIVE = frozenset({
    "iim_mux.secconfigdir", "iim_mux.keydbprefix", "iim_mux.certdbprefix",
    "iim_mux.secmodfile", "iim_mux.certnickname", "iim_mux.keystorepasswordfile",
    "iim.log.iim_mux.severity",
})
#: Seconds the supervisor waits for a worker's answer.
WORKER_TIMEOUT = 10.0

_ids = itertools.count(1)


def concerns_mux(param: str) -> bool:
    """Whether the multiplexor reads ``param``."""
    return param.startswith(("iim_mux.", "iim.log.iim_mux.")) or param == "iim.instancevardir"


# -- the supervisor's end of a worker channel --------------------------------------------

def ask_worker(channel: socket.socket, op: str, timeout: float = WORKER_TIMEOUT) -> dict:
    """One request to a worker; ``{"ok": False, "error": ...}`` when it does not answer."""
    request_id = next(_ids)
    deadline = time.monotonic() + timeout
    try:
        channel.settimeout(timeout)
        channel.sendall(control.encode({"id": request_id, "op": op}))
        reader = _lines(channel, deadline)
        for line in reader:
            answer = control.decode(line)
            if answer.pop("id", None) == request_id:
                return answer
    except (OSError, ValueError):
        pass
    return {"ok": False, "error": "the worker did not answer"}


def _lines(channel: socket.socket, deadline: float):
    pending = b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line
        channel.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = channel.recv(65536)
        if not chunk or len(pending) > control.MAX_MESSAGE:
            return
        pending += chunk


# -- the worker's end ------------------------------------------------------------------------

class CertificateLoader:
    """The worker's legacy-SSL loader: ``() -> TlsContext`` from the NSS database
    named by ``mux`` (changed by refresh), remembering what it loaded and why
    it last failed."""

    def __init__(self, mux, ticket_keys: bytes | None, log: logging.Logger) -> None:
        self.mux = mux
        self.ticket_keys = ticket_keys
        self.log = log
        self.certificate = None
        self.error: str | None = None

    def __call__(self):
        from . import tls as muxtls
        try:
            material, warnings = muxtls.load_material(self.mux)
            context = muxtls.context_from_material(material, self.ticket_keys)
        except KeyMaterialError as exc:
            self.error = str(exc)
            raise
        for warning in warnings:
            self.log.warning("%s", warning)
        self.certificate, self.error = material.certificate, None
        return context


class WorkerControl:
    """A worker's end of its channel: a thread answering the supervisor."""

    def __init__(self, fd: int, config: Config, instance: int, ticket_keys: bytes | None,
                 log: logging.Logger) -> None:
        self.sock = socket.socket(fileno=fd)
        self.config = config
        self.instance = instance
        self.log = log
        self.loader = CertificateLoader(config.mux, ticket_keys, log)
        self.worker = None
        self.started = time.time()
        self._lock = threading.Lock()

    def attach(self, worker) -> None:
        """The worker is running: start answering."""
        self.worker = worker
        threading.Thread(target=self._answer_forever, name="control", daemon=True).start()

    def _answer_forever(self) -> None:
        buffered = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return                          # the supervisor is gone
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                self._answer(line)

    def _answer(self, line: bytes) -> None:
        try:
            request = control.decode(line)
            op = request.get("op")
            handler = {"status": self.status, "refresh": self.refresh}.get(op)
            answer = handler() if handler else {"ok": False, "error": f"unknown request {op!r}"}
        except ValueError:
            request, answer = {}, {"ok": False, "error": "unreadable request"}
        except Exception as exc:  # noqa: BLE001 - a bug must not end the channel
            self.log.exception("control: request failed")
            answer = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        try:
            self.sock.sendall(control.encode({"id": request.get("id"), **answer}))
        except OSError:
            pass

    def status(self) -> dict:
        worker = self.worker
        stats = worker.stats()
        errors = [getattr(t, "last_error", None) for t in worker.threads if not t.link_up]
        errors = [e for e in errors if e]
        return {"ok": True, "instance": self.instance, "pid": os.getpid(),
                "started": self.started, "links_up": stats["links_up"],
                "links": stats["links"], "link_error": errors[-1] if errors else None,
                "sessions": {"plain": stats.get("sessions_plain", 0),
                             "legacy-ssl": stats.get("sessions_tls", 0),
                             "handshaking": stats.get("handshaking", 0)},
                "opened": stats.get("opened", 0), "closed": stats.get("closed", 0),
                "refused": stats.get("refused", 0),
                "usessl": worker.settings.usessl,
                "certificate": certificate_info(self.loader.certificate)}

    def refresh(self) -> dict:
        """Re-read iim.conf; with legacy SSL, a new certificate for new clients."""
        with self._lock:
            try:
                new = conf.load(self.config.path)
            except ConfigError as err:
                return {"ok": False, "error": one_line(err)}
            running = merge(self.config, new, LIVE)
            if self.worker.settings.usessl:
                problem = self._reload(running)
                if problem:
                    return {"ok": False, "error": problem}
            self.config = running
            logging.getLogger("iim").setLevel(running.log.mux.severity.logging_level)
            return {"ok": True, "certificate": certificate_info(self.loader.certificate)}

    def _reload(self, running: Config) -> str | None:
        previous = self.loader.mux
        self.loader.mux = running.mux
        if self.worker.reload_certificate("refresh"):
            return None
        self.loader.mux = previous
        return self.loader.error or "certificate not reloaded"


# -- the supervisor's control socket ----------------------------------------------------------

def supervisor_status(supervisor) -> dict:
    """The multiplexor's status: every worker's answer, and their totals."""
    workers = [supervisor.ask(slot, "status") for slot in supervisor.slots]
    answered = [w for w in workers if w.get("ok")]
    sessions = {"plain": 0, "legacy-ssl": 0, "handshaking": 0}
    for worker in answered:
        for kind in sessions:
            sessions[kind] += worker["sessions"].get(kind, 0)
    mux = supervisor.config.mux
    return {"component": "multiplexor", "pid": os.getpid(),
            "listen": str(mux.listenport), "server": str(mux.serverport),
            "usessl": mux.usessl, "workers": workers, "sessions": sessions,
            "links_up": sum(w["links_up"] for w in answered),
            "links": sum(w["links"] for w in answered),
            "ready": len(answered) == len(workers) and
            all(w["links_up"] == w["links"] > 0 for w in answered),
            "certificate": next((w["certificate"] for w in answered if w["certificate"]),
                                None)}


def supervisor_refresh(supervisor) -> dict:
    """Re-read iim.conf, have every worker apply it; what needs a restart."""
    try:
        new = conf.load(supervisor.config_path)
    except ConfigError as err:
        return {"ok": False, "error": one_line(err)}
    differences = [p for p in changed(supervisor.config, new) if concerns_mux(p)]
    answers = [supervisor.ask(slot, "refresh") for slot in supervisor.slots]
    failed = [a for a in answers if not a.get("ok")]
    if failed:
        supervisor.log.error("refresh refused: %s", failed[0].get("error"))
        return {"ok": False, "error": failed[0].get("error")}
    supervisor.config = merge(supervisor.config, new, LIVE)
    logging.getLogger("iim").setLevel(supervisor.config.log.mux.severity.logging_level)
    applied = [p for p in differences if p in LIVE]
    restart = [p for p in differences if p not in LIVE]
    supervisor.log.info("refresh: applied: %s", ", ".join(applied) or "no parameter changed")
    for param in restart:
        supervisor.log.warning("refresh: %s changed; takes effect after a restart", param)
    return {"ok": True, "applied": applied, "restart": restart,
            "certificate": next((a.get("certificate") for a in answers
                                 if a.get("certificate")), None),
            "warnings": [str(w) for w in new.warnings]}


class SupervisorControl:
    """The supervisor's control socket (iim.control.ControlThread) and its answers."""

    def __init__(self, supervisor, path: Path, started: float) -> None:
        self.supervisor = supervisor
        self.started = started
        self.thread = control.ControlThread(path, self.handle, supervisor.log)

    def start(self) -> None:
        self.thread.start()
        self.supervisor.log.info("control socket %s", self.thread.path)

    def handle(self, request: dict):
        op = request["op"]
        if op == "status":
            return {"ok": True, **supervisor_status(self.supervisor),
                    "started": self.started}, None
        if op == "refresh":
            return supervisor_refresh(self.supervisor), None
        self.supervisor.log.info("stop requested on the control socket")
        return {"ok": True, "pid": os.getpid()}, self.supervisor.request_stop

    def close(self) -> None:
        self.thread.close()
