"""One-step onboarding and replacement (RMA) of devices: top-level composition of the inventory
(core) and the redirect service, like services/serve.py.

``pbxfront devices onboard FILE.csv`` and ``POST /api/v1/devices/onboard`` take rows of ``mac,
type, customer, cpe_id`` (optional ``class, name, frontend, url``) and create, per row, the
inventory device and the redirect mapping (to ``frontend``/``url``, default the customer's
Frontend) in ONE transaction with an audit row each. Every bad row is reported as
``file:line: field: why`` and then nothing is changed. A row identical to what is stored is
"unchanged"; a MAC that is already a device with other data, or a CPE id another device holds,
is an error naming it.

``pbxfront devices replace OLD NEW`` (RMA) moves customer, CPE id, name, class and device-layer
variables from OLD to NEW, moves the redirect mapping, the backup history (every stored version of
OLD becomes NEW's, so NEW's first backup is compared with OLD's last) and the certificate
roll-out: a device OLD had in the roll-out stays in it as NEW, from the query step (OLD's
certificate, request and chain belong to OLD's hardware). OLD's update state goes with OLD (NEW
stages afresh); certificates issued to OLD stay valid and are listed for ``pbxfront ca revoke``.
One transaction, one audit row ``device.replace`` on NEW naming OLD and what moved. Refused when
NEW is in the inventory or has stored backups of another customer.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from services.backup.repository import ArchiveRepository, MaintenanceRepository
from services.ca.repository import CaRepository
from services.core import audit, errors
from services.core.api import Endpoint, json_response, pool_of, request_actor
from services.core.auth import Role
from services.core.commands import Handler, Work
from services.core.config import Settings
from services.core.db import acquire
from services.core.errors import UsageError
from services.core.identity import IdentityError, normalize_device_type, normalize_mac, printable
from services.core.inventory import (
    DEVICE_CLASSES,
    Device,
    InventoryError,
    InventoryRepository,
    Variable,
)
from services.redirect.handover import check_mapping
from services.redirect.repository import MappingRepository
from services.update.repository import RolloutRepository
from services.update.rollout import RolloutState

REQUIRED = ("mac", "type", "customer", "cpe_id")
OPTIONAL = ("class", "name", "frontend", "url")
DEFAULT_PROVIDER = "local"
MAX_ROWS = 10000


class OnboardError(Exception):
    """Every problem found; nothing was changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Row:
    where: str  # "file:line"
    mac: str
    device_type: str
    customer: str
    cpe_id: str | None
    device_class: str
    name: str | None
    frontend: str | None
    url: str | None


@dataclass(frozen=True)
class Result:
    mac: str
    device: str  # created | unchanged
    mapping: str  # created | updated | unchanged

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def _text(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {type(value).__name__}")
    value = value.strip()
    return value or None


def check_rows(raws: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Row]:
    """Rows normalised; OnboardError with every ``where: field: why`` otherwise (no database)."""
    problems: list[str] = []
    rows: list[Row] = []
    seen_mac: dict[str, str] = {}
    seen_cpe: dict[str, str] = {}
    if len(raws) > MAX_ROWS:
        raise OnboardError([f"rows: at most {MAX_ROWS} per call, not {len(raws)}"])
    for where, raw in raws:
        values: dict[str, str | None] = {}
        bad = False
        for key in (*REQUIRED, *OPTIONAL):
            try:
                values[key] = _text(raw, key)
            except ValueError as error:
                problems.append(f"{where}: {key}: {error}")
                bad = True
        for key in raw:
            if key not in REQUIRED and key not in OPTIONAL:
                problems.append(f"{where}: {printable(str(key))}: unknown field")
                bad = True
        for key in ("mac", "type", "customer"):
            if key in values and values[key] is None:
                problems.append(f"{where}: {key}: required")
                bad = True
        mac = device_type = ""
        if values.get("mac"):
            try:
                mac = normalize_mac(values["mac"] or "")
            except IdentityError as error:
                problems.append(f"{where}: mac: {error}")
                bad = True
        if values.get("type"):
            try:
                device_type = normalize_device_type(values["type"] or "")
            except IdentityError as error:
                problems.append(f"{where}: type: {error}")
                bad = True
        device_class = values.get("class") or "phone"
        if device_class not in DEVICE_CLASSES:
            problems.append(
                f"{where}: class: must be one of {', '.join(DEVICE_CLASSES)}, "
                f"not {printable(repr(device_class))}"
            )
            bad = True
        if mac:
            if mac in seen_mac:
                problems.append(f"{where}: mac: {mac} is already in {seen_mac[mac]}")
                bad = True
            seen_mac.setdefault(mac, where)
        cpe_id = values.get("cpe_id")
        if cpe_id:
            if cpe_id in seen_cpe:
                problems.append(
                    f"{where}: cpe_id: {printable(cpe_id)} is already in {seen_cpe[cpe_id]}"
                )
                bad = True
            seen_cpe.setdefault(cpe_id, where)
        if not bad:
            rows.append(
                Row(
                    where,
                    mac,
                    device_type,
                    values["customer"] or "",
                    cpe_id,
                    device_class,
                    values.get("name"),
                    values.get("frontend"),
                    values.get("url"),
                )
            )
    if problems:
        raise OnboardError(problems)
    return rows


def parse_csv(text: str, source: str) -> list[Row]:
    """CSV with a header line naming at least ``mac,type,customer,cpe_id``."""
    reader = csv.reader(io.StringIO(text))
    lines = list(reader)
    if not lines:
        raise OnboardError([f"{source}:1: header: the file is empty"])
    header = [name.strip().lower() for name in lines[0]]
    known = (*REQUIRED, *OPTIONAL)
    problems = [f"{source}:1: {name}: missing column" for name in REQUIRED if name not in header]
    problems += [
        f"{source}:1: {printable(name)}: unknown column (known: {', '.join(known)})"
        for name in header
        if name not in REQUIRED and name not in OPTIONAL
    ]
    if problems:
        raise OnboardError(problems)
    raws: list[tuple[str, Mapping[str, Any]]] = []
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        where = f"{source}:{number}"
        if len(cells) != len(header):
            problems.append(f"{where}: row: {len(cells)} cells, the header has {len(header)}")
            continue
        raws.append((where, dict(zip(header, cells, strict=True))))
    try:
        rows = check_rows(raws)
    except OnboardError as error:
        raise OnboardError([*problems, *error.problems]) from None
    if problems:
        raise OnboardError(problems)
    return rows


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


# --- CLI -----------------------------------------------------------------------------------


async def cmd_onboard(args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool) -> int:
    path = Path(args.file)
    try:
        text = await asyncio.to_thread(path.read_text, "utf-8-sig")  # Excel writes a BOM
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: {getattr(error, 'strerror', None) or error}") from None
    try:
        rows = parse_csv(text, str(path))
        results = await onboard(
            pool, rows, provider=args.provider, actor=audit.cli_actor(), dry_run=args.dry_run
        )
    except OnboardError as error:
        raise UsageError("\n".join(error.problems) + "\nnothing changed") from None
    for result in results:
        print(f"{result.mac}: device {result.device}, mapping {result.mapping}")
    done = "would be onboarded (dry run, nothing changed)" if args.dry_run else "onboarded"
    print(f"{len(results)} device(s) {done}")
    return 0


async def cmd_replace(args: argparse.Namespace, _settings: Settings, pool: asyncpg.Pool) -> int:
    try:
        summary = await replace(
            pool, args.old_mac, args.new_mac, device_type=args.type, actor=audit.cli_actor()
        )
    except OnboardError as error:
        raise UsageError("\n".join(error.problems)) from None
    mapping = "moved" if summary["mapping"] else "none"
    carried = summary["certificate_rollout"]
    rollout = f"from {carried['from']}, asks NEW for its certificates" if carried else "none"
    print(
        f"{summary['new']} replaces {summary['old']} for customer {summary['customer']} "
        f"(cpe_id {summary['cpe_id']}, {len(summary['variables'])} variable(s), "
        f"redirect mapping {mapping}, {summary['backups']['versions']} backup version(s) "
        f"moved, certificate roll-out {rollout})"
    )
    for serial in summary["old_certificates"]:
        print(
            f"note: certificate {serial} issued to {summary['old']} is still valid; "
            f"pbxfront ca revoke {serial} once the old device is out of service"
        )
    return 0


def register(
    devices: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    bind: Any,
) -> None:
    """Add ``onboard`` and ``replace`` to the ``devices`` command group."""
    binder: Any = bind

    def bound(work: Work) -> Handler:
        handler: Handler = binder(work)
        return handler

    onboard_parser = devices.add_parser(
        "onboard",
        parents=[common],
        help="add devices and their redirect mappings from a CSV file, all or nothing",
    )
    onboard_parser.add_argument(
        "file", help="CSV with a header: mac,type,customer,cpe_id[,class,name,frontend,url]"
    )
    onboard_parser.add_argument("--dry-run", action="store_true")
    onboard_parser.add_argument("--provider", default=DEFAULT_PROVIDER)
    onboard_parser.set_defaults(handler=bound(cmd_onboard))
    replace_parser = devices.add_parser(
        "replace",
        parents=[common],
        help="RMA: a new device takes over an old one's customer, CPE id and variables",
    )
    replace_parser.add_argument("old_mac", metavar="OLD_MAC", help="the device being replaced")
    replace_parser.add_argument("new_mac", metavar="NEW_MAC", help="the replacement device")
    replace_parser.add_argument("--type", help="the new device's type (default: the old one's)")
    replace_parser.set_defaults(handler=bound(cmd_replace))


# --- admin API -----------------------------------------------------------------------------


async def onboard_endpoint(request: web.Request) -> web.Response:
    if not request.can_read_body:
        raise errors.Invalid("body: a JSON list of rows is required")
    try:
        value = await request.json(loads=_loads)
    except ValueError as error:
        raise errors.Invalid(f"body: not JSON ({error})") from None
    provider = request.query.get("provider") or DEFAULT_PROVIDER
    dry_run = request.query.get("dry_run") in ("1", "true", "yes")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise errors.Invalid("body: must be a JSON list of objects")
    try:
        rows = check_rows([(f"rows[{n}]", item) for n, item in enumerate(value)])
        results = await onboard(
            pool_of(request),
            rows,
            provider=provider,
            actor=request_actor(request),
            dry_run=dry_run,
        )
    except OnboardError as error:
        return json_response({"error": "; ".join(error.problems), "problems": error.problems}, 422)
    return json_response(
        {"devices": [r.as_json() for r in results], "dry_run": dry_run},
        status=200 if dry_run or not any(r.device == "created" for r in results) else 201,
    )


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


ROW_SCHEMA = {
    "type": "object",
    "required": ["mac", "type", "customer"],
    "properties": {name: {"type": "string"} for name in (*REQUIRED, *OPTIONAL)},
}

ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/devices/onboard",
        onboard_endpoint,
        frozenset({Role.ADMIN, Role.OPERATOR}),
        "Onboard devices (inventory device + redirect mapping per row), all or nothing",
        query={
            "provider": f"the redirect provider (default {DEFAULT_PROVIDER})",
            "dry_run": "1: only check and report",
        },
        body={"type": "array", "items": ROW_SCHEMA},
        response={"type": "object"},
    )
]
