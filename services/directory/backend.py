"""The directory's backend: who a bind is, and what a search finds for it.

The LDAP connection (``server``) keeps the framing, the limits and the result codes; this owns
the tree and who may see what (aiosmtpd's habit: a protocol class and a handler it calls).

Who sees what: a customer binds as itself (``dc=<id>``, ``cn=<id>,dc=<id>`` or just ``<id>``)
with its registration password and sees only ``dc=<id>``; an account with the directory-reader
role binds as ``uid=<account>,ou=accounts`` and sees every customer. Another customer's subtree
is answered exactly like one that does not exist (noSuchObject), so a bind learns nothing about
other customers, not even whether they exist.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from services.core.auth import HashGate, Role, VerifiedCache, secrets_equal, verify_login
from services.directory import dn as dn_syntax
from services.directory.cache import DirectoryCache
from services.directory.filters import matches
from services.directory.index import Entry, base_dn
from services.directory.protocol import WHO_AM_I, ResultCode, Scope, SearchRequest

ACCOUNTS_DN = "ou=accounts"
# Compared against when a customer does not exist or has no password, so that an unknown
# customer and a wrong password cost the same.
_NO_PASSWORD = secrets.token_urlsafe(24)

Found = AsyncGenerator[Entry, None]


@dataclass(frozen=True)
class Identity:
    """Who a connection is bound as."""

    dn: str
    # The customer it may see; None for a directory reader (every customer).
    customer: str | None


def bind_target(name: str) -> tuple[str, str] | None:
    """("customer", id) or ("account", name) for the bind DN forms we accept, else None."""
    if "=" not in name:
        return ("customer", name.strip()) if name.strip() else None
    try:
        rdns = dn_syntax.parse(name)
    except dn_syntax.DnError:
        return None
    if len(rdns) == 1 and rdns[0][0] == "dc":
        return "customer", rdns[0][1]
    if len(rdns) == 2 and rdns[1][0] == "dc" and rdns[0][0] == "cn":
        if rdns[0][1].lower() == rdns[1][1].lower():
            return "customer", rdns[1][1]
        return None
    accounts = len(rdns) == 2 and rdns[1][0] == "ou" and rdns[1][1].lower() == "accounts"
    if accounts and rdns[0][0] in ("uid", "cn"):
        return "account", rdns[0][1]
    return None


@dataclass(frozen=True)
class Refusal:
    """A search answered with a result code and no entries."""

    code: ResultCode
    text: str
    matched: str = ""


class Backend(Protocol):
    async def bind(self, name: str, password: str) -> Identity | None: ...

    async def search(
        self, identity: Identity | None, request: SearchRequest
    ) -> Found | Refusal: ...


class CustomerDirectories:
    """Each customer's contacts (from the shared cache) behind the customers' own binds and the
    directory-reader accounts."""

    def __init__(
        self, cache: DirectoryCache, pool: asyncpg.Pool, verified: VerifiedCache, gate: HashGate
    ) -> None:
        self._cache = cache
        self._pool = pool
        self._verified = verified
        self._gate = gate

    async def bind(self, name: str, password: str) -> Identity | None:
        """Who ``name`` with ``password`` is, or None (unknown and wrong cost the same).
        errors.Busy when the node's password checks are all taken."""
        target = bind_target(name)
        if target is None:
            secrets_equal(password, _NO_PASSWORD)
            return None
        kind, value = target
        if kind == "customer":
            record = await self._cache.customer(value)
            expected = record.registration_password if record is not None else None
            right = secrets_equal(password, expected or _NO_PASSWORD)
            if record is None or not expected or not right:
                return None
            return Identity(base_dn(record.id), record.id)
        account = await verify_login(self._pool, value, password, self._verified, self._gate)
        if account is None or not account.has_any(frozenset({Role.DIRECTORY_READER})):
            return None
        return Identity(f"uid={dn_syntax.escape(account.name)},{ACCOUNTS_DN}", None)

    async def visible(self, identity: Identity | None) -> list[str]:
        """The customer ids whose subtree ``identity`` may see, in order."""
        if identity is None:
            return []
        if identity.customer is not None:
            return [identity.customer]
        return sorted(record.id for record in (await self._cache.customers()).values())

    async def search(self, identity: Identity | None, request: SearchRequest) -> Found | Refusal:
        """The entries ``request`` finds for ``identity`` (unfiltered by limits: the connection
        applies them), or why there are none."""
        try:
            rdns = dn_syntax.parse(request.base)
        except dn_syntax.DnError as error:
            return Refusal(ResultCode.INVALID_DN_SYNTAX, str(error))
        if not rdns and request.scope == Scope.BASE:
            entry = await self._root_dse(identity)
            return _found([entry] if matches(request.filter, entry.match) else [])
        if identity is None:
            return Refusal(
                ResultCode.INSUFFICIENT_ACCESS_RIGHTS,
                "bind as the customer id with its registration password first",
            )
        if not rdns:
            return self._everywhere(await self.visible(identity), request)
        kind, customer_id = rdns[-1]
        visible = identity.customer is None or identity.customer.lower() == customer_id.lower()
        directory = await self._cache.directory(customer_id) if visible else None
        if kind != "dc" or len(rdns) > 2 or directory is None:
            return Refusal(ResultCode.NO_SUCH_OBJECT, "no such entry")
        if len(rdns) == 1:
            if request.scope == Scope.BASE:
                base = directory.base
                return _found([base] if matches(request.filter, base.match) else [])
            return _found(directory.search(request.filter, include_base=request.scope == Scope.SUB))
        name, value = rdns[0]
        position = directory.by_uid.get(value) if name == "uid" else None
        if position is None:
            return Refusal(ResultCode.NO_SUCH_OBJECT, "no such entry", matched=directory.base.dn)
        entry = directory.entries[position]
        single = (
            [entry] if request.scope != Scope.ONE and matches(request.filter, entry.match) else []
        )
        return _found(single)

    async def _everywhere(self, customers: list[str], request: SearchRequest) -> Found:
        """Base "" with scope one (the customers' entries) or sub (everything visible)."""
        for customer_id in customers:
            directory = await self._cache.directory(customer_id)
            if directory is None:
                continue
            if request.scope == Scope.ONE:
                if matches(request.filter, directory.base.match):
                    yield directory.base
                continue
            for entry in directory.search(request.filter, include_base=True):
                yield entry

    async def _root_dse(self, identity: Identity | None) -> Entry:
        contexts = [base_dn(customer) for customer in await self.visible(identity)]
        shown = [
            ("objectClass", ["top"]),
            ("namingContexts", contexts),
            ("supportedLDAPVersion", ["3"]),
            ("supportedExtension", [WHO_AM_I]),
            ("vendorName", ["pbxfront"]),
        ]
        attributes = [(name, name.lower(), values) for name, values in shown if values]
        match = {name.lower(): tuple(v.casefold() for v in values) for name, values in shown}
        return Entry(match, dn="", fixed=attributes)


async def _found(entries: Iterable[Entry]) -> AsyncGenerator[Entry, None]:
    for entry in entries:
        yield entry
