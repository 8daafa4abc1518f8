"""Stored mappings, where they point, and what a device is sent: the hand-over script and the
replies for an unregistered, rate-limited or unidentifiable device."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from services.core.config import RedirectSettings
from services.core.scriptlines import comment, rawurlencode, to_crlf
from services.redirect.handover.inputs import (
    MappingInput,
)


@dataclass(frozen=True)
class StoredMapping:
    mac: str
    provider: str
    frontend: str | None
    url: str | None
    facts: Mapping[str, str]

    def same_target(self, wanted: MappingInput) -> bool:
        return (self.frontend, self.url, dict(self.facts)) == (
            wanted.frontend,
            wanted.url,
            dict(wanted.facts),
        )


@dataclass(frozen=True)
class DeviceTarget:
    """A mapping as the device side reads it: with its Frontend and its provider's facts."""

    mac: str
    provider: str
    frontend: str | None
    url: str | None
    facts: Mapping[str, str]
    provider_facts: Mapping[str, str]
    # From the inventory; None when the Frontend named is not (or no longer) there.
    public_address: str | None
    frontend_index: int | None

    def all_facts(self) -> dict[str, str]:
        """The provider's facts, overridden by the mapping's, by name."""
        return dict(sorted({**self.provider_facts, **self.facts}.items()))


def _host(address: str) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass
    return address


def with_arguments(url: str, arguments: str) -> str:
    """protocol.md §1: the device expands #m/#h/#t/#i; a URL with a query is taken as it is."""
    if "?" in url or not arguments:
        return url
    return f"{url}?{arguments}"


def target_url(
    url: str | None,
    frontend: str | None,
    public_address: str | None,
    frontend_index: int | None,
    settings: RedirectSettings,
) -> str | None:
    """The URL the device is to poll next; None when the mapping's Frontend is unknown."""
    if url:
        return with_arguments(url, settings.url_arguments)
    if frontend is None or public_address is None:
        return None
    base = settings.frontend_url.format(
        public_address=_host(public_address), frontend=frontend, index=frontend_index or 0
    )
    return with_arguments(base, settings.url_arguments)


def handover_script(mac: str, target: str, facts: Mapping[str, str]) -> str:
    """protocol.md §4: the reply a device is known to accept, CRLF, comments first.

    Facts go before the URL change: ``config activate`` switches the update module to the new
    URL, and nothing protocol.md confirms says the lines after it still run. [NC]
    """
    lines = [
        comment(f"pbxfront redirect: hand-over of {mac}"),
        comment(f"to {target}"),
    ]
    lines += [f"mod cmd UP1 setvar {name} {value}" for name, value in sorted(facts.items())]
    lines += [
        f"config add UP1 /url {rawurlencode(target)}",
        "config add UP1 /no-dhcp",
        "config write",
        "config activate",
    ]
    return to_crlf(lines)


def not_registered_reply(label: str) -> str:
    """The same body for unknown devices, devices of any provider whose mapping cannot be used,
    and every other miss, so the answers tell a scanner nothing."""
    return to_crlf([comment(f"pbxfront redirect: device {label} is not registered here")])


def rate_limited_reply() -> str:
    return to_crlf(
        [
            comment(
                "pbxfront redirect: too many lookups of unregistered devices from this address"
            ),
            comment("retry later"),
        ]
    )


def cannot_identify_reply() -> str:
    return to_crlf(
        [
            comment("pbxfront redirect cannot tell which device this is:"),
            comment("use a client certificate or add ?sn=#m&hwid=#h to the redirect URL"),
        ]
    )
