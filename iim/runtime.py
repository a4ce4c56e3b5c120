"""The runtime folder (``iim.instancevardir``): pid files, control sockets, stderr.

Theory of operation. A component that runs "managed" (started by
``iim.admin start``, or by hand with ``--managed``) *claims* its pid file:
it opens ``<folder>/<stem>.pid``, takes an exclusive ``flock`` on it and
writes its pid. The lock, not the pid, says whether the component runs: the
kernel drops it when the process ends, however it ends (SIGKILL, a crash),
and a reused pid cannot fool it. So:

* locked                      -> running, with the pid the file holds;
* present but not locked      -> stale (left by a process that died);
* absent                      -> not running.

Removing a stale file races with a component that claims it at that moment;
both sides therefore take the lock before they touch the file, and the
claimer checks, once it holds the lock, that the path still names the file
it locked (same inode), else it starts over with the new file.

Nothing here knows about the server or the multiplexor: ``stem`` is
``server`` or ``mux``.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AlreadyRunning", "PidFile", "Runtime", "RuntimeFolderError", "RuntimePaths",
           "claimed", "probe", "remove_stale", "runtime_folder"]

#: Component names for messages, by file stem.
NAMES = {"server": "server", "mux": "multiplexor"}
#: A Unix socket path must fit ``sun_path`` (108 bytes with its NUL).
MAX_SOCKET_PATH = 107


class AlreadyRunning(Exception):
    """The pid file is locked by a running process (its pid in ``pid``)."""

    def __init__(self, stem: str, pid: int | None, path: Path) -> None:
        shown = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"{NAMES.get(stem, stem)} already running ({shown}, {path})")
        self.pid = pid


class RuntimeFolderError(Exception):
    """The runtime folder cannot be used: one line naming it and why."""


@dataclass(frozen=True)
class RuntimePaths:
    """Where one component keeps its runtime files."""

    folder: Path
    stem: str                       # "server" or "mux"

    @property
    def pidfile(self) -> Path:
        return self.folder / f"{self.stem}.pid"

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.stem}.sock"

    @property
    def stderr(self) -> Path:
        return self.folder / f"{self.stem}.stderr"

    def check_socket_path(self) -> None:
        """RuntimeFolderError when the control socket's path is too long for AF_UNIX."""
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise RuntimeFolderError(f"iim.instancevardir: {self.folder}: path too long for a "
                                f"control socket (at most {MAX_SOCKET_PATH - 12} bytes)")


def runtime_folder(config) -> Path:
    """``iim.instancevardir`` of a loaded Config (default: the folder holding iim.conf)."""
    return Path(config.instancevardir or config.base_dir)


def make_folder(folder: Path) -> None:
    """Create the runtime folder (mode 700) when missing; RuntimeFolderError if impossible."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFolderError(f"iim.instancevardir: {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise RuntimeFolderError(f"iim.instancevardir: {folder}: not a directory")


class PidFile:
    """A claimed pid file: locked for the life of the process, removed on release."""

    def __init__(self, path: Path, fd: int, stale_pid: int | None) -> None:
        self.path = path
        self._fd = fd
        self.stale_pid = stale_pid      # the pid a stale file named, when there was one
        self.started = time.time()

    @classmethod
    def claim(cls, path: Path, stem: str) -> "PidFile":
        """Lock ``path`` and write our pid; AlreadyRunning when another process holds it."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RuntimeFolderError(f"{path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid_fd(fd)
                os.close(fd)
                raise AlreadyRunning(stem, pid, path) from None
            if _same_file(fd, path):
                break
            os.close(fd)                # removed (as stale) between open and lock: again
        stale = _read_pid_fd(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd, stale)

    def release(self) -> None:
        """Remove the file (we still hold the lock, so nobody else is using it)."""
        if self._fd < 0:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = -1


@dataclass(frozen=True)
class Probe:
    """What a pid file says: ``running`` (pid), ``stale`` (pid) or ``absent``."""

    state: str
    pid: int | None = None
    started: float | None = None    # the pid file's mtime: when the process claimed it


def probe(path: Path) -> Probe:
    """Look at a pid file without changing it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Probe("absent")
    try:
        started = os.fstat(fd).st_mtime
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Probe("running", _wait_for_pid(fd), started)
        return Probe("stale", _read_pid_fd(fd), started)
    finally:
        os.close(fd)


def remove_stale(path: Path) -> int | None:
    """Remove ``path`` if it is stale; the pid it named (None if it was not stale)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        pid = _read_pid_fd(fd)
        if _same_file(fd, path):
            path.unlink()
        return pid
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_pid_fd(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _wait_for_pid(fd: int, seconds: float = 1.0) -> int | None:
    """The pid of a locked file; it may be empty for a moment while its owner writes it."""
    deadline = time.monotonic() + seconds
    while True:
        pid = _read_pid_fd(fd)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.01)


@dataclass
class Runtime:
    """A managed component's claim on its runtime folder."""

    paths: RuntimePaths
    pidfile: PidFile


@contextmanager
def claimed(config, stem: str, enabled: bool = True):
    """Claim ``stem``'s pid file in the runtime folder for the ``with`` block;
    yields a Runtime (None when not ``enabled``). AlreadyRunning when another
    process holds it, RuntimeFolderError when the folder is unusable."""
    if not enabled:
        yield None
        return
    paths = RuntimePaths(runtime_folder(config), stem)
    make_folder(paths.folder)
    paths.check_socket_path()
    pidfile = PidFile.claim(paths.pidfile, stem)
    try:
        yield Runtime(paths, pidfile)
    finally:
        pidfile.release()
