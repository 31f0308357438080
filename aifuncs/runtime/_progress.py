"""Progress of a long AI query: rows answered (and left), failed rows, requests, tokens, cost, ETA.

Two styles. On a terminal, one line redrawn in place by a daemon thread every half second, only once the
query has run for a second (short queries stay silent), and never when AIFUNCS_PROGRESS=off. A query
DuckDB still streams after `aifuncs.sql` returns has no end the engine can see: the line is closed once
the counts have stood still for a few seconds. For schedulers and log collectors (`aifuncs run` off a
terminal), one JSON object per line every few seconds while counts move. With no stream it only counts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Literal, TextIO

_INTERVAL_S = 0.5
_QUIET_FIRST_S = 1.0
_IDLE_END_S = 3.0
_JSON_INTERVAL_S = 5.0
_PACED_SHOWN_S = 5.0  # a rate limit is named while requests waited for it this recently


class Progress:
    def __init__(
        self,
        stream: TextIO | None,
        *,
        style: Literal["line", "json"] = "line",
        interval_s: float | None = None,
        quiet_first_s: float = _QUIET_FIRST_S,
    ) -> None:
        self.stream = stream
        self.style = style
        self.interval_s = interval_s or (_JSON_INTERVAL_S if style == "json" else _INTERVAL_S)
        self.rows = 0
        self.failed_rows = 0
        self.sent_rows = 0  # rows whose requests came back: moves before a big batch is answered whole
        self.total_rows: int | None = None
        self._unknown = False  # some statement's rows could not be counted: no total, no ETA
        self.requests = 0
        self.tokens = 0
        self.cost_usd = 0.0
        self._quiet_first_s = quiet_first_s
        self._started = time.monotonic()
        self._last_change = self._started
        self._paced: tuple[str, float] | None = None  # the rate limit a request last waited for, and when
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._drawn = False
        self._thread: threading.Thread | None = None
        if stream is not None:
            loop = self._json_loop if style == "json" else self._draw_loop
            self._thread = threading.Thread(target=loop, name="aifuncs-progress", daemon=True)
            self._thread.start()

    @classmethod
    def for_terminal(cls, wanted: bool | None = None, stream: TextIO | None = None) -> Progress | None:
        """A progress line on `stream` (stderr) when wanted: by default, when it is a terminal."""
        stream = stream or sys.stderr
        if wanted is False or os.environ.get("AIFUNCS_PROGRESS", "").lower() in ("0", "off", "false", "no"):
            return None
        if wanted is None and not (hasattr(stream, "isatty") and stream.isatty()):
            return None
        return cls(stream)

    # The Meter interface: the runtime reports as requests go out and come back.
    def begin_request(self) -> None:
        pass

    def cancel_request(self) -> None:
        pass

    def end_request(self, rows: int, tokens: int, cost_usd: float | None) -> None:
        with self._lock:
            self.requests += 1
            self.sent_rows += rows
            self.tokens += tokens
            self.cost_usd += cost_usd or 0.0
            self._last_change = time.monotonic()

    def answered(self, rows: int, failed: int = 0) -> None:
        with self._lock:
            self.rows += rows
            self.failed_rows += failed
            self._last_change = time.monotonic()

    def paced(self, limit: str) -> None:
        with self._lock:
            self._paced = (limit, time.monotonic())

    def expect(self, rows: int | None) -> None:
        """More rows the query will answer: enables rows left and ETA. None: unknown, so no total is shown."""
        with self._lock:
            if rows is None or self._unknown:
                self._unknown = True
                self.total_rows = None
                return
            self.total_rows = (self.total_rows or 0) + rows

    def finish(self) -> None:
        """The query is over: draw the last line and end it."""
        if not self._done.is_set():
            self._done.set()
            if self._thread is not None:
                self._thread.join(timeout=2)

    def snapshot(self) -> dict[str, Any]:
        """The counts so far, as the JSON style writes them."""
        with self._lock:
            elapsed = time.monotonic() - self._started
            done = max(self.rows, self.sent_rows)
            eta = None
            if self.total_rows is not None:
                done = min(done, self.total_rows)
                rate = done / elapsed if elapsed > 0 else 0.0
                eta = round((self.total_rows - done) / rate, 1) if rate > 0 else None
            return {
                "rows": done,
                "total_rows": self.total_rows,
                "failed_rows": self.failed_rows,
                "requests": self.requests,
                "tokens": self.tokens,
                "cost_usd": round(self.cost_usd, 6),
                "elapsed_s": round(elapsed, 1),
                "eta_s": eta,
                "paced_by": self._paced[0]
                if self._paced and time.monotonic() - self._paced[1] < _PACED_SHOWN_S
                else None,
            }

    def line(self) -> str:
        with self._lock:
            elapsed = time.monotonic() - self._started
            done = max(self.rows, self.sent_rows)
            parts = [f"{done:,} rows"]
            if self.total_rows is not None:
                done = min(done, self.total_rows)
                left = self.total_rows - done
                parts[0] = f"{done:,} of {self.total_rows:,} rows"
                rate = done / elapsed if elapsed > 0 else 0.0
                if left and rate > 0:
                    parts.append(f"ETA {_clock(left / rate)}")
            parts.append(f"{self.requests:,} requests")
            if self.tokens:
                parts.append(f"{self.tokens:,} tokens")
            if self.cost_usd:
                parts.append(f"${self.cost_usd:,.4f}")
            if self._paced is not None and time.monotonic() - self._paced[1] < _PACED_SHOWN_S:
                parts.append(f"paced by {self._paced[0]}")
            parts.append(_clock(elapsed))
        return "aifuncs: " + " · ".join(parts)

    def _json_loop(self) -> None:
        assert self.stream is not None
        written = None
        while not self._done.wait(self.interval_s):
            counts = self.snapshot()
            moved = {k: v for k, v in counts.items() if k not in ("elapsed_s", "eta_s")}
            if moved != written and (counts["rows"] or counts["requests"]):
                self.stream.write(json.dumps({"event": "progress", **counts}) + "\n")
                self.stream.flush()
                written = moved

    def _draw_loop(self) -> None:
        assert self.stream is not None
        while not self._done.wait(self.interval_s):
            now = time.monotonic()
            if now - self._started < self._quiet_first_s:
                continue
            if self._drawn and now - self._last_change > _IDLE_END_S:
                break  # a lazily streamed query that has ended
            if self.rows or self.requests:
                self._draw()
        if self._drawn:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        assert self.stream is not None
        self.stream.write("\r\x1b[2K" + self.line())  # carriage return, clear the line
        self.stream.flush()
        self._drawn = True


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
