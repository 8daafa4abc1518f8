"""SQL of the update service, one module an aggregate: poll status writes and history
(:mod:`.polls`), poll state and restaging (:mod:`.restage`), status reads (:mod:`.statuses`),
the fleet page (:mod:`.fleet`), the certificate roll-out (:mod:`.certificates`), the shared
firmware store (:mod:`.shared_firmware`).

:class:`UpdateRepository` is all of the device-status ones on one connection, for the callers
that use several of them; it adds no SQL of its own."""

from __future__ import annotations

from services.update.repository.certificates import RolloutRepository, RolloutStatus
from services.update.repository.fleet import (
    DEVICE_SORTS,
    FLEET_SORTS,
    FleetQuery,
    FleetRepository,
    FleetRow,
)
from services.update.repository.polls import HISTORY_KEEP, PollRecord, PollRepository, StatusChange
from services.update.repository.restage import RestageRepository
from services.update.repository.shared_firmware import (
    CHUNK_BYTES,
    SharedFile,
    SharedFirmwareRepository,
)
from services.update.repository.statuses import DeviceStatus, DeviceStatusRepository

__all__ = [
    "CHUNK_BYTES",
    "DEVICE_SORTS",
    "FLEET_SORTS",
    "HISTORY_KEEP",
    "DeviceStatus",
    "DeviceStatusRepository",
    "FleetQuery",
    "FleetRepository",
    "FleetRow",
    "PollRecord",
    "PollRepository",
    "RestageRepository",
    "RolloutRepository",
    "RolloutStatus",
    "SharedFile",
    "SharedFirmwareRepository",
    "StatusChange",
    "UpdateRepository",
]


class UpdateRepository(PollRepository, RestageRepository, DeviceStatusRepository, FleetRepository):
    """Device status, restaging and the fleet page on one connection or pool."""
