"""dev-setup writes a usable development configuration and never deletes what it did not write."""

import os
import stat
import subprocess
import sys

import pytest

from iim.admin.devsetup import DevSetupError, dev_setup


def test_writes_every_file_private_where_it_matters(tmp_path):
    conf = dev_setup(tmp_path / "dev")
    folder = conf.parent
    assert sorted(p.name for p in folder.iterdir()) == [
        ".iim-dev-setup", "ca.pem", "iim.conf", "nssdb", "server-keystore.p12",
        "sslpassword.conf"]
    assert stat.S_IMODE(os.stat(folder / "sslpassword.conf").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert b"PRIVATE KEY" not in b"".join(
        p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_second_run_keeps_the_configuration(tmp_path):
    conf = dev_setup(tmp_path / "dev")
    before = (conf.parent / "sslpassword.conf").read_text()
    dev_setup(tmp_path / "dev")
    assert (conf.parent / "sslpassword.conf").read_text() == before
    dev_setup(tmp_path / "dev", force=True)
    assert (conf.parent / "sslpassword.conf").read_text() != before


def test_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "thesis.txt").write_text("four years of work")
    with pytest.raises(DevSetupError) as err:
        dev_setup(tmp_path, force=True)
    assert str(err.value) == (f"dev-setup: {tmp_path} holds thesis.txt not written by "
                              "dev-setup; choose an empty or new --dir")
    assert (tmp_path / "thesis.txt").read_text() == "four years of work"


def test_unusable_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, "-m", "iim.admin", "dev-setup", "--dir",
                           str(tmp_path / "afile" / "dev")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"dev-setup: {tmp_path / 'afile' / 'dev'}: Not a directory\n"
