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


def _combine(sources: Sequence[str]) -> re.Pattern[str] | None:
    # Group numbers shift inside an alternation and inline flags must lead the whole pattern:
    # patterns using either are searched one by one.
    if any(re.search(r"\\[1-9]|\(\?P=|\(\?[aiLmsux]+\)", source) for source in sources):
        return None
    try:
        return re.compile("|".join(f"(?:{source})" for source in sources))
    except re.error:
        return None


@dataclass(frozen=True)
class Normalizer:
    """Drops the volatile lines: protocol.md §5's plus the configured ``backup.ignore_patterns``."""

    patterns: tuple[re.Pattern[str], ...]
    # All patterns as one alternation: one search per line instead of one per pattern and line
    # (a line is volatile when any pattern matches, which is when the alternation matches).
    # None when the patterns cannot be joined (a backreference or a flag group in one of them).
    combined: re.Pattern[str] | None = None

    @classmethod
    def build(cls, extra: Sequence[str] = ()) -> Normalizer:
        sources = (*VOLATILE_PATTERNS, *extra)
        return cls(tuple(re.compile(p) for p in sources), _combine(sources))

    def is_volatile(self, line: str) -> bool:
        if self.combined is not None:
            return self.combined.search(line) is not None
        return any(pattern.search(line) for pattern in self.patterns)

    def lines(self, content: bytes) -> list[str]:
        search = self.combined.search if self.combined is not None else None
        # Blank lines never make a new version (PHPUS drops them before comparing).
        lines = [line for line in split_lines(decode(content)) if line.strip()]
        if search is None:
            return [line for line in lines if not self.is_volatile(line)]
        return [line for line in lines if search(line) is None]

    def normalized(self, content: bytes) -> bytes:
        return encode_text("\n".join(self.lines(content)))


@dataclass(frozen=True)
class PreparedContent:
    """An upload ready to compare with the stored one: hashes and kind. Compressing waits until
    the config turned out to be new (most uploads are unchanged)."""

    sha256: bytes
    normalized_sha256: bytes
    encoding: str
    size: int


def prepare(content: bytes, normalizer: Normalizer) -> PreparedContent:
    """CPU work of every upload (run in a thread for big bodies)."""
    return PreparedContent(
        sha256=hashlib.sha256(content).digest(),
        normalized_sha256=hashlib.sha256(normalizer.normalized(content)).digest(),
        encoding=classify(content),
        size=len(content),
    )


def compress(content: bytes) -> bytes:
    """How contents are stored (``backup_contents.compressed``)."""
    return zlib.compress(content, 6)
