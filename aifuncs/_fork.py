"""Fork safety. A forked child (multiprocessing's default start method on Linux, prefork servers) inherits
objects whose threads or locks stayed in the parent: DuckDB and SQLite connections, the runtime's event loop.
Used there they hang or crash, and so can their destructors: DuckDB's joins threads that do not exist in
the child. So the child keeps the parent's objects referenced, untouched, and makes its own.

CPython frees the thread-local values of the parent's other threads inside `os.fork()`, before any
after-fork hook runs: `ProcessLocal` therefore holds every thread's values from just before the fork.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_left_behind: list[object] = []  # the parent's objects: never used nor finalized in this process
_locals: weakref.WeakSet[ProcessLocal] = weakref.WeakSet()
_registry_lock = threading.Lock()
_holding: list[object] = []  # every thread's values, held while a fork is under way
_forked = False


class _Values:
    """One thread's values of a ProcessLocal (an object: listed weakly, held strongly across a fork)."""

    __slots__ = ("__dict__", "__weakref__")


class ProcessLocal:
    """`threading.local` whose values a forked child neither sees nor frees: each process makes its own."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: weakref.WeakSet[_Values] = weakref.WeakSet()
        with _registry_lock:
            _locals.add(self)

    @property
    def values(self) -> Any:
        found: _Values | None = getattr(self._local, "values", None)
        if found is None:
            found = self._local.values = _Values()
            with _registry_lock:
                self._all.add(found)
        return found


def leave_behind(*objects: object) -> None:
    """Keep the parent's objects referenced in a forked child, so that nothing uses or finalizes them."""
    _left_behind.extend(o for o in objects if o is not None)


def after_fork_in_child(reset: Callable[[], None]) -> None:
    """Run `reset` in every forked child (nothing where the platform cannot fork)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=reset)


def renewed_in_child(namespace: dict[str, Any], *names: str) -> None:
    """Module-level `threading.Lock`s a forked child gets anew (pass `globals()`): one that another thread held
    at the fork, loading a model say, would stay held in the child forever."""

    def renew() -> None:
        for name in names:
            namespace[name] = threading.Lock()

    after_fork_in_child(renew)


def held_across_fork(owner: T, lock: Callable[[T], threading.Lock]) -> None:
    """Take `lock(owner)` before every fork and give it back on both sides. A thread of ours inside SQLite or
    DuckDB when the process forks leaves their internal mutexes locked in the child, whose next connection
    then waits forever: holding the lock that thread works under keeps it out of them meanwhile. Held weakly:
    `owner` may go away."""
    if not hasattr(os, "register_at_fork"):
        return
    alive = weakref.ref(owner)
    taken: list[threading.Lock] = []

    def take() -> None:
        found = alive()
        if found is not None:
            taken.append(lock(found))
            taken[-1].acquire()

    def give_back() -> None:
        while taken:
            taken.pop().release()

    os.register_at_fork(before=take, after_in_parent=give_back, after_in_child=give_back)


def forked_child() -> bool:
    """Whether this process was forked from one that had imported aifuncs (a multiprocessing worker, say):
    such a process usually ends with `os._exit`, which runs no atexit handlers and stops threads mid-work."""
    return _forked


def _hold() -> None:
    global _holding
    _registry_lock.acquire()  # released on both sides: no thread adds values mid-fork
    _holding = [values for local in list(_locals) for values in list(local._all)]


def _release_in_parent() -> None:
    global _holding
    _holding = []
    _registry_lock.release()


def _renew_in_child() -> None:
    global _holding, _registry_lock, _forked
    _forked = True
    leave_behind(*_holding)
    _holding = []
    _registry_lock = threading.Lock()  # the parent's may be held by a thread that is not here
    for local in list(_locals):
        local._local = threading.local()
        local._all = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_hold, after_in_parent=_release_in_parent, after_in_child=_renew_in_child)
