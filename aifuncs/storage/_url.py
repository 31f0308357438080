"""The shared database's URL: where it is set, and how it is shown (never with its password)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ENV", "database_url", "is_postgres", "redact"]

ENV = "AIFUNCS_DATABASE_URL"
_SCHEMES = ("postgresql", "postgres")


def database_url() -> str | None:
    """The configured shared database, or None for the embedded default (SQLite files under AIFUNCS_HOME)."""
    return os.environ.get(ENV) or None


def is_postgres(url: str) -> bool:
    return urlsplit(url).scheme in _SCHEMES


def redact(url: str) -> str:
    """`url` as it may be shown: the password (in the netloc or a `password=` parameter) replaced by ***."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
        query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<an unreadable database URL>"


def scrub(text: str, url: str) -> str:
    """`text` (a driver's message) with the URL's password taken out wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    found = re.search(r"(?i)(?:^|&)password=([^&]*)", urlsplit(url).query)
    for secret in (password, found.group(1) if found else None):
        if secret:
            text = text.replace(secret, "***")
    return text.replace(url, redact(url))
