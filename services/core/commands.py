"""What a service's CLI module needs from ``services/cli.py``, without importing it.

A service registers its sub-commands with ``register(commands, common, bind)``; ``bind`` turns an
async ``work(args, settings, pool)`` into an argparse handler that loads the settings, opens the
same database as ``serve`` (the embedded PostgreSQL included) and maps domain errors to one line.
:class:`Commands` declares such sub-commands; the rest are the small pieces every CLI module
prints or checks the same way (ages, tables, JSON listings, MACs, audit rows of the CLI user).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg

from services.core import audit
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.identity import IdentityError, normalize_mac

Work = Callable[[argparse.Namespace, Settings, asyncpg.Pool], Awaitable[int]]
Handler = Callable[[argparse.Namespace], int]
Bind = Callable[[Work], Handler]
# Adds one argument (or a group of them) to a sub-command's parser.
Option = Callable[[argparse.ArgumentParser], object]


def argument(*flags: str, **options: Any) -> Option:
    """``parser.add_argument(*flags, **options)``, to be given to :meth:`Commands.add`."""

    def add(parser: argparse.ArgumentParser) -> object:
        return parser.add_argument(*flags, **options)

    return add


# The arguments many sub-commands share to the letter (services/cli.py gives them their help).
JSON = argument("--json", action="store_true")
CUSTOMER = argument("--customer", metavar="ID")
MAC = argument("mac", metavar="MAC")


class Commands:
    """Sub-commands of one ``add_subparsers`` action. Each takes the common options
    (``--config``, ``--set``) and runs its work through ``bind``; groups (``pbxfront redirect
    keys …``) only hold sub-commands."""

    def __init__(self, subparsers: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
        self.subparsers = subparsers
        self.common = common
        self.bind = bind

    def group(self, name: str, help: str, *, dest: str = "action") -> Commands:
        parser = self.subparsers.add_parser(name, help=help)
        return Commands(parser.add_subparsers(dest=dest, required=True), self.common, self.bind)

    def add(self, name: str, work: Work, help: str, *options: Option) -> argparse.ArgumentParser:
        return self.add_handler(name, self.bind(work), help, *options)

    def add_handler(
        self, name: str, handler: Handler, help: str, *options: Option
    ) -> argparse.ArgumentParser:
        """A sub-command whose handler is not a bound ``work`` (one that asks before the
        database is opened, say)."""
        return add_command(self.subparsers, self.common, name, handler, help, *options)


def add_command(
    subparsers: Any,
    common: argparse.ArgumentParser,
    name: str,
    handler: Handler,
    help: str,
    *options: Option,
) -> argparse.ArgumentParser:
    """The sub-command ``name`` of ``subparsers``: the common options, then ``options``, run by
    ``handler`` (for a command that needs no database, so nothing to bind)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, parents=[common], help=help)
    for option in options:
        option(parser)
    parser.set_defaults(handler=handler)
    return parser


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """``3d ago``, ``5m ago``, ``never``: the largest whole unit back from ``now``."""
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """``rows`` (the header first) as columns, each as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


class Listed(Protocol):
    """What a listing command prints: a record that has a JSON form."""

    def as_json(self) -> Mapping[str, object]: ...


ListedT = TypeVar("ListedT", bound=Listed)


def print_json(items: Iterable[Listed]) -> None:
    """A listing's ``--json``: one indented array of the items' ``as_json()``."""
    print(json.dumps([item.as_json() for item in items], indent=2))


def print_listing(
    items: Sequence[ListedT],
    as_json: bool,
    header: Sequence[str],
    row: Callable[[ListedT], Sequence[str]],
) -> None:
    """``items`` as JSON (:func:`print_json`) or as a table: ``header``, then ``row`` of each
    (the header alone when there are none)."""
    if as_json:
        print_json(items)
    else:
        print_table([header, *map(row, items)])


def optional_number(value: str | None, default: str, what: str) -> int | None:
    """A version (or other) number given on the command line; None when it is missing or the
    word ``default`` (``latest``, ``current``). Anything else: ``<value>: <what>``."""
    if value is None or value == default:
        return None
    if not value.isdigit():
        raise UsageError(f"{value}: {what}")
    return int(value)


@contextmanager
def usage_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Any of ``kinds`` raised inside becomes a :class:`UsageError` with the same text (one line
    on stderr, exit 2)."""
    try:
        yield
    except kinds as error:
        raise UsageError(str(error)) from None


def device_mac(value: str) -> str:
    """A MAC in any notation, normalized; a usage error if it is none."""
    try:
        return normalize_mac(value)
    except IdentityError as error:
        raise UsageError(str(error)) from None


async def record_audit(
    connection: asyncpg.Connection, action: str, object_type: str, object_id: str, **change: Any
) -> None:
    """The audit row of a change the CLI user made, in ``connection``'s transaction; ``change``
    is ``before=`` and/or ``after=`` as :func:`audit.record` takes them."""
    await audit.record(
        connection,
        actor=audit.cli_actor(),
        action=action,
        object_type=object_type,
        object_id=object_id,
        **change,
    )
