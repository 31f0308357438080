"""The REST server: every catalog endpoint as Databricks' serving-endpoints API, governed like SQL.

    aifuncs serve --port 8443 --tls-cert cert.pem --tls-key key.pem --workers 2
    app = aifuncs.server.app()          # the ASGI app, to embed in another server
    app = aifuncs.server.app(runtime=Runtime(), catalog=Catalog(path))  # on a runtime and catalog of its own

A request flows through `_routing.api` (`_auth.py` token -> identity -> the request's `Session` on the app's
runtime and catalog, then the body) into `_invoke.py` or `_openai.py` (body -> Arrow rows -> `bind_call` in
the session -> `session.runtime.answer_call`), the same path as SQL; `_statements.py` runs SQL over HTTP in a
sandboxed DuckDB database whose functions are bound to the caller's session.
"""

from __future__ import annotations

from aifuncs.server._app import app
from aifuncs.server._run import serve

__all__ = ["app", "serve"]
