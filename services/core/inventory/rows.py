"""The inventory's tables: statements, rows to objects and back, the writers' lock, loading."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import asyncpg

from services.core.identity import (
    printable,
)
from services.core.inventory.model import (
    INVENTORY_LOCK_ID,
    Customer,
    Device,
    Frontend,
    Inventory,
    Variable,
)

# --- database ----------------------------------------------------------------------------------

# Column lists are written out in every statement: SQL here reads as SQL, with no assembly.
_SELECT_FRONTENDS = "SELECT id, public_address, internal_address, sbc_index FROM frontends"
_SELECT_CUSTOMERS = """
SELECT id, frontend, name, system_name, country_code, area_code, international_prefix,
       national_prefix, subscriber_number, registration_password, login_password,
       allow_claimed_secrets, allow_anonymous_backup, allow_anonymous_contacts
FROM customers"""
_SELECT_DEVICES = (
    "SELECT mac, device_type, device_class, customer, hardware_id, cpe_id, name FROM devices"
)
_SELECT_VARIABLES = "SELECT layer, scope, name, value, secret FROM variables"


def _frontend_row(row: Mapping[str, Any]) -> Frontend:
    return Frontend(row["id"], row["public_address"], row["internal_address"], row["sbc_index"])


def _customer_row(row: Mapping[str, Any]) -> Customer:
    return Customer(**{field.name: row[field.name] for field in dataclasses.fields(Customer)})


def _device_row(row: Mapping[str, Any]) -> Device:
    return Device(**{field.name: row[field.name] for field in dataclasses.fields(Device)})


def _variable_row(row: Mapping[str, Any]) -> Variable:
    return Variable(row["layer"], row["scope"], row["name"], row["value"], row["secret"])


def _frontend_args(frontend: Frontend) -> tuple[Any, ...]:
    return (frontend.id, frontend.public_address, frontend.internal_address, frontend.index)


def _customer_args(customer: Customer) -> tuple[Any, ...]:
    return tuple(getattr(customer, field.name) for field in dataclasses.fields(Customer))


def _device_args(device: Device) -> tuple[Any, ...]:
    return tuple(getattr(device, field.name) for field in dataclasses.fields(Device))


def _variable_args(variable: Variable) -> tuple[Any, ...]:
    return (variable.layer, variable.scope, variable.name, variable.value, variable.secret)


_UPSERT_FRONTEND = """
INSERT INTO frontends (id, public_address, internal_address, sbc_index)
VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET
    public_address = EXCLUDED.public_address,
    internal_address = EXCLUDED.internal_address,
    sbc_index = EXCLUDED.sbc_index"""
_UPSERT_CUSTOMER = """
INSERT INTO customers (
    id, frontend, name, system_name, country_code, area_code, international_prefix,
    national_prefix, subscriber_number, registration_password, login_password,
    allow_claimed_secrets, allow_anonymous_backup, allow_anonymous_contacts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (id) DO UPDATE SET
    frontend = EXCLUDED.frontend,
    name = EXCLUDED.name,
    system_name = EXCLUDED.system_name,
    country_code = EXCLUDED.country_code,
    area_code = EXCLUDED.area_code,
    international_prefix = EXCLUDED.international_prefix,
    national_prefix = EXCLUDED.national_prefix,
    subscriber_number = EXCLUDED.subscriber_number,
    registration_password = EXCLUDED.registration_password,
    login_password = EXCLUDED.login_password,
    allow_claimed_secrets = EXCLUDED.allow_claimed_secrets,
    allow_anonymous_backup = EXCLUDED.allow_anonymous_backup,
    allow_anonymous_contacts = EXCLUDED.allow_anonymous_contacts"""
_UPSERT_DEVICE = """
INSERT INTO devices (mac, device_type, device_class, customer, hardware_id, cpe_id, name)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (mac) DO UPDATE SET
    device_type = EXCLUDED.device_type,
    device_class = EXCLUDED.device_class,
    customer = EXCLUDED.customer,
    hardware_id = EXCLUDED.hardware_id,
    cpe_id = EXCLUDED.cpe_id,
    name = EXCLUDED.name"""
_UPSERT_VARIABLE = """
INSERT INTO variables (layer, scope, name, value, secret)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (layer, scope, name) DO UPDATE SET value = EXCLUDED.value, secret = EXCLUDED.secret"""
# Checked at commit inside apply_inventory, so rows can move in any order (e.g. a replacement
# phone taking over a CPE id, a customer moving to a new Frontend).
_DEFERRABLE = (
    "customers_frontend_fkey, devices_customer_fkey, devices_hardware_id_key, devices_cpe_id_key"
)


async def _lock(connection: asyncpg.Connection) -> None:
    await connection.execute("SELECT pg_advisory_xact_lock($1)", INVENTORY_LOCK_ID)


async def _load(connection: asyncpg.Connection) -> Inventory:
    frontends = await connection.fetch(_SELECT_FRONTENDS)
    customers = await connection.fetch(_SELECT_CUSTOMERS)
    devices = await connection.fetch(_SELECT_DEVICES)
    variables = await connection.fetch(_SELECT_VARIABLES)
    return Inventory(
        frontends=tuple(_frontend_row(row) for row in frontends),
        customers=tuple(_customer_row(row) for row in customers),
        devices=tuple(_device_row(row) for row in devices),
        variables=tuple(_variable_row(row) for row in variables),
    )


async def load_inventory(connection: asyncpg.Connection) -> Inventory:
    """The inventory as stored, from one consistent snapshot."""
    if connection.is_in_transaction():
        return await _load(connection)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        return await _load(connection)


def _integrity_problem(error: asyncpg.IntegrityConstraintViolationError) -> str:
    """One line naming the table and PostgreSQL's reason (its detail names keys, never secrets:
    no secret column is part of a key or constraint)."""
    table = getattr(error, "table_name", None) or "?"
    message = getattr(error, "message", None) or str(error)
    detail = getattr(error, "detail", None)
    text = f"{message} ({detail})" if detail else message
    return f"database: {table}: {printable(text, 400)}"
