"""A real child process for a test: spawned, waited for, stopped, its logs kept.

stdout and stderr go to files beside the test's other files (never a pipe a
chatty process could fill and block on), so they can be read at any time and
are quoted whenever a wait fails. Every wait is for an event (a port that
answers, a line in a log, any condition); the deadline only bounds how long a
failure takes to be reported, and the process ending first fails at once.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

DEADLINE = 60.0                      # the bound of every wait: a failure, never an expectation


class StartFailed(AssertionError):
    """The process ended, or what a test waited for never came."""


def wait_until(predicate: Callable[[], T], what: str = "", *, timeout: float = DEADLINE,
               interval: float = 0.02, alive: Callable[[], str | None] | None = None) -> T:
    """``predicate()``'s first true value. ``alive()`` returns why waiting is
    pointless (a process has ended) or None. ``timeout`` bounds a failure: a
    busy machine only makes the wait longer, never the test fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and (reason := alive()) is not None:
            raise StartFailed(f"while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise StartFailed(f"{what or predicate}: not within {timeout:g} s")
        time.sleep(interval)


async def eventually(predicate: Callable[[], T], what: str = "", *, timeout: float = DEADLINE,
                     interval: float = 0.05) -> T:
    """``wait_until`` for a coroutine: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise StartFailed(f"{what or predicate}: not within {timeout:g} s")
        await asyncio.sleep(interval)
    return value


class Process:
    """``argv`` running with its output in ``folder``/``name``.stdout and .stderr."""

    def __init__(self, argv: list[str], folder: Path, name: str, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, pass_fds=(),
                 stdin=subprocess.DEVNULL) -> None:
        self.argv, self.name = list(argv), name
        folder.mkdir(parents=True, exist_ok=True)
        stem = _unused(folder, name)
        self.stdout_file, self.stderr_file = folder / f"{stem}.stdout", folder / f"{stem}.stderr"
        with self.stdout_file.open("wb") as out, self.stderr_file.open("wb") as err:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=err, cwd=cwd, env=env,
                                          pass_fds=pass_fds, stdin=stdin)

    # -- state ---------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stdout(self) -> str:
        return self.stdout_file.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    def report(self) -> str:
        """What to quote when something about this process failed."""
        status = self.popen.poll()
        state = "running" if status is None else f"exited with status {status}"
        return (f"{self.name} ({' '.join(self.argv)}) {state}\n"
                f"--- stderr ---\n{self.stderr()[-4000:]}\n--- stdout ---\n{self.stdout()[-2000:]}")

    def _ended(self) -> str | None:
        return None if self.popen.poll() is None else self.report()

    # -- waiting ---------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], T], what: str, *,
                   timeout: float = DEADLINE) -> T:
        """``predicate()``'s first true value; fails if this process ends first."""
        return wait_until(predicate, f"{self.name}: {what}", timeout=timeout, alive=self._ended)

    def wait_port(self, port: int, host: str = "127.0.0.1", *,
                  timeout: float = DEADLINE) -> "Process":
        """Until ``host``:``port`` accepts a connection."""
        def answers() -> bool:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return True
            except OSError:
                return False
        self.wait_until(answers, f"{host}:{port} to answer", timeout=timeout)
        return self

    def wait_log(self, path: Path, text: str, count: int = 1, *,
                 timeout: float = DEADLINE) -> "Process":
        """Until ``text`` appears ``count`` times in the file ``path``."""
        self.wait_until(lambda: count_in(path, text) >= count,
                        f"{count} x {text!r} in {path.name} (has {count_in(path, text)})",
                        timeout=timeout)
        return self

    def wait(self, timeout: float = DEADLINE) -> int:
        """Until it ends on its own; its status."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise StartFailed(f"did not end within {timeout:g} s: {self.report()}") from None

    # -- stopping --------------------------------------------------------------------------
    def stop(self, timeout: float = DEADLINE) -> int:
        """SIGTERM, then its status; SIGKILL (and a failure) if it does not end."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise StartFailed(f"did not stop on SIGTERM: {self.report()}") from None
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        if self.popen.stdin is not None:
            self.popen.stdin.close()


def count_in(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except FileNotFoundError:
        return 0


def _unused(folder: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... if a process of that name ran there before
    (the secret sweep reads every ``*.stderr``)."""
    stem, n = name, 1
    while (folder / f"{stem}.stderr").exists():
        n += 1
        stem = f"{name}-{n}"
    return stem
