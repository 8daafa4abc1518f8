"""Applying a desired inventory to PostgreSQL, and the version counter every change bumps."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.core.inventory.archive import _purge_customers
from services.core.inventory.checks import validate_inventory
from services.core.inventory.diff import diff_inventory
from services.core.inventory.model import Change, Inventory, InventoryError
from services.core.inventory.rows import (
    _DEFERRABLE,
    _UPSERT_CUSTOMER,
    _UPSERT_DEVICE,
    _UPSERT_FRONTEND,
    _UPSERT_VARIABLE,
    _customer_args,
    _device_args,
    _frontend_args,
    _integrity_problem,
    _load,
    _lock,
    _variable_args,
)


async def apply_inventory(
    connection: asyncpg.Connection, desired: Inventory, *, dry_run: bool = False
) -> list[Change]:
    """Make the stored inventory equal ``desired`` (what it lacks is removed, customers with
    their contacts and backups); return the changes. For tests, benchmarks and tools that own the
    whole database; operators' files go through :mod:`services.core.inventory.apply` (adds and
    updates only, prunes within a file's scope, archives removed customers, audited).

    One transaction under :data:`INVENTORY_LOCK_ID`, so concurrent appliers serialise and the
    second sees the first's result. Idempotent: applying the same inventory again returns ``[]``
    and changes nothing (no version bump, no NOTIFY). ``dry_run`` computes the changes only.
    Raises InventoryError (and changes nothing) for invalid data or when the database refuses,
    e.g. a row another table still references.
    """
    desired = validate_inventory(desired)
    try:
        async with connection.transaction():
            await _lock(connection)
            current = await _load(connection)
            changes = diff_inventory(current, desired)
            if dry_run or not changes:
                return changes
            await connection.execute(f"SET CONSTRAINTS {_DEFERRABLE} DEFERRED")
            removed = [c.key for c in changes if c.kind == "customer" and c.action == "remove"]
            # The whole-state replace of old: a removed customer goes with its contact history
            # (operators use services.core.inventory.apply, which archives).
            await _purge_customers(connection, removed)
            await _write_changes(connection, changes, current, desired)
            # Check the deferred constraints here rather than at commit, inside this try.
            await connection.execute(f"SET CONSTRAINTS {_DEFERRABLE} IMMEDIATE")
    except asyncpg.IntegrityConstraintViolationError as error:
        raise InventoryError([_integrity_problem(error)]) from None
    return changes


async def _write_changes(
    connection: asyncpg.Connection,
    changes: Sequence[Change],
    current: Inventory,
    desired: Inventory,
) -> None:
    def keys(kind: str, action: str) -> list[str]:
        return [c.key for c in changes if c.kind == kind and c.action == action]

    def upserts(kind: str) -> set[str]:
        return {c.key for c in changes if c.kind == kind and c.action != "remove"}

    removed_variables = set(keys("variable", "remove"))
    if removed_variables:
        await connection.executemany(
            "DELETE FROM variables WHERE layer = $1 AND scope = $2 AND name = $3",
            [(v.layer, v.scope, v.name) for v in current.variables if v.key in removed_variables],
        )
    if removed := keys("device", "remove"):
        await connection.execute("DELETE FROM devices WHERE mac = ANY($1::text[])", removed)
    if removed := keys("customer", "remove"):
        await connection.execute("DELETE FROM customers WHERE id = ANY($1::text[])", removed)
    if removed := keys("frontend", "remove"):
        await connection.execute("DELETE FROM frontends WHERE id = ANY($1::text[])", removed)

    wanted = upserts("frontend")
    if wanted:
        await connection.executemany(
            _UPSERT_FRONTEND, [_frontend_args(f) for f in desired.frontends if f.id in wanted]
        )
    wanted = upserts("customer")
    if wanted:
        await connection.executemany(
            _UPSERT_CUSTOMER, [_customer_args(c) for c in desired.customers if c.id in wanted]
        )
    wanted = upserts("device")
    if wanted:
        await connection.executemany(
            _UPSERT_DEVICE, [_device_args(d) for d in desired.devices if d.mac in wanted]
        )
    wanted = upserts("variable")
    if wanted:
        await connection.executemany(
            _UPSERT_VARIABLE, [_variable_args(v) for v in desired.variables if v.key in wanted]
        )


async def inventory_version(connection: asyncpg.Connection) -> int:
    """A counter bumped once by every transaction that changed the inventory (a cache key)."""
    version: int = await connection.fetchval("SELECT version FROM inventory_state")
    return version
