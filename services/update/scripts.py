"""Script templates: loading, rendering, the run-once hash, the command grammar check.

``staging_scripts/`` mirrors the seed's ``/DRIVE/CF0/update/`` folder. Every file is a Jinja2
template rendered in a sandbox with undefined names as errors; afterwards the seed's ``#(name)``
update-variable syntax is expanded from the same variables. Templates are read into memory by
:meth:`ScriptStore.refresh` (run in a thread by the service, never in the event loop) and compiled
once; a changed file is picked up by the next refresh without a restart.

Secrets (customer passwords, variables flagged secret) are :class:`Secret` values: writing one
into a script for a caller that may not see it raises :class:`SecretRequired`, so such a script is
never sent, not even in part. Templates can test ``proven`` and send a reduced script instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.core import scriptlines

# Files larger than this are not scripts (protects memory and the devices).
MAX_SCRIPT_BYTES = 256 * 1024
SCRIPT_SUFFIXES = (".txt", ".htm")
_UPDATE_VARIABLE = re.compile(r"#\(([A-Za-z0-9][A-Za-z0-9_.-]*)\)")
# A file whose first line is this marker is sent as it is: no Jinja2, no #(name) expansion
# (PHPUS scripts ported as they are; `pbxfront scripts import-phpus` writes it). The marker line
# itself is neither sent nor hashed.
RAW_MARKER = "{#- pbxfront: raw -#}"
# Stands for a literal "#(" of a raw file between rendering and #(name) expansion; a NUL never
# reaches a script otherwise (files with control characters are refused).
_LITERAL_HASH_PAREN = "\x00("
# Stands for a lone CR through rendering: Jinja2 would make it a line end, PHPUS keeps it
# inside its line (and hashes it so).
LONE_CR = "\x00r"
# What Jinja2 or the #(name) expansion would read as syntax in a plain file.
_TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#|#\([A-Za-z0-9]")
# protocol.md §2: PHPUS trims these characters (PHP's trim()) before hashing.
_TRIM = " \t\n\r\0\x0b"


class ScriptError(Exception):
    """A script cannot be rendered. ``location`` is ``file:line`` when known."""

    def __init__(
        self, message: str, location: str | None = None, variable: str | None = None
    ) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.message = message
        self.location = location
        # An undefined #(name) update variable: its name (the location is a rendered line).
        self.variable = variable


class SecretRequired(Exception):
    """The script needs a secret the caller may not see (its identity is not proven)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the script needs the secret {name!r}, which goes only to proven devices")
        self.name = name


@dataclass(frozen=True)
class Secret:
    """A secret value; rendering it is allowed only when ``allowed``."""

    name: str
    value: str = field(repr=False)
    allowed: bool

    def reveal(self) -> str:
        if not self.allowed:
            raise SecretRequired(self.name)
        return self.value

    def __str__(self) -> str:
        return self.reveal()

    def __bool__(self) -> bool:
        return bool(self.value)


def script_hash(body: str) -> str:
    """PHPUS's run-once hash: MD5 over every line (split on LF) trimmed, empty lines skipped.

    protocol.md §2: matching it means a device moved from PHPUS with identical scripts is not
    re-run. MD5 here is an idempotence key, not a security control.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for line in body.split("\n"):
        trimmed = line.strip(_TRIM)
        if trimmed:
            digest.update(trimmed.encode("utf-8"))
    return digest.hexdigest()


def rawurlencode(value: object) -> str:
    """The ``rawurlencode`` script filter; a Secret is revealed only where it may be."""
    text = value.reveal() if isinstance(value, Secret) else str(value)
    return scriptlines.rawurlencode(text)


def script_lines(body: str) -> list[str]:
    """The body's lines without trailing white space; blank lines dropped."""
    return [line.rstrip(_TRIM) for line in body.split("\n") if line.strip(_TRIM)]


# --- the command grammar -----------------------------------------------------------------------

# protocol.md §2: the first words a script line may start with. Anything else is reported by
# `pbxfront scripts check` (extendable with update.extra_commands).
KNOWN_COMMANDS: dict[str, frozenset[str] | None] = {
    "mod": frozenset({"cmd"}),
    "config": frozenset({"change", "add", "rem", "write", "activate", "reset"}),
    "vars": frozenset({"create", "del", "read"}),
    "iresetn": None,
    "ireset": None,
    "resetn": None,
    "reset": None,
}


def unknown_commands(body: str, extra: Iterable[str] = ()) -> list[tuple[int, str]]:
    """(line number, line) of every line whose command is not in the grammar."""
    allowed_extra = {e.strip() for e in extra if e.strip()}
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(body.split("\n"), start=1):
        words = line.strip(_TRIM).split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] in allowed_extra or " ".join(words[:2]) in allowed_extra:
            continue
        second = KNOWN_COMMANDS.get(words[0], frozenset())
        if words[0] not in KNOWN_COMMANDS or (
            second is not None and (len(words) < 2 or words[1] not in second)
        ):
            problems.append((number, line.strip()))
    return problems


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    text: str
    path: str
    mtime_ns: int
    size: int
    raw: bool = False


class _MemoryLoader(jinja2.BaseLoader):
    """Serves templates from the store's current snapshot; never touches the disk."""

    def __init__(self, store: ScriptStore) -> None:
        self._store = store

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        sources = self._store.sources
        source = sources.get(template)
        if source is None:
            problem = self._store.problems.get(template)
            if problem is not None:
                # A file that exists but cannot be used is an error, never silently left out
                # (an `ignore missing` include would otherwise drop it and change the hash).
                raise ScriptError(problem, template)
            raise jinja2.TemplateNotFound(template)
        text = source.text
        if source.raw:
            # Served byte for byte: the template only calls back for the stored text.
            text = "{{ raw_script_text(" + repr(template) + ") }}"
        return text, source.path, lambda: self._store.sources.get(template) is source

    def list_templates(self) -> list[str]:
        return sorted(self._store.sources)


class _RecordingEnvironment(ImmutableSandboxedEnvironment):
    """Notes every template name a render asks for, found or not (includes, imports, extends
    all come through here), while the rendering thread has a recorder set: the names a rendered
    text can depend on (``scripts plan`` renders a device only once where they are unchanged)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.recorder = threading.local()

    def _record(self, name: object) -> None:
        names: set[str] | None = getattr(self.recorder, "names", None)
        if names is not None and isinstance(name, str):
            names.add(name)

    def get_template(
        self,
        name: str | jinja2.Template,
        parent: str | None = None,
        globals: MutableMapping[str, Any] | None = None,
    ) -> jinja2.Template:
        self._record(name)
        return super().get_template(name, parent, globals)

    def select_template(
        self,
        names: Iterable[str | jinja2.Template],
        parent: str | None = None,
        globals: MutableMapping[str, Any] | None = None,
    ) -> jinja2.Template:
        if not isinstance(names, jinja2.Undefined):
            names = list(names)
            for name in names:
                self._record(name)
        return super().select_template(names, parent, globals)


def _finalize(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.reveal()
    if value is None:
        # A None that reaches the output is almost always a mistake in a script.
        raise ScriptError("a value in the script is empty (None)")
    return value


class ScriptStore:
    """The script tree in memory with compiled templates; refreshed from disk on demand."""

    def __init__(self, root: Path, grace_seconds: float = 0.0) -> None:
        self.root = root
        self.sources: dict[str, _Source] = {}
        self.problems: dict[str, str] = {}
        # Bumped whenever the files change; part of every cache key built on rendered scripts.
        self.generation = 0
        self._lock = threading.Lock()
        self.environment = _RecordingEnvironment(
            loader=_MemoryLoader(self),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            auto_reload=True,
            finalize=_finalize,
            cache_size=2000,
        )
        self.environment.filters["rawurlencode"] = rawurlencode
        self.environment.globals["raw_script_text"] = self.raw_text
        # Seconds a changed file must be old before the changed tree is served (refresh()).
        self.grace_seconds = grace_seconds
        # Why the files on disk are not served yet: name -> reason (empty: disk is served).
        self.pending: dict[str, str] = {}
        # Problems of the tree on disk while it is held back (the served tree has none of them).
        self.held_problems: dict[str, str] = {}
        self._loaded = False
        # The published version served (install()), None while serving the folder.
        self.version: int | None = None
        self._display_names: dict[str, str] = {}

    def refresh(self, now: float | None = None) -> bool:
        """Re-read changed files (blocking: run in a thread). True if the served tree changed.

        After the first load a changed tree goes live only as a whole, and only when every
        changed file is at least ``grace_seconds`` old (protocol.md §10, PHPUS "grace": a
        half-saved file never reaches a device) and the tree has no problem (unreadable file,
        syntax error); until then the previous tree is served and :attr:`pending` says why.
        """
        with self._lock:
            found, problems = self._read_tree()
            changed = found.keys() != self.sources.keys() or any(
                found[name] is not self.sources.get(name) for name in found
            )
            if not changed and problems.keys() == self.problems.keys():
                self.pending = {}
                return False
            if self._loaded:
                wall = time.time() if now is None else now
                young = {
                    name: wall - source.mtime_ns / 1e9
                    for name, source in found.items()
                    if source is not self.sources.get(name)
                    and wall - source.mtime_ns / 1e9 < self.grace_seconds
                }
                if young or problems:
                    self.pending = {
                        **{
                            name: f"changed {max(age, 0):.0f} s ago, in effect "
                            f"{self.grace_seconds:.0f} s after the change"
                            for name, age in young.items()
                        },
                        **{name: f"held back: {problem}" for name, problem in problems.items()},
                    }
                    self.held_problems = problems
                    return False
            self._loaded = True
            self.pending = {}
            self.held_problems = {}
            self.sources = found
            self.problems = problems
            if changed:
                self.generation += 1
            return changed

    def _read_tree(self) -> tuple[dict[str, _Source], dict[str, str]]:
        found: dict[str, _Source] = {}
        problems: dict[str, str] = {}
        if not self.root.is_dir():
            problems[str(self.root)] = "scripts folder does not exist"
            return found, problems
        for directory, _subdirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                if not name.endswith(SCRIPT_SUFFIXES):
                    continue
                path = Path(directory) / name
                relative = path.relative_to(self.root).as_posix()
                try:
                    status = path.lstat()
                    if not path.is_file() or path.is_symlink():
                        problems[relative] = "not a regular file (symlinks are not followed)"
                        continue
                    if status.st_size > MAX_SCRIPT_BYTES:
                        problems[relative] = f"larger than {MAX_SCRIPT_BYTES} bytes"
                        continue
                    previous = self.sources.get(relative)
                    if (
                        previous is not None
                        and previous.mtime_ns == status.st_mtime_ns
                        and previous.size == status.st_size
                    ):
                        found[relative] = previous
                        continue
                    data = path.read_bytes()
                except OSError as error:
                    problems[relative] = f"cannot read: {error.strerror}"
                    continue
                source, problem = self._source(
                    data, str(path), relative, status.st_mtime_ns, status.st_size
                )
                if problem is not None:
                    problems[relative] = problem
                else:
                    assert source is not None
                    found[relative] = source
        return found, problems

    def _source(
        self, data: bytes, path: str, relative: str, mtime_ns: int, size: int
    ) -> tuple[_Source | None, str | None]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            return None, f"line {line}: not UTF-8 text (convert the file, e.g. iconv -f latin1)"
        if text.startswith("\ufeff"):
            text = text[1:]
        # Lone CRs stay inside their line, as PHPUS reads files (fgets splits on LF only), so
        # the run-once hash is PHPUS's for the same bytes.
        text = text.replace("\r\n", "\n")
        control = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text)
        if control:
            line = text.count("\n", 0, control.start()) + 1
            return None, f"line {line}: control character {control.group()!r}"
        text = text.replace("\r", LONE_CR)
        raw = False
        first, newline, rest = text.partition("\n")
        if first.strip() == RAW_MARKER:
            raw, text = True, rest if newline else ""
        else:
            try:
                self.environment.parse(text, relative, path)
            except jinja2.TemplateSyntaxError as error:
                hint = ""
                if _TEMPLATE_SYNTAX.search(text):
                    hint = (
                        f"; a plain script with a literal {{{{, {{% or #(: make "
                        f"{RAW_MARKER} its first line"
                    )
                return None, f"line {error.lineno}: {error.message or 'syntax error'}{hint}"
        return _Source(text, path, mtime_ns, size, raw), None

    def install(self, files: Mapping[str, bytes], version: int) -> dict[str, str]:
        """Serve exactly ``files`` (a published version, name -> content) from now on; the
        problems found (name -> why), with nothing installed when there is any."""
        with self._lock:
            found: dict[str, _Source] = {}
            problems: dict[str, str] = {}
            for name, data in sorted(files.items()):
                if len(data) > MAX_SCRIPT_BYTES:
                    problems[name] = f"larger than {MAX_SCRIPT_BYTES} bytes"
                    continue
                source, problem = self._source(
                    data, f"{self.root / name}@v{version}", name, version, len(data)
                )
                if problem is not None:
                    problems[name] = problem
                else:
                    assert source is not None
                    found[name] = source
            if problems:
                return problems
            self._loaded = True
            self.sources, self.problems, self.pending, self.held_problems = found, {}, {}, {}
            self.version = version
            self.generation += 1
            return {}

    def raw_text(self, name: str) -> str:
        """A raw file's text with every ``#(`` kept literal through the #(name) expansion."""
        source = self.sources.get(name)
        if source is None:  # pragma: no cover - only reached through the loader
            raise ScriptError("raw script vanished", name)
        return source.text.replace("#(", _LITERAL_HASH_PAREN)

    def has(self, name: str) -> bool:
        return name in self.sources

    def same_file(self, other: ScriptStore, name: str) -> bool:
        """Whether ``name`` renders the same from both stores: the same text (or both lack
        it, with the same problem)."""
        mine, theirs = self.sources.get(name), other.sources.get(name)
        if mine is None or theirs is None:
            return mine is theirs and self.problems.get(name) == other.problems.get(name)
        return mine.text == theirs.text and mine.raw == theirs.raw

    def render(
        self,
        name: str,
        context: Mapping[str, Any],
        variables: Mapping[str, Any],
        loaded: set[str] | None = None,
    ) -> str:
        """Render ``name`` with ``context``, then expand ``#(name)`` from ``variables``;
        ``loaded`` collects every template name the rendering asked for.

        Raises ScriptError (with ``file:line``) or SecretRequired; never returns a partial script.
        """
        recorder = self.environment.recorder
        recorder.names = loaded
        try:
            template = self.environment.get_template(name)
            text = template.render(context)
        except SecretRequired:
            raise
        except jinja2.TemplateSyntaxError as error:
            location = f"{_display(error.filename or error.name or name, self.root)}:{error.lineno}"
            raise ScriptError(error.message or "syntax error", location) from None
        except jinja2.TemplateNotFound as error:
            where = _template_location(self.root)
            raise ScriptError(f"template {error.name!r} not found", where) from None
        except jinja2.UndefinedError as error:
            # A literal {{name}} of a PHPUS script reads as an undefined template name.
            where = _template_location(self.root)
            hint = f"; if the file is meant literally (PHPUS), make {RAW_MARKER} its first line"
            raise ScriptError((error.message or str(error)) + hint, where) from None
        except (jinja2.TemplateError, ScriptError) as error:
            where = _template_location(self.root)
            raise ScriptError(error.message or str(error), where) from None
        except (TypeError, ValueError, AttributeError, ArithmeticError) as error:
            raise ScriptError(
                f"{type(error).__name__}: {error}", _template_location(self.root)
            ) from None
        finally:
            recorder.names = None
        return expand_update_variables(text, variables, self._display_name(name))

    def _display_name(self, name: str) -> str:
        """``name`` as error locations show it (resolving the path costs file system calls on
        every render otherwise)."""
        shown = self._display_names.get(name)
        if shown is None:
            shown = self._display_names[name] = _display(name, self.root)
        return shown


def _display(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve().parent).as_posix()
    except ValueError:
        return path


def _template_location(root: Path) -> str | None:
    """``file:line`` of the innermost template frame of the exception being handled."""
    root_text = str(root.resolve())
    location: str | None = None
    for frame, line in traceback.walk_tb(_current_traceback()):
        filename = frame.f_code.co_filename
        if filename.startswith(root_text) or not filename.endswith(".py"):
            location = f"{_display(filename, root)}:{line}"
    return location


def _current_traceback() -> Any:
    import sys

    return sys.exc_info()[2]


def expand_update_variables(text: str, variables: Mapping[str, Any], source: str) -> str:
    """The seed's ``#(name)`` syntax: replace with the variable's value; undefined is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            line = text.count("\n", 0, match.start()) + 1
            raise ScriptError(
                f"update variable #({name}) is not defined",
                f"{source} (rendered line {line})",
                variable=name,
            )
        value = variables[name]
        return value.reveal() if isinstance(value, Secret) else str(value)

    expanded = _UPDATE_VARIABLE.sub(replace, text)
    return expanded.replace(_LITERAL_HASH_PAREN, "#(").replace(LONE_CR, "\r")


def read_tree_files(root: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every script file below ``root`` as bytes (blocking), for publishing; problems that make
    a file unpublishable (not a regular file, too large, unreadable) by name."""
    files: dict[str, bytes] = {}
    problems: dict[str, str] = {}
    if not root.is_dir():
        return files, {str(root): "scripts folder does not exist"}
    for directory, _subdirs, names in os.walk(root, followlinks=False):
        for name in names:
            if not name.endswith(SCRIPT_SUFFIXES):
                continue
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file():
                problems[relative] = "not a regular file (symlinks are not followed)"
                continue
            try:
                data = path.read_bytes()
            except OSError as error:
                problems[relative] = f"cannot read: {error.strerror}"
                continue
            if len(data) > MAX_SCRIPT_BYTES:
                problems[relative] = f"larger than {MAX_SCRIPT_BYTES} bytes"
                continue
            files[relative] = data
    return files, problems


def tree_sha256(files: Mapping[str, bytes]) -> str:
    """One digest for a whole tree: names and contents, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        content = files[name]
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()
