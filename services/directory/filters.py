"""Search filters (RFC 4511 §4.5.1.7) as plain values, and how one matches an entry.

Matching is three-valued as the RFC says (TRUE, FALSE, Undefined = None): an unknown attribute or
a number assertion that is no number is Undefined, and ``(!(x=y))`` over Undefined stays
Undefined, so a negation never turns "cannot tell" into a match.

An entry is matched through its ``match`` table: canonical attribute name -> the values in
matching form (names casefolded, so ``(cn=mül*)`` finds "Müller"; numbers as every variant of
:func:`numbers.variants`, so a number matches in any form a PBX presents it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.directory.numbers import normalize_fragment, normalize_query

# Attributes whose values are telephone numbers (matched by variant, not as text).
NUMBER_ATTRIBUTES = frozenset({"telephonenumber", "mobile"})

# Other names clients use for our attributes (RFC 4519 names, AD's "company" stays its own).
ALIASES = {
    "commonname": "cn",
    "surname": "sn",
    "gn": "givenname",
    "organizationname": "o",
    "mobiletelephonenumber": "mobile",
    "userid": "uid",
    "domaincomponent": "dc",
}


def canonical(attribute: str) -> str:
    """Attribute descriptions are case-insensitive and may carry options (``cn;lang-de``)."""
    name = attribute.split(";", 1)[0].strip().lower()
    return ALIASES.get(name, name)


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Filter


@dataclass(frozen=True, slots=True)
class Equality:
    attribute: str
    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute", canonical(self.attribute))


@dataclass(frozen=True, slots=True)
class Substrings:
    attribute: str
    initial: str | None
    middle: tuple[str, ...]
    final: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute", canonical(self.attribute))


@dataclass(frozen=True, slots=True)
class GreaterOrEqual:
    attribute: str
    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute", canonical(self.attribute))


@dataclass(frozen=True, slots=True)
class LessOrEqual:
    attribute: str
    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute", canonical(self.attribute))


@dataclass(frozen=True, slots=True)
class Present:
    attribute: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute", canonical(self.attribute))


@dataclass(frozen=True, slots=True)
class Undefined:
    """A filter we cannot evaluate (an extensible match with a matching rule)."""


Filter = And | Or | Not | Equality | Substrings | GreaterOrEqual | LessOrEqual | Present | Undefined

MatchTable = Mapping[str, tuple[str, ...]]


def substring_parts(node: Substrings) -> tuple[str | None, tuple[str, ...], str | None]:
    """The parts in matching form for the node's attribute."""
    fold: Callable[[str], str] = (
        normalize_fragment if node.attribute in NUMBER_ATTRIBUTES else str.casefold
    )
    return (
        fold(node.initial) if node.initial is not None else None,
        tuple(fold(part) for part in node.middle),
        fold(node.final) if node.final is not None else None,
    )


def _substring_match(
    value: str, initial: str | None, middle: tuple[str, ...], final: str | None
) -> bool:
    position = 0
    end = len(value)
    if initial is not None:
        if not value.startswith(initial):
            return False
        position = len(initial)
    if final is not None:
        if len(value) - len(final) < position or not value.endswith(final):
            return False
        end = len(value) - len(final)
    for part in middle:
        found = value.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


def assertion_value(attribute: str, value: str) -> str | None:
    """An equality assertion in matching form; None when it can never match (a number
    attribute asked for something that is not a number)."""
    if attribute in NUMBER_ATTRIBUTES:
        return normalize_query(value)
    return value.casefold()


def matches(node: Filter, table: MatchTable) -> bool | None:
    """TRUE, FALSE or Undefined (None) for the entry whose match table is ``table``."""
    if isinstance(node, Equality):
        values = table.get(node.attribute)
        if values is None:
            return None
        wanted = assertion_value(node.attribute, node.value)
        if wanted is None:
            return None
        return wanted in values
    if isinstance(node, Substrings):
        values = table.get(node.attribute)
        if values is None:
            return None
        initial, middle, final = substring_parts(node)
        return any(_substring_match(value, initial, middle, final) for value in values)
    if isinstance(node, And):
        undefined = False
        for child in node.children:
            outcome = matches(child, table)
            if outcome is False:
                return False
            if outcome is None:
                undefined = True
        return None if undefined else True
    if isinstance(node, Or):
        undefined = False
        for child in node.children:
            outcome = matches(child, table)
            if outcome is True:
                return True
            if outcome is None:
                undefined = True
        return None if undefined else False
    if isinstance(node, Not):
        outcome = matches(node.child, table)
        return None if outcome is None else not outcome
    if isinstance(node, Present):
        return node.attribute in table
    if isinstance(node, GreaterOrEqual | LessOrEqual):
        values = table.get(node.attribute)
        if values is None:
            return None
        wanted = node.value.casefold()
        if isinstance(node, GreaterOrEqual):
            return any(value >= wanted for value in values)
        return any(value <= wanted for value in values)
    return None


def to_string(node: Filter) -> str:
    """RFC 4515 text of a filter, for logs and the CLI (values shown as given)."""
    if isinstance(node, And):
        return "(&" + "".join(map(to_string, node.children)) + ")"
    if isinstance(node, Or):
        return "(|" + "".join(map(to_string, node.children)) + ")"
    if isinstance(node, Not):
        return "(!" + to_string(node.child) + ")"
    if isinstance(node, Equality):
        return f"({node.attribute}={node.value})"
    if isinstance(node, Substrings):
        parts = [node.initial or "", *node.middle, node.final or ""]
        return f"({node.attribute}={'*'.join(parts)})"
    if isinstance(node, GreaterOrEqual):
        return f"({node.attribute}>={node.value})"
    if isinstance(node, LessOrEqual):
        return f"({node.attribute}<={node.value})"
    if isinstance(node, Present):
        return f"({node.attribute}=*)"
    return "(?)"


class FilterSyntaxError(ValueError):
    """Not an RFC 4515 filter string; the message says where."""


def _unescape_value(text: str) -> str:
    raw = bytearray()
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\\":
            pair = text[position + 1 : position + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise FilterSyntaxError(f"bad escape at {text[position:]!r}: use \\XX (hex)")
            raw.append(int(pair, 16))
            position += 3
        elif char in "()":
            raise FilterSyntaxError(f"unescaped {char!r} in a value (write \\28 or \\29)")
        else:
            raw += char.encode("utf-8")
            position += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FilterSyntaxError("an escaped value is not UTF-8") from None


def parse_filter(text: str) -> Filter:
    """An RFC 4515 string (``(|(sn=Mül*)(telephoneNumber=07031730090))``) as a Filter, for the
    CLI; like ldapsearch, the outer parentheses may be left out. No extensible matches."""
    text = text.strip()
    if not text.startswith("("):
        text = f"({text})"
    node, end = _parse(text, 0, 0)
    if end != len(text):
        raise FilterSyntaxError(f"unexpected {text[end:]!r} after the filter")
    return node


def _parse(text: str, position: int, depth: int) -> tuple[Filter, int]:
    if depth > 32:
        raise FilterSyntaxError("nested too deeply")
    if position >= len(text) or text[position] != "(":
        raise FilterSyntaxError(f"expected '(' at position {position}")
    position += 1
    if position < len(text) and text[position] in "&|!":
        operator = text[position]
        position += 1
        children: list[Filter] = []
        while position < len(text) and text[position] == "(":
            child, position = _parse(text, position, depth + 1)
            children.append(child)
        if position >= len(text) or text[position] != ")":
            raise FilterSyntaxError(f"expected ')' at position {position}")
        if operator == "!":
            if len(children) != 1:
                raise FilterSyntaxError("! takes exactly one filter")
            return Not(children[0]), position + 1
        if not children:
            raise FilterSyntaxError(f"{operator} needs at least one filter")
        return (And(tuple(children)) if operator == "&" else Or(tuple(children))), position + 1
    end = position
    while end < len(text) and text[end] != ")":
        end += 2 if text[end] == "\\" else 1
    if end >= len(text):
        raise FilterSyntaxError("missing ')'")
    return _item(text[position:end]), end + 1


def _item(item: str) -> Filter:
    for operator, kind in (("~=", Equality), (">=", GreaterOrEqual), ("<=", LessOrEqual)):
        attribute, found, value = item.partition(operator)
        if found and "=" not in attribute:
            return kind(_attribute(attribute), _unescape_value(value))
    attribute, found, value = item.partition("=")
    if not found:
        raise FilterSyntaxError(f"{item!r} is not attribute=value")
    name = _attribute(attribute)
    if value == "*":
        return Present(name)
    if "*" not in value:
        return Equality(name, _unescape_value(value))
    parts = [_unescape_value(part) for part in value.split("*")]
    return Substrings(name, parts[0] or None, tuple(p for p in parts[1:-1] if p), parts[-1] or None)


def _attribute(text: str) -> str:
    name = text.strip()
    if not name or not all(c.isalnum() or c in "-;." for c in name):
        raise FilterSyntaxError(f"{text!r} is not an attribute name")
    return name
