"""The update service's side of the provider CA: the RootCA it signs device requests with, the
roll-out step added to update polls, the device's uploads (``PUT /DRIVE/CF0/update/x509/…``)
and the CRL (``GET /DRIVE/CF0/update/ca.crl``).

The RootCA comes from the ``[ca]`` files; a key file readable by others, a wrong passphrase or a
certificate that is no CA stops the service from starting (the message names the file). Without
a RootCA file the CRL answers 404 and no roll-out runs (``ca.rollout = true`` without one also
refuses to start). A node with the certificate but not the key (``ca.signer``) queues checked
requests for the signing node and serves the CRL that node stored (signing.py).

The upload path is write-only and only for devices proven by their client certificate whose
certificate names the device the path and arguments name; failures are rate-limited per
address. Nothing a device sends is signed unless its common name and SANs are exactly the ones
the inventory gives (see rollout.certificate_plan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from services.core import errors
from services.core.api import pool_of
from services.core.config import Settings
from services.core.db import acquire, transaction
from services.core.http import UploadAborted, query_arguments, read_body, security_event
from services.core.identity import (
    DeviceIdentity,
    IdentityError,
    identify,
    normalize_hardware_id,
    normalize_mac,
    parse_hardware_id,
    printable,
)
from services.core.inventory import Device, ResolvedVariable
from services.core.pki import (
    CertificateNames,
    IssuedCertificate,
    PkiError,
    certificate_fingerprint,
    certificate_names,
    hex_to_bytes,
    load_certificate,
    load_certificate_authority,
    load_signing_request,
    read_passphrase,
)
from services.core.ratelimit import AddressLimiter
from services.core.scriptlines import comment, comment_reply
from services.update import rollout, signing
from services.update.provisioning import Snapshot
from services.update.repository import RolloutRepository
from services.update.state import SETTINGS_KEY, SNAPSHOTS_KEY

log = logging.getLogger(__name__)

CA_PASSPHRASE_ENV = "PBXFRONT_CA_PASSPHRASE"  # noqa: S105 - the variable's name
# A CRL is re-signed at most this often per node; revocations show within this many seconds.
CRL_CACHE_SECONDS = 60.0
# Failed uploads per address: a burst, then one more every few seconds.
FAILURE_BURST = 20
FAILURE_RATE = 0.2


@dataclass
class Authority:
    """The loaded RootCA and this node's CRL cache: ``issued`` with its key (this node signs),
    ``queued`` its certificate alone (requests are queued for the signing node, signing.py),
    neither: no CA file."""

    issued: IssuedCertificate | None = None
    queued: x509.Certificate | None = None
    crl: bytes | None = None
    crl_built: float = 0.0
    warned: bool = False
    # (inventory version, whether any layer sets cert-rollout) for the poll's fast path.
    _mentioned: tuple[int, bool] = (-1, False)

    def mentioned(self, snapshot: Snapshot) -> bool:
        """Whether any layer of the inventory sets the cert-rollout variable."""
        version, found = self._mentioned
        if version != snapshot.version:
            found = any(v.name == rollout.ROLLOUT_VARIABLE for v in snapshot.inventory.variables)
            self._mentioned = (snapshot.version, found)
        return found

    @property
    def present(self) -> bool:
        return self.issued is not None or self.queued is not None

    @property
    def certificate(self) -> x509.Certificate:
        if self.issued is not None:
            return self.issued.certificate
        assert self.queued is not None
        return self.queued

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate)

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    def subject(self, oid: x509.ObjectIdentifier) -> str | None:
        attributes = self.certificate.subject.get_attributes_for_oid(oid)
        if not attributes:
            return None
        value = attributes[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")


AUTHORITY_KEY = web.AppKey("update_authority", Authority)
LIMITER_KEY = web.AppKey("update_upload_limiter", AddressLimiter)


def load_authority(settings: Settings) -> Authority:
    """Blocking: the RootCA from the [ca] files, or none. Raises PkiError when the files exist
    but cannot be used, or when the roll-out is on and there is no CA."""
    certificate_path, key_path = settings.ca.paths(settings.data_dir)
    if not certificate_path.exists():
        if settings.ca.rollout:
            raise PkiError(
                f"{certificate_path}: ca.rollout = true needs the RootCA; run "
                "`pbxfront ca init` or set ca.certificate and ca.key"
            )
        return Authority()
    signer = settings.ca.signer
    if signer == "auto":
        signer = "sign" if key_path.exists() else "queue"
    if signer == "queue":
        certificate = load_certificate(certificate_path)
        try:
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise PkiError(f"{certificate_path}: not a CA certificate (basicConstraints CA:TRUE)")
        log.info(
            "provider RootCA %s loaded without its key (ca.signer): signing requests are "
            "queued for the signing node",
            certificate.subject.rfc4514_string(),
        )
        return Authority(queued=certificate)
    passphrase = read_passphrase(settings.ca.passphrase_file, os.environ.get(CA_PASSPHRASE_ENV))
    issued = load_certificate_authority(certificate_path, key_path, passphrase)
    log.info("provider RootCA %s loaded", issued.certificate.subject.rfc4514_string())
    return Authority(issued)


async def authority_ctx(app: web.Application) -> AsyncIterator[None]:
    app[AUTHORITY_KEY] = await asyncio.to_thread(load_authority, app[SETTINGS_KEY])
    yield


def signer_ctx(
    pool: asyncpg.Pool | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx (after :func:`authority_ctx`) that works the signing queue from node
    start when this node holds the CA key."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        issued = app[AUTHORITY_KEY].issued
        worker = None
        if pool is not None and issued is not None:
            worker = signing.SigningWorker(pool, issued, app[SETTINGS_KEY].ca)
            worker.start()
        yield
        if worker is not None:
            await worker.close()

    return context


# --- the poll ----------------------------------------------------------------------------------


async def poll_lines(
    request: web.Request,
    pool: asyncpg.Pool,
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
    base: str,
) -> list[str]:
    """The roll-out's lines for this update poll (empty when it does not take part)."""
    settings = request.app[SETTINGS_KEY]
    authority = request.app[AUTHORITY_KEY]
    variables = _taking_part(settings, authority, snapshot, device, identity)
    if variables is None:
        return []
    customer = snapshot.customers[device.customer]
    frontend = snapshot.frontends[customer.frontend]
    plan: CertificateNames | None = None
    problem: str | None = None
    try:
        plan = rollout.certificate_plan(device, frontend, variables, identity.ip)
    except PkiError as error:
        problem = f"the inventory's certificate names are unusable: {error}"
    now = datetime.now(UTC)
    async with acquire(pool) as connection, transaction(connection):
        repository = RolloutRepository(connection)
        if await repository.ca_retired(authority.serial):
            return [comment("certificate roll-out: the RootCA was retired; nothing is issued")]
        current = await repository.lock(device.mac)
        step = rollout.poll_step(
            current,
            mac=device.mac,
            base=base,
            plan=plan,
            plan_problem=problem,
            organization=authority.subject(NameOID.ORGANIZATION_NAME),
            country=authority.subject(NameOID.COUNTRY_NAME),
            settings=settings.ca,
            now=now,
        )
        if step.state != current:
            await repository.save(step.state)
    if current is None or step.state.state != current.state:
        log.info(
            "certificate roll-out of %s: %s -> %s",
            device.hardware_id,
            current.state if current else "-",
            step.state.state,
        )
    return list(step.lines)


# --- uploads -----------------------------------------------------------------------------------


def _named(identity: DeviceIdentity, name: str) -> bool:
    """Whether the path's name (``#m`` or ``#h`` as the device expanded it) is this device."""
    with contextlib.suppress(IdentityError):
        mac = normalize_mac(name)
        if identity.mac is not None:
            return mac == identity.mac
        return identity.hardware_id is not None and parse_hardware_id(
            identity.hardware_id
        ).matches_mac(mac)
    with contextlib.suppress(IdentityError):
        hardware_id = normalize_hardware_id(name)
        if identity.hardware_id is not None:
            return hardware_id == identity.hardware_id
        return identity.mac is not None and parse_hardware_id(hardware_id).matches_mac(identity.mac)
    return False


async def _read_body(request: web.Request) -> bytes:
    try:
        return await read_body(request, rollout.MAX_UPLOAD_BYTES)
    except UploadAborted:
        raise errors.Invalid("upload aborted") from None


@dataclass(frozen=True)
class _Outcome:
    status: int
    message: str
    security: str | None = None  # a security event kind to log after the commit


async def upload(request: web.Request) -> web.Response:
    """``PUT /DRIVE/CF0/update/x509/<#m>?mode=query|vardump…``: a command's output from a
    device taking part in the roll-out (protocol.md §9). Anything but PUT: 405."""
    if request.method != "PUT":
        return web.Response(
            status=405,
            text="# write-only: devices PUT command output here\r\n",
            content_type="text/plain",
            headers={"Allow": "PUT"},
        )
    limiter = request.app[LIMITER_KEY]
    address = request.remote
    if not limiter.allows(address):
        return web.Response(
            status=429,
            text="# too many failed uploads from this address\r\n",
            content_type="text/plain",
            headers={"Retry-After": str(limiter.retry_after(address))},
        )
    try:
        return await _upload(request)
    except (errors.DomainError, IdentityError, PkiError):
        limiter.spend(address)
        raise


async def _upload(request: web.Request) -> web.Response:
    """A device's report in a certificate roll-out, top to bottom: who, what it reports, the
    roll-out step (in one transaction), then the log and the answer."""
    settings = request.app[SETTINGS_KEY]
    query = query_arguments(request)
    identity = _proven_uploader(request, query)
    mode, variable = _upload_mode(query)
    body = await _read_body(request)
    authority = request.app[AUTHORITY_KEY]
    if not authority.present:
        raise errors.NotFound("no provider RootCA on this Frontend")
    pool = pool_of(request)
    async with acquire(pool) as connection:
        snapshot = await request.app[SNAPSHOTS_KEY].get(connection)
    device = snapshot.find(identity)
    if device is None:
        raise errors.Forbidden(f"device {identity.describe()} is not in the inventory")
    now = datetime.now(UTC)
    async with acquire(pool) as connection, transaction(connection):
        repository = RolloutRepository(connection)
        state = await repository.lock(device.mac)
        if state is None:
            raise errors.Conflict("no certificate roll-out is in progress for this device")
        if mode == "query":
            updated, outcome = _after_query(authority, settings, state, device, body, now)
        elif variable == rollout.ERROR_VARIABLE:
            updated, outcome = _after_error_report(state, body, now)
        else:
            updated, outcome = await _signing_request(
                connection, repository, authority, settings, state, device, body, now
            )
        if updated != state:
            await repository.save(updated)
    if outcome.security is not None:
        security_event(request, outcome.security, device=device.hardware_id, reason=outcome.message)
    if updated.state != state.state:
        log.info(
            "certificate roll-out of %s: %s -> %s%s",
            device.hardware_id,
            state.state,
            updated.state,
            f" ({updated.error})" if updated.error else "",
        )
    if outcome.status >= 400:
        raise errors.Forbidden(outcome.message)
    return comment_reply(outcome.status, outcome.message)


def _proven_uploader(request: web.Request, query: Mapping[str, str]) -> DeviceIdentity:
    """The device proven by its certificate, which must be the one the path names."""
    peercert = request.transport.get_extra_info("peercert") if request.transport else None
    identity = identify(peercert, query)
    name = request.match_info["name"]
    if not identity.proven:
        security_event(request, "forbidden", path=request.path, reason="no device certificate")
        raise errors.Forbidden("only a device proven by its certificate may upload here")
    if not _named(identity, name):
        security_event(
            request,
            "identity-conflict",
            device=identity.describe(),
            claimed=printable(name, 40),
            path=request.path,
        )
        raise errors.Forbidden(f"the certificate names {identity.describe()}, not this path")
    return identity


def _upload_mode(query: Mapping[str, str]) -> tuple[str, str | None]:
    """What the device reports: its certificate list (mode=query) or a variable (vardump)."""
    mode = query.get("mode")
    variable = query.get("var")
    if mode == "query":
        if query.get("id") != rollout.QUERY_ID:
            raise errors.Invalid(f"mode=query: expects id={rollout.QUERY_ID}")
    elif mode == "vardump":
        if variable not in (rollout.REQUEST_VARIABLE, rollout.ERROR_VARIABLE):
            raise errors.Invalid(
                f"var: {rollout.REQUEST_VARIABLE} or {rollout.ERROR_VARIABLE} only"
            )
    else:
        raise errors.Invalid("mode: query or vardump")
    return mode, variable


def _after_query(
    authority: Authority,
    settings: Settings,
    state: rollout.RolloutState,
    device: Device,
    body: bytes,
    now: datetime,
) -> tuple[rollout.RolloutState, _Outcome]:
    try:
        report = rollout.parse_query_report(body)
    except rollout.RolloutInputError as error:
        raise errors.Invalid(f"certificate list: {error}") from None
    updated = rollout.after_query(
        state,
        report,
        ca_common_name=authority.subject(NameOID.COMMON_NAME) or "",
        renew_days=settings.ca.renew_days,
        now=now,
    )
    return updated, _Outcome(200, f"certificates of {device.hardware_id}: {updated.state}")


def _after_error_report(
    state: rollout.RolloutState, body: bytes, now: datetime
) -> tuple[rollout.RolloutState, _Outcome]:
    value = rollout.parse_vardump(body, rollout.ERROR_VARIABLE)
    if not value:
        return state, _Outcome(200, "no request error")
    error_text = rollout.bounded_error(f"device: {value}")
    updated = replace(state, state="error", error=error_text, updated_at=now)
    return updated, _Outcome(200, "request error recorded; the roll-out stops")


async def _signing_request(
    connection: asyncpg.Connection,
    repository: RolloutRepository,
    authority: Authority,
    settings: Settings,
    state: rollout.RolloutState,
    device: Device,
    body: bytes,
    now: datetime,
) -> tuple[rollout.RolloutState, _Outcome]:
    if state.state != "fetching" or state.plan is None:
        raise errors.Conflict(f"no signing request expected now (roll-out state {state.state})")
    value = rollout.parse_vardump(body, rollout.REQUEST_VARIABLE)
    if not value:
        return state, _Outcome(200, "no signing request on the device yet")
    try:
        der = hex_to_bytes(value, rollout.REQUEST_VARIABLE)
        signing_request = load_signing_request(der)
    except PkiError as error:
        raise errors.Invalid(str(error)) from None
    requested = certificate_names(signing_request)
    plan = state.plan
    if not requested.same_as(plan):
        message = (
            f"signing request refused: it names {requested.describe()}, "
            f"the inventory {plan.describe()}"
        )
        updated = replace(
            state, state="refused", error=rollout.bounded_error(message), updated_at=now
        )
        return updated, _Outcome(403, rollout.bounded_error(message), security="csr-refused")
    if authority.issued is None:
        # No key here (ca.signer): the signing node signs it; a later poll installs it.
        updated = await signing.enqueue_request(
            connection,
            state,
            ca_fingerprint=authority.fingerprint,
            der=der,
            plan=plan,
            now=now,
        )
        log.info(
            "certificate roll-out of %s: request queued for the signing node", device.hardware_id
        )
        return updated, _Outcome(
            200, "signing request queued; the certificate comes with a later poll"
        )
    return await _sign_here(
        repository, authority, authority.issued, settings, state, device, signing_request, now
    )


async def _sign_here(
    repository: RolloutRepository,
    authority: Authority,
    issuer: IssuedCertificate,
    settings: Settings,
    state: rollout.RolloutState,
    device: Device,
    signing_request: x509.CertificateSigningRequest,
    now: datetime,
) -> tuple[rollout.RolloutState, _Outcome]:
    """Sign the request with this node's RootCA key and record the certificate."""
    plan = state.plan
    assert plan is not None  # checked by the caller (state "fetching" has a plan)
    try:
        certificate = await asyncio.to_thread(
            signing.sign_device_request, issuer, signing_request, plan, settings.ca
        )
    except PkiError as error:
        # The CA itself cannot issue (expired, ...): stop until an operator acts.
        message = rollout.bounded_error(f"cannot sign: {error}")
        log.error("certificate roll-out of %s: %s", device.hardware_id, message)
        return replace(state, state="error", error=message, updated_at=now), _Outcome(200, message)
    await repository.record_issued(
        certificate, ca_fingerprint=authority.fingerprint, mac=device.mac
    )
    updated = rollout.after_signing(state, certificate, authority.certificate, now)
    return updated, _Outcome(200, f"signed: serial {updated.serial}, installed at the next poll")


def _taking_part(
    settings: Settings,
    authority: Authority,
    snapshot: Snapshot,
    device: Device,
    identity: DeviceIdentity,
) -> Mapping[str, ResolvedVariable] | None:
    """The device's variables when it takes part in a roll-out now, else None."""
    if not identity.proven or not (settings.ca.rollout or authority.mentioned(snapshot)):
        # The common case costs nothing: no roll-out anywhere, or a claimed device.
        return None
    variables = snapshot.resolve(device)
    if not rollout.rollout_enabled(variables, settings.ca):
        return None
    if not authority.present:
        if not authority.warned:
            authority.warned = True
            log.warning(
                "certificate roll-out is on for %s but there is no RootCA "
                "(pbxfront ca init); skipped",
                device.hardware_id,
            )
        return None
    return variables


# --- CRL ---------------------------------------------------------------------------------------


async def crl(request: web.Request) -> web.Response:
    """The RootCA's CRL (DER), the same on every node (revocations live in PostgreSQL)."""
    authority = request.app[AUTHORITY_KEY]
    if not authority.present:
        return comment_reply(404, "no provider RootCA on this Frontend")
    now = time.monotonic()
    if authority.issued is None and (
        authority.crl is None or now - authority.crl_built > CRL_CACHE_SECONDS
    ):
        # No key here: the CRL the signing node stored (signing.publish_crl).
        async with acquire(pool_of(request)) as connection:
            stored = await signing.SigningQueueRepository(connection).stored_crl(
                authority.fingerprint
            )
        if stored is None:
            return comment_reply(503, "no signing node has stored a CRL yet (ca.signer)")
        authority.crl, authority.crl_built = stored, now
    if authority.crl is None or now - authority.crl_built > CRL_CACHE_SECONDS:
        async with acquire(pool_of(request)) as connection:
            revoked = await RolloutRepository(connection).revoked(authority.fingerprint)
        issued = authority.issued
        assert issued is not None
        try:
            authority.crl = await signing.sign_crl(
                issued, revoked, request.app[SETTINGS_KEY].ca.crl_valid_days
            )
        except PkiError as error:
            log.error("CRL cannot be signed: %s", error)
            return comment_reply(503, "the CRL cannot be signed; the operator's log says why")
        authority.crl_built = now
    return web.Response(
        body=authority.crl,
        content_type="application/pkix-crl",
        headers={"Cache-Control": f"max-age={int(CRL_CACHE_SECONDS)}"},
    )
