"""``pbxfront devices …``: status table, restage, adopt, certificate roll-out."""

from __future__ import annotations

import argparse
import json

import asyncpg

from services.core import audit
from services.core.commands import (
    CUSTOMER,
    JSON,
    MAC,
    Commands,
    age,
    argument,
    device_mac,
    print_listing,
    print_table,
    record_audit,
)
from services.core.config import Settings
from services.core.errors import UsageError
from services.core.inventory import Device, InventoryError, InventoryRepository
from services.core.unknown import UPDATE as UPDATE_SERVICE
from services.core.unknown import UnknownDeviceRepository
from services.update.repository import RolloutRepository, RolloutStatus, UpdateRepository
from services.update.rollout import RolloutState


async def devices_list(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    stale = 3 * 60 * settings.update.poll_interval if args.stale else None
    repository = UpdateRepository(pool)
    statuses = await repository.statuses(customer=args.customer, stale_after_seconds=stale)
    # What `frontend check --backups --record` found wrong in each device's latest backup.
    findings = await repository.backup_findings()
    if args.json:
        print(
            json.dumps(
                [{**s.as_json(), "findings": findings.get(s.mac, [])} for s in statuses], indent=2
            )
        )
        return 0
    header = (
        "MAC",
        "HARDWARE ID",
        "CUSTOMER",
        "TYPE",
        "LAST SEEN",
        "PROOF",
        "PHASE",
        "SYNC",
        "FIRMWARE",
        "SCRIPTS",
        "FINDINGS",
        "ADDRESS",
    )
    rows: list[tuple[str, ...]] = [header]
    for s in statuses:
        sync = "yes" if s.in_sync else ("restage" if s.restage_requested else "no")
        if s.last_error:
            sync = "error"
        # A device whose ver names the wanted build while PROT/BOOT does not: firmware lines
        # withheld after update.firmware_attempts (issue #14).
        firmware = f"stuck:{s.firmware_stuck}" if s.firmware_stuck else (s.prot or "-")
        rows.append(
            (
                s.mac,
                s.hardware_id,
                s.customer,
                s.device_type,
                age(s.last_seen),
                s.proof or "-",
                s.phase or "-",
                sync,
                firmware,
                f"v{s.script_version}" if s.script_version is not None else "-",
                ",".join(findings.get(s.mac, [])) or "-",
                s.source_address or "-",
            )
        )
    print_table(rows)
    if args.unknown:
        unknown = await UnknownDeviceRepository(pool).sightings(UPDATE_SERVICE)
        print(f"\nunknown devices that polled ({len(unknown)}):")
        for item in unknown:
            print(
                f"  {item.mac or '-'}  {item.hardware_id or '-'}  {item.device_type or '-'}  "
                f"{age(item.last_seen)}  {item.polls} polls  {item.source_address or '-'}"
            )
    return 0


async def devices_restage(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    mac = device_mac(args.mac)
    async with pool.acquire() as connection, connection.transaction():
        if not await UpdateRepository(connection).request_restage(mac):
            raise UsageError(f"no device {mac} in the inventory")
        await record_audit(connection, "device.restage", "device", mac)
    print(f"{mac}: will be sent through staging.txt at its next poll")
    return 0


async def devices_adopt(args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool) -> int:
    """Take a device that polled but is not in the inventory into it (the seed's ZCD)."""
    mac = device_mac(args.mac)
    unknown = UnknownDeviceRepository(pool)
    sighting = await unknown.find(UPDATE_SERVICE, mac)
    device_type = args.type or (sighting.device_type if sighting else None)
    if device_type is None:
        raise UsageError(f"{mac} has not polled with its type; give --type")
    device = Device(
        mac=mac,
        device_type=device_type,
        device_class=args.device_class,
        customer=args.customer,
        cpe_id=args.cpe_id,
        name=args.name,
    )
    async with pool.acquire() as connection:
        try:
            created = await InventoryRepository(connection, actor=audit.cli_actor()).upsert_device(
                device
            )
        except InventoryError as error:
            raise UsageError("; ".join(error.problems)) from None
    if not created:
        raise UsageError(f"{mac} is in the inventory already")
    await unknown.forget(UPDATE_SERVICE, [mac])
    print(f"{mac}: adopted for customer {args.customer} as {device_type} {args.device_class}")
    print(
        "note: `pbxfront inventory apply --prune` of the file owning this customer removes "
        "devices it does not list; add it there too (`pbxfront inventory export`)"
    )
    return 0


async def devices_certificates(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    """The certificate roll-out per device (protocol.md §9): state, issuer, expiry, error."""
    statuses = await RolloutRepository(pool).statuses(customer=args.customer)
    header = ("MAC", "HARDWARE ID", "CUSTOMER", "ROLL-OUT", "ISSUER", "EXPIRES", "UPDATED", "NOTE")
    print_listing(statuses, args.json, header, _certificate_row)
    return 0


def _certificate_row(status: RolloutStatus) -> tuple[str, ...]:
    r = status.rollout
    return (
        status.mac,
        status.hardware_id,
        status.customer,
        r.state if r else "-",
        (r.device_issuer or "-") if r else "-",
        f"{r.device_not_after:%Y-%m-%d}" if r and r.device_not_after else "-",
        age(r.updated_at) if r else "-",
        _certificate_note(r),
    )


def _certificate_note(rollout: RolloutState | None) -> str:
    if rollout is None:
        return ""
    if rollout.state == "queued":
        # ca.signer: the UPDATED column is how long it has waited.
        return "request waits for the signing node (pbxfront ca queue)"
    return rollout.error or ""


async def devices_certificate_reset(
    args: argparse.Namespace, settings: Settings, pool: asyncpg.Pool
) -> int:
    mac = device_mac(args.mac)
    repository = RolloutRepository(pool)
    if not await repository.statuses(mac=mac):
        raise UsageError(f"no device {mac} in the inventory")
    if await repository.reset(mac):
        print(f"{mac}: certificate roll-out reset; its next update poll starts over")
    else:
        print(f"{mac}: no certificate roll-out to reset")
    return 0


def register(update: Commands) -> None:
    """The ``pbxfront devices …`` sub-commands."""
    devices = update.group("devices", "device status as seen by the update service")
    devices.add(
        "list",
        devices_list,
        "status table",
        argument(
            "--stale",
            action="store_true",
            help="only devices not seen for 3 poll intervals (or never)",
        ),
        CUSTOMER,
        argument("--unknown", action="store_true", help="also devices not in the inventory"),
        JSON,
    )
    devices.add("restage", devices_restage, "send a device through staging again", MAC)
    devices.add(
        "adopt",
        devices_adopt,
        "add a device that polled but is not in the inventory",
        MAC,
        argument("--customer", required=True),
        argument(
            "--class", dest="device_class", choices=("phone", "gateway", "pbx"), default="phone"
        ),
        argument("--type", help="default: the type it polled with"),
        argument("--cpe-id"),
        argument("--name"),
    )
    devices.add(
        "certificates",
        devices_certificates,
        "certificate roll-out per device: state, issuer, expiry (see [ca] rollout)",
        CUSTOMER,
        JSON,
    )
    devices.add(
        "certificate-reset",
        devices_certificate_reset,
        "forget a device's roll-out (after an error or a refused request)",
        MAC,
    )
