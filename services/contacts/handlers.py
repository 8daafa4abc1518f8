"""HTTP side of the contacts service: the customers' write-only drop and the admin API.

Drop (device listener), protocol.md §7: ``PUT /DRIVE/CF0/directory/<customer-id>/contacts.csv``,
what ``curl -T contacts.csv https://<fe>/DRIVE/CF0/directory/<customer-id>/`` sends. Who may
upload: the customer (Basic, user = customer id, password = the customer registration password),
an admin or operator account, or anybody for a customer with ``allow_anonymous_contacts``.
Unknown customers and wrong passwords get the same 401. ``GET`` of the same path serves the
current version in the seed's columns to accounts with the ``directory-reader`` role only:
customers cannot read back, list or probe. The pipeline of a PUT: check the id -> authenticate
-> read the body (bounded) -> check the file (worker thread) -> compare with the current
version -> refuse, report (dry run) or store. A 2xx is sent only after the commit.

Admin API (admin listener, :data:`ENDPOINTS`): versions, entries, LDIF, rollback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass

from aiohttp import web

from services.contacts.domain import (
    CheckedUpload,
    Difference,
    Entry,
    Report,
    check_upload,
    difference,
    render_csv,
    render_ldif,
)
from services.contacts.numbers import SHORT_DIGITS_VARIABLE
from services.contacts.repository import ContactsRepository, Customer, NewVersion
from services.core import audit, errors
from services.core.api import (
    OBJECT,
    Endpoint,
    current_account,
    json_response,
    openapi_endpoint,
    pool_of,
    request_actor,
)
from services.core.auth import (
    Role,
    VerifiedCache,
    parse_basic,
    secrets_equal,
    verify_login,
)
from services.core.authguard import auth_guard
from services.core.config import ContactsSettings, Settings
from services.core.db import acquire
from services.core.http import UploadAborted, query_arguments, read_body, security_event
from services.core.identity import printable
from services.core.numbering import NumberingPlan

log = logging.getLogger(__name__)

DIRECTORY_PREFIX = "/DRIVE/CF0/directory"
FILE_NAME = "contacts.csv"
# inventory customers.id (migration 001): never a path separator, never "..".
CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BASIC_CHALLENGE = 'Basic realm="pbxfront contacts", charset="UTF-8"'
UPLOADERS = frozenset({Role.ADMIN, Role.OPERATOR})
FOLDER_TEXT = (
    "the directory folder is write-only: upload with "
    "curl -T contacts.csv https://<frontend>/DRIVE/CF0/directory/<customer-id>/"
)
# Compared against when the customer does not exist or has no password: the same work either way.
_NO_PASSWORD = secrets.token_urlsafe(24)

SETTINGS_KEY = web.AppKey("contacts_settings", Settings)


class UploadChecks:
    """At most ``concurrency`` uploads are decoded and checked at once per application (each
    holds its body and its parsed rows); more wait their turn. Made in the running loop."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def semaphore(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._semaphore


CHECKS_KEY = web.AppKey("contacts_checks", UploadChecks)
VERIFIED_KEY = web.AppKey("contacts_verified", VerifiedCache)


def check_customer_id(value: str) -> str:
    if not CUSTOMER_ID.fullmatch(value):
        raise errors.Invalid(
            f"customer id {printable(value, 80)!r}: 1-64 letters, digits and . _ - "
            "starting with a letter or digit (e.g. Kuenkel00001)"
        )
    return value


def number_plan(customer: Customer, settings: ContactsSettings) -> NumberingPlan:
    short = settings.short_number_max_digits
    raw = (customer.short_digits_variable or "").strip()
    if raw:
        if not re.fullmatch(r"\d{1,2}", raw) or int(raw) > 15:
            # An operator's typo must not silently change how numbers are read.
            raise errors.Unprocessable(
                f"update variable {SHORT_DIGITS_VARIABLE} of {customer.id} is {raw!r}: "
                "must be 0..15; ask your provider"
            )
        short = int(raw)
    return NumberingPlan(
        customer.country_code,
        customer.area_code,
        customer.international_prefix,
        customer.national_prefix,
        short,
    )


# --- the drop (device listener) ----------------------------------------------------------------


async def folder(request: web.Request) -> web.Response:
    """Anything below the folder but <customer-id>/contacts.csv: one answer that reveals
    nothing (no listing, no probing)."""
    return web.Response(status=404, text=FOLDER_TEXT + "\n", content_type="text/plain")


async def contacts_resource(request: web.Request) -> web.StreamResponse:
    if request.method == "PUT":
        return await put_contacts(request)
    if request.method in ("GET", "HEAD"):
        return await get_contacts(request)
    return web.Response(
        status=405,
        text=FOLDER_TEXT + "\n",
        content_type="text/plain",
        headers={"Allow": "PUT, GET"},
    )


def _refuse_if_limited(request: web.Request) -> None:
    """429 when this address (or the account it names, from an address that never
    authenticated as it) failed too often (core.authguard, shared by every service)."""
    credentials = parse_basic(request.headers.get("Authorization"))
    auth_guard(request).refuse_if_limited(request, credentials.name if credentials else None)


def _auth_failed(request: web.Request, name: str | None, message: str) -> errors.Unauthenticated:
    auth_guard(request).failed(request, name, "wrong or malformed credentials")
    return errors.Unauthenticated(message, (BASIC_CHALLENGE,))


def _customer_password_matches(customer: Customer | None, password: str) -> bool:
    stored = customer.registration_password if customer is not None else None
    matches = secrets_equal(password, stored or _NO_PASSWORD)
    return matches and stored is not None


async def _load_customer(request: web.Request, customer_id: str) -> Customer | None:
    async with acquire(pool_of(request)) as connection:
        return await ContactsRepository(connection).customer(customer_id)


@dataclass(frozen=True)
class Uploader:
    customer: Customer
    name: str  # the customer id, an account name, or "anonymous"


async def identify_uploader(request: web.Request, customer_id: str) -> Uploader:
    customer = await _load_customer(request, customer_id)
    header = request.headers.get("Authorization")
    wrong = "wrong customer id or password (Basic: <customer-id>:<registration password>)"
    if not header:
        if customer is not None and customer.allow_anonymous_contacts:
            return Uploader(customer, "anonymous")
        raise errors.Unauthenticated(
            "credentials required: add -u <customer-id> to the curl line "
            "(the password is the customer registration password)",
            (BASIC_CHALLENGE,),
        )
    credentials = parse_basic(header)
    if credentials is None:
        raise _auth_failed(request, None, wrong)
    if credentials.name == customer_id:
        if _customer_password_matches(customer, credentials.password) and customer is not None:
            auth_guard(request).succeeded(request, customer_id)
            return Uploader(customer, customer_id)
        raise _auth_failed(request, credentials.name, wrong)
    account = await verify_login(
        pool_of(request),
        credentials.name,
        credentials.password,
        request.app[VERIFIED_KEY],
        auth_guard(request).hashing,
    )
    if account is None or customer is None or not account.has_any(UPLOADERS):
        raise _auth_failed(request, credentials.name, wrong)
    auth_guard(request).succeeded(request, account.name)
    return Uploader(customer, account.name)


def _flag(request: web.Request, *names: str) -> bool:
    arguments = query_arguments(request)
    for name in names:
        raw = arguments.get(name)
        if raw is None:
            continue
        if raw.lower() in ("", "1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise errors.Invalid(f"{name}: must be 1 or 0")
    return False


def _answer(request: web.Request, report: Report, status: int) -> web.Response:
    headers = {"X-Contacts-Version": str(report.version)} if report.version else {}
    if "application/json" in request.headers.get("Accept", ""):
        return web.Response(
            status=status,
            text=json.dumps(report.as_json(), ensure_ascii=False) + "\n",
            content_type="application/json",
            headers=headers,
        )
    return web.Response(
        status=status, text=report.as_text(), content_type="text/plain", headers=headers
    )


def _checked_and_compared(
    content: bytes, plan: NumberingPlan, settings: ContactsSettings, current: list[Entry]
) -> tuple[CheckedUpload, Difference]:
    checked = check_upload(
        content,
        plan,
        settings.max_rows,
        max_columns=settings.max_columns,
        max_cells=settings.max_cells,
    )
    return checked, difference(current, checked.entries)


async def put_contacts(request: web.Request) -> web.Response:
    """A customer's upload, top to bottom: who, the body, its check against the current
    version, the verdict (pure), then the store."""
    settings = request.app[SETTINGS_KEY].contacts
    customer_id = check_customer_id(request.match_info["customer"])
    dry_run = _flag(request, "dry-run", "dry_run")
    _refuse_if_limited(request)
    uploader = await identify_uploader(request, customer_id)
    content = await _upload_body(request, customer_id, settings.max_body_bytes)
    async with acquire(pool_of(request)) as connection:
        current_version, current = await ContactsRepository(connection).current_entries(customer_id)
    async with request.app[CHECKS_KEY].semaphore:
        checked, diff = await asyncio.to_thread(
            _checked_and_compared,
            content,
            number_plan(uploader.customer, settings),
            settings,
            current,
        )
    verdict = _verdict(customer_id, checked, diff, current_version, settings, dry_run)
    if verdict is not None:
        return _answer(request, *verdict)
    new = NewVersion(
        customer=customer_id,
        uploaded_by=uploader.name,
        source_address=request.remote,
        source_sha256=hashlib.sha256(content).digest(),
        source_encoding=checked.encoding,
        rejected=len(checked.rejections),
        entries=checked.entries,
    )
    async with acquire(pool_of(request)) as connection:
        version = await ContactsRepository(connection).store(new, settings.keep_versions)
    log.info(
        "contacts of %s: version %d current (by %s: %d accepted, %d rejected; +%d ~%d -%d)",
        customer_id,
        version,
        uploader.name,
        len(checked.entries),
        len(checked.rejections),
        diff.added,
        diff.changed,
        diff.removed,
    )
    message = f"stored as version {version}, now current"
    report = Report(customer_id, "stored", checked, message, version=version, difference=diff)
    return _answer(request, report, 201)


async def _upload_body(request: web.Request, customer_id: str, limit: int) -> bytes:
    """The uploaded file, whole; an aborted or empty upload is refused with nothing changed."""
    try:
        content = await read_body(request, limit, "contacts.csv")
    except UploadAborted as error:
        log.info(
            "contacts upload of %s aborted after a partial body: %s; nothing changed",
            customer_id,
            printable(str(error)),
        )
        raise errors.Invalid("upload aborted; nothing was changed") from None
    if not content:
        raise errors.Unprocessable("the file is empty: upload an Outlook or seed contacts.csv")
    return content


def _verdict(
    customer_id: str,
    checked: CheckedUpload,
    diff: Difference,
    current_version: int | None,
    settings: ContactsSettings,
    dry_run: bool,
) -> tuple[Report, int] | None:
    """The answer when the upload is not stored (refused, dry run, unchanged); None to store."""
    share = checked.rejected_share()
    if not checked.entries or share > settings.max_rejected_share:
        reason = (
            "no valid contact in the file"
            if not checked.entries
            else f"{share:.0%} of the contacts are invalid (at most "
            f"{settings.max_rejected_share:.0%} allowed)"
        )
        kept = f"version {current_version} stays current" if current_version else "nothing stored"
        log.info("contacts upload of %s refused: %s", customer_id, reason)
        message = f"refused: {reason}; {kept}"
        return Report(customer_id, "refused", checked, message, difference=diff), 422
    if dry_run:
        message = "dry run: nothing was changed"
        return Report(
            customer_id, "dry-run", checked, message, version=current_version, difference=diff
        ), 200
    if current_version is not None and diff.empty:
        message = f"unchanged: version {current_version} stays current"
        return Report(
            customer_id, "unchanged", checked, message, version=current_version, difference=diff
        ), 200
    return None


async def get_contacts(request: web.Request) -> web.Response:
    """The directory server's fetch: directory-reader accounts only."""
    customer_id = check_customer_id(request.match_info["customer"])
    _refuse_if_limited(request)
    header = request.headers.get("Authorization")
    credentials = parse_basic(header)
    if credentials is None:
        if header:
            raise _auth_failed(request, None, "malformed credentials (Basic only)")
        raise errors.Unauthenticated(
            "directory reader credentials required (curl -u <account>)", (BASIC_CHALLENGE,)
        )
    account = await verify_login(
        pool_of(request),
        credentials.name,
        credentials.password,
        request.app[VERIFIED_KEY],
        auth_guard(request).hashing,
    )
    if account is None:
        customer = await _load_customer(request, customer_id)
        if credentials.name == customer_id and _customer_password_matches(
            customer, credentials.password
        ):
            security_event(request, "forbidden", account=credentials.name, path=request.path)
            raise errors.Forbidden(FOLDER_TEXT)
        raise _auth_failed(request, credentials.name, "wrong credentials")
    auth_guard(request).succeeded(request, account.name)
    if Role.DIRECTORY_READER not in account.roles:
        security_event(request, "forbidden", account=account.name, path=request.path)
        raise errors.Forbidden("reading contacts needs the directory-reader role")
    async with acquire(pool_of(request)) as connection:
        version, entries = await ContactsRepository(connection).current_entries(customer_id)
    if version is None:
        raise errors.NotFound(f"no contacts for {customer_id}")
    text = await asyncio.to_thread(render_csv, entries)
    return web.Response(
        text=text,
        content_type="text/csv",
        charset="utf-8",
        headers={"X-Contacts-Version": str(version)},
    )


# --- admin API (admin listener) ----------------------------------------------------------------

READERS = frozenset({Role.ADMIN, Role.OPERATOR})
WRITERS = frozenset({Role.ADMIN, Role.OPERATOR})


def _version_argument(raw: str | None) -> int | None:
    if raw is None or raw in ("", "current"):
        return None
    if not re.fullmatch(r"\d{1,9}", raw):
        raise errors.Invalid("version: a version number or 'current'")
    return int(raw)


async def load_version(
    repository: ContactsRepository, customer_id: str, version: int | None
) -> tuple[Customer, int, list[Entry]]:
    """A customer's version (default: the current one) and its entries; NotFound otherwise."""
    customer = await repository.customer(customer_id)
    if customer is None:
        raise errors.NotFound(f"no customer {customer_id}")
    if version is None:
        version = await repository.current_version(customer_id)
        if version is None:
            raise errors.NotFound(f"no contacts for {customer_id}")
    elif version not in {v.version for v in await repository.versions(customer_id)}:
        raise errors.NotFound(f"{customer_id} has no version {version}")
    return customer, version, await repository.entries(customer_id, version)


async def api_versions(request: web.Request) -> web.Response:
    customer_id = check_customer_id(request.match_info["customer"])
    async with acquire(pool_of(request)) as connection:
        repository = ContactsRepository(connection)
        if await repository.customer(customer_id) is None:
            raise errors.NotFound(f"no customer {customer_id}")
        versions = await repository.versions(customer_id)
    return json_response({"customer": customer_id, "versions": [v.as_json() for v in versions]})


async def api_entries(request: web.Request) -> web.Response:
    customer_id = check_customer_id(request.match_info["customer"])
    wanted = _version_argument(request.match_info.get("version"))
    async with acquire(pool_of(request)) as connection:
        _, version, entries = await load_version(
            ContactsRepository(connection), customer_id, wanted
        )
    return json_response(
        {"customer": customer_id, "version": version, "entries": [e.as_json() for e in entries]}
    )


async def api_ldif(request: web.Request) -> web.Response:
    customer_id = check_customer_id(request.match_info["customer"])
    wanted = _version_argument(request.query.get("version"))
    async with acquire(pool_of(request)) as connection:
        customer, version, entries = await load_version(
            ContactsRepository(connection), customer_id, wanted
        )
    text = await asyncio.to_thread(render_ldif, customer_id, customer.name, entries)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Contacts-Version": str(version)},
    )


async def api_rollback(request: web.Request) -> web.Response:
    customer_id = check_customer_id(request.match_info["customer"])
    to = _version_argument(request.query.get("to"))
    async with acquire(pool_of(request)) as connection, connection.transaction():
        repository = ContactsRepository(connection)
        if await repository.customer(customer_id) is None:
            raise errors.NotFound(f"no customer {customer_id}")
        previous, current = await repository.rollback(customer_id, to)
        await audit.record(
            connection,
            actor=request_actor(request),
            action="contacts.rollback",
            object_type="contacts",
            object_id=customer_id,
            before={"version": previous},
            after={"version": current},
        )
    account = current_account(request).name
    log.warning(
        "contacts of %s rolled back by %s: version %d -> %d",
        customer_id,
        account,
        previous,
        current,
    )
    return json_response({"customer": customer_id, "previous": previous, "current": current})


API = "/api/v1/contacts"

ENDPOINTS: list[Endpoint] = [
    openapi_endpoint(
        "pbxfront contacts API", f"{API}/openapi.json", READERS, lambda _request: ENDPOINTS
    ),
    Endpoint(
        "GET",
        API + "/{customer}/versions",
        api_versions,
        READERS,
        "A customer's kept contact versions, newest first (current: true marks the served one)",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        API + "/{customer}",
        api_entries,
        READERS,
        "The current version's entries (originals and E.164)",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        API + "/{customer}/versions/{version}",
        api_entries,
        READERS,
        "One version's entries",
        response=OBJECT,
    ),
    Endpoint(
        "GET",
        API + "/{customer}/ldif",
        api_ldif,
        READERS,
        "The directory as LDIF under dc=<customer> for ldapadd (text/plain)",
        query={"version": "a version number (default: the current one)"},
    ),
    Endpoint(
        "POST",
        API + "/{customer}/rollback",
        api_rollback,
        WRITERS,
        "Make the previous version (or ?to=N) current again",
        query={"to": "the version to make current"},
        response=OBJECT,
    ),
]
