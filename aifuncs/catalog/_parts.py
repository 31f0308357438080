"""What Catalog gives its method groups (permissions, AI gateway, defaults): declared once for the type
checker, so each group can use the catalog's store, principal and lookups as its own."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aifuncs._endpoint import Endpoint
    from aifuncs.catalog._store import SqliteStore
    from aifuncs.governance import Principal
    from aifuncs.governance.permissions import PermissionStore


class CatalogPart:
    """The base of Catalog's method groups: nothing at run time."""

    if TYPE_CHECKING:
        path: Path
        _store: SqliteStore
        _permissions: PermissionStore

        @property
        def principal(self) -> Principal: ...

        def authorize(self, name: str, action: str = "view") -> Endpoint: ...
        def get(self, name: str) -> Endpoint: ...
        def names(self) -> builtins.list[str]: ...
        def _note(self, action: str, target: str, **details: Any) -> None: ...
