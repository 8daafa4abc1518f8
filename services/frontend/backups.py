"""Stored config backups checked against the Frontend plan: what is wrong, not just what changed.

Only what the seed names as a concrete config line is checked; everything else is left alone:

- the Frontend gateway (its MAC in the Frontend variable ``frontend-mac``):
  - ``config add H323 /ras-port-alt <port>`` (seed "Alternate RAS port", the command given
    verbatim): present with the port the phones use. **[I]** that a backup carries the option as
    ``/ras-port-alt <port>`` on a ``config ... H323`` line, as the command sets it.
  - "No of Regs w/o Pwd" = 0 (seed "Security"): **[NC]** the seed does not name the config line;
    checked only when ``frontend_plan.regs_without_password_option`` names the PBX0 option.
- each customer PBX (the customer's device of class ``pbx``):
  - ``config add PBX0 /ldap-default-addr <Metadir's internal address> /ldap-default-port 714``
    (seed "myPBX", verbatim), against the shared map ``frontend_plan.directory_map`` names.
  - NTP: "the associated Frontend is used as Time Server" (seed "Customer PBX"). **[I]** the line
    form ``config change NTP0 /server <address>`` (the form scripts set it with); the expected
    address is the Frontend's internal one.

Not checked, because the seed gives no config line: the NAT maps, the UDP NAT range and the
SessionBorder objects ([NC]). A backup that is not text (NUL bytes) is reported as unchecked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.core.config import FrontendPlanSettings
from services.core.inventory import Inventory
from services.frontend.plan import FrontendPlan
from services.frontend.repository import StoredBackup


@dataclass(frozen=True)
class Finding:
    device: str  # "frontend sb1 gateway 009033aabbcc" or "customer X PBX <hwid>"
    code: str
    message: str
    # The version checked, None when there is no backup to check.
    version_id: int | None = None
    mac: str = ""
    hardware_id: str = ""
    customer: str = ""

    def __str__(self) -> str:
        where = f" (backup version {self.version_id})" if self.version_id is not None else ""
        return f"{self.device}{where}: {self.message} [{self.code}]"


def config_lines(backup: StoredBackup) -> list[str] | None:
    """The backup's lines, None when it cannot be read as innovaphone config text."""
    if backup.encoding == "binary" or b"\x00" in backup.content:
        return None
    try:
        text = backup.content.decode("utf-8")
    except UnicodeDecodeError:
        text = backup.content.decode("latin-1")
    lines = [line.strip() for line in text.splitlines()]
    if not any(line.startswith(("config ", "mod ", "vars ")) for line in lines):
        return None
    return lines


def option_values(lines: Iterable[str], module: str, option: str) -> list[str]:
    """Every value of ``/<option> <value>`` on ``config add|change <module> ...`` lines."""
    head = re.compile(rf"^config\s+(?:add|change)\s+{re.escape(module)}\b", re.IGNORECASE)
    value = re.compile(rf"(?:^|\s)/{re.escape(option)}\s+(\S+)")
    found: list[str] = []
    for line in lines:
        if head.match(line):
            found += value.findall(line)
    return found


def _expect(
    lines: Sequence[str],
    module: str,
    option: str,
    wanted: str,
    device: str,
    code: str,
    version_id: int,
    source: str,
) -> list[Finding]:
    values = option_values(lines, module, option)
    if not values:
        return [Finding(device, code, f"no /{option} on a {module} line; {source}", version_id)]
    if values[-1] != wanted:
        return [
            Finding(
                device,
                code,
                f"/{option} is {values[-1]}, the plan wants {wanted}; {source}",
                version_id,
            )
        ]
    return []


def check_frontend_backup(
    plan: FrontendPlan, backup: StoredBackup | None, settings: FrontendPlanSettings
) -> list[Finding]:
    device = f"frontend {plan.frontend.id} gateway {plan.frontend_mac}"
    if backup is None:
        return [Finding(device, "no-backup", "no stored config backup to check")]
    lines = config_lines(backup)
    if lines is None:
        return [Finding(device, "unchecked", "the backup is not config text", backup.version_id)]
    findings: list[Finding] = []
    if plan.ras_port_alt is not None:
        findings += _expect(
            lines,
            "H323",
            "ras-port-alt",
            str(plan.ras_port_alt),
            device,
            "ras-port-alt",
            backup.version_id,
            f"seed: config add H323 /ras-port-alt {plan.ras_port_alt}",
        )
    option = settings.regs_without_password_option
    if option:
        findings += _expect(
            lines,
            "PBX0",
            option,
            "0",
            device,
            "registrations-without-password",
            backup.version_id,
            "seed Security: No of Regs w/o Pwd must be 0 on a Frontend",
        )
    return findings


def check_pbx_backup(
    plan: FrontendPlan, customer: str, hardware_id: str, backup: StoredBackup | None
) -> list[Finding]:
    device = f"customer {customer} PBX {hardware_id}"
    if backup is None:
        return [Finding(device, "no-backup", "no stored config backup to check")]
    lines = config_lines(backup)
    if lines is None:
        return [Finding(device, "unchecked", "the backup is not config text", backup.version_id)]
    findings: list[Finding] = []
    directory = plan.directory_map
    if directory is not None:
        source = (
            f"seed myPBX: config add PBX0 /ldap-default-addr {directory.address} "
            f"/ldap-default-port {directory.internal_port}"
        )
        findings += _expect(
            lines,
            "PBX0",
            "ldap-default-addr",
            directory.address,
            device,
            "ldap-default",
            backup.version_id,
            source,
        )
        findings += _expect(
            lines,
            "PBX0",
            "ldap-default-port",
            str(directory.internal_port),
            device,
            "ldap-default",
            backup.version_id,
            source,
        )
    findings += _expect(
        lines,
        "NTP0",
        "server",
        plan.frontend.internal_address,
        device,
        "ntp",
        backup.version_id,
        "seed Customer PBX: the associated Frontend is the time server",
    )
    return findings


def backup_targets(plan: FrontendPlan, inventory: Inventory) -> list[tuple[str, str, str]]:
    """(mac, customer, hardware id) of every customer PBX of the plan's Frontend."""
    customers = {c.id for c in plan.customers}
    return [
        (d.mac, d.customer, d.hardware_id)
        for d in inventory.devices
        if d.device_class == "pbx" and d.customer in customers
    ]


def check_backups(
    plan: FrontendPlan,
    inventory: Inventory,
    backups: Mapping[str, StoredBackup],
    settings: FrontendPlanSettings,
) -> list[Finding]:
    findings: list[Finding] = []
    if plan.frontend_mac:
        mac = plan.frontend_mac
        backup = backups.get(mac)
        known = next((d for d in inventory.devices if d.mac == mac), None)
        findings += [
            dataclasses.replace(
                f,
                mac=mac,
                hardware_id=backup.hardware_id if backup else (known.hardware_id if known else ""),
                customer=known.customer if known else "",
            )
            for f in check_frontend_backup(plan, backup, settings)
        ]
    for mac, customer, hardware_id in backup_targets(plan, inventory):
        findings += [
            dataclasses.replace(f, mac=mac, hardware_id=hardware_id, customer=customer)
            for f in check_pbx_backup(plan, customer, hardware_id, backups.get(mac))
        ]
    return findings
