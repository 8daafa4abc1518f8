"""The CA key on one signing node only (``ca.signer``, migration 023).

A node without the key (``ca.signer = "queue"``, or ``"auto"`` with no key file) checks a
device's signing request against the inventory exactly as a signing node does, then queues it in
``ca_signing_requests`` and moves the roll-out to ``queued``. A signing node (``"sign"``) works
the queue: woken by ``NOTIFY pbxfront_ca_requests`` and by a sweep every ``ca.queue_interval``
seconds (for notifications lost while its connection was down), it takes the oldest waiting
request (``FOR UPDATE SKIP LOCKED``: several signing nodes or workers never sign one twice),
signs it, records the certificate in ``ca_certificates`` and moves the device's roll-out to
``signed`` in the same transaction, so the device's next poll on any node installs it.

While no signing node runs, requests wait (nothing expires them) and the roll-out shows
``queued``; ``pbxfront ca queue`` lists them with their age and when a signing node was last
seen (``ca_signers``). At each sweep a signing node also stores the CRL (``ca_crls``) when a
revocation was added or half its validity passed, for the nodes that cannot sign one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from services.core.config import CaSettings
from services.core.db import DatabaseUnavailable, acquire, transaction
from services.core.listen import PoolListener
from services.core.pki import (
    CertificateNames,
    IssuedCertificate,
    PkiError,
    RevokedEntry,
    build_crl,
    certificate_fingerprint,
    certificate_names,
    load_signing_request,
    sign_public_key,
    subject_value,
)
from services.update import rollout
from services.update.repository import RolloutRepository

log = logging.getLogger(__name__)

CHANNEL = "pbxfront_ca_requests"


def node_name() -> str:
    return socket.gethostname()


def sign_device_request(
    issued: IssuedCertificate,
    signing_request: x509.CertificateSigningRequest,
    plan: CertificateNames,
    settings: CaSettings,
) -> x509.Certificate:
    """Blocking: the device certificate for a request already checked against ``plan``.
    Raises PkiError when the CA cannot issue (expired, ...)."""
    public_key = signing_request.public_key()
    # load_signing_request accepts RSA and EC keys only.
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return sign_public_key(
        issued,
        public_key,
        common_name=plan.common_name,
        organization=subject_value(issued.certificate, NameOID.ORGANIZATION_NAME),
        country=subject_value(issued.certificate, NameOID.COUNTRY_NAME),
        dns_names=plan.dns_names,
        ip_addresses=plan.ip_addresses,
        valid_days=settings.device_valid_days,
        server=True,
        client=True,
    )


@dataclass(frozen=True)
class QueuedRequest:
    id: int
    mac: str
    ca_fingerprint: str
    request: bytes
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    requested_by: str
    requested_at: datetime

    @property
    def plan(self) -> CertificateNames:
        return CertificateNames(self.common_name, self.dns_names, self.ip_addresses)


class SigningQueueRepository:
    """``ca_signing_requests``, ``ca_signers`` and ``ca_crls`` as the update service uses them
    (``pbxfront ca queue`` reads the same tables through services/ca/repository.py)."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def enqueue(
        self, mac: str, ca_fingerprint: str, request: bytes, plan: CertificateNames, by: str
    ) -> int:
        """Queue a checked request; an older waiting one of the device is dropped (the device
        made a new key). Run inside the transaction that moves the roll-out to ``queued``."""
        await self._db.execute(
            """UPDATE ca_signing_requests SET state = 'dropped', done_at = now(),
                   error = 'replaced by a newer request'
               WHERE mac = $1 AND state = 'waiting'""",
            mac,
        )
        request_id: int = await self._db.fetchval(
            """
            INSERT INTO ca_signing_requests (mac, ca_fingerprint, request, common_name,
                dns_names, ip_addresses, requested_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
            """,
            mac,
            ca_fingerprint,
            request,
            plan.common_name,
            list(plan.dns_names),
            list(plan.ip_addresses),
            by,
        )
        return request_id

    async def waiting_since(self, mac: str) -> datetime | None:
        value: datetime | None = await self._db.fetchval(
            "SELECT requested_at FROM ca_signing_requests WHERE mac = $1 AND state = 'waiting'",
            mac,
        )
        return value

    async def next_waiting(self, ca_fingerprint: str) -> QueuedRequest | None:
        """The oldest waiting request for this CA, locked (skipping those another signer holds).
        Inside a transaction."""
        row = await self._db.fetchrow(
            """
            SELECT id, mac, ca_fingerprint, request, common_name, dns_names, ip_addresses,
                   requested_by, requested_at
            FROM ca_signing_requests
            WHERE state = 'waiting' AND ca_fingerprint = $1
            ORDER BY requested_at, id LIMIT 1 FOR UPDATE SKIP LOCKED
            """,
            ca_fingerprint,
        )
        if row is None:
            return None
        return QueuedRequest(
            **{
                **dict(row),
                "request": bytes(row["request"]),
                "dns_names": tuple(row["dns_names"]),
                "ip_addresses": tuple(row["ip_addresses"]),
            }
        )

    async def finish(
        self,
        request_id: int,
        state: str,
        *,
        by: str,
        serial: str | None = None,
        error: str | None = None,
    ) -> None:
        await self._db.execute(
            """UPDATE ca_signing_requests SET state = $2, signed_by = $3, serial = $4,
                   error = $5, done_at = now() WHERE id = $1""",
            request_id,
            state,
            by,
            serial,
            error,
        )

    async def seen(self, node: str, ca_fingerprint: str) -> None:
        await self._db.execute(
            """INSERT INTO ca_signers (node, ca_fingerprint) VALUES ($1, $2)
               ON CONFLICT (node) DO UPDATE SET ca_fingerprint = $2, seen_at = now()""",
            node,
            ca_fingerprint,
        )

    async def stored_crl(self, ca_fingerprint: str) -> bytes | None:
        value = await self._db.fetchval(
            "SELECT crl FROM ca_crls WHERE ca_fingerprint = $1", ca_fingerprint
        )
        return bytes(value) if value is not None else None

    async def crl_stale(self, ca_fingerprint: str, refresh_after: timedelta) -> bool:
        """Whether the stored CRL misses a revocation or is older than ``refresh_after``."""
        stale: bool = await self._db.fetchval(
            """
            WITH revoked AS (
                SELECT count(*)::integer AS n, max(revoked_at) AS latest FROM ca_certificates
                WHERE ca_fingerprint = $1 AND revoked_at IS NOT NULL)
            SELECT NOT EXISTS (
                SELECT 1 FROM ca_crls c, revoked r WHERE c.ca_fingerprint = $1
                  AND c.revoked = r.n AND c.latest_revocation IS NOT DISTINCT FROM r.latest
                  AND c.built_at > now() - $2::interval)
            """,
            ca_fingerprint,
            refresh_after,
        )
        return stale

    async def store_crl(self, ca_fingerprint: str, crl: bytes, revoked: int) -> None:
        await self._db.execute(
            """
            INSERT INTO ca_crls (ca_fingerprint, crl, revoked, latest_revocation)
            SELECT $1, $2, $3, max(revoked_at) FROM ca_certificates
            WHERE ca_fingerprint = $1 AND revoked_at IS NOT NULL
            ON CONFLICT (ca_fingerprint) DO UPDATE SET crl = EXCLUDED.crl,
                revoked = EXCLUDED.revoked, latest_revocation = EXCLUDED.latest_revocation,
                built_at = now()
            """,
            ca_fingerprint,
            crl,
            revoked,
        )


async def enqueue_request(
    connection: asyncpg.Connection,
    state: rollout.RolloutState,
    *,
    ca_fingerprint: str,
    der: bytes,
    plan: CertificateNames,
    now: datetime,
) -> rollout.RolloutState:
    """Queue a checked request for the signing node; the roll-out's state after it."""
    await SigningQueueRepository(connection).enqueue(
        state.mac, ca_fingerprint, der, plan, node_name()
    )
    return replace(state, state="queued", attempts=0, error=None, updated_at=now)


@dataclass(frozen=True)
class _Sweep:
    """What one sweep signs with: the CA, its fingerprint and serial (hex), the settings and
    the signing node's name."""

    issued: IssuedCertificate
    fingerprint: str
    ca_serial: str
    settings: CaSettings
    node: str


async def sign_queued(
    pool: asyncpg.Pool, issued: IssuedCertificate, settings: CaSettings, node: str
) -> int:
    """One sweep of a signing node: sign every waiting request for its CA; the number signed."""
    fingerprint = certificate_fingerprint(issued.certificate)
    ca_serial = format(issued.certificate.serial_number, "x")
    sweep = _Sweep(issued, fingerprint, ca_serial, settings, node)
    signed = 0
    async with acquire(pool) as connection:
        queue = SigningQueueRepository(connection)
        await queue.seen(node, fingerprint)
        while (outcome := await _settle_next(connection, queue, sweep)) is not None:
            if outcome:
                signed += 1
        await publish_crl(connection, issued, settings)
    return signed


async def _settle_next(
    connection: asyncpg.Connection, queue: SigningQueueRepository, sweep: _Sweep
) -> bool | None:
    """Take the oldest waiting request for the CA and settle it in one transaction: dropped
    when its roll-out moved on, failed when it cannot be signed, else signed. None when no
    request waits; otherwise whether it was signed."""
    async with transaction(connection):
        request = await queue.next_waiting(sweep.fingerprint)
        if request is None:
            return None
        rollouts = RolloutRepository(connection)
        state = await rollouts.lock(request.mac)
        if state is None or state.state != "queued" or state.plan != request.plan:
            await queue.finish(request.id, "dropped", by=sweep.node, error="the roll-out moved on")
            return False
        now = datetime.now(UTC)
        try:
            certificate = await _sign_request(rollouts, sweep, request)
        except PkiError as error:
            message = rollout.bounded_error(f"cannot sign: {error}")
            log.error("signing queue: request %d of %s: %s", request.id, request.mac, message)
            await queue.finish(request.id, "failed", by=sweep.node, error=message)
            await rollouts.save(replace(state, state="error", error=message, updated_at=now))
            return False
        await _record_signed(queue, rollouts, sweep, request, state, certificate, now)
        return True


async def _sign_request(
    rollouts: RolloutRepository, sweep: _Sweep, request: QueuedRequest
) -> x509.Certificate:
    """The device certificate for a queued request (signed in a thread). PkiError when the
    RootCA was retired, the request no longer names what was checked, or the CA cannot sign."""
    if await rollouts.ca_retired(sweep.ca_serial):
        raise PkiError("the RootCA was retired (its serial is revoked)")
    signing_request = load_signing_request(request.request)
    if not certificate_names(signing_request).same_as(request.plan):
        raise PkiError("the queued request does not name what was checked")
    return await asyncio.to_thread(
        sign_device_request, sweep.issued, signing_request, request.plan, sweep.settings
    )


async def _record_signed(
    queue: SigningQueueRepository,
    rollouts: RolloutRepository,
    sweep: _Sweep,
    request: QueuedRequest,
    state: rollout.RolloutState,
    certificate: x509.Certificate,
    now: datetime,
) -> None:
    """Record the certificate, move the roll-out to ``signed`` with the chain and finish the
    request (inside the transaction that took it)."""
    await rollouts.record_issued(certificate, ca_fingerprint=sweep.fingerprint, mac=request.mac)
    signed = rollout.after_signing(state, certificate, sweep.issued.certificate, now)
    await rollouts.save(signed)
    await queue.finish(request.id, "signed", by=sweep.node, serial=signed.serial)
    waited = (now - request.requested_at).total_seconds()
    log.info(
        "signing queue: signed %s for %s (queued by %s %.1f s ago), serial %s",
        request.common_name,
        request.mac,
        request.requested_by,
        waited,
        signed.serial,
    )


async def sign_crl(
    issued: IssuedCertificate, revoked: Sequence[RevokedEntry], valid_days: int
) -> bytes:
    """The RootCA's CRL of ``revoked`` (DER), signed in a thread. Its number is the seconds since
    1970, so it increases with every new CRL on any node. PkiError when the CA cannot sign."""
    number = int(datetime.now(UTC).timestamp())
    return await asyncio.to_thread(build_crl, issued, revoked, number=number, valid_days=valid_days)


async def publish_crl(
    connection: asyncpg.Connection, issued: IssuedCertificate, settings: CaSettings
) -> None:
    """Store a fresh CRL for nodes without the key when the stored one is stale."""
    fingerprint = certificate_fingerprint(issued.certificate)
    queue = SigningQueueRepository(connection)
    if not await queue.crl_stale(fingerprint, timedelta(days=settings.crl_valid_days / 2)):
        return
    revoked = await RolloutRepository(connection).revoked(fingerprint)
    try:
        crl = await sign_crl(issued, revoked, settings.crl_valid_days)
    except PkiError as error:
        log.error("signing queue: the CRL cannot be signed: %s", error)
        return
    await queue.store_crl(fingerprint, crl, len(revoked))


class SigningWorker:
    """A signing node's queue worker: a cleanup_ctx-owned task that sweeps the queue when told
    (NOTIFY) and every ``ca.queue_interval`` seconds."""

    def __init__(self, pool: asyncpg.Pool, issued: IssuedCertificate, settings: CaSettings) -> None:
        self._pool = pool
        self._issued = issued
        self._settings = settings
        self._node = node_name()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._listen = PoolListener({CHANNEL: self._on_request}, on_listening=self._on_listening)
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0

    def _on_request(self, _connection: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    async def _on_listening(self, _connection: asyncpg.Connection) -> None:
        # Listening (again): whatever was queued meanwhile is swept now.
        self._wake.set()

    def start(self) -> None:
        self._listen.start(self._pool)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await sign_queued(self._pool, self._issued, self._settings, self._node)
            except DatabaseUnavailable as error:
                log.warning("signing queue: database unavailable: %s", error)
            except Exception:  # keep working; the next sweep retries
                log.exception("signing queue: sweep failed")
            self.sweeps += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    _first(self._wake, self._stop), self._settings.queue_interval
                )

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=10)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self._listen.close()


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
