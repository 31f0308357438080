"""`aifuncs serve`: the app on uvicorn (httptools, uvloop), N worker processes sharing AIFUNCS_HOME.

TLS: the project builds the SSLContext itself with a floor of TLS 1.2 (uvicorn sets none of its own). A
non-loopback address without a certificate is refused unless `insecure_http` says so: tokens would cross the
network in clear. Stopping (SIGINT, SIGTERM) lets requests in flight finish, for up to `graceful_s`. A client
has `client_timeout_s` to send a whole request, and a worker holds at most `max_connections` (`_protocol.py`).
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from aifuncs.errors import ConfigError

__all__ = ["serve", "tls_context"]


def tls_context(config: Any, default: Callable[[], ssl.SSLContext] | None = None) -> ssl.SSLContext:
    """A server context that refuses TLS 1.0 and 1.1 (uvicorn's `ssl_context_factory`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, config.ssl_keyfile_password)
    return context


def _statement_limits(
    timeout_s: float | None, memory: str | None, concurrency: int | None, result_mb: int | None
) -> None:
    """Check the bounds of SQL over HTTP here, where a mistake is one clear message, and hand them to the
    workers' app() in the environment."""
    import os

    from aifuncs.server._sandbox import Limits

    given = {
        "AIFUNCS_SERVE_STATEMENT_TIMEOUT_S": timeout_s,
        "AIFUNCS_SERVE_STATEMENT_MEMORY": memory,
        "AIFUNCS_SERVE_STATEMENT_CONCURRENCY": concurrency,
        "AIFUNCS_SERVE_STATEMENT_RESULT_MB": result_mb,
    }
    for key, value in given.items():
        if value is not None:
            os.environ[key] = str(value)
    Limits.from_environ(os.environ)


def checked_public_url(url: str) -> str:
    """The URL clients reach the server by (what /.well-known/databricks-config names), or ConfigError."""
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"--public-url {url!r} is not a server's address: give one such as https://ai.example.com (a scheme,"
            " a host, an optional port and path; no user, query or fragment)."
        )
    return url.rstrip("/")


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    workers: int = 1,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    insecure_http: bool = False,
    graceful_s: int = 30,
    log_level: str = "warning",
    warehouse: str | None = None,
    public_url: str | None = None,
    client_timeout_s: float = 10.0,
    max_connections: int = 1024,
    statement_timeout_s: float | None = None,
    statement_memory: str | None = None,
    statement_concurrency: int | None = None,
    statement_result_mb: int | None = None,
) -> None:
    import os

    import uvicorn

    if bool(tls_cert) != bool(tls_key):
        raise ConfigError(
            "Give both --tls-cert and --tls-key (a certificate and its private key), or neither."
        )
    if not tls_cert and not _loopback(host) and not insecure_http:
        raise ConfigError(
            f"Refusing to serve {host} over plain HTTP: tokens would cross the network in clear. Give --tls-cert"
            " and --tls-key, bind 127.0.0.1, or pass --insecure-http behind a TLS-terminating proxy."
        )
    if warehouse is not None:
        if not os.path.isfile(warehouse):
            raise ConfigError(f"The warehouse {warehouse!r} is not a DuckDB file here: give the path of one.")
        os.environ["AIFUNCS_SERVE_WAREHOUSE"] = os.path.abspath(warehouse)  # for the workers' app()
    if public_url is not None:
        os.environ["AIFUNCS_SERVE_PUBLIC_URL"] = checked_public_url(public_url)
    if not client_timeout_s > 0 or max_connections < 1:
        raise ConfigError(
            "--client-timeout is seconds above 0 and --max-connections at least 1: a client must be let in,"
            " and given some time to send its request."
        )
    from aifuncs.server._protocol import GuardedHttpTools  # uvicorn's: imported with it

    # Slow or idle clients are bounded where the socket is: headers, bodies, kept connections, their number.
    guarded = functools.partial(
        GuardedHttpTools, client_timeout_s=client_timeout_s, max_connections=max_connections
    )
    _statement_limits(statement_timeout_s, statement_memory, statement_concurrency, statement_result_mb)
    uvicorn.run(
        "aifuncs.server._rebalance:served_app",  # the app, its kept connections ended now and then
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=cast(Any, guarded),
        timeout_keep_alive=max(1, min(5, int(client_timeout_s))),
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        ssl_context_factory=tls_context if tls_cert else None,
        timeout_graceful_shutdown=graceful_s,
        log_level=log_level,
        access_log=False,
    )
