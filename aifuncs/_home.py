"""Where aifuncs keeps its state (`AIFUNCS_HOME`) and where its shipped resources live."""

from __future__ import annotations

import os
import time
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


_resolved: dict[str, Path] = {}  # asked several times a request: building the Path is the cost
_seen: dict[Path, float] = {}  # when each home was last seen to exist
_RESEE_S = 1.0


def home() -> Path:
    """The state directory: `$AIFUNCS_HOME`, or `~/.aifuncs`. Created on first use (and made again within a
    second if it is removed while the process runs)."""
    raw = os.environ.get("AIFUNCS_HOME") or ""
    path = _resolved.get(raw)
    if path is None:
        path = _resolved[raw] = Path(raw or Path.home() / ".aifuncs").expanduser()
    now = time.monotonic()
    if now - _seen.get(path, -_RESEE_S) >= _RESEE_S:
        if not path.is_dir():
            private_dir(path)  # the home's files are its owner's alone
        _seen[path] = now
    return path


_files: dict[tuple[Path, str], Path] = {}


def home_file(name: str) -> Path:
    """`home() / name`, made once per home (the usage log, limiter and inference table ask per request)."""
    base = home()
    path = _files.get((base, name))
    if path is None:
        path = _files[(base, name)] = base / name
    return path


def private_dir(path: Path) -> Path:
    """Make the folder `path` and any missing parent, each readable by its owner only. `Path.mkdir(parents=True)`
    gives the parents it makes the default mode (0755, or 0777 under umask 000), whatever `mode` says."""
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made by another process meanwhile
        os.chmod(folder, 0o700)  # mkdir's mode passes through the umask; a umask can only narrow it
    return path


def private_file(path: Path) -> Path:
    """Make `path` (a SQLite file about to be opened) readable and writable by its owner only, if it does not
    exist yet: SQLite gives its -wal and -shm files the same mode."""
    if not path.exists():
        private_dir(path.parent)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass
    return path


def resource_dir(name: str) -> Path:
    """A top-level resource folder (`udfs`, `sql`): inside the wheel, or beside the package in a checkout."""
    for candidate in (_PACKAGE_DIR / "_resources" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"aifuncs resource folder {name!r} is missing; reinstall aifuncs")
