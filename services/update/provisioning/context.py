"""The poll's inputs: its arguments as the device sends them, the node's lifecycle settings, the
inventory snapshot, the URLs, and :func:`look_up`, which gathers them into one
:class:`PollContext` (variables resolved once). What the pipeline returns: :class:`Reply`."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.core.config import UpdateSettings
from services.core.identity import DeviceIdentity, printable
from services.core.inventory import (
    Customer,
    Device,
    Frontend,
    Inventory,
    ResolvedVariable,
)
from services.core.inventory.variables import LayeredVariables
from services.update.firmware import model_names

STAGING = "staging"


UPDATE = "update"


# protocol.md §1: arguments the device appends to every poll (each also with a `…date` twin).
DEVICE_ARGUMENTS = ("ver", "PROT", "BOOT", "BMC", "CFG", "SCFG", "CHECK", "CFG-BACKUP-NUM")


_ARGUMENT_LIMIT = 200


BUILD_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")


HOURS_PATTERN = re.compile(r"\d{1,2}(,\d{1,2})*")


# Fast polling while staging (minutes), as PHPUS does for non-final phases.
STAGING_POLL_MINUTES = 1


# The URL argument that tells the first update.txt poll that staging left fast polling on
# (PHPUS's own name, so a device moved from PHPUS is recognised the same way).
POLLING_ARGUMENT = "polling"


# Set by pbxfront's own staging only: the first update runs its script whatever CHECK says.
STAGED_ARGUMENT = "staged"


FAST_POLL = re.compile(r"^config (add|change) UP1\b.*/poll 1\b", re.MULTILINE)


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


# More template data a composition supplies (serve.py: the Frontend plan's ``nat``,
# ``config_template``, ``ldap_default``, ``frontend_plan``): (snapshot, device, secret wrapper)
# -> keys. A pure function of the inventory, so rendered bodies stay cacheable.
ContextAdditions = Callable[["Snapshot", Device, Callable[[str, str], object]], Mapping[str, Any]]


# update.auto_adopt (composed in services/serve.py): (pool, mac, device type, address) -> adopted?
Adopter = Callable[[asyncpg.Pool, str, str, str], Awaitable[bool]]


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
