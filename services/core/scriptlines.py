"""Text devices read as commands (protocol.md §1-2): CRLF lines, ``#`` comments, PHP-style URL
encoding for ``config add UP1 /url``. Shared by every service that answers a device with a
script, so none has to import another's.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from aiohttp import web

from services.core.identity import printable


def rawurlencode(text: str) -> str:
    """PHP's rawurlencode (RFC 3986 unreserved characters stay), which devices expect in
    ``config add UP1 /url`` (protocol.md §2, the PHPUS form)."""
    return quote(text, safe="-_.~")


def comment(text: str) -> str:
    """One ``#`` comment line; client text in it is made printable, so it cannot end the line."""
    return "# " + printable(text, 300)


def to_crlf(lines: Iterable[str]) -> str:
    """protocol.md §1: one command per line, CRLF line ends."""
    return "".join(line.rstrip("\r\n") + "\r\n" for line in lines)


def script_response(status: int, lines: Iterable[str]) -> web.Response:
    """A device's answer: ``lines`` as CRLF text/plain in UTF-8."""
    return web.Response(
        status=status, text=to_crlf(lines), content_type="text/plain", charset="utf-8"
    )


def comment_reply(status: int, *messages: str) -> web.Response:
    """A device's answer of ``#`` comments only (an error or a refusal it logs and ignores)."""
    return script_response(status, (comment(message) for message in messages))
