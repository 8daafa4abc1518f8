"""``POST /api/v1/devices/onboard`` on the admin API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.core import errors
from services.core.api import Endpoint, json_response, pool_of, request_actor
from services.core.auth import Role
from services.onboard.onboarding import DEFAULT_PROVIDER, onboard
from services.onboard.rows import OPTIONAL, REQUIRED, OnboardError, check_rows


async def onboard_endpoint(request: web.Request) -> web.Response:
    if not request.can_read_body:
        raise errors.Invalid("body: a JSON list of rows is required")
    try:
        value = await request.json(loads=_loads)
    except ValueError as error:
        raise errors.Invalid(f"body: not JSON ({error})") from None
    provider = request.query.get("provider") or DEFAULT_PROVIDER
    dry_run = request.query.get("dry_run") in ("1", "true", "yes")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise errors.Invalid("body: must be a JSON list of objects")
    try:
        rows = check_rows([(f"rows[{n}]", item) for n, item in enumerate(value)])
        results = await onboard(
            pool_of(request),
            rows,
            provider=provider,
            actor=request_actor(request),
            dry_run=dry_run,
        )
    except OnboardError as error:
        return json_response({"error": "; ".join(error.problems), "problems": error.problems}, 422)
    return json_response(
        {"devices": [r.as_json() for r in results], "dry_run": dry_run},
        status=200 if dry_run or not any(r.device == "created" for r in results) else 201,
    )


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


ROW_SCHEMA = {
    "type": "object",
    "required": ["mac", "type", "customer"],
    "properties": {name: {"type": "string"} for name in (*REQUIRED, *OPTIONAL)},
}

ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/devices/onboard",
        onboard_endpoint,
        frozenset({Role.ADMIN, Role.OPERATOR}),
        "Onboard devices (inventory device + redirect mapping per row), all or nothing",
        query={
            "provider": f"the redirect provider (default {DEFAULT_PROVIDER})",
            "dry_run": "1: only check and report",
        },
        body={"type": "array", "items": ROW_SCHEMA},
        response={"type": "object"},
    )
]
