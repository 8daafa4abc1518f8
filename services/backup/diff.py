"""Comparing and showing configs: unified diffs, diffstats, redaction of secrets.

Redacted are the value of a secret option (``/pwd <value>``, the configured
``backup.secret_options``) and the value of ``vars create <name> <flags> <value>`` lines whose
flags contain the letters of a configured ``backup.secret_var_flags`` entry (``pb``). A diff is
computed on the real lines and redacted when it is rendered, so a line whose only change is a
password still shows as changed (``-… /pwd ********`` / ``+… /pwd ********``) without showing
either value.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from services.backup.normalize import (
    BINARY,
    Normalizer,
    classify,
    decode,
    encode_text,
    printable_text,
    split_lines,
)

REDACTED = "********"
_TOKENS = re.compile(r"(\s+)")


@dataclass(frozen=True)
class Redaction:
    options: frozenset[str]
    var_flags: tuple[frozenset[str], ...]

    @classmethod
    def build(cls, options: Iterable[str], var_flags: Iterable[str]) -> Redaction:
        return cls(
            frozenset(o.lower() for o in options),
            tuple(frozenset(flags) for flags in var_flags if flags),
        )

    def line(self, line: str) -> str:
        """One config line with its secret values replaced by ``REDACTED``."""
        parts = _TOKENS.split(line)
        # parts alternates [word, space, word, ...] (a leading "" when the line starts with space)
        words = [i for i, part in enumerate(parts) if part and not part.isspace()]
        if len(words) >= 4 and [parts[i] for i in words[:2]] == ["vars", "create"]:
            flags = set(parts[words[3]])
            if len(words) >= 5 and any(wanted <= flags for wanted in self.var_flags):
                return "".join(parts[: words[4]]) + REDACTED
        redact_next = False
        for index in words:
            if redact_next:
                parts[index] = REDACTED
                redact_next = False
            elif parts[index].lower() in self.options:
                redact_next = True
        return "".join(parts)


@dataclass(frozen=True)
class DiffStat:
    added: int
    removed: int

    def __str__(self) -> str:
        return f"+{self.added} -{self.removed}"


def _changed_lines(diff: Iterable[str]) -> DiffStat:
    added = removed = 0
    for line in diff:
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return DiffStat(added, removed)


def diffstat(old: bytes, new: bytes, normalizer: Normalizer) -> DiffStat:
    """Lines added and removed between two configs, volatile lines left out."""
    old_lines, new_lines = normalizer.lines(old), normalizer.lines(new)
    # A new version mostly differs in a few lines: the lines both share at the start and at the
    # end are unchanged in any minimal diff, so difflib compares only the middle (for a 50 KB
    # config 1.5 ms become 0.1 ms, on the intake's path).
    start, shortest = 0, min(len(old_lines), len(new_lines))
    while start < shortest and old_lines[start] == new_lines[start]:
        start += 1
    end = 0
    while end < shortest - start and old_lines[-1 - end] == new_lines[-1 - end]:
        end += 1
    old_middle = old_lines[start : len(old_lines) - end]
    new_middle = new_lines[start : len(new_lines) - end]
    return _changed_lines(difflib.unified_diff(old_middle, new_middle, n=0, lineterm=""))


@dataclass(frozen=True)
class Side:
    """One side of a diff: the bytes and how to name them in the header."""

    content: bytes
    label: str


def _describe_binary(side: Side) -> str:
    digest = hashlib.sha256(side.content).hexdigest()[:16]
    return f"{side.label}: {len(side.content)} bytes, sha256 {digest}…"


def unified_diff(
    old: Side,
    new: Side,
    *,
    normalizer: Normalizer | None,
    redaction: Redaction | None,
    context: int = 3,
) -> str:
    """A unified diff (``---``/``+++`` headers, ``@@`` hunks) ending in a newline, or a note
    when either side is binary. ``normalizer`` None keeps the volatile lines; ``redaction`` None
    shows secrets."""
    if classify(old.content) == BINARY or classify(new.content) == BINARY:
        if old.content == new.content:
            return ""
        return (
            "Binary configurations differ (they contain NUL bytes; fetch them to compare):\n"
            f"  {_describe_binary(old)}\n  {_describe_binary(new)}\n"
        )

    def prepared(content: bytes) -> list[str]:
        lines = normalizer.lines(content) if normalizer else split_lines(decode(content))
        return [printable_text(line) for line in lines]

    diff = list(
        difflib.unified_diff(
            prepared(old.content),
            prepared(new.content),
            fromfile=old.label,
            tofile=new.label,
            n=context,
            lineterm="",
        )
    )
    if redaction is not None:
        # The first two lines are the ---/+++ headers; hunk lines start with " ", "-", "+".
        diff[2:] = [
            line if line.startswith("@@") else line[:1] + redaction.line(line[1:])
            for line in diff[2:]
        ]
    text = "\n".join(diff)
    return text + "\n" if text else ""


def redact_content(content: bytes, redaction: Redaction) -> bytes:
    """The config with its secret values replaced, line ends and undecodable bytes kept."""
    text = decode(content)
    pieces = re.split(r"(\r?\n)", text)
    # Even indexes are lines, odd ones their ends.
    for index in range(0, len(pieces), 2):
        pieces[index] = redaction.line(pieces[index])
    return encode_text("".join(pieces))
