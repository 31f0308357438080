"""Job parameters: `--param day=2026-11-24` fills `:day`, `$day` and `${day}` in the job's SQL.

Markers are found with sqlglot's tokenizer, so text inside strings and comments is never touched, `::`
casts and `a:b` paths are not markers. Values go in as SQL literals (numbers as numbers, anything else as
a quoted string, escaped by sqlglot): cast where another type is wanted, e.g. `CAST(:day AS DATE)`.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from aifuncs.errors import SqlError

_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_NAME_TOKENS = {TokenType.VAR, TokenType.IDENTIFIER}
_VALUE_ENDS = {*_NAME_TOKENS, TokenType.STRING, TokenType.NUMBER, TokenType.R_PAREN, TokenType.R_BRACKET,
               TokenType.R_BRACE}  # fmt: skip


def markers(sql: str, dialect: str) -> list[tuple[int, int, str]]:
    """Each parameter marker of `sql`: (start, end) of its text, and its name."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(sql)
    except sqlglot.errors.TokenError:
        return []
    found = []
    for i, token in enumerate(tokens[:-1]):
        name = tokens[i + 1]
        if token.token_type == TokenType.PARAMETER:
            if (
                name.token_type == TokenType.L_BRACE
                and i + 3 < len(tokens)
                and tokens[i + 3].token_type == TokenType.R_BRACE
            ):
                found.append((token.start, tokens[i + 3].end, tokens[i + 2].text))  # ${name}
            elif name.token_type in _NAME_TOKENS and name.start == token.end + 1:
                found.append((token.start, name.end, name.text))  # $name
        elif token.token_type == TokenType.COLON and _starts_marker(tokens, i):
            found.append((token.start, name.end, name.text))  # :name
    return found


def _starts_marker(tokens: list[Token], i: int) -> bool:
    colon, name = tokens[i], tokens[i + 1]
    if name.token_type not in _NAME_TOKENS or name.start != colon.end + 1:
        return False
    if i == 0:
        return True
    before = tokens[i - 1]
    if before.token_type in (TokenType.L_BRACKET, TokenType.COLON):
        return False  # a slice: x[:n], x[1::n]
    # `a:b` (a JSON path), `x[1:n]` (a slice), `{'k':v}` (a struct) have a value right before the colon.
    return before.end + 1 < colon.start or before.token_type not in _VALUE_ENDS


def substitute(sql: str, dialect: str, params: dict[str, str]) -> str:
    """The job's SQL with every marker replaced by its parameter's value; a marker with no value, or a
    value no marker uses, is an error that names it."""
    found = markers(sql, dialect)
    wanted = {name for _, _, name in found}
    missing = sorted(wanted - params.keys())
    if missing:
        raise SqlError(
            f"The job uses parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)}: pass"
            f" {' '.join(f'--param {m}=VALUE' for m in missing)}."
        )
    unused = sorted(params.keys() - wanted)
    if unused:
        uses = f" (it uses {', '.join(sorted(wanted))})" if wanted else " (it has no parameters)"
        raise SqlError(f"The job has no parameter {', '.join(unused)}{uses}.")
    pieces, last = [], 0
    for start, end, name in found:
        pieces += [sql[last:start], _literal(params[name])]
        last = end + 1
    return "".join(pieces) + sql[last:]


def _literal(value: str) -> str:
    literal = exp.Literal.number(value) if _NUMBER.fullmatch(value) else exp.Literal.string(value)
    return literal.sql("duckdb")
