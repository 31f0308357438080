"""A request body as JSON, within bounds every handler can rely on, or a 400 that names what is wrong.

Python's parser alone would accept what later breaks a handler (a 500) or stalls a worker: nesting deep
enough to exhaust the recursion limit, integers of thousands of digits (the int-from-str limit raises past
4,300; a few hundred already overflow every column type), NaN and Infinity (not JSON, and not writable
back), and lone UTF-16 surrogates (no string may be encoded with one). The common body has none of these:
it is parsed once at C speed, and the slower, exact checks run only when a cheap scan of the bytes says
one of them may be there.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aifuncs.server._errors import ApiError

__all__ = ["MAX_DEPTH", "MAX_DIGITS", "parse_json"]

MAX_DEPTH = 64  # objects and arrays inside one another
MAX_DIGITS = 300  # digits of an integer

_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
# With every digit a 0, what may be a huge number: a long run of digits, or an exponent of 3 digits or more.
_HUGE = (b"0" * (MAX_DIGITS + 1), b"e000", b"e+000", b"E000", b"E+000")
_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")  # an escaped surrogate: may be a lone one
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _bad(message: str) -> ApiError:
    return ApiError(400, "MALFORMED_REQUEST", message)


def _constant(name: str) -> Any:
    raise _bad(f"The body holds {name}, which is not JSON: send a number or null.")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _bad(
            f"The body holds an integer of {len(text.lstrip('-'))} digits; at most {MAX_DIGITS} are read."
        )
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _bad(f"The body holds the number {text[:40]}, too large for a double: send a smaller one.")
    return value


def parse_json(raw: bytes) -> Any:
    """The body's JSON value; ApiError 400 (MALFORMED_REQUEST) naming the problem otherwise."""
    zeroed = raw.translate(_AS_ZERO)  # a byte scan at C speed, not a regular expression (ten times slower)
    checked = any(sign in zeroed for sign in _HUGE)
    try:
        if checked:
            value = json.loads(raw, parse_int=_integer, parse_float=_float, parse_constant=_constant)
        else:
            value = json.loads(raw, parse_constant=_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _bad(f"The body is not JSON: {error}.") from None
    except RecursionError:
        raise _bad(f"The body nests objects and arrays more than {MAX_DEPTH} deep.") from None
    except ValueError as error:  # Python's own int limit, should a number slip past the scan
        raise _bad(f"The body holds a number that cannot be read: {error}.") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # fewer openings cannot be too deep
        _check_depth(raw)
    if _SURROGATE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(
                "The body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair): send"
                " text as valid Unicode."
            ) from None
    return value


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than MAX_DEPTH. On valid JSON with its strings removed, each pass that deletes
    every empty `[]` peels exactly one level: a tree deeper than MAX_DEPTH is not gone after that many."""
    brackets = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"")
    if brackets:
        raise _bad(f"The body nests objects and arrays more than {MAX_DEPTH} deep.")
