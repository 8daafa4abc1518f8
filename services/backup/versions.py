"""Reading stored versions: one version with its content, the two a diff compares, the diff
rendered. Shared by the archive API (archive_api.py) and ``pbxfront backups diff``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

from services.backup.diff import Redaction, Side, unified_diff
from services.backup.normalize import Normalizer
from services.backup.repository import ArchiveRepository, BackupDevice, Version
from services.core import errors


async def load_version(
    repository: ArchiveRepository, device: BackupDevice, version_id: int | None
) -> tuple[Version, bytes]:
    """Version ``version_id`` of ``device`` (None: its latest) and its content; NotFound
    otherwise."""
    wanted = version_id if version_id is not None else device.latest_version
    version = await repository.version(device.mac, wanted) if wanted is not None else None
    if version is None:
        raise errors.NotFound(f"no version {wanted} of {device.hardware_id}")
    return version, await repository.content(version.content_sha256)


@dataclass(frozen=True)
class DiffRequest:
    old: tuple[Version, bytes]
    new: tuple[Version, bytes]


async def versions_to_compare(
    repository: ArchiveRepository,
    device: BackupDevice,
    old_id: int | None,
    new_id: int | None,
) -> DiffRequest:
    """Default: the latest version against the one before it (or the one before ``new``)."""
    new = await load_version(repository, device, new_id)
    if old_id is None:
        previous = await repository.versions(device.mac, limit=1, before=new[0].id)
        if not previous:
            raise errors.NotFound(f"{device.hardware_id} has no version before {new[0].id}")
        old_id = previous[0].id
    old = await load_version(repository, device, old_id)
    return DiffRequest(old, new)


def render_diff(
    device: BackupDevice,
    pair: DiffRequest,
    *,
    normalizer: Normalizer | None,
    redaction: Redaction | None,
) -> str:
    def side(item: tuple[Version, bytes]) -> Side:
        version, content = item
        stamp = version.received_at.astimezone(UTC).isoformat(timespec="seconds")
        return Side(content, f"{device.hardware_id} version {version.id} ({stamp})")

    return unified_diff(side(pair.old), side(pair.new), normalizer=normalizer, redaction=redaction)
