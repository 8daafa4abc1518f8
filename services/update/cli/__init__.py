"""``pbxfront scripts|rollouts|devices|firmware …``: the update service's operator commands,
one module per command group; :mod:`.common` holds what the groups share."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from services.core.commands import Bind, Commands
from services.update.cli import devices, firmware, rollouts, scripts
from services.update.cli.scripts import ExtraCheck, compute_plan

__all__ = ["ExtraCheck", "compute_plan", "register"]


def register(
    commands: Any,
    common: argparse.ArgumentParser,
    bind: Bind,
    extra_checks: Sequence[ExtraCheck] = (),
) -> None:
    """Each module adds its command group to the update service's :class:`Commands`."""
    update = Commands(commands, common, bind)
    scripts.register(update, extra_checks)
    rollouts.register(update)
    devices.register(update)
    firmware.register(update)
