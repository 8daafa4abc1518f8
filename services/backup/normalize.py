"""What a stored config is: its bytes, their kind, and the lines that count when comparing.

protocol.md §5: devices PUT their whole config as text; some lines change on every upload and must
be ignored when deciding whether the config changed. Everything here works on bytes decoded with
``surrogateescape``, so NUL bytes and text that is not UTF-8 pass through losslessly and never
crash a comparison.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

# protocol.md §5 [C, PHPUS]: call-list entries, update serials, UP1 settings, TLS session tickets.
VOLATILE_PATTERNS = (
    r"^mod cmd FLASHDIR0 add-item .*\)\(type=.*\(info=.*$",
    r"^vars create UPDATE/.*$",
    r"^config change UP1 /.*$",
    r"^vars create TLS0/TICKET/.*$",
)

UTF8 = "utf-8"
OTHER = "other"
BINARY = "binary"


def decode(content: bytes) -> str:
    """Lossless text: undecodable bytes become lone surrogates (``encode_text`` undoes it)."""
    return content.decode("utf-8", "surrogateescape")


def encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def printable_text(text: str) -> str:
    """For display: undecodable bytes as U+FFFD, never an exception."""
    return encode_text(text).decode("utf-8", "replace")


def split_lines(text: str) -> list[str]:
    """Lines without their ends; CRLF and LF alike (devices send either, protocol.md §1)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def classify(content: bytes) -> str:
    """``binary`` (contains NUL), ``utf-8`` text, or ``other`` text (not valid UTF-8)."""
    if b"\x00" in content:
        return BINARY
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return OTHER
    return UTF8


@dataclass(frozen=True)
class Normalizer:
    """Drops the volatile lines: protocol.md §5's plus the configured ``backup.ignore_patterns``."""

    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def build(cls, extra: Sequence[str] = ()) -> Normalizer:
        return cls(tuple(re.compile(p) for p in (*VOLATILE_PATTERNS, *extra)))

    def is_volatile(self, line: str) -> bool:
        return any(pattern.search(line) for pattern in self.patterns)

    def lines(self, content: bytes) -> list[str]:
        return [line for line in split_lines(decode(content)) if not self.is_volatile(line)]

    def normalized(self, content: bytes) -> bytes:
        return encode_text("\n".join(self.lines(content)))


@dataclass(frozen=True)
class PreparedContent:
    """An upload ready to store: hashes, kind and the compressed bytes."""

    sha256: bytes
    normalized_sha256: bytes
    encoding: str
    size: int
    compressed: bytes


def prepare(content: bytes, normalizer: Normalizer) -> PreparedContent:
    """CPU work of one upload (run in a thread for big bodies)."""
    return PreparedContent(
        sha256=hashlib.sha256(content).digest(),
        normalized_sha256=hashlib.sha256(normalizer.normalized(content)).digest(),
        encoding=classify(content),
        size=len(content),
        compressed=zlib.compress(content, 6),
    )
