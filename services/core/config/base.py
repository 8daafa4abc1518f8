"""Shared pieces of the settings package: :class:`ConfigError` and the field validators.

A section's field carries its check in its metadata (``_check(_range(0, 65535))``,
``_check(_choice("files", "database"))``); a check returns None or the problem, and the loader
(``load.py``) puts the key path in front, so a message reads
``listeners.devices.port: must be 0..65535``. Every other module of the package builds on this one.
"""

from __future__ import annotations

import typing
from typing import Any


class ConfigError(Exception):
    """A settings problem; the message starts with the key path or the file."""


def _range(low: float, high: float) -> typing.Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be {low}..{high}"

    return check


def _choice(*allowed: str) -> typing.Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def _check(validator: typing.Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": validator}
