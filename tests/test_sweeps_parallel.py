"""The end-of-run sweeps (tests/conftest.py) fail a parallel run (pytest-xdist,
as ./dev test runs the suite) on a leak in any worker's folder.

An inner pytest runs with -n 2 and this folder's conftest as a plugin, its base
folder outside this run's (so this run's own sweep does not see its plants).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import wait_until

TESTS = Path(__file__).parent

LEAKY = '''
import subprocess, sys
from pathlib import Path

def test_writes_a_password_and_logs_it(tmp_path):
    (tmp_path / "sslpassword.conf").write_text("Internal (Software) Token:Planted-Pw-4711\\n")
    (tmp_path / "server.log").write_text("DEBUG the password is Planted-Pw-4711\\n")

def test_leaves_a_process_running(tmp_path):
    marker = tmp_path / "still-here"
    marker.write_text("")
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(marker)])
'''

CLEAN = '''
def test_one(tmp_path):
    (tmp_path / "sslpassword.conf").write_text("Internal (Software) Token:Planted-Pw-4711\\n")
    (tmp_path / "server.log").write_text("INFO nothing to see\\n")

def test_two(tmp_path):
    (tmp_path / "x.log").write_text("INFO fine\\n")
'''


@pytest.fixture
def outside():
    folder = Path(tempfile.mkdtemp(prefix="iim-sweeps-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def inner_run(folder: Path, source: str) -> subprocess.CompletedProcess:
    (folder / "test_planted.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # Without the hypothesis and benchmark plugins, which the planted tests do not
    # use: they cost each of the run's three processes 0.4 s of CPU to load.
    return subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-p", "conftest",
                           "-p", "no:cacheprovider", "-p", "no:randomly",
                           "-p", "no:hypothesispytest", "-p", "no:benchmark",
                           "--rootdir", str(folder), "--basetemp", str(folder / "bt"),
                           "-o", "addopts=", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_a_leak_or_a_process_left_in_a_worker_fails_the_parallel_run(outside):
    run = inner_run(outside, LEAKY)
    out = run.stdout
    assert "2 passed" in out, out + run.stderr
    assert run.returncode == 1, out
    assert "secret sweep: 1 passwords from the run's password files looked for in its logs: " \
           "1 leaks" in out, out
    assert "/popen-gw" in out.split("LEAK ", 1)[1].splitlines()[0]
    assert "process sweep: 1 process(es) of this run still running" in out, out
    left = [line for line in out.splitlines() if line.startswith("LEFT RUNNING ")]
    assert len(left) == 1 and "still-here" in left[0], out
    pid = int(left[0].split()[2].rstrip(":"))
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), f"the leftover {pid} was not killed ({state})"


def test_a_clean_parallel_run_passes_its_sweeps(outside):
    run = inner_run(outside, CLEAN)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "2 passed" in out
    assert "secret sweep: 1 passwords from the run's password files looked for in its logs: " \
           "no leak" in out, out
    assert "process sweep: 0 process(es) of this run still running" in out, out


def test_the_process_sweep_takes_only_paths_inside_the_folder(outside):
    """Another run's folder whose name merely starts with this run's is not this run's."""
    from conftest import leftover_processes
    base = outside / "bt"
    argvs = {"inside": [str(base / "iim.conf")], "option": [f"--conf={base}/iim.conf"],
             "beside": [f"{base}-other/iim.conf"], "option-beside": [f"--conf={base}x"]}
    procs = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                     *argv]) for name, argv in argvs.items()}
    try:
        inside = {procs["inside"].pid, procs["option"].pid}
        # Both once /proc shows them (one was missing once in a busy full run);
        # then exactly those: the two beside the folder never count.
        found = wait_until(lambda: (pids := {pid for pid, _ in leftover_processes(str(base))})
                           >= inside and pids, what=f"{inside} in the sweep")
        assert found == inside
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
