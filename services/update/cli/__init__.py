"""``pbxfront scripts|rollouts|devices|firmware …``: the update service's operator commands,
one module per command group; :mod:`.common` holds what the groups share."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from services.core.commands import Bind
from services.update.cli import devices, firmware, rollouts, scripts
from services.update.cli.scripts import ExtraCheck, compute_plan

__all__ = ["ExtraCheck", "compute_plan", "register"]


def register(
    commands: Any,
    common: argparse.ArgumentParser,
    bind: Bind,
    extra_checks: Sequence[ExtraCheck] = (),
) -> None:
    scripts.register(commands, common, bind, extra_checks)
    rollouts.register(commands, common, bind)
    devices.register(commands, common, bind)
    firmware.register(commands, common, bind)
