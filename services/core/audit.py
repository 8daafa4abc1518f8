"""The audit log: every change a person or an API client makes, in PostgreSQL (migration 015).

Who (an account name, ``<account> (token)`` for a bearer token, or the local OS user for the
CLI), when, from where (the client's address, or ``cli``), what (action, object type and id) and
the object before and after, as JSON. :func:`record` writes in the caller's transaction, so a
change and its audit row commit together or not at all; call it last in the transaction (it takes
the audit lock until commit so rows become visible in id order, which lets the events service
follow them with a cursor and forward each to syslog once).

Secrets never reach the table: :func:`redact` replaces the value of every known secret field
(passwords, tokens, keys) and the ``value`` of any mapping flagged ``"secret": true`` with
``"***"`` (``None`` stays ``None``, so "set" and "not set" remain visible).
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.core.identity import printable

# "pbxa": held from an audit insert to its commit (see the module docstring).
AUDIT_LOCK_ID = 0x70627861
NOTIFY_CHANNEL = "pbxfront_audit"
REDACTED = "***"

# Field names whose values are secret wherever they appear.
SECRET_FIELDS = frozenset(
    {
        "password",
        "registration_password",
        "login_password",
        "pbx_password",
        "token",
        "secret",
        "shared_secret",
        "key",
        "private_key",
        "key_pem",
        "passphrase",
        "password_hash",
        "api_secret",
    }
)
_MAX_TEXT = 200
_MAX_LIMIT = 10000


@dataclass(frozen=True)
class Actor:
    """Who makes a change (``name``) and from where (``origin``: an address or ``cli``)."""

    name: str
    origin: str


def cli_actor() -> Actor:
    """The local OS user running a CLI command (``SUDO_USER`` names the person behind sudo)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    if sudo and sudo != name:
        name = f"{sudo} (as {name})"
    return Actor(printable(name, 80), "cli")


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_FIELDS or lowered.endswith(("_password", "_secret", "_token"))


def redact(value: Any) -> Any:
    """A JSON-able copy of ``value`` with every secret replaced by ``"***"`` (see above)."""
    if isinstance(value, Mapping):
        flagged = value.get("secret") is True
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            # A flag ("secret": true) is no secret; its value is.
            hidden = _is_secret_name(name) and not isinstance(item, bool)
            if (hidden or (flagged and name == "value")) and item is not None:
                result[name] = REDACTED
            else:
                result[name] = redact(item)
        return result
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


async def record(
    connection: asyncpg.Connection,
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    before: Any = None,
    after: Any = None,
) -> int:
    """Append one audit row in ``connection``'s transaction (it must be in one); its id.

    ``before``/``after`` are redacted here, whatever the caller passed.
    """
    if not connection.is_in_transaction():
        raise RuntimeError("audit.record needs the caller's transaction")
    await connection.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK_ID)
    row_id: int = await connection.fetchval(
        """INSERT INTO audit_log (actor, origin, action, object_type, object_id, before, after)
           VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7::text::jsonb) RETURNING id""",
        printable(actor.name, _MAX_TEXT),
        printable(actor.origin, _MAX_TEXT),
        action,
        object_type,
        printable(object_id, _MAX_TEXT),
        None if before is None else json.dumps(redact(before), sort_keys=True),
        None if after is None else json.dumps(redact(after), sort_keys=True),
    )
    return row_id


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    origin: str
    action: str
    object_type: str
    object_id: str
    before: Any
    after: Any

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "origin": self.origin,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "before": self.before,
            "after": self.after,
        }

    def summary(self) -> str:
        """``who@origin action type id``: one line, for syslog and the CLI."""
        return f"{self.actor}@{self.origin} {self.action} {self.object_type} {self.object_id}"


_SELECT = """SELECT id, at, actor, origin, action, object_type, object_id,
                    before::text AS before, after::text AS after FROM audit_log"""


def _entry(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        actor=row["actor"],
        origin=row["origin"],
        action=row["action"],
        object_type=row["object_type"],
        object_id=row["object_id"],
        before=None if row["before"] is None else json.loads(row["before"]),
        after=None if row["after"] is None else json.loads(row["after"]),
    )


def parse_object(text: str) -> tuple[str, str | None]:
    """``customer/Kuenkel00001`` -> (type, id); ``customer`` -> (type, None)."""
    object_type, _, object_id = text.partition("/")
    return object_type, (object_id or None)


async def entries(
    connection: asyncpg.Connection,
    *,
    since: datetime | None = None,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    after_id: int = 0,
    limit: int = 1000,
) -> list[AuditEntry]:
    """Audit rows, oldest first, filtered; ``actor`` matches the name up to a `` (`` suffix too
    (``ops`` finds ``ops (token)``). ``limit`` 1..10000."""
    if not 1 <= limit <= _MAX_LIMIT:
        raise ValueError(f"limit: must be 1..{_MAX_LIMIT}")
    rows = await connection.fetch(
        _SELECT
        + """ WHERE ($1::timestamptz IS NULL OR at >= $1)
              AND ($2::text IS NULL OR actor = $2 OR actor LIKE $2 || ' (%')
              AND ($3::text IS NULL OR object_type = $3)
              AND ($4::text IS NULL OR object_id = $4)
              AND id > $5
            ORDER BY id LIMIT $6""",
        since,
        actor,
        object_type,
        object_id,
        after_id,
        limit,
    )
    return [_entry(row) for row in rows]


def changed_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """Names of the top-level fields that differ (for one-line summaries)."""
    old = before or {}
    new = after or {}
    return sorted(key for key in {*old, *new} if old.get(key) != new.get(key))


def as_rows(values: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    return [entry.as_json() for entry in values]
