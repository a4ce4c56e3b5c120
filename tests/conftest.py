import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pki  # noqa: E402


# The files that take longest, longest first (per-file wall time of a full run,
# pytest --durations or tests/support's timings). ./dev test runs each file whole on
# one worker (--dist loadfile) in collection order (--no-loadscope-reorder): the
# long files start first, so that the workers end together instead of one of
# them starting a long file when the others are done (xdist's own order, most
# tests first, put the few-but-slow process tests last). A stale entry only
# costs some balance, never a result.
SLOW_FIRST = (
    "test_admin_daemon.py", "test_server_robustness.py", "test_admin_verify.py",
    "test_federation_robustness.py", "test_mux_robustness.py", "test_admin_keys.py",
    "test_file_modes.py", "test_federation_policy.py", "test_keystore.py",
    "test_federation_prosody.py", "test_federation_limits.py", "test_federation_ejabberd.py",
    "test_mux_supervisor.py", "test_web_browser.py", "test_trust_keytool.py",
    "test_muxlink_security.py", "test_preauth_limits.py", "test_preauth_rss.py",
    "test_clients_interop.py", "test_admin_check.py", "test_log.py", "test_devsetup.py",
    "test_mux_tls.py", "test_runtime_safety.py", "test_dialback_limits.py", "test_federation.py",
    "test_login_throttle.py", "test_architecture.py", "test_nss.py", "test_bench_tools.py",
    "test_per_source_limits.py", "test_mux_e2e.py", "test_session_limits.py",
    "test_offline_quota.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable


@pytest.fixture(scope="session")
def ca():
    """One root CA for the whole run (key generation is the slow part)."""
    return pki.CA.root()


@pytest.fixture(scope="session")
def sub_ca(ca):
    return ca.intermediate()


def pytest_sessionfinish(session, exitstatus):
    """The run's own secret sweep (tests/secretsweep.py) and process sweep: a
    leaked password or a process left running fails the run.

    With pytest-xdist (./dev test) they run once, in the controller, after
    every worker has finished: each worker's base folder is a folder of the
    controller's (popen-gw0, popen-gw1...), so one sweep covers them all; a
    worker does not sweep (its exit status would not reach the run's)."""
    from secretsweep import leaks, passwords_written
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or exitstatus not in (0, 1) or hasattr(session.config, "workerinput"):
        return
    base = factory.getbasetemp()
    secrets = passwords_written(base)           # read once: ~1 s over a whole run's files
    found = leaks(base, secrets)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")
        reporter.write_line(f"secret sweep: {len(secrets)} passwords from the "
                            f"run's password files looked for in its logs: "
                            f"{'no leak' if not found else f'{len(found)} leaks'}")
        for line in found:
            reporter.write_line(f"LEAK {line}")
    leftovers = leftover_processes(str(base))
    if reporter is not None:
        reporter.write_line(f"process sweep: {len(leftovers)} process(es) of this run still "
                            f"running")
        for pid, cmdline in leftovers:
            reporter.write_line(f"LEFT RUNNING {pid}: {cmdline} (killed now)")
    for pid, _ in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if found or leftovers:
        session.exitstatus = 1


def leftover_processes(marker: str) -> list[tuple[int, str]]:
    """Processes whose command line names a file of this run's temporary folder
    (a server or multiplexor a test started and did not stop): an argument that
    is the folder or a path in it, not one that merely starts with the same
    characters (another run's /tmp/bt-x-other beside this run's /tmp/bt-x)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        paths = (arg.split("=", 1)[-1] for arg in cmdline.split())     # --option=path too
        if any(path == marker or path.startswith(marker + os.sep) for path in paths):
            found.append((int(entry.name), cmdline.strip()))
    return found
