"""SQL of the backup service, one repository per concern: the intake (store only on change),
the archive (reads), the maintenance (retention, staleness, device moves); records shared."""

from services.backup.repository.archive import ArchiveRepository
from services.backup.repository.intake import ContentWork, IntakeRepository
from services.backup.repository.maintenance import MaintenanceRepository
from services.backup.repository.records import (
    ALERT_CHANNEL,
    MAINTENANCE_LOCK_ID,
    Alert,
    BackupDevice,
    InventoryDevice,
    LatestVersion,
    SeenUnchanged,
    StaleDevice,
    StoreResult,
    Upload,
    Version,
)

__all__ = [
    "ALERT_CHANNEL",
    "MAINTENANCE_LOCK_ID",
    "Alert",
    "ArchiveRepository",
    "BackupDevice",
    "ContentWork",
    "IntakeRepository",
    "InventoryDevice",
    "LatestVersion",
    "MaintenanceRepository",
    "SeenUnchanged",
    "StaleDevice",
    "StoreResult",
    "Upload",
    "Version",
]
