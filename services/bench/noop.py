"""The no-op service: the benchmark's in-process baseline.

Same listener, TLS, middleware and access log as every service, no storage: ``GET /noop``
answers a fixed body, ``PUT``/``POST /noop`` read the body and answer 204. Mount it only where
``pbxfront bench`` runs (service name ``noop``).
"""

from __future__ import annotations

from aiohttp import web

from services.core.config import Settings

BODY = "# pbxfront no-op\r\n"


async def noop_get(request: web.Request) -> web.Response:
    return web.Response(text=BODY, content_type="text/plain")


async def noop_write(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app.router.add_get("/noop", noop_get)
    app.router.add_put("/noop", noop_write)
    app.router.add_post("/noop", noop_write)
    return app
