import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pki  # noqa: E402


@pytest.fixture(scope="session")
def ca():
    """One root CA for the whole run (key generation is the slow part)."""
    return pki.CA.root()


@pytest.fixture(scope="session")
def sub_ca(ca):
    return ca.intermediate()


def pytest_sessionfinish(session, exitstatus):
    """The run's own secret sweep (tests/secretsweep.py): a leak fails the run."""
    from secretsweep import leaks, passwords_written
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or exitstatus not in (0, 1):
        return
    base = factory.getbasetemp()
    found = leaks(base)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"secret sweep: {len(passwords_written(base))} passwords from the "
                            f"run's password files looked for in its logs: "
                            f"{'no leak' if not found else f'{len(found)} leaks'}")
        for line in found:
            reporter.write_line(f"LEAK {line}")
    if found:
        session.exitstatus = 1
