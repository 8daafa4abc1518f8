"""``PUT``/``POST <update.phpus_paths>?mode=backup&hwid=#h&sn=#m``: PHPUS's backup URL.

Devices configured by innovaphone's PHP update server send their configuration to
``update.php?mode=backup`` (its ``backup/@scfg``), by PUT or POST (PHPUS reads the raw body,
protocol.md §10). The body is stored exactly as a PUT to the backup folder is: the same proof of
identity (certificate, HTTP client credentials, or a customer's anonymous backups), the same
change detection, 2xx only after the commit. The stored upload name is the path's file name
(``update.php``). ``GET`` on these paths belongs to the update service.
"""

from __future__ import annotations

from aiohttp import web

from services.backup.handlers import put_backup
from services.core import errors
from services.core.http import query_arguments
from services.core.phpus import mode_refusal


async def backup(request: web.Request) -> web.Response:
    query = query_arguments(request)
    mode = "show" if "show" in query else query.get("mode", "")
    refusal = mode_refusal(mode, request.method)
    if refusal is not None:
        raise errors.Invalid(refusal)
    return await put_backup(request)
