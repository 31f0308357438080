"""One run of a job at a time: an exclusive lock on a file, released by the OS however the run ends."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from aifuncs._home import private_dir
from aifuncs.errors import JobLocked


class JobLock:
    def __init__(self, path: Path, job: str) -> None:
        self.path = path
        self.job = job
        self._fd: int | None = None

    def __enter__(self) -> JobLock:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise JobLocked(
                f"Job {self.job!r} is already running"
                + (f" (process {holder})" if holder else "")
                + "; this run did nothing. Wait for it to end, or stop it."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None
