"""Distinguished names (RFC 4514): escaping our values, parsing what clients send."""

from __future__ import annotations

_SPECIAL = set(',+"\\<>;=')


class DnError(ValueError):
    """Not a DN (answered with invalidDNSyntax)."""


def escape(value: str) -> str:
    """An attribute value as it may appear in a DN string."""
    out = []
    for position, char in enumerate(value):
        if (
            char in _SPECIAL
            or (char == "#" and position == 0)
            or (char == " " and position in (0, len(value) - 1))
        ):
            out.append("\\" + char)
        elif char == "\0":
            out.append("\\00")
        else:
            out.append(char)
    return "".join(out)


def _unescape(text: str) -> str:
    raw = bytearray()
    position = 0
    while position < len(text):
        char = text[position]
        if char != "\\":
            raw += char.encode("utf-8")
            position += 1
            continue
        pair = text[position + 1 : position + 3]
        if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
            raw.append(int(pair, 16))
            position += 3
        elif position + 1 < len(text):
            raw += text[position + 1].encode("utf-8")
            position += 2
        else:
            raise DnError("a DN ends with a lone backslash")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DnError("an escaped DN value is not UTF-8") from None


def _split(text: str, separator: str) -> list[str]:
    parts = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse(text: str) -> list[tuple[str, str]]:
    """``uid=3, dc=Kuenkel00001`` -> ``[("uid", "3"), ("dc", "Kuenkel00001")]``: attribute types
    lower-cased, values unescaped. Multi-valued RDNs are refused: none of ours has one."""
    if not text.strip():
        return []
    rdns = []
    for part in _split(text, ","):
        if len(_split(part, "+")) > 1:
            raise DnError("multi-valued RDNs are not used here")
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name or not all(c.isalnum() or c in "-." for c in name):
            raise DnError(f"{part.strip()!r} is not attribute=value")
        value = value.strip()
        if value.startswith("#"):
            raise DnError("hex-encoded (#) DN values are not supported")
        rdns.append((name, _unescape(value)))
    return rdns
