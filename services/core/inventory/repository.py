"""Row-at-a-time inventory access for the admin API and the services."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from services.core import audit, db
from services.core.identity import (
    IdentityError,
    normalize_hardware_id,
    printable,
)
from services.core.inventory.archive import _archive_customers, _purge_customers, archived_ids
from services.core.inventory.fields import (
    _check_customer,
    _check_device,
    _check_frontend,
    _check_layer,
    _check_variable,
    _mac,
    _normalize_scope,
    _normalized,
    _raise_if,
    _validated,
)
from services.core.inventory.model import (
    _MAX_LIMIT,
    LAYERS,
    Customer,
    Device,
    Frontend,
    Inventory,
    InventoryError,
    Variable,
)
from services.core.inventory.rows import (
    _SELECT_CUSTOMERS,
    _SELECT_DEVICES,
    _SELECT_FRONTENDS,
    _SELECT_VARIABLES,
    _UPSERT_CUSTOMER,
    _UPSERT_DEVICE,
    _UPSERT_FRONTEND,
    _UPSERT_VARIABLE,
    _customer_args,
    _customer_row,
    _device_args,
    _device_row,
    _frontend_args,
    _frontend_row,
    _integrity_problem,
    _lock,
    _variable_args,
    _variable_row,
)


class InventoryRepository:
    """Row-at-a-time access for the admin API and the services.

    Built on an asyncpg pool (each call acquires a connection; connection failures become
    :class:`db.DatabaseUnavailable`) or a connection (calls join its transaction, if any).
    Contract: reads return ``None`` / ``[]`` for what is not there; writes validate first and
    raise :class:`InventoryError` (nothing changed) for invalid data, a missing referenced row,
    or a uniqueness clash; each write is one transaction under :data:`INVENTORY_LOCK_ID`,
    idempotent (writing the stored value again changes nothing) and, when it changes something,
    bumps the version and NOTIFYs ``pbxfront_inventory``. With an ``actor`` every write that
    changes something is recorded in the audit log in its transaction (before -> after, secrets
    redacted). A customer created here is owned by ``api``: no inventory file touches it unless
    it claims it. Deleting a customer archives it (contacts and backups kept, restorable).
    """

    def __init__(
        self,
        database: asyncpg.Pool | asyncpg.Connection,
        *,
        acquire_timeout: float = 2.0,
        actor: audit.Actor | None = None,
    ) -> None:
        self._database = database
        self._acquire_timeout = acquire_timeout
        self._actor = actor

    async def _audit(
        self,
        connection: asyncpg.Connection,
        action: str,
        object_type: str,
        object_id: str,
        before: Any,
        after: Any,
    ) -> None:
        if self._actor is not None:
            await audit.record(
                connection,
                actor=self._actor,
                action=action,
                object_type=object_type,
                object_id=object_id,
                before=before,
                after=after,
            )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._database, asyncpg.Pool):
            async with db.acquire(self._database, self._acquire_timeout) as connection:
                yield connection
        else:
            yield self._database

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as connection:
            try:
                async with connection.transaction():
                    await _lock(connection)
                    yield connection
            except asyncpg.IntegrityConstraintViolationError as error:
                # Pre-checks below give the usual messages; this catches the rest (e.g. a row
                # another table still references).
                raise InventoryError([_integrity_problem(error)]) from None

    # Frontends

    async def list_frontends(self) -> list[Frontend]:
        async with self._connection() as connection:
            rows = await connection.fetch(_SELECT_FRONTENDS + " ORDER BY id")
        return [_frontend_row(row) for row in rows]

    async def get_frontend(self, frontend_id: str) -> Frontend | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_FRONTENDS + " WHERE id = $1", frontend_id)
        return None if row is None else _frontend_row(row)

    async def upsert_frontend(self, frontend: Frontend) -> bool:
        """Create or replace; True if created."""
        label = f"frontend {printable(frontend.id)}"
        normalized = _validated(label, _check_frontend(frontend))
        async with self._writing() as connection:
            problems: list[str] = []
            clash = await connection.fetchval(
                "SELECT id FROM frontends WHERE lower(id) = lower($1) AND id <> $1", normalized.id
            )
            if clash is not None:
                problems.append(f"{label}: id: differs only in case from frontend {clash}")
            holder = await connection.fetchval(
                "SELECT id FROM frontends WHERE sbc_index = $1 AND id <> $2",
                normalized.index,
                normalized.id,
            )
            if holder is not None:
                problems.append(
                    f"{label}: index: {normalized.index} is also the index of frontend {holder}"
                )
            _raise_if(problems)
            row = await connection.fetchrow(
                _SELECT_FRONTENDS + " WHERE id = $1 FOR UPDATE",
                normalized.id,
            )
            if row is not None and _frontend_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_FRONTEND, *_frontend_args(normalized))
            before = None if row is None else dataclasses.asdict(_frontend_row(row))
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "frontend",
                normalized.id,
                before,
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_frontend(self, frontend_id: str) -> bool:
        """Remove a Frontend that serves no customer; False if there was none."""
        async with self._writing() as connection:
            count = await connection.fetchval(
                "SELECT count(*) FROM customers WHERE frontend = $1", frontend_id
            )
            if count:
                raise InventoryError(
                    [
                        f"frontend {printable(frontend_id)}: still serves {count} customer(s); "
                        "move or remove them first"
                    ]
                )
            row = await connection.fetchrow(
                _SELECT_FRONTENDS + " WHERE id = $1 FOR UPDATE", frontend_id
            )
            status = await connection.execute("DELETE FROM frontends WHERE id = $1", frontend_id)
            if row is not None:
                await self._audit(
                    connection,
                    "inventory.remove",
                    "frontend",
                    frontend_id,
                    dataclasses.asdict(_frontend_row(row)),
                    None,
                )
        return bool(status == "DELETE 1")

    # Customers

    async def list_customers(self, frontend: str | None = None) -> list[Customer]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                _SELECT_CUSTOMERS + " WHERE $1::text IS NULL OR frontend = $1 ORDER BY id",
                frontend,
            )
        return [_customer_row(row) for row in rows]

    async def get_customer(self, customer_id: str) -> Customer | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_CUSTOMERS + " WHERE id = $1", customer_id)
        return None if row is None else _customer_row(row)

    async def upsert_customer(self, customer: Customer) -> bool:
        """Create or replace; True if created. The Frontend must exist."""
        label = f"customer {printable(customer.id)}"
        normalized = _validated(label, _check_customer(customer))
        async with self._writing() as connection:
            problems: list[str] = []
            if not await connection.fetchval(
                "SELECT true FROM frontends WHERE id = $1", normalized.frontend
            ):
                problems.append(f"{label}: frontend: no frontend {normalized.frontend!r}")
            clash = await connection.fetchval(
                "SELECT id FROM customers WHERE lower(id) = lower($1) AND id <> $1", normalized.id
            )
            if clash is not None:
                problems.append(f"{label}: id: differs only in case from customer {clash}")
            row = await connection.fetchrow(
                _SELECT_CUSTOMERS + " WHERE id = $1 FOR UPDATE",
                normalized.id,
            )
            if row is None and await archived_ids(connection, [normalized.id]):
                problems.append(
                    f"{label}: id: archived; restore it (pbxfront inventory restore) or purge it"
                )
            _raise_if(problems)
            if row is not None and _customer_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_CUSTOMER, *_customer_args(normalized))
            if row is None:
                await connection.execute(
                    "UPDATE customers SET owner = 'api' WHERE id = $1", normalized.id
                )
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "customer",
                normalized.id,
                None if row is None else dataclasses.asdict(_customer_row(row)),
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_customer(self, customer_id: str, *, purge: bool = False) -> bool:
        """Remove a customer without devices; False if none. It is archived with its variables
        (contact history and backups stay, ``restore_customer`` brings it back) unless
        ``purge``."""
        async with self._writing() as connection:
            count = await connection.fetchval(
                "SELECT count(*) FROM devices WHERE customer = $1", customer_id
            )
            if count:
                raise InventoryError(
                    [
                        f"customer {printable(customer_id)}: still has {count} device(s); "
                        "move or remove them first"
                    ]
                )
            row = await connection.fetchrow(
                _SELECT_CUSTOMERS + " WHERE id = $1 FOR UPDATE", customer_id
            )
            if row is None:
                return False
            if purge:
                await _purge_customers(connection, [customer_id])
            else:
                current = Inventory(
                    customers=(_customer_row(row),),
                    variables=tuple(
                        _variable_row(v)
                        for v in await connection.fetch(
                            _SELECT_VARIABLES + " WHERE layer = 'customer' AND scope = $1",
                            customer_id,
                        )
                    ),
                )
                archived_by = self._actor.name if self._actor is not None else "api"
                await _archive_customers(connection, current, [customer_id], set(), archived_by)
            status = await connection.execute("DELETE FROM customers WHERE id = $1", customer_id)
            await self._audit(
                connection,
                "inventory.purge" if purge else "inventory.archive",
                "customer",
                customer_id,
                dataclasses.asdict(_customer_row(row)),
                None,
            )
        return bool(status == "DELETE 1")

    # Devices

    async def list_devices(
        self, customer: str | None = None, *, limit: int = 1000, offset: int = 0
    ) -> list[Device]:
        """Devices by MAC, optionally of one customer; ``limit`` 1..10000."""
        if not 1 <= limit <= _MAX_LIMIT or offset < 0:
            raise InventoryError([f"limit: must be 1..{_MAX_LIMIT}; offset: must be >= 0"])
        async with self._connection() as connection:
            rows = await connection.fetch(
                _SELECT_DEVICES + " WHERE $1::text IS NULL OR customer = $1 "
                "ORDER BY mac LIMIT $2 OFFSET $3",
                customer,
                limit,
                offset,
            )
        return [_device_row(row) for row in rows]

    async def get_device(self, mac: str) -> Device | None:
        """By MAC in any notation; InventoryError if ``mac`` is not a MAC."""
        normalized = _normalized("mac", _mac, mac)
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_DEVICES + " WHERE mac = $1", normalized)
        return None if row is None else _device_row(row)

    async def device_by_hardware_id(self, hardware_id: str) -> Device | None:
        """By hardware id (``IP232-01-02-03``, any case, CN fix-ups applied)."""
        try:
            normalized = normalize_hardware_id(hardware_id)
        except IdentityError as error:
            raise InventoryError([f"hardware_id: {error}"]) from None
        async with self._connection() as connection:
            row = await connection.fetchrow(_SELECT_DEVICES + " WHERE hardware_id = $1", normalized)
        return None if row is None else _device_row(row)

    async def upsert_device(self, device: Device) -> bool:
        """Create or replace by MAC; True if created. The customer must exist; hardware id and
        CPE id must not belong to another device."""
        label = f"device {printable(device.mac)}"
        normalized = _validated(label, _check_device(device))
        label = f"device {normalized.mac}"
        async with self._writing() as connection:
            problems: list[str] = []
            if not await connection.fetchval(
                "SELECT true FROM customers WHERE id = $1", normalized.customer
            ):
                problems.append(f"{label}: customer: no customer {normalized.customer!r}")
            holder = await connection.fetchval(
                "SELECT mac FROM devices WHERE hardware_id = $1 AND mac <> $2",
                normalized.hardware_id,
                normalized.mac,
            )
            if holder is not None:
                problems.append(
                    f"{label}: hardware_id: {normalized.hardware_id} belongs to device {holder}"
                )
            if normalized.cpe_id is not None:
                holder = await connection.fetchval(
                    "SELECT mac FROM devices WHERE cpe_id = $1 AND mac <> $2",
                    normalized.cpe_id,
                    normalized.mac,
                )
                if holder is not None:
                    problems.append(
                        f"{label}: cpe_id: {normalized.cpe_id} belongs to device {holder}"
                    )
            _raise_if(problems)
            row = await connection.fetchrow(
                _SELECT_DEVICES + " WHERE mac = $1 FOR UPDATE",
                normalized.mac,
            )
            if row is not None and _device_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_DEVICE, *_device_args(normalized))
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "device",
                normalized.mac,
                None if row is None else dataclasses.asdict(_device_row(row)),
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_device(self, mac: str) -> bool:
        """Remove a device and its variables; False if there was none."""
        normalized = _normalized("mac", _mac, mac)
        async with self._writing() as connection:
            row = await connection.fetchrow(
                _SELECT_DEVICES + " WHERE mac = $1 FOR UPDATE", normalized
            )
            status = await connection.execute("DELETE FROM devices WHERE mac = $1", normalized)
            if row is not None:
                await self._audit(
                    connection,
                    "inventory.remove",
                    "device",
                    normalized,
                    dataclasses.asdict(_device_row(row)),
                    None,
                )
        return bool(status == "DELETE 1")

    # Variables

    async def list_variables(
        self, layer: str | None = None, scope: str | None = None
    ) -> list[Variable]:
        """Variables in layer order, optionally of one layer and/or scope (normalised by layer)."""
        if layer is not None:
            layer = _normalized("layer", _check_layer, layer)
            if scope is not None:
                checked_layer = layer
                scope = _normalized("scope", lambda v: _normalize_scope(checked_layer, v), scope)
        async with self._connection() as connection:
            rows = await connection.fetch(
                _SELECT_VARIABLES + " "
                "WHERE ($1::text IS NULL OR layer = $1) AND ($2::text IS NULL OR scope = $2) "
                "ORDER BY array_position($3::text[], layer), scope, name",
                layer,
                scope,
                list(LAYERS),
            )
        return [_variable_row(row) for row in rows]

    async def set_variable(
        self, layer: str, scope: str, name: str, value: str, secret: bool = False
    ) -> bool:
        """Create or replace one variable; True if created. Its Frontend/customer/device must
        exist (class and type layers stand alone)."""
        variable = Variable(layer, scope, name, value, secret)
        normalized = _validated(f"variable {printable(variable.key)}", _check_variable(variable))
        label = f"variable {normalized.key}"
        owner = {
            "frontend": "SELECT true FROM frontends WHERE id = $1",
            "customer": "SELECT true FROM customers WHERE id = $1",
            "device": "SELECT true FROM devices WHERE mac = $1",
        }.get(normalized.layer)
        async with self._writing() as connection:
            if owner is not None and not await connection.fetchval(owner, normalized.scope):
                raise InventoryError(
                    [f"{label}: scope: no {normalized.layer} {normalized.scope!r}"]
                )
            row = await connection.fetchrow(
                _SELECT_VARIABLES + " WHERE layer = $1 AND scope = $2 AND name = $3 FOR UPDATE",
                normalized.layer,
                normalized.scope,
                normalized.name,
            )
            if row is not None and _variable_row(row) == normalized:
                return False
            await connection.execute(_UPSERT_VARIABLE, *_variable_args(normalized))
            await self._audit(
                connection,
                "inventory.add" if row is None else "inventory.change",
                "variable",
                normalized.key,
                None if row is None else dataclasses.asdict(_variable_row(row)),
                dataclasses.asdict(normalized),
            )
            return row is None

    async def delete_variable(self, layer: str, scope: str, name: str) -> bool:
        """Remove one variable; False if there was none."""
        layer = _normalized("layer", _check_layer, layer)
        scope = _normalized("scope", lambda v: _normalize_scope(layer, v), scope)
        async with self._writing() as connection:
            row = await connection.fetchrow(
                _SELECT_VARIABLES + " WHERE layer = $1 AND scope = $2 AND name = $3 FOR UPDATE",
                layer,
                scope,
                name,
            )
            status = await connection.execute(
                "DELETE FROM variables WHERE layer = $1 AND scope = $2 AND name = $3",
                layer,
                scope,
                name,
            )
            if row is not None:
                variable = _variable_row(row)
                await self._audit(
                    connection,
                    "inventory.remove",
                    "variable",
                    variable.key,
                    dataclasses.asdict(variable),
                    None,
                )
        return bool(status == "DELETE 1")
