"""Archived customers: removed from the inventory, their contacts and backups kept, restorable."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.core import audit
from services.core.identity import (
    printable,
)
from services.core.inventory.fields import _raise_if
from services.core.inventory.model import Customer, Device, Inventory, InventoryError, Variable
from services.core.inventory.rows import (
    _UPSERT_CUSTOMER,
    _UPSERT_DEVICE,
    _UPSERT_VARIABLE,
    _customer_args,
    _device_args,
    _integrity_problem,
    _lock,
    _variable_args,
)

# --- archived customers ------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedCustomer:
    customer: Customer
    archived_at: Any
    archived_by: str
    owner: str | None
    devices: tuple[Device, ...]
    variables: tuple[Variable, ...]
    contacts_version: int | None

    def summary(self) -> dict[str, Any]:
        """When, by whom and with what it was archived, as JSON (the API and the CLI name the
        customer each their own way)."""
        return {
            "archived_at": self.archived_at.isoformat(),
            "archived_by": self.archived_by,
            "owner": self.owner,
            "devices": [device.mac for device in self.devices],
            "contacts_version": self.contacts_version,
        }


def _archive_record(
    customer: Customer,
    devices: Sequence[Device],
    variables: Sequence[Variable],
    contacts_version: int | None,
) -> str:
    import json

    return json.dumps(
        {
            "customer": dataclasses.asdict(customer),
            "devices": [dataclasses.asdict(device) for device in devices],
            "variables": [dataclasses.asdict(variable) for variable in variables],
            "contacts_version": contacts_version,
        },
        sort_keys=True,
    )


def _archived_row(row: Mapping[str, Any]) -> ArchivedCustomer:
    import json

    record = json.loads(row["record"])
    return ArchivedCustomer(
        customer=Customer(**record["customer"]),
        archived_at=row["archived_at"],
        archived_by=row["archived_by"],
        owner=row["owner"],
        devices=tuple(Device(**item) for item in record["devices"]),
        variables=tuple(Variable(**item) for item in record["variables"]),
        contacts_version=record["contacts_version"],
    )


async def _archive_customers(
    connection: asyncpg.Connection,
    current: Inventory,
    customer_ids: Sequence[str],
    removed_devices: set[str],
    archived_by: str,
) -> None:
    """Keep removed customers restorable: row, removed devices, their variables and the contacts
    version served; called before the customers' rows are deleted (contact_current goes then)."""
    if not customer_ids:
        return
    wanted = set(customer_ids)
    owners = {
        row["id"]: row["owner"]
        for row in await connection.fetch(
            "SELECT id, owner FROM customers WHERE id = ANY($1::text[])", list(wanted)
        )
    }
    versions = {
        row["customer"]: row["version"]
        for row in await connection.fetch(
            "SELECT customer, version FROM contact_current WHERE customer = ANY($1::text[])",
            list(wanted),
        )
    }
    rows: list[tuple[Any, ...]] = []
    for customer in current.customers:
        if customer.id not in wanted:
            continue
        devices = [
            d for d in current.devices if d.customer == customer.id and d.mac in removed_devices
        ]
        macs = {d.mac for d in devices}
        variables = [
            v
            for v in current.variables
            if (v.layer == "customer" and v.scope == customer.id)
            or (v.layer == "device" and v.scope in macs)
        ]
        record = _archive_record(customer, devices, variables, versions.get(customer.id))
        rows.append((customer.id, archived_by, owners.get(customer.id), record))
    await connection.executemany(
        """INSERT INTO customer_archive (customer, archived_by, owner, record)
           VALUES ($1, $2, $3, $4::text::jsonb)
           ON CONFLICT (customer) DO UPDATE SET archived_at = now(),
               archived_by = EXCLUDED.archived_by, owner = EXCLUDED.owner,
               record = EXCLUDED.record""",
        rows,
    )


async def _purge_customers(connection: asyncpg.Connection, customer_ids: Sequence[str]) -> None:
    """Delete what outlives a customer: contact history, config backups, an archive entry."""
    if not customer_ids:
        return
    ids = list(customer_ids)
    await connection.execute("DELETE FROM contact_current WHERE customer = ANY($1::text[])", ids)
    await connection.execute("DELETE FROM contact_versions WHERE customer = ANY($1::text[])", ids)
    await connection.execute("DELETE FROM backup_devices WHERE customer = ANY($1::text[])", ids)
    await connection.execute("DELETE FROM customer_archive WHERE customer = ANY($1::text[])", ids)


async def archived_customers(connection: asyncpg.Connection) -> list[ArchivedCustomer]:
    """Customers removed without purge, by id."""
    rows = await connection.fetch(
        "SELECT customer, archived_at, archived_by, owner, record::text AS record "
        "FROM customer_archive ORDER BY customer"
    )
    return [_archived_row(row) for row in rows]


async def archived_ids(connection: asyncpg.Connection, customer_ids: Iterable[str]) -> set[str]:
    """Which of ``customer_ids`` are archived (case-insensitively: ids differ in more than
    case)."""
    rows = await connection.fetch(
        "SELECT a.customer FROM customer_archive a "
        "WHERE lower(a.customer) = ANY(SELECT lower(x) FROM unnest($1::text[]) x)",
        list(customer_ids),
    )
    return {row["customer"] for row in rows}


def _customer_audit(customer: Customer | None, owner: str | None = None) -> dict[str, Any] | None:
    if customer is None:
        return None
    data = dataclasses.asdict(customer)
    if owner is not None:
        data["owner"] = owner
    return data


async def restore_customer(
    connection: asyncpg.Connection, customer_id: str, *, actor: audit.Actor
) -> ArchivedCustomer:
    """Bring an archived customer back: row, devices, variables, ownership and the contacts
    version its directory served (if still stored). One transaction under the inventory lock;
    InventoryError (nothing changed) if it is not archived, its id is in use again, its Frontend
    is gone, or a device's MAC, hardware id or CPE id belongs to another device now."""
    label = f"customer {printable(customer_id)}"
    try:
        async with connection.transaction():
            await _lock(connection)
            archived = await _locked_archive_entry(connection, customer_id, label)
            _raise_if(await _restore_problems(connection, archived, label))
            await _write_restored(connection, archived)
            await connection.execute(
                "DELETE FROM customer_archive WHERE customer = $1", archived.customer.id
            )
            await audit.record(
                connection,
                actor=actor,
                action="inventory.restore",
                object_type="customer",
                object_id=archived.customer.id,
                after={
                    **(_customer_audit(archived.customer, archived.owner) or {}),
                    "devices": sorted(d.mac for d in archived.devices),
                    "contacts_version": archived.contacts_version,
                },
            )
    except asyncpg.IntegrityConstraintViolationError as error:
        raise InventoryError([_integrity_problem(error)]) from None
    return archived


async def _locked_archive_entry(
    connection: asyncpg.Connection, customer_id: str, label: str
) -> ArchivedCustomer:
    """The customer's archive entry, locked until the commit; InventoryError if there is none."""
    row = await connection.fetchrow(
        "SELECT customer, archived_at, archived_by, owner, record::text AS record "
        "FROM customer_archive WHERE customer = $1 FOR UPDATE",
        customer_id,
    )
    if row is None:
        raise InventoryError([f"{label}: not archived (pbxfront inventory archived)"])
    return _archived_row(row)


async def _restore_problems(
    connection: asyncpg.Connection, archived: ArchivedCustomer, label: str
) -> list[str]:
    """Why the archived customer cannot come back: its id in use again, its Frontend gone, a
    device's MAC, hardware id or CPE id held by another device (in that order)."""
    customer = archived.customer
    problems: list[str] = []
    if await connection.fetchval(
        "SELECT true FROM customers WHERE lower(id) = lower($1)", customer.id
    ):
        problems.append(f"{label}: id: a customer with this id exists again")
    if not await connection.fetchval("SELECT true FROM frontends WHERE id = $1", customer.frontend):
        problems.append(f"{label}: frontend: no frontend {customer.frontend!r} any more")
    for device in archived.devices:
        holder = await connection.fetchval(
            "SELECT mac FROM devices WHERE mac = $1 OR hardware_id = $2 "
            "OR (cpe_id IS NOT NULL AND cpe_id = $3)",
            device.mac,
            device.hardware_id,
            device.cpe_id,
        )
        if holder is not None:
            problems.append(
                f"{label}: device {device.mac}: its MAC, hardware id or CPE id belongs "
                f"to device {holder} now"
            )
    return problems


async def _write_restored(connection: asyncpg.Connection, archived: ArchivedCustomer) -> None:
    """Write the customer's row with its owner, its devices and variables, and make the
    contacts version it served current again (when contact_versions still holds it)."""
    customer = archived.customer
    await connection.execute(_UPSERT_CUSTOMER, *_customer_args(customer))
    await connection.execute(
        "UPDATE customers SET owner = $2 WHERE id = $1", customer.id, archived.owner
    )
    if archived.devices:
        await connection.executemany(_UPSERT_DEVICE, [_device_args(d) for d in archived.devices])
    if archived.variables:
        await connection.executemany(
            _UPSERT_VARIABLE, [_variable_args(v) for v in archived.variables]
        )
    if archived.contacts_version is not None:
        await connection.execute(
            """INSERT INTO contact_current (customer, version)
               SELECT customer, version FROM contact_versions
               WHERE customer = $1 AND version = $2""",
            customer.id,
            archived.contacts_version,
        )


async def purge_archived_customer(
    connection: asyncpg.Connection, customer_id: str, *, actor: audit.Actor
) -> bool:
    """Delete an archived customer's contact history and backups for good; False if it is not
    archived."""
    async with connection.transaction():
        await _lock(connection)
        found = await connection.fetchval(
            "SELECT true FROM customer_archive WHERE customer = $1 FOR UPDATE", customer_id
        )
        if not found:
            return False
        await _purge_customers(connection, [customer_id])
        await audit.record(
            connection,
            actor=actor,
            action="inventory.purge",
            object_type="customer",
            object_id=customer_id,
        )
    return True
