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

Trust. The folder is ours alone: ``make_folder`` refuses one that another
user owns or that group or others may write (a sticky /tmp-like folder
too), since whoever can write there can plant files for us to follow. The
runtime files are never followed when they are symbolic links (O_NOFOLLOW;
``check_files`` refuses them before a component starts), and a pid file is
trusted only when the process it names is ours (``foreign``): our uid, the
same Python, ``-m iim.server``/``iim.mux`` with this iim.conf, and the pid
file open. A pid file that fails this is never acted on: nothing is
signalled.

Nothing else here knows about the server or the multiplexor: ``stem`` is
``server`` or ``mux``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AlreadyRunning", "PidFile", "Runtime", "RuntimeFolderError", "RuntimePaths",
           "check_folder", "claimed", "foreign", "probe", "remove_stale", "runtime_folder"]

#: Component names for messages, by file stem.
NAMES = {"server": "server", "mux": "multiplexor"}
#: What runs each component: ``python -m MODULE``.
MODULES = {"server": "iim.server", "mux": "iim.mux"}
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

    def check_files(self) -> None:
        """RuntimeFolderError when a runtime file is a symbolic link or not
        the kind of file iim makes there (iim makes them; it never follows one)."""
        for path, kind in ((self.pidfile, stat.S_ISREG), (self.stderr, stat.S_ISREG),
                           (self.socket, stat.S_ISSOCK)):
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                raise RuntimeFolderError(f"{path}: a symbolic link; iim makes its runtime "
                                         "files itself and never follows one: remove it")
            if not kind(mode):
                raise RuntimeFolderError(f"{path}: not a file iim made (unexpected file "
                                         "type): remove it")

    def check_socket_path(self) -> None:
        """RuntimeFolderError when the control socket's path is too long for AF_UNIX."""
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise RuntimeFolderError(f"iim.instancevardir: {self.folder}: path too long for a "
                                f"control socket (at most {MAX_SOCKET_PATH - 12} bytes)")


def runtime_folder(config) -> Path:
    """``iim.instancevardir`` of a loaded Config (default: the folder holding iim.conf)."""
    return Path(config.instancevardir or config.base_dir)


def make_folder(folder: Path) -> None:
    """Create the runtime folder (mode 700) when missing, then ``check_folder``."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFolderError(f"iim.instancevardir: {folder}: {exc.strerror or exc}") from None
    check_folder(folder)


def check_folder(folder: Path) -> None:
    """RuntimeFolderError unless ``folder`` is a directory of ours that only we may write."""
    where = f"iim.instancevardir: {folder}"
    try:
        info = os.stat(folder)
    except OSError as exc:
        raise RuntimeFolderError(f"{where}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeFolderError(f"{where}: not a directory")
    if info.st_uid != os.geteuid():
        raise RuntimeFolderError(f"{where}: owned by uid {info.st_uid}, not by this user "
                                 f"(uid {os.geteuid()}); use a folder of your own")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeFolderError(f"{where}: writable by group or others (mode {mode:04o}); "
                                 f"use a folder only its owner can write (chmod 700)")


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
            fd = _open(path, os.O_RDWR | os.O_CREAT)
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
    """Look at a pid file without changing it. A symbolic link, or anything
    but a regular file, is ``untrusted`` (never read, never acted on)."""
    try:
        fd = _open(path, os.O_RDONLY)
    except FileNotFoundError:
        return Probe("absent")
    except RuntimeFolderError:
        return Probe("untrusted")
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
        fd = _open(path, os.O_RDWR)
    except (FileNotFoundError, RuntimeFolderError):
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


def _open(path: Path, flags: int) -> int:
    """A pid file, never through a symbolic link, only a regular file (mode 644 when
    made). FileNotFoundError when absent; RuntimeFolderError otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        raise RuntimeFolderError(f"{path}: no such folder") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RuntimeFolderError(f"{path}: a symbolic link; iim makes its runtime files "
                                     "itself and never follows one: remove it") from None
        raise RuntimeFolderError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RuntimeFolderError(f"{path}: not a regular file: remove it")
    return fd


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


def foreign(pid: int, pidfile: Path, stem: str, conf_path: Path) -> str | None:
    """Why process ``pid`` is not the ``stem`` component of ``conf_path`` holding
    ``pidfile``; None when it is: same uid as us, the Python we run, ``-m``
    MODULE with this iim.conf on its command line, ``pidfile`` among its open files."""
    proc = Path(f"/proc/{pid}")
    try:
        uids = _status_field(proc / "status", "Uid")
        if uids[:2] != [os.geteuid()] * 2:
            return f"it runs as uid {uids[1]}, not {os.geteuid()}"
        exe = os.readlink(proc / "exe")
        if exe != os.path.realpath(sys.executable):
            return f"it runs {exe}, not {os.path.realpath(sys.executable)}"
        argv = (proc / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        module = MODULES.get(stem, stem)
        if not _runs_module(argv, module) or _config_of(proc, argv) != \
                os.path.realpath(conf_path):
            return f"its command line is not python -m {module} -c {conf_path}"
        if not _holds(proc, pidfile):
            return f"it does not hold {pidfile}"
    except (OSError, ValueError, IndexError):
        return "it cannot be inspected (gone, or not ours)"
    return None


def _status_field(path: Path, name: str) -> list[int]:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return [int(v) for v in value.split()]
    raise ValueError(name)


def _runs_module(argv: list[str], module: str) -> bool:
    return any(a == "-m" and b == module for a, b in zip(argv, argv[1:]))


def _config_of(proc: Path, argv: list[str]) -> str:
    """The iim.conf a component process reads: -c/--config, $IIM_CONF, ./iim.conf."""
    option = None
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            option = argv[i + 1]
        elif arg.startswith("--config="):
            option = arg.split("=", 1)[1]
    if option is None:
        environ = (proc / "environ").read_bytes().decode("utf-8", "replace").split("\0")
        found = [e.split("=", 1)[1] for e in environ if e.startswith("IIM_CONF=")]
        option = found[0] if found and found[0] else "iim.conf"
    return os.path.realpath(os.path.join(os.readlink(proc / "cwd"), option))


def _holds(proc: Path, pidfile: Path) -> bool:
    wanted = os.stat(pidfile, follow_symlinks=False)
    for fd in (proc / "fd").iterdir():
        try:
            mine = os.stat(fd)
        except OSError:
            continue
        if (mine.st_dev, mine.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


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
    paths.check_files()
    pidfile = PidFile.claim(paths.pidfile, stem)
    try:
        yield Runtime(paths, pidfile)
    finally:
        pidfile.release()
