"""One device's page: status, history, rendered script, backups and their diff; restage
and certificate reset."""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import asdict
from typing import Any

import asyncpg
from aiohttp import web

from services.console.handlers.common import (
    PHASES,
    Audited,
    _audited,
    _choice,
    _mac,
    _number,
    _pool,
    _sources,
    _wants_secrets,
    render,
)
from services.console.state import PREFIX, SESSION_KEY, SETTINGS_KEY
from services.core.db import acquire
from services.core.http import security_event
from services.core.inventory import InventoryRepository


def _redact(text: str, secret_values: list[str]) -> str:
    for value in sorted(set(secret_values), key=len, reverse=True):
        if len(value) >= 3:
            text = text.replace(value, "********")
    return text


async def device(request: web.Request) -> web.Response:
    mac = _mac(request)
    sources = _sources(request)
    pool = _pool(request)
    settings = request.app[SETTINGS_KEY]
    status = await sources.device_status(pool, settings, mac)
    if status is None:
        raise web.HTTPNotFound(text=f"no device {mac} in the inventory\n")
    phase = _choice(request.query, "phase", PHASES) or "update"
    show = _wants_secrets(request)
    script = await sources.render_script(pool, settings, mac, phase)
    if show:
        security_event(
            request, "secrets-shown", account=request[SESSION_KEY].account.name, device=mac
        )
    elif script.get("text"):
        script["text"] = _redact(script["text"], script["secrets"])
    history = await sources.status_history(pool, mac, 50)
    certificate = await sources.certificate(pool, mac)
    versions = await sources.backup_versions(pool, mac, 20)
    events = await sources.events(pool, {"device": (mac, None), "limit": 20})
    async with acquire(pool) as connection:
        inventory = await InventoryRepository(connection).get_device(mac)
    return render(
        request,
        "device.html",
        mac=mac,
        status=status,
        history=history,
        device=asdict(inventory) if inventory is not None else {},
        script=script,
        phase=phase,
        show_secrets=show,
        certificate=certificate,
        versions=versions,
        events=events,
        done=request.query.get("done", ""),
    )


def side_by_side(old: list[str], new: list[str], context: int = 3) -> list[list[dict[str, Any]]]:
    """Hunks of (old line no, old text, new line no, new text, kind) rows; kind is one of
    same, changed, removed, added."""
    hunks: list[list[dict[str, Any]]] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        rows: list[dict[str, Any]] = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for offset in range(i2 - i1):
                    rows.append(
                        {
                            "kind": "same",
                            "old_no": i1 + offset + 1,
                            "old": old[i1 + offset],
                            "new_no": j1 + offset + 1,
                            "new": new[j1 + offset],
                        }
                    )
                continue
            for offset in range(max(i2 - i1, j2 - j1)):
                has_old = i1 + offset < i2
                has_new = j1 + offset < j2
                kind = "changed" if has_old and has_new else "removed" if has_old else "added"
                rows.append(
                    {
                        "kind": kind,
                        "old_no": i1 + offset + 1 if has_old else None,
                        "old": old[i1 + offset] if has_old else "",
                        "new_no": j1 + offset + 1 if has_new else None,
                        "new": new[j1 + offset] if has_new else "",
                    }
                )
        hunks.append(rows)
    return hunks


async def device_diff(request: web.Request) -> web.Response:
    mac = _mac(request)
    old_id = _number(request.query, "from", 0, 1, 2**62) or None
    new_id = _number(request.query, "to", 0, 1, 2**62) or None
    show = _wants_secrets(request)
    sides = await _sources(request).backup_diff(
        _pool(request), request.app[SETTINGS_KEY], mac, old_id, new_id, show
    )
    if sides is None:
        raise web.HTTPNotFound(text=f"no two versions to compare for {mac}\n")
    if show:
        security_event(
            request,
            "secrets-shown",
            account=request[SESSION_KEY].account.name,
            device=mac,
            versions=f"{sides['old']['id']},{sides['new']['id']}",
        )
    old_lines, new_lines = sides["old"]["lines"], sides["new"]["lines"]
    binary = old_lines is None or new_lines is None
    hunks = [] if binary else await asyncio.to_thread(side_by_side, old_lines, new_lines)
    return render(
        request,
        "diff.html",
        mac=mac,
        sides=sides,
        hunks=hunks,
        binary=binary,
        show_secrets=show,
    )


async def restage(request: web.Request) -> web.StreamResponse:
    mac = _mac(request)

    async def run(connection: asyncpg.Connection) -> Audited:
        if not await _sources(request).restage(connection, mac):
            raise web.HTTPNotFound(text=f"no device {mac} in the inventory\n")
        return None, {"restage_requested": True}

    await _audited(request, "restage", "device", mac, run)
    raise web.HTTPSeeOther(f"{PREFIX}/devices/{mac}?done=restage")


async def certificate_reset(request: web.Request) -> web.StreamResponse:
    mac = _mac(request)

    async def run(connection: asyncpg.Connection) -> Audited:
        rollout = await _sources(request).certificate_reset(connection, mac)
        return rollout, {"certificate_rollout": None}

    before, _after = await _audited(request, "certificate-reset", "device", mac, run)
    done = "certificate-reset" if before is not None else "certificate-none"
    raise web.HTTPSeeOther(f"{PREFIX}/devices/{mac}?done={done}")
