"""The C tools of bench/mux_side_by_side.py build from what git holds and work.

bench/c/loadgen.c (the load generator) and bench/c/linkecho.c (the echo and
docs/muxlink.md link-echo backend) are compiled here from the files git
tracks (a clone has nothing else: a tool source that .gitignore hides would
fail), then a few dozen round trips run through the real multiplexor
(``python -m iim.mux``) in front of linkecho, and through linkecho's plain
echo. The load generator checks every byte that comes back, so a relay that
reorders, drops or alters a byte shows as "corrupt" or "lost".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import Process, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.fail("cc and make are needed (./dev installs build-essential)")
    tracked = subprocess.run(["git", "ls-files", "bench/c"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert {"bench/c/Makefile", "bench/c/loadgen.c", "bench/c/linkecho.c"} <= set(tracked)
    src = tmp_path_factory.mktemp("bench-c-src")
    for name in tracked:
        shutil.copy(ROOT / name, src / Path(name).name)
    out = tmp_path_factory.mktemp("bench-c-build")
    build = subprocess.run(["make", "-s", "-C", str(src), f"OUT={out}"], capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stderr
    return out


def run_loadgen(tools: Path, *args: str) -> dict:
    done = subprocess.run([str(tools / "loadgen"), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_usage_errors_are_one_line(tools):
    done = subprocess.run([str(tools / "loadgen"), "rr"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage: loadgen")
    done = subprocess.run([str(tools / "linkecho"), "--mode", "tcp", "--port", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--mode link|echo" in done.stderr


def test_echo_backend_closed_loop_paced_and_connection_modes(tools, tmp_path):
    port = free_port()
    echo = Process([str(tools / "linkecho"), "--mode", "echo", "--port", str(port)],
                   tmp_path, "echo")
    try:
        echo.wait_until(lambda: "LISTENING" in echo.stdout(), "LISTENING")
        rr = run_loadgen(tools, "rr", "--port", str(port), "--sessions", "20",
                         "--seconds", "0.5", "--warmup", "0", "--size", "300")
        assert (rr["opened"], rr["lost"], rr["corrupt"], rr["errors"]) == (20, 0, 0, 0)
        assert rr["count"] > 0 and 0 < rr["p50_us"] <= rr["p99_us"]
        paced = run_loadgen(tools, "rr", "--port", str(port), "--sessions", "10",
                            "--seconds", "0.3", "--warmup", "0", "--rate", "200")
        assert paced["offered"] == 200 and 0 < paced["count"] <= 80
        assert (paced["lost"], paced["corrupt"]) == (0, 0)
        conn = run_loadgen(tools, "conn", "--port", str(port), "--concurrency", "2",
                           "--seconds", "0.5")
        assert conn["count"] > 0 and conn["errors"] == 0
        bulk = run_loadgen(tools, "bulk", "--port", str(port), "--sessions", "2",
                           "--seconds", "0.5", "--warmup", "0")
        assert bulk["bytes"] > 0 and bulk["corrupt"] == 0
    finally:
        echo.stop()


def test_a_tiny_exchange_through_the_multiplexor(tools, tmp_path):
    backend_port, port = free_port(), free_port()
    link = Process([str(tools / "linkecho"), "--port", str(backend_port)], tmp_path, "linkecho")
    mux = None
    try:
        link.wait_until(lambda: "LISTENING" in link.stdout(), "LISTENING")
        (tmp_path / "iim.conf").write_text(
            f'iim_mux.listenport = "127.0.0.1:{port}"\n'
            f'iim_mux.serverport = "127.0.0.1:{backend_port}"\n'
            'iim_mux.maxthreads = "1"\niim_mux.muxlink_tls = "off"\n')
        mux = Process([sys.executable, "-m", "iim.mux", "-c", str(tmp_path / "iim.conf")],
                      tmp_path, "mux")
        link.wait_until(lambda: "LINK 1" in link.stdout(), "the mux's link READY")
        mux.wait_port(port)
        rr = run_loadgen(tools, "rr", "--port", str(port), "--sessions", "8",
                         "--seconds", "0.5", "--warmup", "0", "--size", "5000",
                         "--watch", str(mux.pid))
        assert (rr["opened"], rr["lost"], rr["corrupt"], rr["errors"]) == (8, 0, 0, 0)
        assert rr["count"] > 0 and len(rr["watch_cpu"]) == 1
        idle = subprocess.run([str(tools / "loadgen"), "idle", "--port", str(port),
                               "--sessions", "5"], input="", capture_output=True, text=True,
                              timeout=60)
        assert idle.stdout.startswith("READY 5\n"), idle.stderr
    finally:
        if mux is not None:
            assert mux.stop() == 0, mux.report()
        link.stop()
