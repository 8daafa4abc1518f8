"""Stored config backups checked against the Frontend plan: what is wrong, not just what changed.

Only what the seed names as a concrete config line or object is checked; everything else is
left alone:

- the Frontend gateway (its MAC in the Frontend variable ``frontend-mac``):
  - ``config add H323 /ras-port-alt <port>`` (seed "Alternate RAS port", the command given
    verbatim): present with the port the phones use. **[I]** that a backup carries the option as
    ``/ras-port-alt <port>`` on a ``config ... H323`` line, as the command sets it.
  - "No of Regs w/o Pwd" = 0 (seed "Security"): **[NC]** the seed does not name the config line;
    checked only when ``frontend_plan.regs_without_password_option`` names the PBX0 option.
  - its SessionBorder objects against the plan (one per CPE): missing, extra, or with another
    "Registration from external" name. **[NC]** the seed gives the object's fields, not its
    config line: this reads the form the default ``staging_scripts/frontend.txt`` sends,
    ``mod cmd FLASHDIR0 add-item <n> (cn=<CPE id>)(h323=<hardware id>)...(pbx=<sessionborder
    .../>)``. Not checked when the Frontend gateway's update variable ``fe-sessionborders`` is
    ``off`` (the provider configures them some other way).
- each customer PBX (the customer's device of class ``pbx``):
  - ``config add PBX0 /ldap-default-addr <Metadir's internal address> /ldap-default-port 714``
    (seed "myPBX", verbatim), against the shared map ``frontend_plan.directory_map`` names.
  - NTP: "the associated Frontend is used as Time Server" (seed "Customer PBX"). **[I]** the line
    form ``config change NTP0 /server <address>`` (the form scripts set it with); the expected
    address is the Frontend's internal one.
- both:
  - firmware (seed "Update Server": firmware update is one of its tasks): the build the device
    last reported in PROT (the update service's ``device_status``) against the target, the
    update variable ``fw-prot`` as the device resolves it. A device that never reported a build,
    or without ``fw-prot``, is not checked. An open firmware roll-out gives its waves' devices
    its build rather than ``fw-prot``: until it is done they are reported too.
  - the trust list (seed "Update Server": staging installs it), when the update variables
    ``trust-root`` and ``trust-command`` are set for the device (staging then sends
    ``<trust-command> <trust-root>``, [NC]): the RootCA's hex DER must appear in the backup.
    **[I]** that a device keeps the certificate it was given as the same hex in its config text
    (white space, colons and letter case ignored).

Not checked, because the seed gives no config line: the NAT maps and the UDP NAT range ([NC]).
A backup that is not text (NUL bytes) is reported as unchecked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.core.config import FrontendPlanSettings
from services.core.inventory import Inventory
from services.core.inventory.variables import LayeredVariables, device_scopes, frontend_scopes
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


# Update variables the checks read (as the device resolves them).
SESSIONBORDER_SWITCH = "fe-sessionborders"
FIRMWARE_VARIABLE = "fw-prot"
TRUST_ROOT_VARIABLE = "trust-root"
TRUST_COMMAND_VARIABLE = "trust-command"
OFF = "off"

# [NC] The SessionBorder object line as staging_scripts/frontend.txt sends it (see above).
_SESSIONBORDER = re.compile(r"^mod\s+cmd\s+FLASHDIR0\s+add-item\s+\S+\s+(.*)$", re.IGNORECASE)
_ATTRIBUTE = {name: re.compile(rf"\({name}=([^()]*)\)") for name in ("cn", "h323")}
_HEX_NOISE = re.compile(r"[\s:]")


def session_borders(lines: Iterable[str]) -> dict[str, str]:
    """The SessionBorder objects of a backup: Long Name (cn) -> external registration name
    (h323, "" when absent)."""
    found: dict[str, str] = {}
    for line in lines:
        match = _SESSIONBORDER.match(line)
        if not match or "(pbx=<sessionborder" not in match.group(1).lower():
            continue
        attributes = match.group(1)
        name = _ATTRIBUTE["cn"].search(attributes)
        if name is None:
            continue
        external = _ATTRIBUTE["h323"].search(attributes)
        found[name.group(1)] = external.group(1) if external else ""
    return found


def _names(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def _session_border_findings(
    plan: FrontendPlan, lines: Sequence[str], device: str, version_id: int
) -> list[Finding]:
    wanted = {b.long_name: b.external_name for b in plan.session_borders}
    present = session_borders(lines)
    source = "the plan has one SessionBorder object per CPE (pbxfront frontend plan)"
    findings: list[Finding] = []
    missing = sorted(set(wanted) - set(present))
    if missing:
        findings.append(
            Finding(
                device,
                "sessionborder-missing",
                f"{len(missing)} SessionBorder object(s) missing: {_names(missing)}; {source}",
                version_id,
            )
        )
    extra = sorted(set(present) - set(wanted))
    if extra:
        findings.append(
            Finding(
                device,
                "sessionborder-extra",
                f"{len(extra)} SessionBorder object(s) not in the plan: {_names(extra)} (a CPE "
                "removed from the inventory, or one configured by hand)",
                version_id,
            )
        )
    wrong = sorted(n for n in set(wanted) & set(present) if present[n] != wanted[n])
    if wrong:
        pairs = [f"{n} registers as {present[n] or '(none)'}, not {wanted[n]}" for n in wrong]
        findings.append(
            Finding(
                device,
                "sessionborder-external-name",
                f"SessionBorder object(s) with another external registration name: "
                f"{_names(pairs)}; seed: the CPE's hardware id",
                version_id,
            )
        )
    return findings


def _device_findings(
    lines: Sequence[str],
    variables: Mapping[str, str],
    build: str | None,
    device: str,
    version_id: int,
) -> list[Finding]:
    """What both the Frontend gateway and a customer PBX are checked for: firmware, trust list."""
    findings: list[Finding] = []
    target = variables.get(FIRMWARE_VARIABLE)
    if target and build and build != target:
        findings.append(
            Finding(
                device,
                "firmware",
                f"runs firmware build {build} (PROT of its last poll), the target is {target} "
                f"(update variable {FIRMWARE_VARIABLE})",
                version_id,
            )
        )
    root = variables.get(TRUST_ROOT_VARIABLE)
    if root and variables.get(TRUST_COMMAND_VARIABLE):
        wanted = _HEX_NOISE.sub("", root).lower()
        text = _HEX_NOISE.sub("", "".join(lines)).lower()
        if wanted not in text:
            findings.append(
                Finding(
                    device,
                    "trust-list",
                    f"the provider RootCA (update variable {TRUST_ROOT_VARIABLE}, "
                    f"{len(wanted) // 2} bytes) is not in the backup: the trust list is missing; "
                    f"staging sends {TRUST_COMMAND_VARIABLE} (restage the device)",
                    version_id,
                )
            )
    return findings


def check_frontend_backup(
    plan: FrontendPlan,
    backup: StoredBackup | None,
    settings: FrontendPlanSettings,
    variables: Mapping[str, str] | None = None,
    build: str | None = None,
) -> list[Finding]:
    """``variables``: the gateway's update variables (its Frontend's when it is not in the
    inventory); ``build``: the firmware build it last reported."""
    variables = variables or {}
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
    if variables.get(SESSIONBORDER_SWITCH) != OFF:
        findings += _session_border_findings(plan, lines, device, backup.version_id)
    findings += _device_findings(lines, variables, build, device, backup.version_id)
    return findings


def check_pbx_backup(
    plan: FrontendPlan,
    customer: str,
    hardware_id: str,
    backup: StoredBackup | None,
    variables: Mapping[str, str] | None = None,
    build: str | None = None,
) -> list[Finding]:
    variables = variables or {}
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
    findings += _device_findings(lines, variables, build, device, backup.version_id)
    return findings


def backup_targets(plan: FrontendPlan, inventory: Inventory) -> list[tuple[str, str, str]]:
    """(mac, customer, hardware id) of every customer PBX of the plan's Frontend."""
    customers = {c.id for c in plan.customers}
    return [
        (d.mac, d.customer, d.hardware_id)
        for d in inventory.devices
        if d.device_class == "pbx" and d.customer in customers
    ]


def _device_variables(inventory: Inventory, mac: str, frontend: str) -> dict[str, str]:
    """The update variables as the device ``mac`` resolves them; its Frontend's layers when it
    is not in the inventory."""
    variables = LayeredVariables(inventory.variables)
    device = next((d for d in inventory.devices if d.mac == mac), None)
    customer = (
        next((c for c in inventory.customers if c.id == device.customer), None)
        if device is not None
        else None
    )
    if device is None or customer is None:
        return variables.values(frontend_scopes(frontend))
    return variables.values(device_scopes(device, customer))


def check_backups(
    plan: FrontendPlan,
    inventory: Inventory,
    backups: Mapping[str, StoredBackup],
    settings: FrontendPlanSettings,
    builds: Mapping[str, str | None] | None = None,
) -> list[Finding]:
    """Every finding about the latest backups of the plan's Frontend gateway and customer PBXs;
    ``builds``: the firmware build each device last reported, by MAC (none: not checked)."""
    builds = builds or {}
    findings: list[Finding] = []
    frontend = plan.frontend.id
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
            for f in check_frontend_backup(
                plan,
                backup,
                settings,
                _device_variables(inventory, mac, frontend),
                builds.get(mac),
            )
        ]
    for mac, customer, hardware_id in backup_targets(plan, inventory):
        findings += [
            dataclasses.replace(f, mac=mac, hardware_id=hardware_id, customer=customer)
            for f in check_pbx_backup(
                plan,
                customer,
                hardware_id,
                backups.get(mac),
                _device_variables(inventory, mac, frontend),
                builds.get(mac),
            )
        ]
    return findings
