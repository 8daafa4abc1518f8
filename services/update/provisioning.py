"""Provisioning as a pipeline: identify -> look up -> decide -> render -> record.

Plain functions over plain values; the handlers feed them from the request and the database.
What a device gets (protocol.md §1-2, with PHPUS's order):

    # comments (who, what, why)
    mod cmd UP1 times /allow … /initial …          when a maintenance window is set
    mod cmd UP0 prot <url> ser <build> + iresetn    when PROT/BOOT differ from the wanted build;
                                                    the script itself follows once they match
    <rendered script body>                          update: only if CHECK != hash(body)
    config write / config activate
    mod cmd UP1 check ser <hash>                    update.txt (the run-once guard)
    iresetn

staging.txt is sent on every poll (no guard), with fast polling, and ends by moving the device's
update URL to update.txt; update.txt turns fast polling off.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.core.identity import DeviceIdentity, printable
from services.core.inventory import (
    LAYERS,
    Customer,
    Device,
    Frontend,
    Inventory,
    ResolvedVariable,
    Variable,
)
from services.core.scriptlines import comment, to_crlf
from services.update.firmware import firmware_file_name
from services.update.scripts import (
    ScriptStore,
    Secret,
    rawurlencode,
    script_hash,
    script_lines,
)

STAGING = "staging"
UPDATE = "update"
# protocol.md §1: arguments the device appends to every poll (each also with a `…date` twin).
DEVICE_ARGUMENTS = ("ver", "PROT", "BOOT", "BMC", "CFG", "SCFG", "CHECK", "CFG-BACKUP-NUM")
_ARGUMENT_LIMIT = 200
_BUILD = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOURS = re.compile(r"\d{1,2}(,\d{1,2})*")
# Fast polling while staging (minutes), as PHPUS does for non-final phases.
STAGING_POLL_MINUTES = 1


@dataclass(frozen=True)
class PollArguments:
    """The device-appended arguments, sanitised (control characters escaped, length capped)."""

    version: str | None = None
    prot: str | None = None
    boot: str | None = None
    check: str | None = None
    cfg: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> PollArguments:
        def value(name: str) -> str | None:
            raw = query.get(name)
            if raw is None or raw == "":
                return None
            return printable(raw.strip(), _ARGUMENT_LIMIT)

        return cls(
            version=value("ver"),
            prot=value("PROT"),
            boot=value("BOOT"),
            check=value("CHECK"),
            cfg=value("CFG"),
        )


@dataclass(frozen=True)
class Snapshot:
    """The inventory in memory with the indexes a poll needs; rebuilt when its version changes."""

    version: int
    inventory: Inventory
    by_mac: Mapping[str, Device]
    by_hardware_id: Mapping[str, Device]
    customers: Mapping[str, Customer]
    frontends: Mapping[str, Frontend]
    variables: Mapping[tuple[str, str], Sequence[Variable]]

    @classmethod
    def build(cls, version: int, inventory: Inventory) -> Snapshot:
        scoped: dict[tuple[str, str], list[Variable]] = {}
        for variable in inventory.variables:
            scoped.setdefault((variable.layer, variable.scope), []).append(variable)
        return cls(
            version,
            inventory,
            {d.mac: d for d in inventory.devices},
            {d.hardware_id.lower(): d for d in inventory.devices},
            {c.id: c for c in inventory.customers},
            {f.id: f for f in inventory.frontends},
            scoped,
        )

    def find(self, identity: DeviceIdentity) -> Device | None:
        if identity.mac is not None:
            return self.by_mac.get(identity.mac)
        if identity.hardware_id is not None:
            return self.by_hardware_id.get(identity.hardware_id.lower())
        return None

    def resolve(self, device: Device) -> dict[str, ResolvedVariable]:
        """global < frontend < customer < device_class < device_type < device; later wins."""
        customer = self.customers[device.customer]
        scopes = {
            "global": "",
            "frontend": customer.frontend,
            "customer": customer.id,
            "device_class": device.device_class,
            "device_type": device.device_type,
            "device": device.mac,
        }
        resolved: dict[str, ResolvedVariable] = {}
        for layer in LAYERS:
            for variable in self.variables.get((layer, scopes[layer]), ()):
                resolved[variable.name] = ResolvedVariable(
                    variable.name, variable.value, variable.secret, variable.layer, variable.scope
                )
        return resolved


@dataclass(frozen=True)
class Urls:
    """URLs written into scripts; ``#m``/``#h``/``#t``/``#i`` are expanded by the device."""

    base: str

    def script(self, name: str) -> str:
        return f"{self.base}/DRIVE/CF0/update/{name}?sn=#m&hwid=#h&type=#t&ip=#i"

    @property
    def update(self) -> str:
        return self.script("update.txt")

    @property
    def staging(self) -> str:
        return self.script("staging.txt")

    @property
    def backup(self) -> str:
        return f"{self.base}/DRIVE/CF0/update/backup/#m.txt?sn=#m&hwid=#h"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    def firmware(self, build: str, file_name: str) -> str:
        return f"{self.base}/DRIVE/CF0/update/firm/{build}/{file_name}"


class BodyCache:
    """Rendered script bodies keyed by everything they depend on (inventory version, scripts
    generation, device, phase, proof, base URL, poll interval): a new inventory or script
    version makes new keys, so nothing stale is ever served. Least recently used entries go
    first."""

    def __init__(self, size: int = 20000) -> None:
        self._entries: OrderedDict[tuple[Any, ...], list[str]] = OrderedDict()
        self._size = size

    def get(self, key: tuple[Any, ...]) -> list[str] | None:
        lines = self._entries.get(key)
        if lines is not None:
            self._entries.move_to_end(key)
        return lines

    def put(self, key: tuple[Any, ...], lines: list[str]) -> None:
        self._entries[key] = lines
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


@dataclass(frozen=True)
class FirmwareTarget:
    kind: str  # prot | boot
    build: str
    file_name: str
    url: str


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    hash_sent: str | None = None
    in_sync: bool = False
    error: str | None = None


class PolicyError(Exception):
    """A firmware or maintenance variable has an unusable value; the message names it."""


def firmware_targets(
    device: Device, variables: Mapping[str, ResolvedVariable], urls: Urls
) -> list[FirmwareTarget]:
    """The wanted builds from the ``fw-prot``/``fw-boot`` variables (set per device type,
    overridable per customer and device like any variable)."""
    targets: list[FirmwareTarget] = []
    for kind in ("prot", "boot"):
        wanted = variables.get(f"fw-{kind}")
        if wanted is None or not wanted.value:
            continue
        if not _BUILD.fullmatch(wanted.value):
            raise PolicyError(f"fw-{kind} = {wanted.value!r} ({wanted.layer} layer): not a build")
        file_variable = variables.get(f"fw-{kind}-file")
        file_name = (
            file_variable.value
            if file_variable is not None and file_variable.value
            else firmware_file_name(kind, device.device_type)
        )
        targets.append(
            FirmwareTarget(kind, wanted.value, file_name, urls.firmware(wanted.value, file_name))
        )
    return targets


def maintenance_line(variables: Mapping[str, ResolvedVariable]) -> str | None:
    """``mod cmd UP1 times /allow <hours> /initial <minutes>`` from ``update-allow`` and
    ``update-initial``."""
    parts: list[str] = []
    allow = variables.get("update-allow")
    if allow is not None and allow.value:
        hours = allow.value.replace(" ", "")
        if not _HOURS.fullmatch(hours) or any(int(h) > 23 for h in hours.split(",")):
            raise PolicyError(f"update-allow = {allow.value!r}: hours 0..23, comma-separated")
        parts.append(f"/allow {hours}")
    initial = variables.get("update-initial")
    if initial is not None and initial.value:
        if not initial.value.isdigit():
            raise PolicyError(f"update-initial = {initial.value!r}: minutes, a whole number")
        parts.append(f"/initial {initial.value}")
    return "mod cmd UP1 times " + " ".join(parts) if parts else None


def template_context(
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    phase: str,
    urls: Urls,
    poll_minutes: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Jinja context, #(name) variables). Secrets are wrapped so they reach only callers that
    may see them. Nothing from the poll's own arguments goes in: a script depends only on the
    inventory, the identity's proof and the URLs, which is what lets :class:`BodyCache` work."""
    customer = snapshot.customers[device.customer]
    frontend = snapshot.frontends[customer.frontend]
    secrets_allowed = identity.proven or customer.allow_claimed_secrets
    variables: dict[str, Any] = {
        name: Secret(name, item.value, secrets_allowed) if item.secret else item.value
        for name, item in snapshot.resolve(device).items()
    }
    customer_view = dataclasses.asdict(customer)
    for secret in ("registration_password", "login_password"):
        value = customer_view[secret]
        customer_view[secret] = (
            Secret(f"customer.{secret}", value, secrets_allowed) if value else None
        )
    context = {
        "device": {
            "mac": device.mac,
            "hardware_id": device.hardware_id,
            "type": device.device_type,
            "class": device.device_class,
            "customer": device.customer,
            "cpe_id": device.cpe_id,
            "name": device.name,
        },
        "customer": customer_view,
        "frontend": dataclasses.asdict(frontend),
        "vars": variables,
        "proven": identity.proven,
        "secrets_allowed": secrets_allowed,
        "phase": phase,
        "poll_minutes": poll_minutes,
        "urls": urls,
    }
    return context, variables


def decide_and_render(
    store: ScriptStore,
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    arguments: PollArguments,
    phase: str,
    urls: Urls,
    *,
    poll_minutes: int,
    restage: bool,
    firmware_available: Callable[[str, str], bool],
    bodies: BodyCache | None = None,
    extra_preamble: Sequence[str] = (),
) -> Reply:
    """The whole reply for one poll. Raises ScriptError, SecretRequired or PolicyError; never
    returns half a script. ``extra_preamble`` (the certificate roll-out's step) goes out with
    the backup line, outside the run-once hash."""
    header = [
        comment(
            f"pbxfront {phase}.txt for {device.hardware_id} ({device.mac}), "
            f"customer {device.customer}, identity {identity.proof.value}"
        )
    ]
    if phase == UPDATE and restage:
        lines = [
            *header,
            comment("restaging requested by an operator: back to staging.txt"),
            f"config add UP1 /url {rawurlencode(urls.staging)}",
            "config add UP1 /no-dhcp",
            f"config add UP1 /poll {STAGING_POLL_MINUTES}",
            "config write",
            "config activate",
            "iresetn",
        ]
        return Reply(200, to_crlf(lines))

    variables = snapshot.resolve(device)
    times = maintenance_line(variables)
    preamble: list[str] = []
    backup = variables.get("backup")
    if phase == UPDATE and (backup is None or backup.value != "off"):
        # PHPUS order (protocol.md §5): the backup line goes out on every poll, outside the
        # run-once hash and before the maintenance window; the backup service keeps a version
        # only when the configuration changed. Update variable backup = "off" stops it.
        preamble += [comment("configuration backup"), f"mod cmd UP0 scfg {urls.backup}"]
    if times is not None:
        preamble += [comment("maintenance window"), times]
    if phase == UPDATE:
        preamble += extra_preamble

    firmware_lines: list[str] = []
    for target in firmware_targets(device, variables, urls):
        current = arguments.prot if target.kind == "prot" else arguments.boot
        if current == target.build:
            continue
        if not firmware_available(target.build, target.file_name):
            raise PolicyError(
                f"fw-{target.kind} wants firmware/firm/{target.build}/{target.file_name}, "
                "which is not in the firmware store"
            )
        firmware_lines += [
            comment(f"{target.kind} {current or 'unknown'} -> {target.build}"),
            f"mod cmd UP0 {target.kind} {target.url} ser {target.build}",
        ]
    if firmware_lines:
        # The script follows once the device runs the wanted firmware (next poll).
        lines = [
            *header,
            *preamble,
            *firmware_lines,
            comment("the script follows after the firmware update"),
            "iresetn",
        ]
        return Reply(200, to_crlf(lines))

    key = (
        snapshot.version,
        store.generation,
        device.mac,
        phase,
        identity.proven,
        urls.base,
        poll_minutes,
    )
    body_lines = bodies.get(key) if bodies is not None else None
    if body_lines is None:
        context, update_variables = template_context(
            snapshot, device, identity, phase, urls, poll_minutes
        )
        body_lines = script_lines(store.render(f"{phase}.txt", context, update_variables))
        if bodies is not None:
            bodies.put(key, body_lines)

    if phase == STAGING:
        lines = [
            *header,
            *preamble,
            *body_lines,
            comment("staging done: continue with update.txt"),
            f"config add UP1 /poll {STAGING_POLL_MINUTES}",
            f"config add UP1 /url {rawurlencode(urls.update)}",
            "config add UP1 /no-dhcp",
            "config write",
            "config activate",
            "iresetn",
        ]
        return Reply(200, to_crlf(lines))

    digest = script_hash("\n".join(body_lines))
    if arguments.check is not None and arguments.check.lower() == digest:
        lines = [*header, *preamble, comment(f"nothing to do: CHECK {digest} is current")]
        return Reply(200, to_crlf(lines), hash_sent=digest, in_sync=True)
    lines = [
        *header,
        *preamble,
        *body_lines,
        comment("end of script"),
        "config write",
        "config activate",
        f"mod cmd UP1 check ser {digest}",
        "iresetn",
    ]
    return Reply(200, to_crlf(lines), hash_sent=digest, in_sync=False)


def check_scripts(
    store: ScriptStore,
    snapshot: Snapshot,
    urls: Urls,
    *,
    poll_minutes: int,
    firmware_available: Callable[[str, str], bool],
    extra_commands: Sequence[str] = (),
) -> list[str]:
    """Render every script for every inventory device as a proven device; return problems as
    ``file:line: message`` lines (empty: all good). Used by ``pbxfront scripts check``."""
    problems = [
        f"{store.root / name}: {problem}" for name, problem in sorted(store.problems.items())
    ]
    for phase in (STAGING, UPDATE):
        if not store.has(f"{phase}.txt"):
            problems.append(f"{store.root / (phase + '.txt')}: missing")
    if problems:
        return problems
    from services.core.identity import Proof
    from services.update.scripts import ScriptError, unknown_commands

    seen: set[str] = set()

    def report(line: str) -> None:
        if line not in seen:
            seen.add(line)
            problems.append(line)

    for device in snapshot.inventory.devices:
        identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
        variables = snapshot.resolve(device)
        try:
            for target in firmware_targets(device, variables, urls):
                if not firmware_available(target.build, target.file_name):
                    report(
                        f"{store.root.parent / 'firmware'}/firm/{target.build}/"
                        f"{target.file_name}: missing (fw-{target.kind} for "
                        f"{device.hardware_id})"
                    )
            maintenance_line(variables)
        except PolicyError as error:
            report(f"variables of {device.hardware_id}: {error}")
        for phase in (STAGING, UPDATE):
            context, update_variables = template_context(
                snapshot, device, identity, phase, urls, poll_minutes
            )
            try:
                body = store.render(f"{phase}.txt", context, update_variables)
            except ScriptError as error:
                report(
                    f"{error.location or phase + '.txt'}: {error.message} "
                    f"(rendering {phase}.txt for {device.hardware_id})"
                )
                continue
            for number, line in unknown_commands(body, extra_commands):
                report(
                    f"{phase}.txt for {device.hardware_id} (rendered line {number}): "
                    f"unknown command: {printable(line, 80)}"
                )
    return problems
