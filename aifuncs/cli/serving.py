"""`aifuncs serve` and `aifuncs ui`: the REST server and the web UI."""

from __future__ import annotations

import argparse
from typing import Any

from aifuncs.cli._common import database_option, reach_database


def _print_sign_in(host: str, port: int, scheme: str = "http") -> None:
    """On a loopback address, a one-time sign-in link for the home's owner (as Jupyter prints one); the
    process acts as the owner only without AIFUNCS_TOKEN."""
    from aifuncs._home import home
    from aifuncs.governance import current
    from aifuncs.server._run import _loopback
    from aifuncs.server.ui import sign_in_link

    if not _loopback(host) or not current().principal.implicit:
        return
    address = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("", "localhost") else host)
    link = sign_in_link(f"{scheme}://{address}:{port}", home())
    print(f"The web UI: open this link to sign in (it works once):\n    {link}", flush=True)


def _ui(args: argparse.Namespace) -> int:
    from aifuncs.server import serve

    _print_sign_in("127.0.0.1", args.port)
    serve("127.0.0.1", args.port, workers=1, warehouse=args.warehouse)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from aifuncs.server import serve

    reach_database()
    _print_sign_in(args.host, args.port, "https" if args.tls_cert else "http")
    serve(args.host, args.port, workers=args.workers, tls_cert=args.tls_cert, tls_key=args.tls_key,
          insecure_http=args.insecure_http, warehouse=args.warehouse, public_url=args.public_url,
          client_timeout_s=args.client_timeout, max_connections=args.max_connections,
          statement_timeout_s=args.statement_timeout_s, statement_memory=args.statement_memory,
          statement_concurrency=args.statement_concurrency,
          statement_result_mb=args.statement_result_mb)  # fmt: skip
    return 0


def add_commands(commands: Any) -> None:
    """Register `serve` and `ui` on the main parser's subparsers."""
    serve = commands.add_parser(
        "serve", help="serve every endpoint as a REST API (Databricks' serving endpoints)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="processes (they share AIFUNCS_HOME)")
    database_option(serve)
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate chain; TLS 1.2 and 1.3 only")
    serve.add_argument("--tls-key", metavar="PEM", help="its private key")
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (behind a TLS proxy)",
    )
    serve.add_argument("--warehouse", metavar="DB", help="the DuckDB file SQL over HTTP reads (read-only)")
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="how clients reach the server, e.g. https://ai.example.com (default: the address they connected to)",
    )
    serve.add_argument(
        "--client-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a client has to send a whole request (head and body); idle connections close sooner (10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="connections per worker; one more closes the oldest idle or stalled one (1024)",
    )
    serve.add_argument(
        "--statement-timeout-s",
        type=float,
        metavar="S",
        help="SQL over HTTP: a statement still running after S seconds is cancelled (900)",
    )
    serve.add_argument(
        "--statement-memory",
        metavar="SIZE",
        help="SQL over HTTP: DuckDB's memory limit per statement, e.g. 2GB (1GB)",
    )
    serve.add_argument(
        "--statement-concurrency",
        type=int,
        metavar="N",
        help="SQL over HTTP: statements one principal may have pending or running (4)",
    )
    serve.add_argument(
        "--statement-result-mb",
        type=int,
        metavar="MB",
        help="SQL over HTTP: the largest result answered; a larger one fails (25)",
    )
    serve.set_defaults(handler=_serve)

    ui = commands.add_parser(
        "ui", help="the web UI on 127.0.0.1 for the home's owner: prints a one-time sign-in link"
    )
    ui.add_argument("--port", type=int, default=8765)
    ui.add_argument("--warehouse", metavar="DB", help="the DuckDB file the SQL page reads (read-only)")
    ui.set_defaults(handler=_ui)
