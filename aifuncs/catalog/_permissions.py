"""The catalog's permission methods: levels held, Databricks' permissions objects, grants as rows."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from aifuncs.catalog._parts import CatalogPart
from aifuncs.errors import ConfigError


class PermissionMethods(CatalogPart):
    """Who holds what on an endpoint, as the catalog's principal may see and change it."""

    def permission_level(self, name: str) -> str | None:
        """The level the principal holds on the endpoint `name` (its canonical name), None for none."""
        principal = self.principal
        return "CAN_MANAGE" if principal.admin else self._permissions.effective(name, principal)

    def managed(self) -> dict[str, datetime | None]:
        """The endpoints the principal may manage, each with when it was made (rows logged before belong to
        an earlier endpoint of that name)."""
        principal = self.principal
        return {
            e.name: e.created_at
            for e in self._store.list()
            if principal.admin or self._permissions.effective(e.name, principal) == "CAN_MANAGE"
        }

    def managed_names(self) -> builtins.list[str]:
        """The endpoints the principal may manage."""
        names = self._store.names()
        principal = self.principal
        if principal.admin:
            return names
        return [n for n in names if self._permissions.effective(n, principal) == "CAN_MANAGE"]

    def get_permissions(self, name: str) -> dict[str, Any]:
        """Databricks' permissions object of an endpoint (`access_control_list` with where each level
        comes from); needs CAN_MANAGE."""
        endpoint = self.authorize(name, "manage")
        return {
            "object_id": f"/serving-endpoints/{endpoint.name}",
            "object_type": "serving-endpoint",
            "access_control_list": self._permissions.acl(endpoint.name),
        }

    def permission_rows(self) -> builtins.list[dict[str, Any]]:
        """Every grant as a row (endpoint, principal, principal_type, permission_level, inherited,
        inherited_from): all of those on endpoints the principal manages, its own on those it may view."""
        principal = self.principal
        rows = []
        for endpoint in self._store.list():
            held = "CAN_MANAGE" if principal.admin else self._permissions.effective(endpoint.name, principal)
            if held is None:
                continue
            for entry in self._permissions.acl(endpoint.name):
                name = entry["display_name"]
                if held != "CAN_MANAGE" and name != principal.name:
                    continue
                kind = next(k for k in ("user", "group", "service_principal") if f"{k}_name" in entry)
                for level in entry["all_permissions"]:
                    rows.append({"endpoint": endpoint.name, "principal": name, "principal_type": kind,
                                 "permission_level": level["permission_level"], "inherited": level["inherited"],
                                 "inherited_from": ", ".join(level.get("inherited_from_object", []))})  # fmt: skip
        return rows

    def set_permissions(
        self, name: str, access_control_list: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the endpoint's grants (Databricks' PUT): all entries are checked before any is written."""
        endpoint = self.authorize(name, "manage")
        self._permissions.set_acl(endpoint.name, access_control_list)
        self._store.bump_revision()
        self._note("permissions.set", endpoint.name, access_control_list=access_control_list)
        return self.get_permissions(endpoint.name)

    def update_permissions(
        self, name: str, access_control_list: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Add or change grants, keeping the others (Databricks' PATCH)."""
        endpoint = self.authorize(name, "manage")
        self._permissions.update_acl(endpoint.name, access_control_list)
        self._store.bump_revision()
        self._note("permissions.update", endpoint.name, access_control_list=access_control_list)
        return self.get_permissions(endpoint.name)

    def _non_admin_managers(self, name: str) -> set[str]:
        """Who besides admins holds CAN_MANAGE on `name` (a group counts whoever its members are)."""
        found = set()
        for holder in self._permissions.managers(name):
            try:
                principal = self._permissions.principals.get(holder)
            except ConfigError:
                continue  # its grants went with it
            if not (principal.admin and principal.kind != "group"):
                found.add(holder)
        return found
