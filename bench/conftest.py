"""Make the test helpers in ``tests/`` (``xmpp_pair``) importable from the benchmarks."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
