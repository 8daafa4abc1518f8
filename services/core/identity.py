"""Who is calling: a device identity, proven (client certificate), claimed (URL) or anonymous.

protocol.md §3: a device is proven when the TLS layer verified its client certificate against a
configured trust anchor and the subject CN is its hardware id (``IP232-01-02-03``) or its MAC
without separators. Early certificates carry a wrong model prefix, fixed up here. URL arguments
(``sn``, ``mac``, ``hwid``, ``type``, ``ip``) only *claim* an identity; a proven identity that
contradicts the claimed one is refused (:class:`IdentityConflict`).

Identifiers are normalised before anything else sees them and never reach a file path.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.core import errors

_MAC_SEPARATORS = re.compile(r"[-:.\s]")
_MAC = re.compile(r"[0-9a-f]{12}")
# innovaphone hardware ids: model, then the last three MAC bytes (`IP232-01-02-03`,
# `IPVA-a8-5a-38`, `IP1202/4-0a-1b-2c` does not exist; models are letters, digits, `/` never).
_HARDWARE_ID = re.compile(
    r"([A-Za-z][A-Za-z0-9]{1,15})-([0-9A-Fa-f]{2})-([0-9A-Fa-f]{2})-([0-9A-Fa-f]{2})"
)
_DEVICE_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")

# protocol.md §3: early device certificates carry a wrong model prefix.
CN_MODEL_FIXUPS = {"IP222S": "IP222", "IP232S": "IP232", "IP240A": "IP240", "IP200A": "IP200"}


class IdentityError(ValueError):
    """A malformed identifier; the message names the argument."""


class IdentityConflict(Exception):
    """A proven identity contradicts the claimed one (answered 403 and logged with both)."""

    def __init__(self, proven: str, claimed: str) -> None:
        super().__init__(f"certificate names {proven} but the request claims {claimed}")
        self.proven = proven
        self.claimed = claimed


class Proof(enum.StrEnum):
    PROVEN = "proven"
    CLAIMED = "claimed"
    ANONYMOUS = "anonymous"


def normalize_mac(value: str) -> str:
    """``00-90-33-01-02-03`` / ``00:90:33:01:02:03`` / ``009033010203`` -> ``009033010203``."""
    candidate = _MAC_SEPARATORS.sub("", value).lower()
    if not _MAC.fullmatch(candidate):
        raise IdentityError(f"not a MAC address: '{printable(value)}'")
    return candidate


@dataclass(frozen=True)
class HardwareId:
    model: str  # upper case, fixed up: IP232
    suffix: str  # last three MAC bytes, lower case hex: 010203

    def __str__(self) -> str:
        s = self.suffix
        return f"{self.model}-{s[0:2]}-{s[2:4]}-{s[4:6]}"

    def matches_mac(self, mac: str) -> bool:
        return mac.endswith(self.suffix)


def parse_hardware_id(value: str) -> HardwareId:
    """``IP232-01-02-03`` (any case; ``IP232s`` fixed up) -> HardwareId."""
    match = _HARDWARE_ID.fullmatch(value.strip())
    if not match:
        raise IdentityError(f"not a hardware id: '{printable(value)}'")
    model = match.group(1).upper()
    model = CN_MODEL_FIXUPS.get(model, model)
    suffix = "".join(match.group(i) for i in (2, 3, 4)).lower()
    return HardwareId(model, suffix)


def normalize_hardware_id(value: str) -> str:
    return str(parse_hardware_id(value))


def parse_device(value: str) -> tuple[str | None, str | None]:
    """A device named by its MAC (any notation) or hardware id -> (mac, hardware id), one of them
    None; errors.Invalid (a 400 naming the field) otherwise."""
    with contextlib.suppress(IdentityError):
        return normalize_mac(value), None
    with contextlib.suppress(IdentityError):
        return None, normalize_hardware_id(value)
    raise errors.Invalid(f"device: not a MAC or hardware id: '{printable(value)}'")


def normalize_device_type(value: str) -> str:
    """Device types (``IP232``, ``ipva``) compare case-insensitively; stored upper case."""
    candidate = value.strip()
    if not _DEVICE_TYPE.fullmatch(candidate):
        raise IdentityError(f"not a device type: '{printable(value)}'")
    return candidate.upper()


# Characters that end or split a line somewhere a line is a unit: a log line, a device script
# (protocol.md §2: every line is a command) or a script variable's value.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: Any, limit: int = 200) -> str:
    """Client text made safe for a log line: control characters escaped, length capped."""
    text = value if isinstance(value, str) else repr(value)
    text = CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text


@dataclass(frozen=True)
class DeviceIdentity:
    proof: Proof
    mac: str | None = None
    hardware_id: str | None = None
    device_type: str | None = None
    ip: str | None = None
    # The certificate's subject CN as sent, for logs.
    certificate_cn: str | None = None

    @property
    def proven(self) -> bool:
        return self.proof is Proof.PROVEN

    def describe(self) -> str:
        return self.hardware_id or self.mac or "anonymous"


def certificate_common_name(peercert: Mapping[str, Any] | None) -> str | None:
    """The subject CN from ``ssl.SSLSocket.getpeercert()`` (present only for a verified cert)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@dataclass(frozen=True)
class ClaimedArguments:
    mac: str | None
    hardware_id: str | None
    device_type: str | None
    ip: str | None


def parse_claimed(query: Mapping[str, str]) -> ClaimedArguments:
    """``sn``/``mac``, ``hwid``, ``type``, ``ip`` from the URL; raise IdentityError if malformed.

    Devices that did not expand a placeholder send it literally (``sn=#m``); that counts as absent.
    """

    def argument(*names: str) -> str | None:
        for name in names:
            raw = query.get(name)
            if raw is not None and raw.strip() and not raw.startswith("#"):
                return raw.strip()
        return None

    mac_raw = argument("sn", "mac")
    hwid_raw = argument("hwid")
    type_raw = argument("type")
    ip_raw = argument("ip")
    ip: str | None = None
    if ip_raw is not None:
        try:
            ip = str(ipaddress.ip_address(ip_raw))
        except ValueError:
            raise IdentityError(f"ip: not an IP address: '{printable(ip_raw)}'") from None
    try:
        mac = normalize_mac(mac_raw) if mac_raw else None
    except IdentityError as error:
        raise IdentityError(f"sn: {error}") from None
    try:
        hardware_id = parse_hardware_id(hwid_raw) if hwid_raw else None
    except IdentityError as error:
        raise IdentityError(f"hwid: {error}") from None
    try:
        device_type = normalize_device_type(type_raw) if type_raw else None
    except IdentityError as error:
        raise IdentityError(f"type: {error}") from None
    if mac and hardware_id and not hardware_id.matches_mac(mac):
        raise IdentityError(f"hwid {hardware_id} does not belong to sn {mac}")
    return ClaimedArguments(mac, str(hardware_id) if hardware_id else None, device_type, ip)


def identify(peercert: Mapping[str, Any] | None, query: Mapping[str, str]) -> DeviceIdentity:
    """Combine a verified client certificate (if any) with the URL's claims.

    Raises IdentityError for malformed arguments and IdentityConflict when the certificate names
    another device than the arguments.
    """
    claimed = parse_claimed(query)
    common_name = certificate_common_name(peercert)
    if common_name is None:
        if claimed.mac or claimed.hardware_id:
            return DeviceIdentity(
                Proof.CLAIMED, claimed.mac, claimed.hardware_id, claimed.device_type, claimed.ip
            )
        return DeviceIdentity(Proof.ANONYMOUS, None, None, claimed.device_type, claimed.ip)

    proven_mac: str | None = None
    proven_hwid: HardwareId | None = None
    try:
        proven_mac = normalize_mac(common_name)
    except IdentityError:
        try:
            proven_hwid = parse_hardware_id(common_name)
        except IdentityError:
            # A verified certificate that names no device (e.g. an operator's) proves nothing
            # about a device; treat the caller as claimed.
            return DeviceIdentity(
                Proof.CLAIMED if (claimed.mac or claimed.hardware_id) else Proof.ANONYMOUS,
                claimed.mac,
                claimed.hardware_id,
                claimed.device_type,
                claimed.ip,
                certificate_cn=common_name,
            )
    proven_name = proven_mac or str(proven_hwid)
    if claimed.mac:
        if proven_mac and proven_mac != claimed.mac:
            raise IdentityConflict(proven_name, claimed.mac)
        if proven_hwid and not proven_hwid.matches_mac(claimed.mac):
            raise IdentityConflict(proven_name, claimed.mac)
    if claimed.hardware_id:
        claimed_hwid = parse_hardware_id(claimed.hardware_id)
        if proven_hwid and proven_hwid != claimed_hwid:
            raise IdentityConflict(proven_name, claimed.hardware_id)
        if proven_mac and not claimed_hwid.matches_mac(proven_mac):
            raise IdentityConflict(proven_name, claimed.hardware_id)
    device_type = claimed.device_type or (proven_hwid.model if proven_hwid else None)
    return DeviceIdentity(
        Proof.PROVEN,
        proven_mac or claimed.mac,
        str(proven_hwid) if proven_hwid else claimed.hardware_id,
        device_type,
        claimed.ip,
        certificate_cn=common_name,
    )
