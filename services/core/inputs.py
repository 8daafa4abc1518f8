"""Checks for text from outside before it reaches PostgreSQL or a recursive parser.

PostgreSQL ``text`` holds neither NUL nor anything that is not UTF-8 (asyncpg fails with an
error the caller would see as a 500); Python's ``json`` recurses per nesting level and refuses
integers of more than 4300 digits with a ``ValueError``; walking a parsed XML tree recursively
fails on deep nesting. Every function here answers with a domain error naming the field
(``core.http`` maps it to 400 or 422) instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from services.core import errors
from services.core.identity import printable

# Nesting no device or operator sends; far below Python's recursion limit.
MAX_DEPTH = 32
# Digits of an integer in a JSON body (a 64-bit number has 20).
MAX_INTEGER_DIGITS = 40


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    if "\0" in value:
        return "contains a NUL byte"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def check_text(value: str, field: str) -> str:
    """``value`` unchanged, or Invalid naming ``field``."""
    problem = text_problem(value)
    if problem:
        raise errors.Invalid(f"{field}: {problem}")
    return value


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` outside strings (no recursion, one pass)."""
    depth = deepest = 0
    in_string = escaped = False
    for character in text:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]}":
            depth -= 1
    return deepest


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise errors.Unprocessable(
            f"JSON number {digits[:20]}... has more than {MAX_INTEGER_DIGITS} digits"
        )
    return int(digits)


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads_json(text: str, what: str = "body", *, check_strings: bool = True) -> Any:
    """``json.loads`` for outside text: Invalid when it is not JSON or (``check_strings``) a
    string in it cannot be stored; Unprocessable when nested deeper than :data:`MAX_DEPTH` or
    an integer is longer than :data:`MAX_INTEGER_DIGITS` digits."""
    if json_depth(text) > MAX_DEPTH:
        raise errors.Unprocessable(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_int=_integer)
    except json.JSONDecodeError as error:
        raise errors.Invalid(
            f"{what} is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:  # json_depth makes this unreachable; kept as a floor
        raise errors.Unprocessable(f"{what}: JSON nested too deeply") from None
    if check_strings:
        for string in _strings(value):
            problem = text_problem(string)
            if problem:
                raise errors.Invalid(f"{what}: the JSON string {printable(string, 40)!r} {problem}")
    return value


def xml_depth(root: Any) -> int:
    """The depth of a parsed ElementTree element (no recursion)."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in element)
    return deepest
