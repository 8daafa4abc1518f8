"""Problems of a script tree, each reported once with the devices it affects (``pbxfront scripts
check``, ``scripts plan``, ``scripts publish``).

A problem is what is wrong and where: its location (``file:line`` when known, else the file, or
``variables``), its kind (``render``, ``firmware``, ``unknown-command`` …) and a message that
names no device. The same problem found while rendering for 5,000 devices is one entry listing
those 5,000 devices, in the order they were checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.core.inventory import Device

# Devices named per problem in the text output (all of them in JSON).
SHOWN_DEVICES = 3


@dataclass(frozen=True)
class Problem:
    location: str
    kind: str
    message: str


class Problems:
    """Problems in the order found, each with its affected devices (no duplicates)."""

    def __init__(self) -> None:
        self._devices: dict[Problem, dict[str, Device]] = {}

    def add(self, location: str, kind: str, message: str, device: Device | None = None) -> Problem:
        problem = Problem(location, kind, message)
        affected = self._devices.setdefault(problem, {})
        if device is not None:
            affected.setdefault(device.mac, device)
        return problem

    def extend(self, other: Problems) -> None:
        for problem, devices in other.items():
            affected = self._devices.setdefault(problem, {})
            for device in devices:
                affected.setdefault(device.mac, device)

    def items(self) -> Iterator[tuple[Problem, list[Device]]]:
        for problem, devices in self._devices.items():
            yield problem, list(devices.values())

    def devices(self, problem: Problem) -> list[Device]:
        return list(self._devices.get(problem, {}).values())

    def __len__(self) -> int:
        return len(self._devices)

    def __bool__(self) -> bool:
        return bool(self._devices)

    def lines(self, shown: int = SHOWN_DEVICES) -> list[str]:
        """One line per problem: ``location: message [kind] (N device(s): a, b, c and N more)``;
        problems found without a device end after the kind."""
        result = []
        for problem, devices in self.items():
            text = f"{problem.location}: {problem.message} [{problem.kind}]"
            if devices:
                names = ", ".join(device.hardware_id for device in devices[:shown])
                more = f" and {len(devices) - shown} more" if len(devices) > shown else ""
                text += f" ({len(devices)} device(s): {names}{more})"
            result.append(text)
        return result

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "location": problem.location,
                "kind": problem.kind,
                "message": problem.message,
                "device_count": len(devices),
                "devices": [
                    {"hardware_id": d.hardware_id, "mac": d.mac, "customer": d.customer}
                    for d in devices
                ],
            }
            for problem, devices in self.items()
        ]
