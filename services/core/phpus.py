"""What the update and backup services both need to answer devices still configured for
innovaphone's PHP update server (PHPUS, protocol.md §2 and §10) on its ``update.php`` URL.

The update service answers ``GET`` (moving the device to pbxfront's ``update.txt``), the backup
service ``PUT``/``POST`` with ``mode=backup``; both mount the paths of ``update.phpus_paths``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# PHPUS's update.php modes besides the poll itself, and why pbxfront does not take them.
_REFUSED_MODES = {
    "query": (
        "PHPUS mode=query (the customcerts device query) is not taken here: pbxfront rolls out "
        "certificates itself ([ca] rollout); remove PHPUS's query lines from the device's scripts"
    ),
    "vardump": (
        "PHPUS mode=vardump (the customcerts signing request upload) is not taken here: "
        "pbxfront rolls out certificates itself ([ca] rollout)"
    ),
    "upload": "PHPUS mode=upload (its web interface's certificate upload) does not exist here",
    "show": "PHPUS's web interface (mode=show) is not part of pbxfront: use `pbxfront devices`",
    "status": "PHPUS's web interface (mode=status) is not part of pbxfront: use `pbxfront devices`",
    "ui": "PHPUS's web interface (mode=ui) is not part of pbxfront: use `pbxfront devices`",
}


def route_paths(paths: Iterable[str]) -> list[str]:
    """aiohttp route paths for the configured ``update.phpus_paths``. The file name becomes the
    route variable ``name`` (the backup service stores it as the upload's name); an entry
    ``*/x/update.php`` matches any path ending in ``/x/update.php`` and that path itself."""
    routes: list[str] = []
    for path in paths:
        prefix, _, file_name = path.rpartition("/")
        # The configuration allows no braces in a path (core.config.devices._PHPUS_PATH).
        name = "{name:" + re.escape(file_name) + "}"
        if prefix.startswith("*"):
            routes.append("/{phpus_prefix:.*}" + prefix[1:] + "/" + name)
            routes.append(prefix[1:] + "/" + name)  # and the path itself, at the root
        else:
            routes.append(prefix + "/" + name)
    return routes


def mode_refusal(mode: str, method: str) -> str | None:
    """Why a request with PHPUS's ``mode=`` argument is refused (400), or None when this
    method takes it: ``GET`` without a mode is a poll, ``PUT``/``POST`` with ``mode=backup`` a
    backup."""
    if mode == "backup":
        if method in ("PUT", "POST"):
            return None
        return "PHPUS mode=backup takes the device's configuration by PUT or POST"
    if mode == "":
        if method in ("PUT", "POST"):
            return "add mode=backup&hwid=#h&sn=#m: only backups are taken by PUT or POST here"
        return None
    refused = _REFUSED_MODES.get(mode)
    if refused is not None:
        return refused
    return "unknown PHPUS mode (update.php takes none, or mode=backup by PUT or POST)"
