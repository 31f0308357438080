"""Append-only journals: what a process owes a store, on disk before the store is written.

A store that buffers rows in memory (usage, inference table) also appends each row, as one line, to a journal
file of its own process under `AIFUNCS_HOME/journal/` (a 0700 folder, 0600 files). A line is one `os.write`:
it sits in the page cache at once, so a process killed with SIGKILL loses nothing the machine keeps (no fsync:
only losing the machine loses lines). The owner holds an exclusive `flock` on its journal while it lives; the
kernel drops it when the process dies, however it dies. A journal whose lock can be taken therefore belongs to
a dead process: whoever opens the home next (a live process's writer, a reader) replays it into the store,
idempotently (each row carries a unique request id), and removes it.

A journal is kept short: once its rows are in the store it is emptied, or rewritten with only what is still
owed (`rewrite`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aifuncs._fork import after_fork_in_child

__all__ = ["Journal", "dead_journals", "journal_folder"]

_SUFFIX = ".journal"


def journal_folder(home: Path) -> Path:
    folder = home / "journal"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _open_locked(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a name of our own: nobody else holds it
    return fd


class Journal:
    """This process's journal of one store (`kind`) in one home: opened on the first line, locked while open."""

    def __init__(self, home: Path, kind: str) -> None:
        self.home = home
        self.kind = kind
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._lock = threading.Lock()

        def forget_in_child() -> None:
            # The parent's descriptor shares the parent's lock: closed here, the lock stays the parent's alone,
            # and a forked child writes a journal of its own.
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd, self._path, self._size, self._lock = None, None, 0, threading.Lock()

        after_fork_in_child(forget_in_child)

    def __repr__(self) -> str:
        return f"Journal({self.kind!r}, {str(self.home)!r})"

    @property
    def size(self) -> int:
        return self._size

    def _new_path(self) -> Path:
        return journal_folder(self.home) / f"{self.kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}{_SUFFIX}"

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Write `lines` (JSON objects), one `os.write`."""
        data = b"".join(_encode(line) for line in lines)
        with self._lock:
            if self._fd is None:
                self._path = self._new_path()
                self._fd = _open_locked(self._path)
                self._size = 0
            os.write(self._fd, data)
            self._size += len(data)

    def rewrite(self, lines: list[dict[str, Any]]) -> None:
        """Keep only `lines`: written to a new journal first, then the old one removed (a kill in between
        leaves both, which replay reads as one: rows are deduplicated by request id)."""
        with self._lock:
            old_fd, old_path = self._fd, self._path
            if old_fd is None and not lines:
                return
            if lines:
                path = self._new_path()
                fd = _open_locked(path)
                data = b"".join(_encode(line) for line in lines)
                os.write(fd, data)
                self._fd, self._path, self._size = fd, path, len(data)
            else:
                self._fd, self._path, self._size = None, None, 0
            if old_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    old_path.unlink()
            if old_fd is not None:
                os.close(old_fd)

    def close(self, remove: bool) -> None:
        """Stop writing; remove the journal when everything in it is in the store."""
        with self._lock:
            if self._fd is None:
                return
            if remove and self._path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()
            os.close(self._fd)
            self._fd, self._path, self._size = None, None, 0


@contextlib.contextmanager
def _claimed(path: Path) -> Iterator[int | None]:
    """The file's descriptor with its lock taken (its owner is dead and nobody else replays it), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None  # its owner lives (or another process replays it now)
            return
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                yield None  # replayed and removed meanwhile
                return
        except FileNotFoundError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def dead_journals(home: Path, kind: str) -> Iterator[list[dict[str, Any]]]:
    """The lines of every journal of `kind` whose owner is dead, read together (a journal rewritten as its
    owner died leaves two), each held locked while the caller replays them; removed when the block ends
    without raising (a replay that failed leaves them for the next try)."""
    folder = home / "journal"
    with contextlib.ExitStack() as stack:
        claimed: list[Path] = []
        lines: list[dict[str, Any]] = []
        for path in sorted(folder.glob(f"{kind}-*{_SUFFIX}")) if folder.is_dir() else []:
            fd = stack.enter_context(_claimed(path))
            if fd is None:
                continue
            claimed.append(path)
            with os.fdopen(os.dup(fd), "rb") as file:
                lines += [line for raw in file.read().splitlines() if (line := _decode(raw)) is not None]
        yield lines
        for path in claimed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _encode(line: dict[str, Any]) -> bytes:
    return json.dumps(line, separators=(",", ":"), default=_bytes_out).encode() + b"\n"


def _bytes_out(value: Any) -> Any:
    if isinstance(value, bytes):
        import base64

        return {"$b": base64.b64encode(value).decode()}
    raise TypeError(f"{type(value).__name__} is not journaled")


def _decode(raw: bytes) -> dict[str, Any] | None:
    """One line, or None for a line cut short (the process died mid-write)."""
    try:
        found = json.loads(raw, object_hook=_bytes_in)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _bytes_in(value: dict[str, Any]) -> Any:
    if set(value) == {"$b"}:
        import base64

        return base64.b64decode(value["$b"])
    return value
