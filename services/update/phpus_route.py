"""``GET /update.php``: devices still configured for innovaphone's PHP update server (PHPUS).

A device moved from PHPUS (its host name now points at pbxfront, or its URL was left as it was)
polls ``https://<host>/<dir>/update.php?sn=#m&hwid=#h&type=#t&ip=#i&phase=…&polling=…&env=…``
plus its own arguments (protocol.md §1, §10). The answer moves it to pbxfront's ``update.txt``
without re-running its script, so the ``CHECK`` it carries stays valid (the imported script tree
hashes as PHPUS did, ``services/update/phpus.py``):

    # comments (who, what, why)
    mod cmd UP1 provision 0             \\
    config rem UP1 /provision            > unless the poll says polling=0 (PHPUS's final phase)
    config add UP1 /poll <interval>     /  <interval>: h-poll, else update.poll_interval
    config add UP1 /url <update.txt URL, rawurlencoded, with sn=#m&hwid=#h&type=#t&ip=#i>
    config add UP1 /no-dhcp
    config write
    config activate

No ``iresetn`` and no ``mod cmd UP1 check``. The poll that follows (to ``update.txt``) is answered
by the update service as any other. A device not in the inventory gets the update service's 404.
PHPUS's other modes get a 400 naming why (``core.phpus.mode_refusal``); ``mode=backup`` by PUT or
POST belongs to the backup service, mounted on the same paths.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from services.core.db import POOL_KEY, acquire
from services.core.http import query_arguments
from services.core.identity import DeviceIdentity, identify, printable
from services.core.inventory import Device, ResolvedVariable
from services.core.phpus import mode_refusal
from services.core.scriptlines import comment, rawurlencode, script_response
from services.update.device_requests import base_url, record_unknown
from services.update.provisioning import PolicyError, Urls, poll_interval
from services.update.state import SETTINGS_KEY, SNAPSHOTS_KEY

log = logging.getLogger(__name__)

# PHPUS phase and environment ids: no dash (PHPUS refuses them), "_first_<phase>" for its
# forcestaging phase.
_PHPUS_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
# PHPUS's times@polling is minutes of fast polling; nothing sensible is above a day.
_MAX_POLLING = 1440
PHPUS_ENVIRONMENT_VARIABLE = "phpus-env"


@dataclass(frozen=True)
class PhpusArguments:
    """PHPUS's own URL arguments, checked; ``remarks`` says what was wrong with any of them."""

    mode: str
    phase: str | None
    polling: int | None
    environment: str | None
    remarks: tuple[str, ...]

    @classmethod
    def parse(cls, query: dict[str, str]) -> PhpusArguments:
        remarks: list[str] = []
        # update.php: "show" is the old spelling of mode=show.
        mode = "show" if "show" in query else query.get("mode", "")
        phase = query.get("phase") or None
        if phase is not None and not _PHPUS_ID.fullmatch(phase):
            remarks.append(f"phase={printable(phase, 40)} is not a PHPUS phase id; ignored")
            phase = None
        polling: int | None = None
        raw_polling = query.get("polling")
        if raw_polling is not None:
            text = raw_polling.strip()
            if text.isdigit() and len(text) <= 4 and int(text) <= _MAX_POLLING:
                polling = int(text)
            else:
                remarks.append(
                    f"polling={printable(raw_polling, 40)} is not a PHPUS polling value "
                    f"(0..{_MAX_POLLING}); fast polling is turned off anyway"
                )
        environment = query.get("env") or None
        if environment is not None and not all(
            _PHPUS_ID.fullmatch(part) for part in environment.split(",")
        ):
            remarks.append(f"env={printable(environment, 40)} is not a PHPUS environment; ignored")
            environment = None
        return cls(mode, phase, polling, environment, tuple(remarks))


def move_lines(
    urls: Urls, interval: int, *, fast_polling_off: bool, remarks: tuple[str, ...] = ()
) -> list[str]:
    """The commands that move a PHPUS device to update.txt (see the module docstring)."""
    lines = [comment(remark) for remark in remarks]
    if fast_polling_off:
        lines += [
            comment("fast polling off (PHPUS provision mode)"),
            "mod cmd UP1 provision 0",
            "config rem UP1 /provision",
        ]
    lines += [
        f"config add UP1 /poll {interval}",
        f"config add UP1 /url {rawurlencode(urls.update)}",
        "config add UP1 /no-dhcp",
        "config write",
        "config activate",
    ]
    return lines


async def _unknown(
    request: web.Request,
    pool: asyncpg.Pool,
    identity: DeviceIdentity,
    key: str,
    query: dict[str, str],
) -> web.Response:
    """As the update service answers a device not in the inventory: rate-limited per address,
    recorded (bounded) for ``devices adopt``, the same 404 without customer data."""
    refused = await record_unknown(
        request, pool, identity, key, printable(query.get("ver", ""), 200) or None
    )
    if refused is not None:
        return refused
    log.info(
        "unknown device %s (%s) polled PHPUS's update.php", printable(key), identity.proof.value
    )
    return script_response(404, [comment(f"device {key} is not in this provider's inventory")])


async def poll(request: web.Request) -> web.Response:
    """PHPUS's update.php: identify, look the device up, move it to update.txt (or say why not)."""
    query = query_arguments(request)
    arguments = PhpusArguments.parse(query)
    refusal = mode_refusal(arguments.mode, request.method if request.method != "HEAD" else "GET")
    if refusal is not None:
        return script_response(400, [comment(f"pbxfront: {refusal}")])
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    identity: DeviceIdentity = identify(peercert, query)
    if identity.mac is None and identity.hardware_id is None:
        return script_response(
            400,
            [
                comment("pbxfront cannot tell which device this is:"),
                comment("use a client certificate or keep ?sn=#m&hwid=#h in the update.php URL"),
            ],
        )
    pool = request.config_dict[POOL_KEY]
    key = identity.mac or identity.hardware_id or "-"
    async with acquire(pool) as connection:
        snapshot = await request.app[SNAPSHOTS_KEY].get(connection)
    device = snapshot.find(identity)
    if device is None:
        return await _unknown(request, pool, identity, key, query)
    variables = snapshot.resolve(device)
    interval, remarks = _interval_and_remarks(
        arguments, device, variables, request.app[SETTINGS_KEY].update.poll_interval
    )
    header = [
        comment(
            f"pbxfront: PHPUS update.php for {device.hardware_id} ({device.mac}), customer "
            f"{device.customer}, identity {identity.proof.value}"
            + (f", PHPUS phase {arguments.phase}" if arguments.phase else "")
        ),
        comment("moving to pbxfront's update.txt; the script is not re-run (CHECK stays valid)"),
    ]
    log.info(
        "PHPUS device %s (%s) moved to update.txt (phase %s, polling %s)",
        device.mac,
        identity.proof.value,
        arguments.phase or "-",
        "-" if arguments.polling is None else arguments.polling,
    )
    lines = move_lines(
        Urls(base_url(request)),
        interval,
        fast_polling_off=arguments.polling != 0,
        remarks=tuple(remarks),
    )
    return script_response(200, header + lines)


def _interval_and_remarks(
    arguments: PhpusArguments,
    device: Device,
    variables: dict[str, ResolvedVariable],
    default: int,
) -> tuple[int, list[str]]:
    """The device's interval (``h-poll``, else the setting; the same rule as update.txt) and
    what the reply says about the poll's arguments and the device's variables."""
    remarks = list(arguments.remarks)
    try:
        interval = poll_interval(variables, default)
    except PolicyError as error:
        interval = default
        remarks.append(f"{printable(str(error), 120)}; using {default}")
    wanted_environment = variables.get(PHPUS_ENVIRONMENT_VARIABLE)
    if (
        arguments.environment is not None
        and wanted_environment is not None
        and arguments.environment != wanted_environment.value
    ):
        # The imported scripts choose files by phpus-env; another one means another hash, so
        # the device would run its script once more.
        remarks.append(
            f"this device polled PHPUS with env={arguments.environment}, its "
            f"{PHPUS_ENVIRONMENT_VARIABLE} is {wanted_environment.value!r}"
        )
        log.warning(
            "PHPUS device %s polls with env=%s but its %s is %r: set it in the inventory, or "
            "its script runs once more",
            device.mac,
            arguments.environment,
            PHPUS_ENVIRONMENT_VARIABLE,
            wanted_environment.value,
        )
    return interval, remarks
