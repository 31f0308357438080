"""The one policy check: may this principal do this with that endpoint?

    authorize(permissions, principal, "churn", "query", known=catalog_names)

Actions need levels: `view` CAN_VIEW (get, list), `query` CAN_QUERY (ai_query, EXPLAIN, invocations),
`manage` CAN_MANAGE (update, delete, permissions). An endpoint the principal may not even view is reported
exactly as one that does not exist, and "did you mean" suggests only names it may view: a denied caller
learns nothing of what exists. Planner, catalog, jobs, pandas and the server all ask here.
"""

from __future__ import annotations

from collections.abc import Iterable

from aifuncs.errors import PermissionDenied, UnknownEndpoint
from aifuncs.governance.permissions import PermissionStore, level_allows
from aifuncs.governance.principals import Principal

__all__ = ["ACTIONS", "authorize", "viewable"]

ACTIONS = {"view": "CAN_VIEW", "query": "CAN_QUERY", "manage": "CAN_MANAGE"}


def viewable(permissions: PermissionStore, principal: Principal, names: Iterable[str]) -> list[str]:
    """The names among `names` that `principal` may view, in their order."""
    return [n for n in names if level_allows(permissions.effective(n, principal), "CAN_VIEW")]


def authorize(
    permissions: PermissionStore,
    principal: Principal,
    endpoint: str,
    action: str,
    *,
    known: Iterable[str] = (),
) -> None:
    """Return when `principal` may `action` on `endpoint`; else UnknownEndpoint (it may not view it, or it does
    not exist: `known` are the catalog's names) or PermissionDenied (it may view it, naming what is missing)."""
    wanted = ACTIONS[action]
    names = list(known)
    held = permissions.effective(endpoint, principal) if endpoint in names else None
    if not level_allows(held, "CAN_VIEW"):
        raise UnknownEndpoint(endpoint, viewable(permissions, principal, names))
    if not level_allows(held, wanted):
        raise PermissionDenied(
            f"{principal.name!r} may not {action} endpoint {endpoint!r}: that needs {wanted}, and it holds {held}."
            f" Someone with CAN_MANAGE on it can grant it (aifuncs permissions update {endpoint} ...)."
        )
