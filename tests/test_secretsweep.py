"""The end-of-run secret sweep finds a planted leak and nothing in clean logs.
(Planted outside pytest's base folder, which the real sweep reads.)"""

import tempfile
from pathlib import Path

from secretsweep import leaks, passwords_written


def test_the_sweep_finds_a_password_in_a_log():
    with tempfile.TemporaryDirectory() as name:
        base = Path(name)
        (base / "a").mkdir()
        (base / "a" / "sslpassword.conf").write_text("Internal (Software) Token:Sweep-Me-42\n")
        (base / "a" / "iim.conf").write_text('iim_server.coserver1.password = "Co-Secret-77"\n')
        (base / "a" / "dev-users.txt").write_text("alice@localhost Alice-Pw-1234\n")
        (base / "a" / "server.log").write_text("INFO all fine\n")
        assert passwords_written(base) == {"Sweep-Me-42", "Co-Secret-77", "Alice-Pw-1234"}
        assert leaks(base) == []
        (base / "a" / "server.log.2").write_text("DEBUG oops Co-Secret-77\n")
        assert leaks(base) == [f"{base / 'a' / 'server.log.2'}: contains a password "
                               f"written to a password file"]
