"""The files a run reads and writes: whole or not at all, damage named in one line, one writer per run directory.

Every write either completes or leaves the previous file as it was (a temporary file renamed over it, or
a line appended whole), and an I/O error becomes one UserError naming the directory: a full disk says
how many bytes it needed.
"""
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from jaximus import UserError, first_line

FULL = (errno.ENOSPC, errno.EDQUOT)


def io_error(e: OSError, where, needed: int | None = None) -> UserError:
    """An OSError while writing under `where` as the one line train.py prints."""
    where = Path(where)
    if e.errno in FULL:
        need = f"needed {needed:,} bytes, " if needed else ""
        return UserError(f"{where}: disk full ({need}{free_bytes(where):,} free); free space there or set run.out_dir "
                         "to another disk, then rerun to resume from the last checkpoint")
    return UserError(f"{e.filename or where}: cannot write ({e.strerror or first_line(e)}); check run.out_dir")


def free_bytes(path: Path) -> int:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def atomic_write(path: Path, text: str) -> None:
    """The whole text at `path`, or `path` untouched: written to a temporary file, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise io_error(e, path.parent, len(text.encode())) from None


def append_line(f, line: str) -> None:
    """One whole line at the end of a file opened unbuffered ("ab", buffering=0), or none: a failed write is cut
    back off. Unbuffered, because a buffered file retries its pending bytes on truncate and on close."""
    data = memoryview((line + "\n").encode())
    end = os.lseek(f.fileno(), 0, os.SEEK_END)
    try:
        while data:
            data = data[f.write(data):]
    except OSError as e:
        os.ftruncate(f.fileno(), end)
        raise io_error(e, Path(f.name).parent, len(line) + 1) from None


def read_json(path: Path, fix: str):
    """A JSON file the user did not just write by hand; damage becomes one line ending in `fix`."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not valid JSON ({first_line(e)}); {fix}") from None


class RunLock:
    """<run dir>/run.lock: held (an exclusive flock) by the one process that writes the run directory.

    The file names the holder (pid, host). The kernel drops the flock when the holder dies, so a lock file
    that still names someone but can be locked belongs to a dead run and is taken over. The file is emptied,
    never deleted, on release: deleting it would let two later runs lock two different files.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"
        self.fd = None

    def acquire(self) -> str | None:
        """None once held; else the holder, as a phrase."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            return holder or "another process"
        previous = self._holder(fd)
        if previous:
            print(f"jaximus: {self.path}: taking over the lock of {previous}, which is no longer running",
                  file=sys.stderr, flush=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self.fd = fd
        return None

    def held_by(self) -> str | None:
        """The holder, as a phrase, while a live process holds the lock; None otherwise. Writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return self._holder(fd) or "another process"
        finally:
            os.close(fd)  # and with it the shared lock, if it was taken

    @staticmethod
    def _holder(fd: int) -> str | None:
        try:
            held = json.loads(os.pread(fd, 4096, 0) or b"null")
            return f"pid {held['pid']} on {held['host']} (since {time.strftime('%H:%M:%S', time.localtime(held['since']))})"
        except (ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None
