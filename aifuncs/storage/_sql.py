"""SQL written once for both backends: the stores write SQLite's `?` placeholders; PostgreSQL's driver reads
`%s` (and a literal `%` as `%%`). Quoted text is left as it is."""

from __future__ import annotations

import functools

__all__ = ["to_postgres"]


@functools.lru_cache(maxsize=1024)
def to_postgres(sql: str) -> str:
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
            out.append("%%" if char == "%" else char)
        elif char in ("'", '"'):
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)
