"""``pbxfront scripts check``: every device's scripts rendered as a poll would, problems named
with file and line, once each with the devices they affect."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from services.core.identity import DeviceIdentity, Proof, printable
from services.update.problems import Problems
from services.update.provisioning.context import (
    FAST_POLL,
    STAGING,
    UPDATE,
    ContextAdditions,
    Lifecycle,
    PolicyError,
    Snapshot,
    Urls,
)
from services.update.provisioning.decision import (
    firmware_targets,
    maintenance_line,
    poll_interval,
)
from services.update.provisioning.rendering import (
    template_context,
)
from services.update.scripts import (
    LONE_CR,
    ScriptError,
    ScriptStore,
    unknown_commands,
)


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
            if phase == UPDATE and FAST_POLL.search(body):
                location = located(
                    phase, "fast-poll", used, lambda line: bool(FAST_POLL.match(line))
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
            if phase == UPDATE and FAST_POLL.search(body):
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
