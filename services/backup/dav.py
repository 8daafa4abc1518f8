"""A read-only WebDAV (RFC 4918, class 1) view of the archive for operators' file managers.

``/dav/backups/`` lists customers, ``/dav/backups/<customer-id>/`` their devices (by MAC),
``/dav/backups/<customer-id>/<mac>/`` a device's versions as ``<timestamp>.txt`` (received time,
UTC, ``20240501T100000.123456Z``), and a GET of such a file gives the version exactly as the
device sent it (secrets included: this view needs the admin role). PROPFIND answers Depth 0 and 1
(infinity is refused, RFC 4918 §9.1 ``propfind-finite-depth``); it always reports the same live
properties whatever the request body asks for. Every writing method is answered 405.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web

from services.backup.normalize import BINARY
from services.backup.repository import (
    ArchiveRepository,
    BackupDevice,
    Version,
)
from services.core import errors
from services.core.api import authenticate, pool_of
from services.core.auth import Role
from services.core.db import acquire
from services.core.http import security_event

PREFIX = "/dav/backups"
ALLOW = "OPTIONS, PROPFIND, GET, HEAD"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_STAMP = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)\.txt")
_CUSTOMER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC = re.compile(r"[0-9a-f]{12}")


def file_name(version: Version) -> str:
    return version.received_at.astimezone(UTC).strftime(STAMP_FORMAT) + ".txt"


def parse_file_name(name: str) -> datetime | None:
    match = _STAMP.fullmatch(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), STAMP_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Entry:
    href: str
    name: str
    collection: bool
    modified: datetime | None = None
    size: int | None = None
    etag: str | None = None
    content_type: str | None = None


def _href(*segments: str, collection: bool) -> str:
    path = PREFIX + "".join("/" + quote(segment, safe="") for segment in segments)
    return path + "/" if collection else path


def _property_xml(entry: Entry) -> str:
    parts = [f"<D:displayname>{escape(entry.name)}</D:displayname>"]
    if entry.collection:
        parts.append("<D:resourcetype><D:collection/></D:resourcetype>")
    else:
        parts.append("<D:resourcetype/>")
    if entry.modified is not None:
        parts.append(
            f"<D:getlastmodified>{format_datetime(entry.modified.astimezone(UTC), usegmt=True)}"
            "</D:getlastmodified>"
        )
        parts.append(
            f"<D:creationdate>{entry.modified.astimezone(UTC).isoformat()}</D:creationdate>"
        )
    if entry.size is not None:
        parts.append(f"<D:getcontentlength>{entry.size}</D:getcontentlength>")
    if entry.content_type is not None:
        parts.append(f"<D:getcontenttype>{entry.content_type}</D:getcontenttype>")
    if entry.etag is not None:
        parts.append(f'<D:getetag>"{entry.etag}"</D:getetag>')
    return "".join(parts)


def multistatus(entries: Sequence[Entry]) -> str:
    responses = "".join(
        f"<D:response><D:href>{escape(entry.href)}</D:href><D:propstat><D:prop>"
        f"{_property_xml(entry)}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        "</D:response>"
        for entry in entries
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<D:multistatus xmlns:D="DAV:">{responses}</D:multistatus>\n'
    )


def _version_entry(customer: str, mac: str, version: Version) -> Entry:
    name = file_name(version)
    return Entry(
        _href(customer, mac, name, collection=False),
        name,
        collection=False,
        modified=version.received_at,
        size=version.size,
        etag=version.content_sha256.hex(),
        content_type="application/octet-stream"
        if version.encoding == BINARY
        else "text/plain; charset=utf-8",
    )


def _device_entry(customer: str, device: BackupDevice) -> Entry:
    return Entry(
        _href(customer, device.mac, collection=True),
        device.mac,
        collection=True,
        modified=device.last_changed_at or device.last_put_at,
    )


class _Resource:
    """What a DAV path names, resolved against the archive (NotFound when nothing)."""

    def __init__(self, segments: list[str]) -> None:
        self.segments = segments

    async def entries(self, repository: ArchiveRepository, depth: int) -> list[Entry]:
        segments = self.segments
        if not segments:
            entries = [Entry(PREFIX + "/", "backups", collection=True)]
            if depth:
                entries += [
                    Entry(_href(c, collection=True), c, collection=True, modified=moment)
                    for c, moment in await repository.customers()
                ]
            return entries
        customer = segments[0]
        if len(segments) == 1:
            devices = await self._devices(repository, customer)
            entries = [Entry(_href(customer, collection=True), customer, collection=True)]
            if depth:
                entries += [_device_entry(customer, device) for device in devices]
            return entries
        device = await self._device(repository, customer, segments[1])
        if len(segments) == 2:
            entries = [_device_entry(customer, device)]
            if depth:
                versions = await repository.versions(device.mac, limit=1_000_000)
                entries += [_version_entry(customer, device.mac, v) for v in versions]
            return entries
        version = await self._version(repository, device, segments[2])
        return [_version_entry(customer, device.mac, version)]

    async def _devices(self, repository: ArchiveRepository, customer: str) -> list[BackupDevice]:
        if not _CUSTOMER.fullmatch(customer):
            raise errors.NotFound("no such collection")
        devices = await repository.devices(customer=customer, limit=1_000_000)
        if not devices:
            raise errors.NotFound("no such collection")
        return devices

    async def _device(self, repository: ArchiveRepository, customer: str, mac: str) -> BackupDevice:
        device = await repository.device(mac) if _MAC.fullmatch(mac) else None
        if device is None or device.customer != customer:
            raise errors.NotFound("no such collection")
        return device

    async def _version(
        self, repository: ArchiveRepository, device: BackupDevice, name: str
    ) -> Version:
        received_at = parse_file_name(name)
        version = await repository.version_at(device.mac, received_at) if received_at else None
        if version is None:
            raise errors.NotFound("no such file")
        return version


def _segments(request: web.Request) -> list[str]:
    tail = request.match_info.get("tail", "")
    segments = [segment for segment in tail.split("/") if segment]
    if len(segments) > 3 or any(segment in (".", "..") for segment in segments):
        raise errors.NotFound("no such resource")
    return segments


async def _admin(request: web.Request) -> None:
    account = await authenticate(request)
    if Role.ADMIN not in account.roles:
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise errors.Forbidden("the backup archive over WebDAV needs the admin role")


async def dav(request: web.Request) -> web.StreamResponse:
    method = request.method
    if method == "OPTIONS":
        return web.Response(
            status=200, headers={"DAV": "1", "Allow": ALLOW, "MS-Author-Via": "DAV"}
        )
    if method not in ("PROPFIND", "GET", "HEAD"):
        return web.Response(
            status=405,
            text="the backup archive is read-only\n",
            content_type="text/plain",
            headers={"Allow": ALLOW},
        )
    await _admin(request)
    resource = _Resource(_segments(request))
    if method == "PROPFIND":
        depth_header = request.headers.get("Depth", "infinity").strip().lower()
        if len(resource.segments) == 3:
            depth_header = "0"  # a file has no members: any depth means 0 (RFC 4918 §9.1)
        if depth_header not in ("0", "1"):
            return web.Response(
                status=403,
                text='<?xml version="1.0" encoding="utf-8"?>\n'
                '<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n',
                content_type="application/xml",
            )
        if request.can_read_body:
            await request.read()  # the requested properties do not change the answer
        async with acquire(pool_of(request)) as connection:
            entries = await resource.entries(ArchiveRepository(connection), int(depth_header))
        return web.Response(
            status=207, text=multistatus(entries), content_type="application/xml", charset="utf-8"
        )
    async with acquire(pool_of(request)) as connection:
        repository = ArchiveRepository(connection)
        entries = await resource.entries(repository, 1)
        if len(resource.segments) < 3:
            listing = "".join(
                f"{entry.name}{'/' if entry.collection else ''}\n" for entry in entries[1:]
            )
            return web.Response(text=listing, content_type="text/plain")
        found = entries[0]
        content = await repository.content(bytes.fromhex(found.etag or ""))
    return web.Response(
        body=content,
        headers={
            "Content-Type": found.content_type or "application/octet-stream",
            "ETag": f'"{found.etag}"',
            "Last-Modified": format_datetime(
                (found.modified or datetime.now(UTC)).astimezone(UTC), usegmt=True
            ),
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", PREFIX + "{tail:(/.*)?}", dav)
