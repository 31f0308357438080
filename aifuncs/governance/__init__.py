"""Governance: who may call which endpoint, as whom. Principals (`principals.py`), their tokens (`tokens.py`)
and endpoint permissions (`permissions.py`) so far; the one policy check and rate limits build on them."""

from __future__ import annotations

from aifuncs.governance.permissions import LEVELS, PermissionStore, level_allows
from aifuncs.governance.principals import Principal, PrincipalStore, UnknownPrincipal, acting_as, owner_of
from aifuncs.governance.tokens import InvalidToken, Token, TokenStore, check_format

__all__ = [
    "LEVELS",
    "InvalidToken",
    "PermissionStore",
    "Principal",
    "PrincipalStore",
    "Token",
    "TokenStore",
    "UnknownPrincipal",
    "acting_as",
    "check_format",
    "level_allows",
    "owner_of",
]
