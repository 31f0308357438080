"""SQL function specs: the TOML files under `udfs/`, one per function, shared by every engine."""

from __future__ import annotations

from aifuncs.functions.spec import FunctionSpec, Param, all_specs, define, get_spec, user_folder

__all__ = ["FunctionSpec", "Param", "all_specs", "define", "get_spec", "user_folder"]
