"""The one exception tree of aifuncs.

Everything aifuncs raises on purpose derives from `AifuncsError`, so callers can catch one class.
Third-party errors (DuckDB, MLflow, model code) are translated at the boundary where they occur,
keeping the original as `__cause__`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AifuncsError(Exception):
    """Root of every error aifuncs raises on purpose."""


class ConfigError(AifuncsError):
    """An endpoint definition or option is invalid."""


class InvalidEndpointName(ConfigError):
    """An endpoint name does not follow the naming rule."""


class EndpointExists(ConfigError):
    """`create` was asked for a name that is already taken."""


class UnknownEndpoint(AifuncsError):
    """A name that is not in the catalog; the message lists the closest names."""

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        self.suggestions = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
        message = f"Unknown endpoint {name!r}."
        if self.suggestions:
            message += " Did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        else:
            message += " Create it with aifuncs.endpoints.create() or `aifuncs endpoints create`."
        super().__init__(message)


class UnknownProviderKind(ConfigError):
    """An endpoint kind that no installed provider implements."""


class MissingDependency(AifuncsError):
    """An optional package a provider needs is not installed; the message names the extra."""


class SqlError(AifuncsError):
    """A query that aifuncs cannot parse, plan or run."""


class ArgumentError(SqlError):
    """An AI function was called with arguments it does not accept."""


class RequestMismatch(AifuncsError):
    """A request's fields do not match the model's input columns."""


class ModelError(AifuncsError):
    """The model failed; with failOnError the query stops with this error."""

    def __init__(self, endpoint: str, rows: int, message: str) -> None:
        self.endpoint = endpoint
        self.rows = rows
        super().__init__(f"Endpoint {endpoint!r} failed on a batch of {rows:,} rows: {message}")


class ResultTypeError(AifuncsError):
    """A model's output cannot be converted to the result type of the call."""


class MissingSecret(ConfigError):
    """The environment variable an endpoint names for its key is not set."""


class RemoteError(AifuncsError):
    """A remote endpoint answered with an error, or not at all.

    `retryable` errors (429, 5xx, timeouts, dropped connections, garbled replies) are retried by the
    runtime; `retry_after` is the server's `Retry-After` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class EndpointUnreachable(RemoteError):
    """No reply at all: the connection was refused or dropped, or the reply did not come in time."""


class ReplyParseError(AifuncsError):
    """A model's text reply does not parse into the call's result type."""


class BudgetExceeded(AifuncsError):
    """A query would exceed, or has reached, a limit on requests, tokens or cost. Answers already
    received are kept (where the call's answers are reusable), so a rerun with a larger budget resumes."""


class JobLocked(AifuncsError):
    """Another run of the same job (same file, parameters and database) is still running."""


class DatabaseLocked(AifuncsError):
    """A DuckDB database file is open for writing in another process (DuckDB allows one such process)."""


class DatabaseUnreachable(ConfigError):
    """The shared database (AIFUNCS_DATABASE_URL) cannot be reached or used; the message names its URL without
    the password."""


class PermissionDenied(AifuncsError):
    """The caller may see the endpoint but lacks the permission level an action needs."""


class RateLimited(AifuncsError):
    """An endpoint's rate limit refused a request whose caller asked not to wait; `wait_s` is the real wait."""

    def __init__(self, message: str, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class Interrupted(AifuncsError):
    """A run was told to stop (SIGTERM) before it finished: what it spent is recorded, its answers kept."""


class LimiterUnavailable(AifuncsError):
    """An endpoint's rate limits could not be checked in time (their store is locked by another process): the
    request is refused, not let through; `wait_s` is when to try again."""

    def __init__(self, message: str, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class GuardrailBlocked(AifuncsError):
    """An endpoint's guardrail refused a row (its PII or an invalid keyword) under failOnError; the message
    names the rule, never the value."""
