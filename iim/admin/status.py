"""``python -m iim.admin status|refresh|version``: ask the running components.

``status`` and ``refresh`` find each component through its pid file and ask
on its control socket (iim/control.py); what a component answers is shown
here, never computed here. A component that runs but does not answer is
reported as such (status) or sent SIGHUP, which reloads certificates only
(refresh).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import signal
import ssl
import sys

from iim import control, runtime

from .instance import (
    CHOICES, COMPONENTS, SERVER, AdminError, Component, Instance, err, out, untrusted_pid,
)

__all__ = ["cmd_refresh", "cmd_status", "cmd_version", "describe_certificate", "uptime"]

SECURITY_LABELS = {
    "none": "no TLS",
    "legacy-ssl": "legacy SSL (TLS ended at the multiplexor)",
    "tls": "TLS end to end (STARTTLS with the server)",
    "both": "legacy SSL and STARTTLS inside it",
}


# -- status ---------------------------------------------------------------------------------------

def cmd_status(args) -> int:
    try:
        instance = Instance.load(args.config, strict=False)
    except AdminError as exc:
        err(str(exc))
        return 1
    if instance.error is not None:
        err(f"warning: iim.conf has errors: {control.one_line(instance.error)}")
    explicit = args.component is not None
    components = [CHOICES[args.component]] if explicit else list(COMPONENTS)
    report = {c.name: collect(instance, c, expected=explicit or instance.should_run(c))
              for c in components}
    if args.json:
        out(json.dumps(report, indent=2, sort_keys=True))
    else:
        for component in components:
            for line in render(component, report[component.name]):
                out(line)
    return 0 if all(entry["healthy"] for entry in report.values()) else 1


def collect(instance: Instance, component: Component, *, expected: bool) -> dict:
    """What the pid file and the control socket say about ``component``."""
    paths = instance.paths(component)
    found = runtime.probe(paths.pidfile)
    entry = {"state": found.state, "pid": found.pid, "expected": expected,
             "pidfile": str(paths.pidfile)}
    if found.state == "running":
        try:
            entry["status"] = control.ask(paths.socket, "status", timeout=10)
        except (control.ControlUnavailable, control.ControlFailed) as exc:
            entry["control_error"] = str(exc)
        started = entry.get("status", {}).get("started") or found.started
        entry["uptime_seconds"] = round(max(0.0, dt.datetime.now().timestamp() - started), 1)
    entry["healthy"] = not expected or (found.state == "running" and "status" in entry)
    return entry


def render(component: Component, entry: dict) -> list[str]:
    """The human-readable block for one component."""
    state = entry["state"]
    if state == "untrusted":
        return [f"{component}: unknown: {entry['pidfile']} is not a regular file (a symbolic "
                "link?); remove it"]
    if state != "running":
        why = f" (stale pid file: pid {entry['pid']} is not running)" if state == "stale" else ""
        unused = "" if entry["expected"] else "; not used by this instance"
        return [f"{component}: not running{why}{unused}"]
    head = f"{component}: running (pid {entry['pid']}, up {uptime(entry['uptime_seconds'])})"
    if "control_error" in entry:
        return [head, f"  control socket  not answering: {entry['control_error']}"]
    status = entry["status"]
    body = _server_lines(status) if component is SERVER else _mux_lines(status)
    return [head] + [f"  {line}" for line in body]


def _server_lines(status: dict) -> list[str]:
    sessions = status["sessions"]
    established = sum(sessions.values())
    lines = [_row("domain", status["domain"]),
             _row("listening", "; ".join(
                 [f"{a} (client and server streams)" for a in status["listening"]]
                 + [f"{a} (multiplexor links)" for a in status["mux_listening"]]
                 + [f"{a} (XMPP over WebSocket and BOSH)"
                    for a in status.get("http_listening", [])]) or "nothing"),
             _row("requiressl", "true" if status["requiressl"] else "false"),
             _row("sessions", f"{established} established, {status['negotiating']} "
                              f"negotiating")]
    lines += [f"  {SECURITY_LABELS[kind]:<44} {sessions.get(kind, 0)}"
              for kind in SECURITY_LABELS]
    links = status["mux_links"]
    lines.append(_row("mux links", f"{sum(link['state'] == 'up' for link in links)} up"
                      if links else "none"))
    lines += [f"  {link['name']}: {link['state']}, {_plural(link['sessions'], 'session')}"
              for link in links]
    lines += _s2s_lines(status)
    lines.append(_row("certificate", describe_certificate(status["certificate"])
                      if status["certificate"] else "none (no keystore: TLS not offered)"))
    return lines


def _s2s_lines(status: dict) -> list[str]:
    peers = status.get("s2s", [])
    lines = [_row("s2s peers", f"{len(peers)}" if peers else "none")]
    for peer in peers:
        lines.append(f"  {peer.get('domain', '?')} {peer.get('direction', '?')}: "
                     f"TLS {peer.get('tls') or 'none'}, authenticated by "
                     f"{peer.get('auth') or 'nothing yet'}, {peer.get('state', '?')}")
    if status.get("s2s_error"):
        lines.append(f"  (federation did not describe its peers: {status['s2s_error']})")
    return lines


def _mux_lines(status: dict) -> list[str]:
    sessions = status["sessions"]
    ssl_state = "legacy SSL on" if status["usessl"] else "legacy SSL off"
    lines = [_row("clients on", f"{status['listen']} ({ssl_state})"),
             _row("server", f"{status['server']}: {status['links_up']} of "
                            f"{status['links']} links up"),
             _row("sessions", f"{sum(sessions.values())}: plain {sessions['plain']}, "
                              f"legacy SSL {sessions['legacy-ssl']}, "
                              f"handshaking {sessions['handshaking']}")]
    lines.append(_row("workers", str(len(status["workers"]))))
    lines += [f"  {_worker_line(worker)}" for worker in status["workers"]]
    certificate = status["certificate"]
    lines.append(_row("certificate", describe_certificate(certificate) if certificate else
                      "none (legacy SSL off)" if not status["usessl"] else "none loaded"))
    return lines


def _worker_line(worker: dict) -> str:
    name = f"worker {worker.get('instance')}"
    if not worker.get("ok"):
        return f"{name}: {worker.get('error', 'not answering')}"
    sessions = sum(worker["sessions"].values())
    line = (f"{name} (pid {worker['pid']}, up {uptime(_since(worker['started']))}): "
            f"links {worker['links_up']}/{worker['links']} up, "
            f"{_plural(sessions, 'session')}, {worker['opened']} opened, "
            f"{worker['refused']} refused")
    return line + (f"; last link error: {worker['link_error']}" if worker.get("link_error")
                   else "")


def _row(label: str, value: str) -> str:
    return f"{label:<14}{value}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _since(epoch: float) -> float:
    return max(0.0, dt.datetime.now().timestamp() - epoch)


def uptime(seconds: float) -> str:
    """``2 d 3 h``, ``3 h 12 min``, ``5 min 3 s``, ``12 s``."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def describe_certificate(cert: dict, now: dt.datetime | None = None) -> str:
    """``CN=...; serial 5f1e...; expires 2027-03-01 12:00 UTC (in 94 days)``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    expires = dt.datetime.fromisoformat(cert["not_after"])
    days = (expires - now).days
    when = f"in {days} days" if expires > now else f"EXPIRED {-days} days ago"
    return (f"{cert['subject']}; serial {cert['serial']}; expires "
            f"{expires.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC ({when})")


# -- refresh ------------------------------------------------------------------------------------

def cmd_refresh(args) -> int:
    try:
        instance = Instance.load(args.config, strict=True)
    except AdminError as exc:
        err(str(exc))
        err("refresh refused: iim.conf has errors; the running components keep their settings")
        return 1
    for warning in instance.config.warnings:
        err(f"warning: {warning}")
    explicit = args.component is not None
    components = [CHOICES[args.component]] if explicit else list(COMPONENTS)
    ok = True
    for component in components:
        ok = refresh(instance, component, expected=explicit or instance.should_run(component)) \
            and ok
    return 0 if ok else 1


def refresh(instance: Instance, component: Component, *, expected: bool) -> bool:
    """Refresh one component; print what happened; False when it failed."""
    paths = instance.paths(component)
    found = runtime.probe(paths.pidfile)
    if found.state != "running":
        if expected:
            err(f"{component}: not running; nothing to refresh")
        return not expected
    problem = untrusted_pid(instance, component, found.pid)
    if problem:
        err(f"{component}: refresh refused: {problem}; nothing signalled")
        return False
    try:
        answer = control.ask(paths.socket, "refresh")
    except (control.ControlUnavailable, control.ControlFailed) as exc:
        return _hangup(component, found.pid, exc)
    if not answer.get("ok"):
        err(f"{component}: refresh refused, running settings kept: {answer.get('error')}")
        return False
    certificate = answer.get("certificate")
    out(f"{component}: refreshed" +
        (f"; certificate {describe_certificate(certificate)}" if certificate else ""))
    for param in answer.get("applied", []):
        out(f"{component}: {param}: applied")
    for param in answer.get("restart", []):
        out(f"{component}: {param}: changed in iim.conf; needs a restart of the {component}")
    return True


def _hangup(component: Component, pid: int | None, problem: Exception) -> bool:
    """The control socket did not answer: SIGHUP, which reloads certificates only."""
    err(f"{component}: control socket not answering ({problem})")
    if pid:
        try:
            os.kill(pid, signal.SIGHUP)
            err(f"{component}: sent SIGHUP to pid {pid}: certificates reloaded, iim.conf "
                "not re-read")
        except ProcessLookupError:
            pass
    return False


# -- version ------------------------------------------------------------------------------------

def cmd_version(args) -> int:
    for line in versions():
        out(line)
    return 0


def versions() -> list[str]:
    return [f"iim {_package_version()}",
            f"Python {platform.python_version()} ({platform.python_implementation()}, "
            f"{sys.executable})",
            f"{ssl.OPENSSL_VERSION} (Python's ssl module: the server)",
            f"{_relay_openssl()} (multiplexor relay core, iim._fastmux)",
            f"NSS {_nss()} (multiplexor certificate database reader, iim.keys._nss)"]


def _package_version() -> str:
    try:
        return importlib.metadata.version("iim")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: running from a source tree)"


def _relay_openssl() -> str:
    try:
        from iim import _fastmux
    except ImportError:
        return "OpenSSL unknown: iim._fastmux is not built (python setup.py build_ext)"
    return _fastmux.openssl_version()


def _nss() -> str:
    try:
        from iim.keys import _nss
    except ImportError:
        return "unknown: iim.keys._nss is not built (python setup.py build_ext)"
    return _nss.nss_version()

