"""The events page and its live tail (server-sent events)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from services.console.handlers.common import _number, _pool, _sources, render
from services.console.repository import SessionRepository
from services.console.state import COOKIE_KEY, PREFIX, SETTINGS_KEY
from services.core.db import acquire
from services.core.identity import IdentityError, normalize_mac


def _event_filters(query: Mapping[str, str]) -> dict[str, Any]:
    filters: dict[str, Any] = {"limit": _number(query, "limit", 100, 1, 1000)}
    customer = query.get("customer", "").strip()
    if customer:
        filters["customer"] = customer[:64]
    device_raw = query.get("device", "").strip()
    if device_raw:
        try:
            filters["device"] = (normalize_mac(device_raw), None)
        except IdentityError:
            filters["device"] = (None, device_raw[:32])
    severity = query.get("severity", "")
    if severity:
        filters["max_severity"] = _number(query, "severity", 7, 0, 7)
    if query.get("active") == "1":
        filters["active"] = True
    return filters


async def events(request: web.Request) -> web.Response:
    filters = _event_filters(request.query)
    found = await _sources(request).events(_pool(request), filters)
    alarms = await _sources(request).events(_pool(request), {"active": True, "limit": 100})
    newest = max((e["id"] for e in found), default=0)
    return render(
        request,
        "events.html",
        events=found,
        alarms=alarms,
        query=request.query,
        newest=newest,
        stream=f"{PREFIX}/events/stream?"
        + urlencode(
            {k: v for k, v in request.query.items() if k in ("customer", "device", "severity")}
        ),
    )


async def events_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every new event matching the filters, as JSON, until the client
    goes or the session ends."""
    filters = _event_filters(request.query)
    filters["limit"] = 200
    last = request.headers.get("Last-Event-ID", "") or request.query.get("after", "")
    after = int(last) if re.fullmatch(r"\d{1,18}", last) else None
    pool = _pool(request)
    sources = _sources(request)
    if after is None:
        newest = await sources.events(pool, {**filters, "limit": 1})
        after = newest[0]["id"] if newest else 0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    await response.write(b"retry: 3000\n\n")
    idle = request.app[SETTINGS_KEY].admin.console_idle_timeout
    waited = 0.0
    while waited < idle:
        found = await sources.events(pool, {**filters, "after": after})
        for event in found:
            after = max(after, event["id"])
            payload = json.dumps(
                {
                    key: event.get(key)
                    for key in (
                        "id",
                        "received_at",
                        "kind",
                        "severity",
                        "device_hardware_id",
                        "customer",
                        "code",
                        "text",
                        "active",
                    )
                },
                default=str,
            )
            await response.write(f"id: {event['id']}\ndata: {payload}\n\n".encode())
        if not found:
            await response.write(b": keep-alive\n\n")
        await asyncio.sleep(1.0)
        waited += 1.0
        # A logout (or an expiry, or an account change) ends the stream too.
        if waited % 15 == 0:
            async with acquire(pool) as connection:
                if await SessionRepository(connection).use(request[COOKIE_KEY], idle) is None:
                    break
    return response
