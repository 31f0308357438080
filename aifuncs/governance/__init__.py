"""Governance: who may call which endpoint, as whom. Principals (`principals.py`) and their tokens
(`tokens.py`) so far; permissions, rate limits and the one policy check build on them."""

from __future__ import annotations

from aifuncs.governance.principals import Principal, PrincipalStore, UnknownPrincipal, acting_as, owner_of
from aifuncs.governance.tokens import InvalidToken, Token, TokenStore, check_format

__all__ = [
    "InvalidToken",
    "Principal",
    "PrincipalStore",
    "Token",
    "TokenStore",
    "UnknownPrincipal",
    "acting_as",
    "check_format",
    "owner_of",
]
