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
