"""Governance: who may call which endpoint, as whom. Tokens so far (`tokens.py`); principals, permissions,
rate limits and the one policy check build on them."""

from __future__ import annotations

from aifuncs.governance.tokens import InvalidToken, Token, TokenStore, check_format

__all__ = ["InvalidToken", "Token", "TokenStore", "check_format"]
