"""Replacement (RMA): NEW takes over OLD's place in the inventory and what belongs to the
device (the package docstring says what moves and what stays)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.backup.repository import ArchiveRepository, MaintenanceRepository
from services.ca.repository import CaRepository
from services.core import audit
from services.core.db import acquire
from services.core.identity import IdentityError, normalize_mac
from services.core.inventory import Device, InventoryError, InventoryRepository, Variable
from services.onboard.rows import OnboardError
from services.redirect.handover import check_mapping
from services.redirect.repository import MappingRepository
from services.update.repository import RolloutRepository
from services.update.rollout import RolloutState


async def replace(
    pool: asyncpg.Pool,
    old_mac: str,
    new_mac: str,
    *,
    device_type: str | None,
    actor: audit.Actor,
) -> dict[str, Any]:
    """RMA: NEW takes over OLD (see the module docstring); OnboardError otherwise. One
    transaction: the inventory entry, then what belongs to the device (certificate roll-out,
    backups, redirect mapping), then the audit row."""
    old_mac, new_mac = _replacement_macs(old_mac, new_mac)
    async with acquire(pool) as connection, connection.transaction():
        inventory = InventoryRepository(connection, actor=actor)
        old, variables = await _check_replacement(connection, inventory, old_mac, new_mac)
        certificate_state = await RolloutRepository(connection).lock(old_mac)
        stored = await _swap_inventory(inventory, old, new_mac, device_type, variables)
        carried = await _carry_rollout(connection, certificate_state, new_mac)
        old_certificates = [
            record.serial
            for record in await CaRepository(connection).issued(include_revoked=False)
            if record.device_mac == old_mac and record.not_after > datetime.now(UTC)
        ]
        moved_versions = await MaintenanceRepository(connection).move_device(
            old_mac, new_mac, hardware_id=stored.hardware_id, device_type=stored.device_type
        )
        moved = await _move_mapping(connection, old_mac, new_mac, actor)
        summary = {
            "old": old_mac,
            "new": new_mac,
            "customer": old.customer,
            "cpe_id": old.cpe_id,
            "variables": sorted(v.name for v in variables),
            "mapping": moved,
            "backups": {"versions": len(moved_versions), "ids": moved_versions},
            "certificate_rollout": carried,
            # Still valid, issued to OLD: for `pbxfront ca revoke` once OLD is out of service.
            "old_certificates": old_certificates,
        }
        await audit.record(
            connection,
            actor=actor,
            action="device.replace",
            object_type="device",
            object_id=new_mac,
            before={
                **dataclasses.asdict(old),
                "certificate_rollout": certificate_state.state if certificate_state else None,
            },
            after=summary,
        )
    return summary


def _replacement_macs(old_mac: str, new_mac: str) -> tuple[str, str]:
    try:
        old_mac = normalize_mac(old_mac)
    except IdentityError as error:
        raise OnboardError([f"old_mac: {error}"]) from None
    try:
        new_mac = normalize_mac(new_mac)
    except IdentityError as error:
        raise OnboardError([f"new_mac: {error}"]) from None
    if old_mac == new_mac:
        raise OnboardError(["new_mac: is the old MAC"])
    return old_mac, new_mac


async def _check_replacement(
    connection: asyncpg.Connection, inventory: InventoryRepository, old_mac: str, new_mac: str
) -> tuple[Device, list[Variable]]:
    """OLD as the inventory has it and its device variables; OnboardError when NEW cannot take
    its place (NEW in the inventory, or holding another customer's backups)."""
    old = await inventory.get_device(old_mac)
    if old is None:
        raise OnboardError([f"old_mac: no device {old_mac} in the inventory"])
    if await inventory.get_device(new_mac) is not None:
        raise OnboardError([f"new_mac: {new_mac} is already in the inventory"])
    variables = await inventory.list_variables("device", old_mac)
    held = await ArchiveRepository(connection).device(new_mac)
    if held is not None and held.customer != old.customer:
        raise OnboardError([f"new_mac: {new_mac} has stored backups of customer {held.customer}"])
    return old, variables


async def _swap_inventory(
    inventory: InventoryRepository,
    old: Device,
    new_mac: str,
    device_type: str | None,
    variables: list[Variable],
) -> Device:
    """NEW in OLD's place, with OLD's device variables; NEW as stored."""
    new = Device(
        new_mac,
        device_type or old.device_type,
        old.device_class,
        old.customer,
        "",
        old.cpe_id,
        old.name,
    )
    # OLD goes first: its CPE id must be free; its update state cascades (NEW stages anew).
    await inventory.delete_device(old.mac)
    try:
        await inventory.upsert_device(new)
    except InventoryError as error:
        raise OnboardError(error.problems) from None
    stored = await inventory.get_device(new_mac)
    assert stored is not None  # written just above, in this transaction
    for variable in variables:
        await inventory.set_variable(
            "device", new_mac, variable.name, variable.value, variable.secret
        )
    return stored


async def _carry_rollout(
    connection: asyncpg.Connection, certificate_state: RolloutState | None, new_mac: str
) -> dict[str, Any] | None:
    """The roll-out goes on for NEW from its first step: what OLD's certificate, request or
    chain were belongs to OLD's hardware, so NEW is asked for its certificates at its next poll
    (one it already has from our RootCA makes it current at once)."""
    if certificate_state is None:
        return None
    await RolloutRepository(connection).save(
        RolloutState(
            mac=new_mac,
            state="querying",
            started_at=certificate_state.started_at,
            updated_at=datetime.now(UTC),
        )
    )
    return {"from": certificate_state.state, "to": "querying"}


async def _move_mapping(
    connection: asyncpg.Connection, old_mac: str, new_mac: str, actor: audit.Actor
) -> dict[str, Any] | None:
    """OLD's redirect mapping, if any, is NEW's now (same provider, Frontend, URL, facts)."""
    redirect = MappingRepository(connection)
    mapping = await redirect.get(old_mac)
    if mapping is None:
        return None
    wanted = check_mapping(new_mac, mapping.frontend, mapping.url, dict(mapping.facts))
    await redirect.deregister(old_mac, mapping.provider, actor.name)
    _outcome, record = await redirect.register(mapping.provider, wanted, actor.name)
    return record.as_json()
