"""Provisioning as a pipeline: identify -> look up -> decide -> render -> record.

Plain functions over plain values; the handlers feed them from the request and the database:
:func:`look_up` gathers everything a reply depends on into a :class:`PollContext` (variables
resolved once), :func:`decide` says what the device needs (pure), :func:`render` writes the
reply, and the handler records the status. What a device gets (protocol.md §2 and §10, in
PHPUS's order):

    # comments (who, what, why)
    mod cmd UP0 scfg <backup url>                   update: every poll (outside the hash)
    mod cmd UP1 times /allow … /initial …           normal update polls, when a window is set;
                                                    staging and the first update: /initial only
    <certificate roll-out step>                     update, when the roll-out is on
    mod cmd UP0 prot|boot <url> ser <build>, iresetn  while PROT/BOOT differ from the target
    <rendered script body>                          update: only if CHECK != hash(body)
    mod cmd UP1 provision 0, config rem UP1 /provision, config add UP1 /poll <interval>,
    config add UP1 /url <update.txt>, /no-dhcp      the first update after staging (or a poll
                                                    carrying PHPUS's polling=/phase= leftovers)
    config write / config activate
    mod cmd UP1 check ser <hash>                    update.txt (the run-once guard)
    iresetn

staging.txt is sent on every staging poll (no guard), turns fast polling on
(``mod cmd UP1 provision <n>``, ``config add UP1 /poll 1``) and moves the device to update.txt
with ``polling=<n>`` in the URL; the first update.txt reply sees it and turns fast polling off.
Fast polling is the server's, whatever the templates contain.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from services.core.config import UpdateSettings
from services.core.identity import DeviceIdentity, Proof, printable
from services.core.inventory import (
    Customer,
    Device,
    Frontend,
    Inventory,
    ResolvedVariable,
)
from services.core.inventory.variables import LayeredVariables
from services.core.scriptlines import comment, to_crlf
from services.update.firmware import device_model, firmware_file_name, model_names
from services.update.problems import Problems
from services.update.scripts import (
    LONE_CR,
    ScriptError,
    ScriptStore,
    Secret,
    rawurlencode,
    script_hash,
    script_lines,
    unknown_commands,
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
# The URL argument that tells the first update.txt poll that staging left fast polling on
# (PHPUS's own name, so a device moved from PHPUS is recognised the same way).
POLLING_ARGUMENT = "polling"
# Set by pbxfront's own staging only: the first update runs its script whatever CHECK says.
STAGED_ARGUMENT = "staged"
_FAST_POLL = re.compile(r"^config (add|change) UP1\b.*/poll 1\b", re.MULTILINE)


@dataclass(frozen=True)
class PollArguments:
    """The device-appended arguments, sanitised (control characters escaped, length capped).

    ``polling`` and ``phase`` are PHPUS's state arguments (protocol.md §10): a staged device
    carries ``polling=<n>`` until its first update reply; ``polling_invalid`` keeps a value that
    was not a number of minutes, so the reply can say so."""

    version: str | None = None
    prot: str | None = None
    boot: str | None = None
    check: str | None = None
    cfg: str | None = None
    polling: int | None = None
    polling_invalid: str | None = None
    phpus_phase: str | None = None
    staged: bool = False

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> PollArguments:
        def value(name: str) -> str | None:
            raw = query.get(name)
            if raw is None or raw.strip() == "":
                return None
            return printable(raw.strip(), _ARGUMENT_LIMIT)

        polling_text = value(POLLING_ARGUMENT)
        polling: int | None = None
        invalid: str | None = None
        if polling_text is not None:
            if polling_text.isdigit() and len(polling_text) <= 4 and int(polling_text) <= 1440:
                polling = int(polling_text)
            else:
                invalid = polling_text[:32]
        return cls(
            version=value("ver"),
            prot=value("PROT"),
            boot=value("BOOT"),
            check=value("CHECK"),
            cfg=value("CFG"),
            polling=polling,
            polling_invalid=invalid,
            phpus_phase=value("phase"),
            staged=query.get(STAGED_ARGUMENT) == "1",
        )

    @property
    def fast_polling_left_on(self) -> bool:
        """Staging (ours or PHPUS's) left this device in fast polling, or its URL carries state
        arguments that must go: the next update reply brings it back to normal, once."""
        return (
            bool(self.polling)
            or self.polling_invalid is not None
            or bool(self.phpus_phase)
            or self.staged
        )


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle settings the server owns (update.* in the config)."""

    poll_minutes: int = 15
    provision_minutes: int = 5
    firmware_attempts: int = 3
    firmware_none: frozenset[str] = frozenset()
    boot_none: frozenset[str] = frozenset()
    firmware_names: Mapping[str, str] = field(default_factory=dict)
    boot_names: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, update: UpdateSettings) -> Lifecycle:
        return cls(
            poll_minutes=update.poll_interval,
            provision_minutes=update.provision_minutes,
            firmware_attempts=update.firmware_attempts,
            firmware_none=frozenset(m.lower() for m in update.firmware_none),
            boot_none=frozenset(m.lower() for m in update.boot_none),
            firmware_names=model_names(update.firmware_names),
            boot_names=model_names(update.boot_names),
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
    variables: LayeredVariables

    @classmethod
    def build(cls, version: int, inventory: Inventory) -> Snapshot:
        return cls(
            version,
            inventory,
            {d.mac: d for d in inventory.devices},
            {d.hardware_id.lower(): d for d in inventory.devices},
            {c.id: c for c in inventory.customers},
            {f.id: f for f in inventory.frontends},
            LayeredVariables(inventory.variables),
        )

    def find(self, identity: DeviceIdentity) -> Device | None:
        if identity.mac is not None:
            return self.by_mac.get(identity.mac)
        if identity.hardware_id is not None:
            return self.by_hardware_id.get(identity.hardware_id.lower())
        return None

    def resolve(self, device: Device) -> dict[str, ResolvedVariable]:
        """The device's variables (core.inventory.variables: later layers win)."""
        return self.variables.for_device(device, self.customers[device.customer])


@dataclass(frozen=True)
class Urls:
    """URLs written into scripts; ``#m``/``#h``/``#t``/``#i`` are expanded by the device."""

    base: str

    def script(self, name: str) -> str:
        return f"{self.base}/DRIVE/CF0/update/{name}?sn=#m&hwid=#h&type=#t&ip=#i"

    @property
    def update(self) -> str:
        return self.script("update.txt")

    def update_after_staging(self, provision_minutes: int) -> str:
        """update.txt with ``polling=<n>&staged=1``: its first poll turns fast polling off again
        and runs the script even if the device's CHECK is current (staging may have changed
        what the script sets, e.g. after a restage)."""
        return f"{self.update}&{POLLING_ARGUMENT}={provision_minutes}&{STAGED_ARGUMENT}=1"

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
    # A build the device's `ver` already names although PROT/BOOT does not: firmware lines
    # for it were sent (attempt counted) or, past update.firmware_attempts, withheld (stuck).
    firmware_suspect: str | None = None
    firmware_stuck: str | None = None
    # The device's script could not be rendered: the reply is comments (and normal polling).
    unrendered: bool = False


class PolicyError(Exception):
    """A firmware or maintenance variable has an unusable value; the message names it."""


def firmware_targets(
    device: Device,
    variables: Mapping[str, ResolvedVariable],
    urls: Urls,
    lifecycle: Lifecycle | None = None,
) -> list[FirmwareTarget]:
    """The wanted builds from the ``fw-prot``/``fw-boot`` variables (set per device type,
    overridable per customer and device like any variable). Models on the no-firmware /
    no-boot-code lists get none (protocol.md §10); file names follow PHPUS's rule, the
    per-model overrides, then ``fw-prot-file``/``fw-boot-file``."""
    lifecycle = lifecycle or Lifecycle()
    model = device_model(device.device_type)
    targets: list[FirmwareTarget] = []
    for kind in ("prot", "boot"):
        wanted = variables.get(f"fw-{kind}")
        if wanted is None or not wanted.value:
            continue
        if model in (lifecycle.firmware_none if kind == "prot" else lifecycle.boot_none):
            continue
        if not _BUILD.fullmatch(wanted.value):
            raise PolicyError(f"fw-{kind} = {wanted.value!r} ({wanted.layer} layer): not a build")
        file_variable = variables.get(f"fw-{kind}-file")
        overrides = lifecycle.firmware_names if kind == "prot" else lifecycle.boot_names
        file_name = (
            file_variable.value
            if file_variable is not None and file_variable.value
            else firmware_file_name(kind, device.device_type, overrides)
        )
        targets.append(
            FirmwareTarget(kind, wanted.value, file_name, urls.firmware(wanted.value, file_name))
        )
    return targets


def maintenance_line(
    variables: Mapping[str, ResolvedVariable], *, initial_only: bool = False
) -> str | None:
    """``mod cmd UP1 times /allow <hours> /initial <n>`` from ``update-allow`` and
    ``update-initial``. ``initial_only`` (staging and the first update, PHPUS's forcestaging,
    protocol.md §10): the hours do not apply yet, so a window never blocks staging; the line
    is still sent, without /allow, so a device restaged from inside a window is freed of it."""
    parts: list[str] = []
    allow = variables.get("update-allow")
    if allow is not None and allow.value:
        hours = allow.value.replace(" ", "")
        if not _HOURS.fullmatch(hours) or any(int(h) > 23 for h in hours.split(",")):
            raise PolicyError(f"update-allow = {allow.value!r}: hours 0..23, comma-separated")
        parts.append(f"/allow {hours}")
    initial = variables.get("update-initial")
    if initial is not None and initial.value:
        if not initial.value.isdigit() or len(initial.value) > 4:
            raise PolicyError(f"update-initial = {initial.value!r}: a whole number")
        parts.append(f"/initial {initial.value}")
    if not parts:
        return None
    if initial_only:
        parts = [part for part in parts if part.startswith("/initial")]
    return " ".join(["mod cmd UP1 times", *parts])


def poll_interval(variables: Mapping[str, ResolvedVariable], default: int) -> int:
    """The device's normal poll interval: the update variable ``h-poll``, else the setting."""
    item = variables.get("h-poll")
    if item is None or not item.value:
        return default
    if not item.value.isdigit() or not 1 <= int(item.value) <= 1440:
        raise PolicyError(f"h-poll = {item.value!r} ({item.layer} layer): minutes, 1..1440")
    return int(item.value)


def _interval_or(variables: Mapping[str, ResolvedVariable], default: int) -> int:
    """``poll_minutes`` for the templates: the device's interval; an unusable ``h-poll`` is
    the poll's PolicyError (decide), so a preview shows the setting instead."""
    try:
        return poll_interval(variables, default)
    except PolicyError:
        return default


# More template data a composition supplies (serve.py: the Frontend plan's ``nat``,
# ``config_template``, ``ldap_default``, ``frontend_plan``): (snapshot, device, secret wrapper)
# -> keys. A pure function of the inventory, so rendered bodies stay cacheable.
ContextAdditions = Callable[["Snapshot", Device, Callable[[str, str], object]], Mapping[str, Any]]
# update.auto_adopt (composed in services/serve.py): (pool, mac, device type, address) -> adopted?
Adopter = Callable[[asyncpg.Pool, str, str, str], Awaitable[bool]]


def template_context(
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    phase: str,
    urls: Urls,
    poll_minutes: int,
    variables: Mapping[str, ResolvedVariable] | None = None,
    additions: ContextAdditions | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Jinja context, #(name) variables). Secrets are wrapped so they reach only callers that
    may see them. Nothing from the poll's own arguments goes in: a script depends only on the
    inventory, the identity's proof and the URLs, which is what lets :class:`BodyCache` work."""
    customer = snapshot.customers[device.customer]
    frontend = snapshot.frontends[customer.frontend]
    secrets_allowed = identity.proven or customer.allow_claimed_secrets
    resolved = variables if variables is not None else snapshot.resolve(device)
    update_variables: dict[str, Any] = {
        name: Secret(name, item.value, secrets_allowed) if item.secret else item.value
        for name, item in resolved.items()
    }
    # Flat dataclasses of plain values: a shallow copy is what asdict() gives, without its
    # deep copies (which cost more than the rendering over a whole fleet).
    customer_view = dict(vars(customer))
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
        "frontend": dict(vars(frontend)),
        "vars": update_variables,
        "proven": identity.proven,
        "secrets_allowed": secrets_allowed,
        "phase": phase,
        "poll_minutes": _interval_or(resolved, poll_minutes),
        "urls": urls,
    }
    if additions is not None:

        def wrap(name: str, secret_value: str) -> object:
            return Secret(name, secret_value, secrets_allowed)

        for key, extra in additions(snapshot, device, wrap).items():
            context.setdefault(key, extra)
    return context, update_variables


# --- the pipeline --------------------------------------------------------------------------


@dataclass(frozen=True)
class PollContext:
    """Everything one poll's reply depends on, gathered once by :func:`look_up`."""

    snapshot: Snapshot
    device: Device
    identity: DeviceIdentity
    arguments: PollArguments
    phase: str
    urls: Urls
    lifecycle: Lifecycle
    variables: Mapping[str, ResolvedVariable]
    # An operator asked for staging again (update polls only).
    restage: bool = False
    # Firmware replies already sent for a build the device's `ver` names (see Reply).
    firmware_attempts: int = 0
    # The certificate roll-out's step for this poll (protocol.md §9), outside the hash.
    rollout: Sequence[str] = ()
    additions: ContextAdditions | None = None


def look_up(
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    arguments: PollArguments,
    phase: str,
    urls: Urls,
    lifecycle: Lifecycle,
    *,
    restage: bool = False,
    firmware_attempts: int = 0,
    rollout: Sequence[str] = (),
    additions: ContextAdditions | None = None,
) -> PollContext:
    return PollContext(
        snapshot,
        device,
        identity,
        arguments,
        phase,
        urls,
        lifecycle,
        snapshot.resolve(device),
        restage=restage and phase == UPDATE,
        firmware_attempts=firmware_attempts,
        rollout=rollout if phase == UPDATE else (),
        additions=additions,
    )


@dataclass(frozen=True)
class Decision:
    """What the device needs from this reply (no text yet)."""

    restage: bool
    backup: bool
    times: str | None
    firmware: tuple[tuple[FirmwareTarget, str | None], ...]
    # Leave fast polling: provision off, the device's interval, the clean update URL.
    leave_fast_polling: bool
    interval: int
    notes: tuple[str, ...] = ()
    firmware_suspect: str | None = None
    firmware_stuck: str | None = None
    # Recorded as the device's last error (e.g. a firmware file missing from the store).
    problem: str | None = None


def names_build(version: str | None, build: str) -> bool:
    """protocol.md §1: ``ver`` is human-readable; a build it names stands alone as a token."""
    if not version:
        return False
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(build)}(?![A-Za-z0-9])", version) is not None


def decide(context: PollContext, firmware_available: Callable[[str, str], bool]) -> Decision:
    """Pure: the reply's parts for this poll. Raises PolicyError for unusable variables."""
    variables = context.variables
    arguments = context.arguments
    interval = poll_interval(variables, context.lifecycle.poll_minutes)
    if context.restage:
        return Decision(True, False, None, (), False, interval)
    # Staging and the first update after it (protocol.md §10, PHPUS forcestaging): the window's
    # hours do not apply yet, so a maintenance window never blocks staging.
    leaving = context.phase == UPDATE and arguments.fast_polling_left_on
    times = maintenance_line(variables, initial_only=context.phase == STAGING or leaving)
    backup_variable = variables.get("backup")
    backup = context.phase == UPDATE and (backup_variable is None or backup_variable.value != "off")
    notes: list[str] = []
    if arguments.polling_invalid is not None:
        notes.append(f"ignored polling={arguments.polling_invalid!r}: not a number of minutes")
    firmware: list[tuple[FirmwareTarget, str | None]] = []
    problem: str | None = None
    suspect: str | None = None
    stuck: str | None = None
    for target in firmware_targets(context.device, variables, context.urls, context.lifecycle):
        current = arguments.prot if target.kind == "prot" else arguments.boot
        if current == target.build:
            continue
        if not firmware_available(target.build, target.file_name):
            # A missing file must not block the device's script (issue #14): say so, go on.
            missing = (
                f"fw-{target.kind} wants firmware/firm/{target.build}/{target.file_name}, "
                "which is not in the firmware store"
            )
            notes.append(f"{missing}; the script goes on without it")
            problem = missing
            continue
        if names_build(arguments.version, target.build):
            # The device says it runs the build but reports another PROT/BOOT: flashing again
            # cannot help for ever (protocol.md §10, field reports of empty PROT).
            suspect = target.build
            if context.firmware_attempts >= context.lifecycle.firmware_attempts:
                stuck = target.build
                notes.append(
                    f"{target.kind} {current or 'empty'}: ver names {target.build}; "
                    f"firmware withheld after {context.firmware_attempts} attempts"
                )
                continue
        firmware.append((target, current))
    return Decision(
        False,
        backup,
        times,
        tuple(firmware),
        leaving,
        interval,
        tuple(notes),
        firmware_suspect=suspect,
        firmware_stuck=stuck,
        problem=problem,
    )


def _fast_polling_on(lifecycle: Lifecycle, next_url: str) -> list[str]:
    return [
        f"mod cmd UP1 provision {lifecycle.provision_minutes}",
        f"config add UP1 /poll {STAGING_POLL_MINUTES}",
        f"config add UP1 /url {rawurlencode(next_url)}",
        "config add UP1 /no-dhcp",
    ]


def _fast_polling_off(interval: int, urls: Urls) -> list[str]:
    return [
        comment(f"fast polling off: poll every {interval} min"),
        "mod cmd UP1 provision 0",
        "config rem UP1 /provision",
        f"config add UP1 /poll {interval}",
        f"config add UP1 /url {rawurlencode(urls.update)}",
        "config add UP1 /no-dhcp",
    ]


def body_lines(
    store: ScriptStore, context: PollContext, bodies: BodyCache | None = None
) -> list[str]:
    """The rendered script body (cached by everything it depends on). Raises ScriptError or
    SecretRequired; never returns part of a script."""
    key = (
        context.snapshot.version,
        store.version,
        store.generation,
        context.device.mac,
        context.phase,
        context.identity.proven,
        context.urls.base,
        context.lifecycle.poll_minutes,
    )
    lines = bodies.get(key) if bodies is not None else None
    if lines is None:
        jinja_context, update_variables = template_context(
            context.snapshot,
            context.device,
            context.identity,
            context.phase,
            context.urls,
            context.lifecycle.poll_minutes,
            context.variables,
            context.additions,
        )
        lines = script_lines(store.render(f"{context.phase}.txt", jinja_context, update_variables))
        if bodies is not None:
            bodies.put(key, lines)
    return lines


def render(
    store: ScriptStore,
    context: PollContext,
    decision: Decision,
    bodies: BodyCache | None = None,
) -> Reply:
    """The reply text for a decision. Raises ScriptError or SecretRequired; never half."""
    device, urls, lifecycle = context.device, context.urls, context.lifecycle
    who = f"customer {device.customer}, " if context.identity.proven else ""
    lines = [
        comment(
            f"pbxfront {context.phase}.txt for {device.hardware_id} ({device.mac}), "
            f"{who}identity {context.identity.proof.value}"
        )
    ]
    lines += [comment(note) for note in decision.notes]
    pending = sorted(store.pending.items())[:5]
    lines += [comment(f"script change not served yet: {name}: {why}") for name, why in pending]
    if decision.restage:
        lines += [
            comment("restaging requested by an operator: back to staging.txt"),
            *_fast_polling_on(lifecycle, urls.staging),
            "config write",
            "config activate",
            "iresetn",
        ]
        return Reply(200, to_crlf(lines))
    if decision.backup:
        # PHPUS order (protocol.md §5): the backup line goes out on every poll, outside the
        # run-once hash and before the maintenance window; the backup service keeps a version
        # only when the configuration changed. Update variable backup = "off" stops it.
        lines += [comment("configuration backup"), f"mod cmd UP0 scfg {urls.backup}"]
    if decision.times is not None:
        lines += [comment("maintenance window"), decision.times]
    lines += context.rollout
    if decision.firmware:
        # protocol.md §10: firmware and script in one reply; the reset makes the script below
        # run with the new firmware if the device loads it now.
        for target, current in decision.firmware:
            lines += [
                comment(f"{target.kind} {current or 'unknown'} -> {target.build}"),
                f"mod cmd UP0 {target.kind} {target.url} ser {target.build}",
            ]
        lines.append("iresetn")
    body = body_lines(store, context, bodies)

    def reply(text_lines: list[str], **fields: Any) -> Reply:
        return Reply(
            200,
            to_crlf(text_lines),
            firmware_suspect=decision.firmware_suspect,
            firmware_stuck=decision.firmware_stuck,
            error=decision.problem,
            **fields,
        )

    if context.phase == STAGING:
        lines += [
            *body,
            comment("staging done: continue with update.txt, polling fast until then"),
            *_fast_polling_on(lifecycle, urls.update_after_staging(lifecycle.provision_minutes)),
            "config write",
            "config activate",
            "iresetn",
        ]
        return reply(lines)
    digest = script_hash("\n".join(body))
    leave = _fast_polling_off(decision.interval, urls) if decision.leave_fast_polling else []
    check_current = (
        context.arguments.check is not None and context.arguments.check.lower() == digest
    )
    if check_current and not context.arguments.staged:
        lines.append(comment(f"nothing to do: CHECK {digest} is current"))
        if leave:
            lines += [*leave, "config write", "config activate"]
        return reply(lines, hash_sent=digest, in_sync=True)
    # A device skips what follows a check line naming its current serial (protocol.md §2), so
    # the run after staging of a current script goes without it, or its reset would be lost.
    check = [] if check_current else [f"mod cmd UP1 check ser {digest}"]
    lines += [
        *body,
        comment("end of script"),
        *leave,
        "config write",
        "config activate",
        *check,
        "iresetn",
    ]
    return reply(lines, hash_sent=digest, in_sync=False)


def reply_for(
    store: ScriptStore,
    context: PollContext,
    firmware_available: Callable[[str, str], bool],
    bodies: BodyCache | None = None,
) -> Reply:
    """decide, then render: the whole reply for one poll (raises like both)."""
    return render(store, context, decide(context, firmware_available), bodies)


def unrenderable(context: PollContext, error: str) -> Reply:
    """The reply when the device's script cannot be rendered (an operator's template or
    variable error): a 200 of comments, never a 5xx the device would retry into a loop and
    never part of a script. A device that staging left polling fast is still brought back to
    its normal interval, so it waits for the fix at the pace it should."""
    lines = [
        comment(
            f"pbxfront: {context.phase}.txt cannot be rendered for this device; "
            "the operator's log says why"
        )
    ]
    if context.phase == UPDATE and context.arguments.fast_polling_left_on:
        try:
            interval = poll_interval(context.variables, context.lifecycle.poll_minutes)
        except PolicyError:
            interval = context.lifecycle.poll_minutes
        lines += [*_fast_polling_off(interval, context.urls), "config write", "config activate"]
    return Reply(200, to_crlf(lines), error=error, unrendered=True)


def render_unknown(
    store: ScriptStore,
    snapshot: Snapshot,
    identity: DeviceIdentity,
    urls: Urls,
    check: str | None,
) -> Reply:
    """``unknown.txt`` for a device not in the inventory (update.unknown_devices = "script"):
    rendered with the global layer only and no customer, so it reveals nothing about any
    customer; no secret reaches it. Guarded by the run-once hash like update.txt."""
    update_variables: dict[str, Any] = {
        variable.name: Secret(variable.name, variable.value, False)
        if variable.secret
        else variable.value
        for variable in snapshot.variables.resolve({"global": ""}).values()
    }
    context = {
        "device": {
            "mac": identity.mac,
            "hardware_id": identity.hardware_id,
            "type": identity.device_type,
        },
        "vars": update_variables,
        "proven": identity.proven,
        "secrets_allowed": False,
        "phase": "unknown",
        "urls": urls,
    }
    body = script_lines(store.render("unknown.txt", context, update_variables))
    digest = script_hash("\n".join(body))
    lines = [comment("pbxfront unknown.txt: this device is not in the provider's inventory")]
    if check is not None and check.lower() == digest:
        lines.append(comment(f"nothing to do: CHECK {digest} is current"))
        return Reply(200, to_crlf(lines), hash_sent=digest, in_sync=True)
    lines += [
        *body,
        "config write",
        "config activate",
        f"mod cmd UP1 check ser {digest}",
        "iresetn",
    ]
    return Reply(200, to_crlf(lines), hash_sent=digest)


def check_scripts(
    store: ScriptStore,
    snapshot: Snapshot,
    urls: Urls,
    *,
    poll_minutes: int,
    firmware_available: Callable[[str, str], bool],
    extra_commands: Sequence[str] = (),
    lifecycle: Lifecycle | None = None,
    additions: ContextAdditions | None = None,
) -> list[str]:
    """:func:`check_tree` as lines, one per problem (empty: all good)."""
    return check_tree(
        store,
        snapshot,
        urls,
        poll_minutes=poll_minutes,
        firmware_available=firmware_available,
        extra_commands=extra_commands,
        lifecycle=lifecycle,
        additions=additions,
    ).lines()


def template_line(
    store: ScriptStore, names: Iterable[str], wanted: Callable[[str], bool]
) -> str | None:
    """``file:line`` of the first line of the templates ``names`` that ``wanted`` accepts (name
    order), if any."""
    for name in sorted(names):
        source = store.sources.get(name)
        if source is None:
            continue
        for number, line in enumerate(source.text.split("\n"), start=1):
            if wanted(line.strip()):
                return f"{store.root / name}:{number}"
    return None


def check_tree(
    store: ScriptStore,
    snapshot: Snapshot,
    urls: Urls,
    *,
    poll_minutes: int,
    firmware_available: Callable[[str, str], bool],
    extra_commands: Sequence[str] = (),
    lifecycle: Lifecycle | None = None,
    additions: ContextAdditions | None = None,
    firmware_dir: Path | None = None,
) -> Problems:
    """Render every script for every inventory device as a proven device; every problem once,
    with the devices it affects (services/update/problems.py). Used by ``pbxfront scripts
    check`` and ``scripts publish``. ``firmware_dir``: the store missing files are named in
    (default: ``firmware/`` next to the scripts folder)."""
    problems = Problems()
    for name, problem in sorted({**store.problems, **store.held_problems}.items()):
        problems.add(str(store.root / name), "file", problem)
    for name, why in sorted(store.pending.items()):
        if name not in store.held_problems:
            problems.add(str(store.root / name), "not-served", f"not served yet: {why}")
    for phase in (STAGING, UPDATE):
        if not store.has(f"{phase}.txt"):
            problems.add(str(store.root / (phase + ".txt")), "file", "missing")
    if problems:
        return problems
    for name, source in sorted(store.sources.items()):
        if LONE_CR in source.text:
            problems.add(
                str(store.root / name),
                "line-ends",
                "lone CR line ends: each CR-separated run is one line (as PHPUS reads it); "
                "convert the file to LF or CRLF line ends",
            )
    # Rendered lines map back to a line of the templates that rendering used where one holds
    # them literally; looked up once per set of templates.
    locations: dict[tuple[str, str, frozenset[str]], str] = {}

    def located(phase: str, key: str, used: set[str], wanted: Callable[[str], bool]) -> str:
        cache_key = (phase, key, frozenset(used))
        if cache_key not in locations:
            found = template_line(store, used, wanted)
            locations[cache_key] = found or f"{store.root / phase}.txt (rendered)"
        return locations[cache_key]

    firmware_root = firmware_dir if firmware_dir is not None else store.root.parent / "firmware"
    for device in snapshot.inventory.devices:
        identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
        variables = snapshot.resolve(device)
        try:
            for target in firmware_targets(device, variables, urls, lifecycle):
                if not firmware_available(target.build, target.file_name):
                    problems.add(
                        f"{firmware_root}/firm/{target.build}/{target.file_name}",
                        "firmware",
                        f"missing (fw-{target.kind})",
                        device,
                    )
            maintenance_line(variables)
            poll_interval(variables, poll_minutes)
        except PolicyError as error:
            problems.add("variables", "variables", str(error), device)
        for phase in (STAGING, UPDATE):
            context, update_variables = template_context(
                snapshot, device, identity, phase, urls, poll_minutes, variables, additions
            )
            used: set[str] = set()
            try:
                body = store.render(f"{phase}.txt", context, update_variables, used)
            except ScriptError as error:
                location = error.location or f"{store.root / phase}.txt"
                if error.variable is not None:
                    # The rendered line differs from device to device; the template line that
                    # names the variable does not.
                    wanted = f"#({error.variable})"

                    def names_it(line: str, wanted: str = wanted) -> bool:
                        return wanted in line

                    location = located(phase, wanted, used, names_it)
                problems.add(
                    location,
                    "render",
                    f"{error.message} (rendering {phase}.txt)",
                    device,
                )
                continue
            if phase == UPDATE and _FAST_POLL.search(body):
                location = located(
                    phase, "fast-poll", used, lambda line: bool(_FAST_POLL.match(line))
                )
                problems.add(
                    location,
                    "fast-poll",
                    "update.txt sets /poll 1 (fast polling); pbxfront turns fast polling on "
                    "and off itself, drop the line",
                    device,
                )
            for _number, line in unknown_commands(body, extra_commands):
                text = line.strip()
                location = located(phase, text, used, text.__eq__)
                problems.add(
                    location,
                    "unknown-command",
                    f"unknown command in {phase}.txt: {printable(line, 80)}",
                    device,
                )
    return problems
    seen: set[str] = set()
    for name, source in sorted(store.sources.items()):
        if LONE_CR in source.text:
            problems.append(
                f"{store.root / name}: lone CR line ends: each CR-separated run is one line "
                "(as PHPUS reads it); convert the file to LF or CRLF line ends"
            )

    def report(line: str) -> None:
        if line not in seen:
            seen.add(line)
            problems.append(line)

    for device in snapshot.inventory.devices:
        identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
        variables = snapshot.resolve(device)
        try:
            for target in firmware_targets(device, variables, urls, lifecycle):
                if not firmware_available(target.build, target.file_name):
                    report(
                        f"{store.root.parent / 'firmware'}/firm/{target.build}/"
                        f"{target.file_name}: missing (fw-{target.kind} for "
                        f"{device.hardware_id})"
                    )
            maintenance_line(variables)
            poll_interval(variables, poll_minutes)
        except PolicyError as error:
            report(f"variables of {device.hardware_id}: {error}")
        for phase in (STAGING, UPDATE):
            context, update_variables = template_context(
                snapshot, device, identity, phase, urls, poll_minutes, variables, additions
            )
            try:
                body = store.render(f"{phase}.txt", context, update_variables)
            except ScriptError as error:
                report(
                    f"{error.location or phase + '.txt'}: {error.message} "
                    f"(rendering {phase}.txt for {device.hardware_id})"
                )
                continue
            if phase == UPDATE and _FAST_POLL.search(body):
                report(
                    f"update.txt for {device.hardware_id}: sets /poll 1 (fast polling); "
                    "pbxfront turns fast polling on and off itself, drop the line"
                )
            for number, line in unknown_commands(body, extra_commands):
                report(
                    f"{phase}.txt for {device.hardware_id} (rendered line {number}): "
                    f"unknown command: {printable(line, 80)}"
                )
    return problems
