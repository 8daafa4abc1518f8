"""Who is asking: the device key from a certificate, the URL's arguments or (leniently, [NC])
the ``ver`` string, and the one mapping that fits it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.core.identity import (
    DeviceIdentity,
    IdentityError,
    Proof,
    normalize_device_type,
    normalize_mac,
    parse_hardware_id,
)
from services.redirect.handover.inputs import (
    INNOVAPHONE_OUI,
)
from services.redirect.handover.targets import (
    DeviceTarget,
)

# Within `ver` [NC]: a MAC (with or without separators) or a hardware id, preferably in HW[...].
_VERSION_MAC = re.compile(
    r"(?<![0-9A-Za-z])((?:[0-9A-Fa-f]{2}[-:]){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{12})(?![0-9A-Za-z])"
)


_VERSION_HARDWARE_ID = re.compile(
    r"(?<![0-9A-Za-z])([A-Za-z][A-Za-z0-9]{1,15}-[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2}-[0-9A-Fa-f]{2})"
    r"(?![0-9A-Za-z-])"
)


_VERSION_HW = re.compile(r"HW\[([^\]]{0,100})\]", re.IGNORECASE)


# `7.00 dvl-sr1 IP6000[07-60600.03]`: the model is the word before the first bracket.
_VERSION_MODEL = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9]{1,15})\[")


@dataclass(frozen=True)
class DeviceKey:
    """Who asks: a MAC, or a hardware id (model + last three MAC bytes), or both."""

    proof: Proof
    mac: str | None
    hardware_id: str | None
    device_type: str | None

    @property
    def suffix(self) -> str:
        if self.mac is not None:
            return self.mac[6:]
        assert self.hardware_id is not None
        return parse_hardware_id(self.hardware_id).suffix

    @property
    def label(self) -> str:
        return self.mac or self.hardware_id or "-"


def identity_arguments(query: Mapping[str, str]) -> dict[str, str]:
    """The URL arguments with lower-cased names (first spelling wins): devices and the seed's
    scripts write ``sn``/``SN`` and ``hwid``/``HWID`` [NC]."""
    result: dict[str, str] = {}
    for name, value in query.items():
        result.setdefault(name.lower(), value)
    return result


def from_version(version: str | None) -> tuple[str | None, str | None, str | None]:
    """(MAC, hardware id, model) found in ``ver`` [NC]: protocol.md §1 gives
    ``7.00 dvl-sr1 IP6000[07-60600.03], Bootcode[145], HW[...]`` and no more, so look in
    ``HW[...]`` first, then anywhere, for something shaped like a MAC or a hardware id."""
    if not version:
        return None, None, None
    text = version[:400]
    model_match = _VERSION_MODEL.search(text)
    model: str | None = None
    if model_match:
        try:
            model = normalize_device_type(model_match.group(1))
        except IdentityError:
            model = None
    places = [m.group(1) for m in _VERSION_HW.finditer(text)] + [text]
    for place in places:
        mac_match = _VERSION_MAC.search(place)
        if mac_match:
            return normalize_mac(mac_match.group(1)), None, model
        hwid_match = _VERSION_HARDWARE_ID.search(place)
        if hwid_match:
            hardware = parse_hardware_id(hwid_match.group(1))
            return None, str(hardware), model or hardware.model
    return None, None, model


def device_key(identity: DeviceIdentity, version: str | None) -> DeviceKey | None:
    """The lookup key: the (checked) identity, else what ``ver`` reveals; None if neither."""
    if identity.mac or identity.hardware_id:
        device_type = identity.device_type
        if device_type is None and identity.hardware_id:
            device_type = parse_hardware_id(identity.hardware_id).model
        return DeviceKey(identity.proof, identity.mac, identity.hardware_id, device_type)
    mac, hardware_id, model = from_version(version)
    if mac or hardware_id:
        return DeviceKey(Proof.CLAIMED, mac, hardware_id, identity.device_type or model)
    return None


def choose_mapping(candidates: Sequence[DeviceTarget], key: DeviceKey) -> DeviceTarget | None:
    """The one mapping for ``key``. By MAC: exact. By hardware id only: the mappings whose MAC
    ends in its three bytes; several -> the one with innovaphone's OUI, else none (ambiguous)."""
    if key.mac is not None:
        return next((c for c in candidates if c.mac == key.mac), None)
    fitting = [c for c in candidates if c.mac.endswith(key.suffix)]
    if len(fitting) > 1:
        fitting = [c for c in fitting if c.mac.startswith(INNOVAPHONE_OUI)]
    return fitting[0] if len(fitting) == 1 else None
