"""A real ejabberd (Debian's 23.01) next to real iim servers, for interop tests.

Theory of operation
-------------------
Debian's ``ejabberdctl`` starts the node as the ``ejabberd`` user (who cannot
read a test's folder), under a well-known node name, with a cookie in that
user's home and epmd on port 4369, which outlives the node. None of that
suits a test, so ``EjabberdServer`` does what ``ejabberdctl foreground``
does, directly: it runs ``erl`` with the same ``ERL_LIBS`` and ``-s
ejabberd``, and everything else its own:

* configuration (``EJABBERD_CONFIG_PATH``), log (``EJABBERD_LOG_PATH``),
  Mnesia spool (``-mnesia dir``), crash dump and ``HOME`` in the test's folder;
* node name ``iimtest<pid>@localhost``, a random cookie (``-setcookie``: no
  ``.erlang.cookie`` is read or written);
* distribution without epmd: ``-start_epmd false -erl_epmd_port P`` (what
  ``ejabberdctl`` does when ``ERL_DIST_PORT`` is set) makes the node listen on
  127.0.0.1:P itself, so no epmd is started and none is left behind. The node
  can still be reached for debugging: ``erl -sname dbg@localhost -hidden
  -remsh <node> -setcookie <cookie> -start_epmd false -erl_epmd_port P
  -dist_listen false`` (both are in the stdout file);
* the node starts in a session of its own; ``stop`` sends SIGTERM (Erlang
  stops cleanly), kills it if it has not exited in time, and kills whatever is
  left in its process group. Its helpers ``erl_child_setup`` and
  ``inet_gethost`` run in sessions of their own and exit when the node's end of
  their pipes closes, however it ends. Should the test run itself be killed,
  the node gets SIGTERM (``PR_SET_PDEATHSIG``); its command line names the
  test's folder, so the run's process sweep (tests/conftest.py) would find it.

Users are registered by an ``-eval`` that runs once ``-s ejabberd`` has
returned (the application is started), which then prints ``READY``: the
server is ready when that line is out and both ports accept.

Name resolution. ejabberd looks up ``_xmpp-server._tcp`` SRV records with
Erlang's own resolver (``inet_res``), which reads ``ERL_INETRC``: ours names
the test zone (``tests/prosodylive.TestZone``) as the only nameserver and
turns ``/etc/resolv.conf`` off. The target's address, however, comes from
libc's ``getaddrinfo`` (xmpp's ``xmpp_stream_out``), that is from
``/etc/hosts`` and the system resolver, which a test cannot point at its zone.
So the SRV records ejabberd follows name ``localhost.`` as their target, and
the iim servers it talks to listen on 127.0.0.1 (each on its own port, given
by the SRV record). iim resolves through the zone
(``iim_server.s2s_nameservers``) like the Prosody tests.

One ejabberd serves several virtual hosts, each with its own s2s policy
(``host_config``: ``s2s_use_starttls``, ``s2s_cafile``), so one node boot
covers several scenarios; ejabberd picks each host's certificate among
``certfiles`` by name. ejabberd's ``ejabberd_pkix`` copies certificates and
keys into the spool's ``certs`` folder anyway, so the key is written as a
plain PEM file next to the certificate.

The configuration is written as JSON, which ejabberd's YAML parser reads.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from live import free_port, listening

ERL = shutil.which("erl") or "/usr/bin/erl"
EJABBERDCTL = "/usr/sbin/ejabberdctl"
READY = "READY"
PR_SET_PDEATHSIG = 1


@dataclass
class VirtualHost:
    """One ejabberd host: its users, the CA file it checks peers with, and
    further per-host options (``s2s_use_starttls``...)."""

    domain: str
    cafile: Path
    users: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def erl_libs() -> str:
    """Where Debian's ejabberd keeps its Erlang applications: ``ERL_LIBS`` as
    ``ejabberdctl`` sets it (``/usr/lib/<multiarch triplet>``)."""
    found = re.search(r"^ERL_LIBS='?([^'\n]+)'?$", Path(EJABBERDCTL).read_text(), re.M)
    if found is None:
        raise AssertionError(f"no ERL_LIBS line in {EJABBERDCTL}")
    return found.group(1)


def erlang_binary(text: str) -> str:
    return "<<\"" + text.replace("\\", "\\\\").replace('"', '\\"') + "\"/utf8>>"


class EjabberdServer:
    """ejabberd in ``folder`` on ``host`` serving ``vhosts``; ``certs`` are
    ``pki.Issued`` certificates (with keys) covering the hosts' names."""

    def __init__(self, folder: Path, vhosts, certs, zone, *, host: str = "127.0.0.5",
                 options: dict | None = None):
        self.folder, self.host, self.vhosts = folder, host, {v.domain: v for v in vhosts}
        self.c2s_port = free_port(host)
        self.s2s_port = free_port(host)
        self.dist_port = free_port("127.0.0.1")
        while len({self.c2s_port, self.s2s_port, self.dist_port}) < 3:
            self.s2s_port, self.dist_port = free_port(host), free_port("127.0.0.1")
        self.node = f"iimtest{os.getpid()}@localhost"
        self.cookie = secrets.token_hex(16)
        folder.mkdir(parents=True, exist_ok=True)
        self.spool = folder / "spool"
        self.spool.mkdir(exist_ok=True)
        self.certfiles = []
        for n, issued in enumerate(certs):
            path = folder / f"cert-{n}.pem"
            path.write_bytes(issued.chain_pem() + issued.key_pem())
            path.chmod(0o600)
            self.certfiles.append(path)
        self.inetrc = folder / "inetrc"
        self.inetrc.write_text('{resolv_conf, ""}.\n'        # first: it clears nameservers
                               f"{{nameserver, {{127,0,0,1}}, {zone.port}}}.\n")
        self.config = folder / "ejabberd.yml"
        self.config.write_text(json.dumps(self._config(options or {}), indent=2) + "\n")
        self.log_file = folder / "ejabberd.log"
        self.out_file = folder / "ejabberd.out"
        self.proc: subprocess.Popen | None = None
        for domain in self.vhosts:
            zone.add_xmpp_server(domain, f"xmpp.{domain}", host, self.s2s_port)

    def _config(self, options: dict) -> dict:
        first = next(iter(self.vhosts.values()))
        return {
            "hosts": list(self.vhosts),
            "loglevel": "debug",
            "hide_sensitive_log_data": False,
            "log_rotate_size": "infinity",       # tests read the log by offset
            "certfiles": [str(p) for p in self.certfiles],
            "ca_file": str(first.cafile),
            "acme": {"auto": False},
            "auth_method": "internal",
            "default_db": "mnesia",
            "s2s_use_starttls": "optional",
            "s2s_dns_timeout": 3,
            "s2s_dns_retries": 1,
            "outgoing_s2s_families": ["ipv4"],
            "outgoing_s2s_timeout": 10,
            "listen": [
                {"port": self.c2s_port, "ip": self.host, "module": "ejabberd_c2s",
                 "starttls_required": True},
                {"port": self.s2s_port, "ip": self.host, "module": "ejabberd_s2s_in"},
            ],
            "modules": {"mod_roster": {}, "mod_disco": {}, "mod_ping": {},
                        "mod_s2s_dialback": {}},
            "host_config": {v.domain: {"s2s_cafile": str(v.cafile), **v.options}
                            for v in self.vhosts.values()},
            **options,
        }

    def _register_users(self) -> str:
        """An Erlang expression registering every host's users, then printing READY."""
        users = ", ".join(f"{{{erlang_binary(u)}, {erlang_binary(v.domain)}, "
                          f"{erlang_binary(p)}}}"
                          for v in self.vhosts.values() for u, p in v.users.items())
        return (f"[ok = ejabberd_auth:try_register(U, H, P) || {{U, H, P}} <- [{users}]], "
                f'io:format("{READY}~n").')

    def command(self) -> list[str]:
        return [ERL, "-sname", self.node, "-setcookie", self.cookie,
                "-start_epmd", "false", "-erl_epmd_port", str(self.dist_port),
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                "+K", "true", "+P", "250000", "-noinput", "-noshell",
                "-mnesia", "dir", f'"{self.spool}"',
                "-ejabberd", "quiet", "true",           # console: critical only
                "-s", "ejabberd", "-eval", self._register_users()]

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ERL", "EJABBERD"))}
        env.update(HOME=str(self.folder), ERL_LIBS=erl_libs(), ERL_INETRC=str(self.inetrc),
                   EJABBERD_CONFIG_PATH=str(self.config), EJABBERD_LOG_PATH=str(self.log_file),
                   ERL_CRASH_DUMP=str(self.folder / "erl_crash.dump"),
                   ERL_CRASH_DUMP_BYTES="0", ERL_MAX_PORTS="32000")
        return env

    def start(self, timeout: float = 60) -> "EjabberdServer":
        if not os.path.exists(EJABBERDCTL):
            raise AssertionError(f"ejabberd is not installed ({EJABBERDCTL} missing): "
                                 f"./dev installs Debian's ejabberd package")
        with self.out_file.open("wb") as out:
            out.write(f"node {self.node} cookie {self.cookie} "
                      f"dist port {self.dist_port}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.command(), cwd=self.spool, env=self.environment(),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"ejabberd exited: {self.tail()}")
            if READY in self.output() and listening(self.host, self.c2s_port) \
                    and listening(self.host, self.s2s_port):
                return self
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"ejabberd not ready within {timeout} s: {self.tail()}")

    def stop(self) -> int:
        """SIGTERM (Erlang stops the node cleanly), then whatever is left of the
        process group is killed; returns the node's exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        try:
            proc.terminate()
            try:
                code = proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return code

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def output(self) -> str:
        return self.out_file.read_text(errors="replace") if self.out_file.exists() else ""

    def tail(self, entries: int = 40) -> str:
        """ejabberd's output and the last ``entries`` log entries above debug level,
        for assertion messages (debug entries, whole stanzas, are in the file)."""
        found = re.findall(r"^\S+ \S+ \[(?!debug\]).*?(?=^\S+ \S+ \[|\Z)", self.log(),
                           re.M | re.S)
        return (f"\n--- ejabberd stdout ({self.out_file}) ---\n{self.output()[-2000:]}"
                f"\n--- ejabberd log ({self.log_file}), last {entries} entries above debug "
                f"---\n{''.join(found[-entries:])}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the test run dies, even by SIGKILL
    (survives the exec of erl, erlexec and beam: none is set-uid)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
