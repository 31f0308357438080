"""Databricks' Secrets API 2.0 under `/api/2.0/secrets`, over the home's secret scopes (governance/secrets.py).

`databricks-sdk`'s `WorkspaceClient().secrets` works against it. Values travel base64-encoded in `get`, the
only route that returns one (to READ holders); `list` gives keys and times only. An ENVIRONMENT scope's key is
bound with `{"scope", "key", "environment_variable": NAME}` (admins). Errors carry Databricks' codes:
RESOURCE_DOES_NOT_EXIST, RESOURCE_ALREADY_EXISTS, INVALID_PARAMETER_VALUE, PERMISSION_DENIED.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from aifuncs.errors import ConfigError, PermissionDenied
from aifuncs.governance import UnknownPrincipal
from aifuncs.governance.keys import keyring
from aifuncs.governance.secrets import ScopeExists, Secrets, UnknownSecret
from aifuncs.server._errors import ApiError
from aifuncs.session import Session

__all__ = ["secret_routes"]

Work = Callable[[Request, Session, Any], Any]
Wrap = Callable[[Work], Callable[..., Any]]


def _secrets(session: Session) -> Secrets:
    # the scopes live in the catalog's file, as their permissions do
    return Secrets(session.base_catalog.path, session.principal, keyring())


def _text(source: Any, field: str) -> str:
    value = source.get(field) if isinstance(source, dict) else None
    if not isinstance(value, str) or not value:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Give {field} (a string).")
    return value


def _translated(work: Work) -> Work:
    """The secrets' errors as Databricks names them (anything else goes on to the app's translation)."""

    def run(request: Request, session: Session, body: Any) -> Any:
        try:
            return work(request, session, body)
        except (UnknownSecret, UnknownPrincipal) as error:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", str(error)) from None
        except ScopeExists as error:
            raise ApiError(409, "RESOURCE_ALREADY_EXISTS", str(error)) from None
        except PermissionDenied as error:
            raise ApiError(403, "PERMISSION_DENIED", str(error)) from None
        except ConfigError as error:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", str(error)) from None

    return run


def create_scope(request: Request, session: Session, body: Any) -> dict[str, Any]:
    backend = body.get("scope_backend_type") if isinstance(body, dict) else None
    _secrets(session).create_scope(
        _text(body, "scope"),
        backend_type=str(backend or "DATABRICKS"),
        initial_manage_principal=body.get("initial_manage_principal"),
    )
    return {}


def list_scopes(request: Request, session: Session, body: Any) -> dict[str, Any]:
    return {"scopes": _secrets(session).list_scopes()}


def delete_scope(request: Request, session: Session, body: Any) -> dict[str, Any]:
    _secrets(session).delete_scope(_text(body, "scope"))
    return {}


def put_secret(request: Request, session: Session, body: Any) -> dict[str, Any]:
    scope, key = _text(body, "scope"), _text(body, "key")
    raw = body.get("bytes_value")
    value: bytes | None = None
    if raw is not None:
        try:
            value = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "bytes_value is base64.") from None
    string = body.get("string_value")
    env = body.get("environment_variable")
    _secrets(session).put(
        scope,
        key,
        string_value=None if string is None else str(string),
        bytes_value=value,
        environment_variable=None if env is None else str(env),
    )
    return {}


def delete_secret(request: Request, session: Session, body: Any) -> dict[str, Any]:
    _secrets(session).delete(_text(body, "scope"), _text(body, "key"))
    return {}


def list_secrets(request: Request, session: Session, body: Any) -> dict[str, Any]:
    return {"secrets": _secrets(session).list(_text(dict(request.query_params), "scope"))}


def get_secret(request: Request, session: Session, body: Any) -> dict[str, Any]:
    key = _text(dict(request.query_params), "key")
    value = _secrets(session).get(_text(dict(request.query_params), "scope"), key)
    return {"key": key, "value": base64.b64encode(value).decode()}


def put_acl(request: Request, session: Session, body: Any) -> dict[str, Any]:
    _secrets(session).put_acl(_text(body, "scope"), _text(body, "principal"), _text(body, "permission"))
    return {}


def delete_acl(request: Request, session: Session, body: Any) -> dict[str, Any]:
    _secrets(session).delete_acl(_text(body, "scope"), _text(body, "principal"))
    return {}


def list_acls(request: Request, session: Session, body: Any) -> dict[str, Any]:
    return {"items": _secrets(session).list_acls(_text(dict(request.query_params), "scope"))}


def get_acl(request: Request, session: Session, body: Any) -> dict[str, Any]:
    query = dict(request.query_params)
    return _secrets(session).get_acl(_text(query, "scope"), _text(query, "principal"))


def secret_routes(wrap: Wrap) -> list[Route]:
    """The routes, each handler wrapped by the app's `api(edge, ...)` (read, authenticate, answer JSON)."""
    base = "/api/2.0/secrets"
    table: list[tuple[str, str, Work]] = [
        ("POST", "/scopes/create", create_scope),
        ("GET", "/scopes/list", list_scopes),
        ("POST", "/scopes/delete", delete_scope),
        ("POST", "/put", put_secret),
        ("POST", "/delete", delete_secret),
        ("GET", "/list", list_secrets),
        ("GET", "/get", get_secret),
        ("POST", "/acls/put", put_acl),
        ("POST", "/acls/delete", delete_acl),
        ("GET", "/acls/list", list_acls),
        ("GET", "/acls/get", get_acl),
    ]
    return [Route(base + path, wrap(_translated(work)), methods=[method]) for method, path, work in table]
