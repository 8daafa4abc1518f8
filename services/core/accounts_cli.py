"""``pbxfront accounts``: operator, reader, sender and provider accounts (argon2 passwords,
roles, an event sender's customer bindings), each change in the audit trail. Passwords are read
before the database is opened: from ``--password-file``, ``$PBXFRONT_ACCOUNT_PASSWORD``, standard
input or a prompt, never from argv."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from services.core.commands import (
    JSON,
    Bind,
    Commands,
    Handler,
    argument,
    record_audit,
    usage_errors,
)
from services.core.config import Settings
from services.core.errors import UsageError


def read_secret(prompt: str, *, file: str | None, env: str) -> str:
    if file:
        try:
            return Path(file).read_text("utf-8").rstrip("\r\n")
        except OSError as error:
            raise UsageError(f"{file}: {error.strerror}") from None
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"no password: give --password-file, set {env}, or type it")
        return line.rstrip("\r\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def _on_database(
    args: argparse.Namespace, bind: Bind, work: Callable[[Settings, asyncpg.Pool], Awaitable[int]]
) -> int:
    """``work`` on the database as ``bind`` opens it: after what the handler read first (a
    password), so no prompt waits while the database is open."""
    return bind(lambda _args, settings, pool: work(settings, pool))(args)


async def _audit_account(
    connection: asyncpg.Connection,
    action: str,
    name: str,
    *,
    before: list[str] | None = None,
    after: list[str] | None = None,
) -> None:
    await record_audit(
        connection,
        action,
        "account",
        name,
        before=None if before is None else {"roles": before},
        after={"roles": after, "password": "(set)"} if after is not None else None,
    )


def _add_account(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.auth import AccountError, AccountRepository, parse_roles

    with usage_errors(AccountError):
        roles = parse_roles(args.role)
    password = read_secret(
        f"password for {args.name}: ", file=args.password_file, env="PBXFRONT_ACCOUNT_PASSWORD"
    )

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        with usage_errors(AccountError):
            async with pool.acquire() as connection, connection.transaction():
                await AccountRepository(connection).add(args.name, roles, password)
                await _audit_account(connection, "account.add", args.name, after=sorted(roles))
        print(f"account {args.name} added with roles {', '.join(sorted(roles))}")
        return 0

    return _on_database(args, bind, work)


def _set_password(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.auth import AccountError, AccountRepository

    password = read_secret(
        f"new password for {args.name}: ", file=args.password_file, env="PBXFRONT_ACCOUNT_PASSWORD"
    )

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        with usage_errors(AccountError):
            async with pool.acquire() as connection, connection.transaction():
                changed = await AccountRepository(connection).set_password(args.name, password)
                if changed:
                    await _audit_account(connection, "account.password", args.name)
        if not changed:
            raise UsageError(f"no account {args.name}")
        print(f"password of {args.name} changed; its API tokens were revoked")
        return 0

    return _on_database(args, bind, work)


def _remove_account(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.auth import AccountRepository

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        async with pool.acquire() as connection, connection.transaction():
            account = await AccountRepository(connection).get(args.name)
            removed = await AccountRepository(connection).remove(args.name)
            if removed and account is not None:
                await _audit_account(
                    connection, "account.remove", args.name, before=sorted(account.roles)
                )
        if not removed:
            raise UsageError(f"no account {args.name}")
        print(f"account {args.name} removed")
        return 0

    return _on_database(args, bind, work)


def _bind_customers(args: argparse.Namespace, bind: Bind) -> int:
    from services.core import errors
    from services.core.senderscope import SenderScopeRepository

    if bool(args.all) == bool(args.customer):
        raise UsageError("accounts bind: give --customer C (repeatable) or --all")

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        scopes = SenderScopeRepository(pool)
        with usage_errors(errors.NotFound):
            await scopes.bind(args.name, None if args.all else list(args.customer))
        scope = await scopes.scope(args.name)
        print(f"account {args.name} may write events and backups for: {scope.describe()}")
        return 0

    return _on_database(args, bind, work)


def _unbind_customers(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.senderscope import SenderScopeRepository

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        scopes = SenderScopeRepository(pool)
        removed = await scopes.unbind(args.name, list(args.customer) if args.customer else None)
        scope = await scopes.scope(args.name)
        print(f"removed {removed} binding(s); account {args.name}: {scope.describe()}")
        return 0

    return _on_database(args, bind, work)


def _list_accounts(args: argparse.Namespace, bind: Bind) -> int:
    from services.core.auth import AccountRepository

    async def work(_settings: Settings, pool: asyncpg.Pool) -> int:
        accounts = await AccountRepository(pool).list()
        if args.json:
            print(
                json.dumps([{"name": a.name, "roles": sorted(a.roles)} for a in accounts], indent=2)
            )
        else:
            for account in accounts:
                print(f"{account.name}\t{','.join(sorted(account.roles))}")
        return 0

    return _on_database(args, bind, work)


def register(commands: Any, common: argparse.ArgumentParser, bind: Bind) -> None:
    accounts = Commands(commands, common, bind).group(
        "accounts", "operator, reader, sender and provider accounts"
    )
    name = argument("name")
    sender = argument("name", help="the event-sender account")

    def handler(read: Callable[..., int]) -> Handler:
        return functools.partial(read, bind=bind)

    accounts.add_handler(
        "add",
        handler(_add_account),
        "create an account",
        name,
        argument(
            "--role",
            action="append",
            required=True,
            help="admin, operator, directory-reader, event-sender, provider (repeatable)",
        ),
        argument(
            "--password-file", metavar="FILE", help="else $PBXFRONT_ACCOUNT_PASSWORD or a prompt"
        ),
    )
    accounts.add_handler(
        "passwd",
        handler(_set_password),
        "set a new password",
        name,
        argument("--password-file", metavar="FILE"),
    )
    accounts.add_handler("remove", handler(_remove_account), "delete an account", name)
    accounts.add_handler(
        "bind",
        handler(_bind_customers),
        "let an event-sender account write events and backups for these customers' devices",
        sender,
        argument(
            "--customer",
            action="append",
            metavar="ID",
            help="a customer id from the inventory (repeatable; added to the present bindings)",
        ),
        argument("--all", action="store_true", help="every customer, present and future"),
    )
    accounts.add_handler(
        "unbind",
        handler(_unbind_customers),
        "remove an event-sender account's customer bindings",
        sender,
        argument(
            "--customer", action="append", metavar="ID", help="only this customer (repeatable)"
        ),
    )
    accounts.add_handler("list", handler(_list_accounts), "list accounts and roles", JSON)
