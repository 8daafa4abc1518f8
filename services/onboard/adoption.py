"""Automatic adoption (``update.auto_adopt``): a proven unknown device joins the customer its
redirect mapping names."""

from __future__ import annotations

import asyncpg

from services.core import audit
from services.core.db import acquire
from services.core.identity import printable
from services.core.inventory import Device, InventoryError, InventoryRepository
from services.redirect.repository import MappingRepository


async def auto_adopt(pool: asyncpg.Pool, mac: str, device_type: str, origin: str) -> bool:
    """``update.auto_adopt``: add a PROVEN unknown device (the update service checked the
    proof) to the customer its redirect mapping's fact ``customer`` names; True if added. No
    mapping, no such fact, an unknown customer or any inventory objection: False (the device
    stays unknown, for ``pbxfront devices adopt``)."""
    actor = audit.Actor("auto-adopt", printable(origin, 80))
    async with acquire(pool) as connection, connection.transaction():
        mapping = await MappingRepository(connection).get(mac)
        # Facts are stored with the "r-" prefix (redirect.handover.check_facts).
        facts = mapping.facts if mapping is not None else {}
        customer = facts.get("r-customer") or facts.get("customer")
        if mapping is None or not customer:
            return False
        inventory = InventoryRepository(connection, actor=actor)
        if await inventory.get_customer(customer) is None:
            return False
        device = Device(mac, device_type, "phone", customer)
        try:
            created = await inventory.upsert_device(device)
        except InventoryError:
            return False
        if created:
            await audit.record(
                connection,
                actor=actor,
                action="device.auto_adopt",
                object_type="device",
                object_id=mac,
                after={"customer": customer, "type": device_type, "provider": mapping.provider},
            )
        return created
