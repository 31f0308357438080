"""A job's checkpoint: every answer a rerun would pay for again, kept while the job runs.

The answer cache keeps only what is safe to share between queries (deterministic answers). A scheduled
job needs more: killed half-way, its rerun must not pay again for rows already answered, sampled LLM
answers included. While a checkpoint is active, those answers go to the job's own store too; the job
deletes it once it has finished.

Sampled answers are never merged: two equal requests get two answers. They are kept under the request
*and its occurrence number* (the 1st, 2nd... time the request is asked in this run), so a rerun hands
each occurrence one of the answers the killed run received, and asks only for the occurrences beyond.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from aifuncs.runtime._store import AnswerStore


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = AnswerStore(path)
        self._seen: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def occurrences(self, keys: list[bytes]) -> list[bytes]:
        """Each key made unique by how many times it was asked before in this run."""
        numbered = []
        with self._lock:
            for key in keys:
                n = self._seen.get(key, 0)
                self._seen[key] = n + 1
                numbered.append(hashlib.sha256(key + n.to_bytes(8, "little")).digest())
        return numbered

    def answers(self) -> int:
        return self.store.stats().answers

    def close(self) -> None:
        self.store.close()

    def delete(self) -> None:
        """The job finished: its checkpoint is of no more use."""
        self.close()
        for file in self.path.parent.glob(self.path.name + "*"):
            file.unlink(missing_ok=True)
