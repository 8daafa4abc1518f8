"""``pbxfront scripts plan``: what a script tree would change, device by device, before it goes
live (issue 15, item 3).

For every inventory device the update script is rendered as the device would get it (proven
identity, update phase) from the *pending* tree and compared with the *live* tree (the one
``update.scripts_dir`` serves) by the run-once hash (protocol.md §2): a device whose hash differs
runs the script again at its next poll. The plan lists those devices with a unified diff of the
script lines, the firmware targets whose build differs from what the device last reported, and
every rendering problem once with the devices it affects. Without a pending tree the live tree is
compared with the hash each device was last sent (``device_status.hash_sent``).

Secrets never appear in a diff: every secret value the device's rendering could contain (secret
variables, customer passwords) is replaced by ``***`` in the shown lines; the hashes are computed
from the real text, as the devices compute theirs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.identity import DeviceIdentity, Proof
from services.core.inventory import Device, ResolvedVariable
from services.update.problems import Problems
from services.update.provisioning import (
    UPDATE,
    PolicyError,
    Snapshot,
    Urls,
    firmware_targets,
    template_context,
    template_line,
)
from services.update.scripts import (
    ScriptError,
    ScriptStore,
    SecretRequired,
    script_hash,
    script_lines,
)

REDACTED = "***"


@dataclass(frozen=True)
class Rendered:
    lines: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class DevicePlan:
    """One device whose reply changes."""

    device: Device
    before: str | None  # hash: live tree, or the one last sent; None = unknown / never sent
    after: str
    diff: tuple[str, ...]  # unified diff lines, secrets redacted; empty without a base body
    firmware: tuple[str, ...] = ()  # "prot 131400 -> 131500"

    def headline(self) -> str:
        before = self.before[:8] if self.before else "never sent"
        text = (
            f"~ {self.device.hardware_id} ({self.device.mac}) customer {self.device.customer}: "
            f"{before} -> {self.after[:8]}"
        )
        if self.firmware:
            text += " [firmware " + ", ".join(self.firmware) + "]"
        return text


@dataclass
class ScriptPlan:
    devices: int = 0
    changes: list[DevicePlan] = field(default_factory=list)
    # Each problem once, with the devices it affects in inventory order.
    problems: Problems = field(default_factory=Problems)
    firmware_only: list[DevicePlan] = field(default_factory=list)

    def problem_lines(self) -> list[str]:
        return self.problems.lines(shown=5)

    def summary(self) -> str:
        text = f"{len(self.changes)} of {self.devices} device(s) get a changed script"
        if self.firmware_only:
            text += f", {len(self.firmware_only)} only a firmware change"
        if self.problems:
            text += f"; {len(self.problems)} problem(s)"
        return text


def _secrets(
    snapshot: Snapshot, device: Device, variables: Mapping[str, ResolvedVariable]
) -> list[str]:
    customer = snapshot.customers[device.customer]
    values = [item.value for item in variables.values() if item.secret]
    values += [v for v in (customer.registration_password, customer.login_password) if v]
    # Longest first, so a secret containing another is replaced whole.
    return sorted({v for v in values if v}, key=len, reverse=True)


def redact_lines(lines: Iterable[str], secrets: Sequence[str]) -> list[str]:
    out = []
    for line in lines:
        for secret in secrets:
            line = line.replace(secret, REDACTED)
        out.append(line)
    return out


def render_update(
    store: ScriptStore,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    loaded: set[str] | None = None,
) -> Rendered:
    """The update script body for a :func:`device_context`; ScriptError, SecretRequired as
    rendering raises them. ``loaded`` collects the template names the rendering asked for."""
    lines = script_lines(store.render(f"{UPDATE}.txt", context, variables, loaded))
    return Rendered(tuple(lines), script_hash("\n".join(lines)))


def device_context(
    snapshot: Snapshot,
    device: Device,
    urls: Urls,
    poll_minutes: int,
    variables: Mapping[str, ResolvedVariable] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the device's update poll renders with, as a proven device (one context serves both
    trees: it depends on the inventory only); ``variables``: the device's, resolved already."""
    identity = DeviceIdentity(Proof.PROVEN, device.mac, device.hardware_id, device.device_type)
    return template_context(snapshot, device, identity, UPDATE, urls, poll_minutes, variables)


def plan_scripts(
    pending: ScriptStore,
    live: ScriptStore | None,
    snapshot: Snapshot,
    urls: Urls,
    *,
    poll_minutes: int,
    hashes_sent: Mapping[str, str | None],
    reported_builds: Mapping[str, tuple[str | None, str | None]],
    firmware_available: Callable[[str, str], bool],
    devices: Iterable[Device] | None = None,
    reuse: bool = True,
) -> ScriptPlan:
    """The plan (see the module docstring); pure apart from rendering. ``reported_builds``:
    MAC -> (PROT, BOOT) the device last polled with.

    A device whose pending rendering asked only for files the live tree holds alike (or lacks
    alike) renders the same from the live tree: that second rendering is skipped (``reuse``;
    the result is the same either way, only faster)."""
    plan = ScriptPlan()
    same: dict[str, bool] = {}

    def unchanged(names: Iterable[str]) -> bool:
        assert live is not None
        for name in names:
            if name not in same:
                same[name] = pending.same_file(live, name)
            if not same[name]:
                return False
        return True

    for name, problem in sorted(pending.problems.items()):
        plan.problems.add(str(pending.root / name), "file", problem)
    for device in snapshot.inventory.devices if devices is None else devices:
        plan.devices += 1
        variables = snapshot.resolve(device)
        firmware: list[str] = []
        try:
            prot, boot = reported_builds.get(device.mac, (None, None))
            for target in firmware_targets(device, variables, urls):
                current = prot if target.kind == "prot" else boot
                if current == target.build:
                    continue
                if not firmware_available(target.build, target.file_name):
                    plan.problems.add(
                        f"firmware/firm/{target.build}/{target.file_name}",
                        "firmware",
                        f"missing (fw-{target.kind})",
                        device,
                    )
                firmware.append(f"{target.kind} {current or 'unknown'} -> {target.build}")
        except PolicyError as error:
            plan.problems.add("variables", "variables", str(error), device)
        context, update_variables = device_context(snapshot, device, urls, poll_minutes, variables)
        loaded: set[str] = set()
        try:
            after = render_update(pending, context, update_variables, loaded)
        except ScriptError as error:
            location = error.location or str(pending.root / "update.txt")
            if error.variable is not None:
                # As scripts check does: the template line naming it, the same for every device.
                wanted = f"#({error.variable})"

                def names_it(line: str, wanted: str = wanted) -> bool:
                    return wanted in line

                location = template_line(pending, loaded, names_it) or location
            plan.problems.add(location, "render", f"{error.message} (rendering update.txt)", device)
            continue
        except SecretRequired as error:
            plan.problems.add(str(pending.root / "update.txt"), "render", str(error), device)
            continue
        before_lines: tuple[str, ...] | None = None
        if live is not None:
            base: Rendered | None = after
            if not (reuse and unchanged(loaded)):
                try:
                    base = render_update(live, context, update_variables)
                except (ScriptError, SecretRequired):
                    base = None
            before = base.digest if base is not None else None
            before_lines = base.lines if base is not None else ()
        else:
            before = hashes_sent.get(device.mac)
        if before == after.digest:
            if firmware:
                plan.firmware_only.append(
                    DevicePlan(device, before, after.digest, (), tuple(firmware))
                )
            continue
        diff: tuple[str, ...] = ()
        if before_lines is not None:
            secrets = _secrets(snapshot, device, variables)
            diff = tuple(
                difflib.unified_diff(
                    redact_lines(before_lines, secrets),
                    redact_lines(after.lines, secrets),
                    fromfile=f"live/update.txt ({device.hardware_id})",
                    tofile=f"pending/update.txt ({device.hardware_id})",
                    lineterm="",
                    n=1,
                )
            )
        plan.changes.append(DevicePlan(device, before, after.digest, diff, tuple(firmware)))
    return plan
