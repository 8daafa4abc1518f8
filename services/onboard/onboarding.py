"""Onboarding: per row, the inventory device and its redirect mapping, every row or none."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.core import audit, errors
from services.core.db import acquire
from services.core.identity import printable
from services.core.inventory import Device, InventoryError, InventoryRepository
from services.onboard.rows import OnboardError, Row
from services.redirect.handover import check_mapping
from services.redirect.repository import MappingRepository

DEFAULT_PROVIDER = "local"


@dataclass(frozen=True)
class Result:
    mac: str
    device: str  # created | unchanged
    mapping: str  # created | updated | unchanged

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class _DryRun(Exception):
    pass


def _strip(problem: str, label: str) -> str:
    return problem[len(label) + 2 :] if problem.startswith(label + ": ") else problem


async def onboard(
    pool: asyncpg.Pool,
    rows: Sequence[Row],
    *,
    provider: str,
    actor: audit.Actor,
    dry_run: bool = False,
) -> list[Result]:
    """Every row or none: OnboardError naming each problem (nothing changed) otherwise."""
    results: list[Result] = []
    problems: list[str] = []
    try:
        async with acquire(pool) as connection, connection.transaction():
            inventory = InventoryRepository(connection, actor=actor)
            redirect = MappingRepository(connection)
            for row in rows:
                outcome = await _onboard_row(connection, inventory, redirect, row, provider, actor)
                if isinstance(outcome, Result):
                    results.append(outcome)
                else:
                    problems.extend(outcome)
            if problems:
                raise OnboardError(problems)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return results


async def _onboard_row(
    connection: asyncpg.Connection,
    inventory: InventoryRepository,
    redirect: MappingRepository,
    row: Row,
    provider: str,
    actor: audit.Actor,
) -> Result | list[str]:
    """One row: the device in the inventory and its redirect mapping (audited when either
    changed), or the row's problems."""
    device = Device(
        row.mac, row.device_type, row.device_class, row.customer, "", row.cpe_id, row.name
    )
    customer = await inventory.get_customer(row.customer)
    if customer is None:
        return [f"{row.where}: customer: no customer {printable(row.customer)}"]
    existing = await inventory.get_device(row.mac)
    if existing is not None:
        problem = _already_onboarded(existing, device, row)
        if problem is not None:
            return [problem]
    frontend = row.frontend
    if frontend is None and row.url is None:
        frontend = customer.frontend
    try:
        mapping = check_mapping(row.mac, frontend, row.url)
    except errors.Invalid as error:
        return [f"{row.where}: {error}"]
    try:
        created = await inventory.upsert_device(device)
    except InventoryError as error:
        label = f"device {row.mac}"
        return [f"{row.where}: {_strip(p, label)}" for p in error.problems]
    try:
        outcome, record = await redirect.register(provider, mapping, actor.name)
    except errors.DomainError as error:
        return [f"{row.where}: redirect: {error}"]
    result = Result(row.mac, "created" if created else "unchanged", outcome.value.lower())
    if created or result.mapping != "unchanged":
        await audit.record(
            connection,
            actor=actor,
            action="device.onboard",
            object_type="device",
            object_id=row.mac,
            after={"device": dataclasses.asdict(device), "mapping": record.as_json()},
        )
    return result


def _already_onboarded(existing: Device, device: Device, row: Row) -> str | None:
    """Why a row cannot onboard a device the inventory already has (None: the same device)."""
    if existing.customer != row.customer:
        return f"{row.where}: mac: {row.mac} is already a device of customer {existing.customer}"
    wanted = dataclasses.replace(device, hardware_id=existing.hardware_id)
    if existing == wanted:
        return None
    differ = [
        f.name
        for f in dataclasses.fields(Device)
        if getattr(existing, f.name) != getattr(wanted, f.name)
    ]
    return f"{row.where}: mac: {row.mac} is already onboarded with other {', '.join(differ)}"
