"""The pure step: what this device needs now (firmware, maintenance window, leaving fast
polling, backup), from its context alone; :class:`PolicyError` for unusable variables."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.core.inventory import (
    Device,
    ResolvedVariable,
)
from services.update.firmware import device_model, firmware_file_name
from services.update.provisioning.context import (
    BUILD_PATTERN,
    HOURS_PATTERN,
    STAGING,
    UPDATE,
    FirmwareTarget,
    Lifecycle,
    PolicyError,
    PollContext,
    Urls,
)


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
        if not BUILD_PATTERN.fullmatch(wanted.value):
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
        if not HOURS_PATTERN.fullmatch(hours) or any(int(h) > 23 for h in hours.split(",")):
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
