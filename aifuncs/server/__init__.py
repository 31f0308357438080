"""The REST server: every catalog endpoint as Databricks' serving-endpoints API, governed like SQL.

    aifuncs serve --port 8443 --tls-cert cert.pem --tls-key key.pem --workers 2
    app = aifuncs.server.app()          # the ASGI app, to embed in another server

A request flows through `_app.py` (body, `_auth.py` token -> identity, the catalog seen as the caller) into
`_invoke.py` or `_openai.py` (body -> Arrow rows -> `planner.bind_call` -> `Runtime.run_call`), the same path
as SQL; `_statements.py` runs SQL over HTTP in a sandboxed DuckDB session bound to the caller.
"""

from __future__ import annotations

from aifuncs.server._app import app
from aifuncs.server._run import serve

__all__ = ["app", "serve"]
